"""Checkpoint formats: diffusers components <-> the ldm/A1111 single file, and safetensors I/O.

* :func:`diffusers_to_ldm` / :func:`ldm_to_diffusers` -- pure dict -> dict conversions for SD1.x
  (CLIP text encoder) and SD2.x (OpenCLIP text encoder), exact in both directions.
* :func:`detect_kind` -- ``"sd1"`` or ``"sd2"`` from sentinel keys.
* :func:`save_single_file` / :func:`load_single_file` -- atomic ``.safetensors`` writes, reads.
* :func:`match_text_encoder_keys` -- key style of transformers 4.30 vs 5.x ``CLIPTextModel``.
* :func:`open_checkpoint` / :func:`load_checkpoint` -- ``.safetensors`` and (restricted) ``.ckpt``
  reading with the webui's key normalisation, tensor by tensor or whole.
* :func:`inspect_checkpoint` / :func:`describe_checkpoint` -- SD1/SD2/SDXL, inpainting/pix2pix,
  epsilon/v prediction, from names and shapes only.

The key maps are tables (``unet.py``, ``vae.py``, ``text.py``) run by one engine (``tables.py``);
each rule is written once and serves both directions. Importing this package imports neither
torch nor safetensors; the functions that need them import them when called.
"""

from lib_dbchar.checkpoint.convert import (
    DiffusersComponents,
    diffusers_to_ldm,
    ldm_to_diffusers,
    unconverted_keys,
)
from lib_dbchar.checkpoint.detect import ModelInfo, describe_checkpoint, inspect_checkpoint
from lib_dbchar.checkpoint.errors import CheckpointError, MissingKeyError, UnsupportedCheckpoint
from lib_dbchar.checkpoint.io import load_single_file, read_metadata, save_single_file, unwrap_state_dict
from lib_dbchar.checkpoint.kinds import KINDS, detect_kind
from lib_dbchar.checkpoint.reader import CheckpointReader, load_checkpoint, open_checkpoint
from lib_dbchar.checkpoint.text import match_text_encoder_keys

__all__ = [
    "KINDS",
    "CheckpointError",
    "CheckpointReader",
    "DiffusersComponents",
    "MissingKeyError",
    "ModelInfo",
    "UnsupportedCheckpoint",
    "describe_checkpoint",
    "detect_kind",
    "diffusers_to_ldm",
    "inspect_checkpoint",
    "ldm_to_diffusers",
    "load_checkpoint",
    "load_single_file",
    "match_text_encoder_keys",
    "open_checkpoint",
    "read_metadata",
    "save_single_file",
    "unconverted_keys",
    "unwrap_state_dict",
]
