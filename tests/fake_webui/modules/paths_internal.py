"""Fake of modules/paths_internal.py: where the webui keeps its code, user data and models.

The real module reads ``--data-dir`` / ``--models-dir`` from the command line; the fake reads
them from ``DBCHAR_FAKE_WEBUI_DATA`` / ``DBCHAR_FAKE_WEBUI_MODELS`` so each test gets its own.
"""

import os

cwd = os.getcwd()
modules_path = os.path.dirname(os.path.realpath(__file__))
script_path = os.path.dirname(modules_path)

sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file

data_path = os.path.abspath(os.environ.get("DBCHAR_FAKE_WEBUI_DATA") or script_path)
models_path = os.path.abspath(os.environ.get("DBCHAR_FAKE_WEBUI_MODELS") or os.path.join(data_path, "models"))
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
