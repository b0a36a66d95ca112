"""Fake of modules/shared_cmd_options.py + cmd_args.py: the parsed command line.

Only the flags dbchar (or the fake itself) reads. Like the real launcher, extra flags come from
the ``COMMANDLINE_ARGS`` environment variable; pytest's own argv is ignored.
"""

import argparse
import os
import shlex

from modules.paths_internal import data_path, models_path, sd_model_file

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--data-dir", type=str, default=data_path)
parser.add_argument("--models-dir", type=str, default=None)
parser.add_argument("--ckpt", type=str, default=sd_model_file)
parser.add_argument("--ckpt-dir", type=str, default=None)
parser.add_argument("--vae-dir", type=str, default=None)
parser.add_argument("--no-hashing", action="store_true")
parser.add_argument("--skip-install", action="store_true")
parser.add_argument("--no-half", action="store_true")
parser.add_argument("--lowvram", action="store_true")
parser.add_argument("--medvram", action="store_true")
parser.add_argument("--medvram-sdxl", action="store_true")
parser.add_argument("--use-cpu", nargs="+", default=[], type=str.lower)
parser.add_argument("--no-download-sd-model", action="store_true")
parser.add_argument("--ui-settings-file", type=str, default=os.path.join(data_path, "config.json"))
parser.add_argument("--freeze-settings", action="store_true")
parser.add_argument("--freeze-settings-in-sections", type=str, default=None)
parser.add_argument("--freeze-specific-settings", type=str, default=None)
parser.add_argument("--hide-ui-dir-config", action="store_true")
parser.add_argument("--api", action="store_true")
parser.add_argument("--listen", action="store_true")
parser.add_argument("--share", action="store_true")
parser.add_argument("--enable-insecure-extension-access", action="store_true")
parser.add_argument("--embeddings-dir", type=str, default=os.path.join(data_path, "embeddings"))
# Added by extensions-builtin/Lora/preload.py (the launcher runs every extension's preload on the
# parser before parsing); absent when that extension is disabled.
parser.add_argument("--lora-dir", type=str, default=os.path.join(models_path, "Lora"))

cmd_opts, _unknown = parser.parse_known_args(shlex.split(os.environ.get("COMMANDLINE_ARGS", "")))
cmd_opts.webui_is_non_local = bool(cmd_opts.share or cmd_opts.listen)
cmd_opts.disable_extension_access = (
    cmd_opts.webui_is_non_local and not cmd_opts.enable_insecure_extension_access
)
