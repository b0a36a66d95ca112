"""Fake of modules/sd_vae.py: the list of VAE files behind the "SD VAE" dropdown.

Same names and scan as the real module: ``vae_dict`` maps a file NAME to its path (a name found
twice keeps the last path), filled by ``refresh_vae_list()`` from ``models/VAE`` (``*.ckpt``,
``*.pt``, ``*.safetensors``, recursively), the ``*.vae.*`` files in ``models/Stable-diffusion`` and
``--ckpt-dir``, and ``--vae-dir``; sorted by natural name order. The webui fills it at start-up
(``initialize_rest``) and again when the dropdown's refresh button is pressed. Loading a VAE into a
model is not faked.
"""

import glob
import os

from modules import paths, sd_models, shared

vae_path = os.path.abspath(os.path.join(paths.models_path, "VAE"))
vae_dict = {}


def get_filename(filepath):
    return os.path.basename(filepath)


def refresh_vae_list():
    vae_dict.clear()
    patterns = [
        os.path.join(sd_models.model_path, "**/*.vae.ckpt"),
        os.path.join(sd_models.model_path, "**/*.vae.pt"),
        os.path.join(sd_models.model_path, "**/*.vae.safetensors"),
        os.path.join(vae_path, "**/*.ckpt"),
        os.path.join(vae_path, "**/*.pt"),
        os.path.join(vae_path, "**/*.safetensors"),
    ]
    ckpt_dir = shared.cmd_opts.ckpt_dir
    if ckpt_dir is not None and os.path.isdir(ckpt_dir):
        patterns += [os.path.join(ckpt_dir, f"**/*.vae.{ext}") for ext in ("ckpt", "pt", "safetensors")]
    vae_dir = shared.cmd_opts.vae_dir
    if vae_dir is not None and os.path.isdir(vae_dir):
        patterns += [os.path.join(vae_dir, f"**/*.{ext}") for ext in ("ckpt", "pt", "safetensors")]
    candidates = []
    for pattern in patterns:
        candidates += glob.iglob(pattern, recursive=True)
    for filepath in candidates:
        vae_dict[get_filename(filepath)] = filepath
    vae_dict.update(dict(sorted(vae_dict.items(), key=lambda item: shared.natural_sort_key(item[0]))))


def find_vae_near_checkpoint(checkpoint_file):
    checkpoint_path = os.path.basename(checkpoint_file).rsplit(".", 1)[0]
    for vae_file in vae_dict.values():
        if os.path.basename(vae_file).startswith(checkpoint_path):
            return vae_file
    return None
