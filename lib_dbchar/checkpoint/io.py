"""Reading and writing single-file checkpoints (``.safetensors`` only).

Writes are atomic: the file is written beside its target under a temporary name and moved into
place with one ``os.replace``, so a crash or a full disk never leaves a truncated checkpoint
where the webui would list it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.errors import CheckpointError, UnsupportedCheckpoint
from lib_dbchar.errors import TargetExists

SAFETENSORS_SUFFIX = ".safetensors"


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Return the flat state dict inside a training checkpoint's ``{"state_dict": {...}}`` wrapper.

    Lightning-era ``.ckpt`` files keep the weights under ``"state_dict"`` beside ``epoch`` and
    ``global_step``; reading the outer dict as weights would give a model with no tensors at all.

    Args:
        obj: a state dict, possibly wrapped (several levels are unwrapped).

    Returns:
        A new flat dict (the tensors are not copied).
    """
    while isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    return dict(obj)


def load_single_file(path: Path | str, *, device: str = "cpu") -> dict[str, Any]:
    """Read every tensor of a ``.safetensors`` checkpoint.

    Args:
        path: the file.
        device: where to put the tensors.

    Returns:
        Key -> tensor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsupportedCheckpoint: not a ``.safetensors`` file (pickled ``.ckpt`` files can run code
            when loaded and are not read).
        CheckpointError: the file is damaged or not safetensors.
    """
    path = _existing_safetensors(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return unwrap_state_dict(load_file(str(path), device=device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); re-download or re-save it."
        ) from exc


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``__metadata__`` strings of a ``.safetensors`` file, without reading its tensors.

    Raises:
        FileNotFoundError, UnsupportedCheckpoint, CheckpointError: as :func:`load_single_file`.
    """
    path = _existing_safetensors(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); re-download or re-save it."
        ) from exc


def _existing_safetensors(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist.")
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise UnsupportedCheckpoint(
            f"{path}: only {SAFETENSORS_SUFFIX} checkpoints are read; convert it to safetensors first."
        )
    return path


def check_output_path(path: Path | str, *, overwrite: bool = False) -> Path:
    """The checks every checkpoint writer makes before writing ``path``.

    Raises:
        ValueError: ``path`` does not end in ``.safetensors``.
        TargetExists: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{path}: checkpoints are written as {SAFETENSORS_SUFFIX}; change the file name.")
    if path.exists() and not overwrite:
        raise TargetExists(f"{path} already exists; choose another name or allow overwriting.")
    return path


def save_single_file(
    state_dict: Mapping[str, Any],
    path: Path | str,
    metadata: Mapping[str, Any] | None = None,
    fp16: bool = False,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a state dict as a ``.safetensors`` checkpoint, atomically.

    Args:
        state_dict: key -> tensor (e.g. from :func:`~lib_dbchar.checkpoint.convert.diffusers_to_ldm`).
        path: the target; must end in ``.safetensors``. Its folder is created.
        metadata: stored in the header; non-string values are written as JSON (the webui
            decodes JSON-looking values). ``format`` defaults to ``"pt"``.
        fp16: store floating-point tensors as float16 (integer buffers keep their dtype).
        overwrite: replace an existing file (atomically); otherwise refuse.

    Returns:
        ``path``.

    Raises:
        TypeError: a value is not a tensor.
        ValueError: ``path`` has another suffix.
        TargetExists: ``path`` exists and ``overwrite`` is False.
    """
    path = check_output_path(path, overwrite=overwrite)
    tensors = _prepare_tensors(state_dict, fp16=fp16)
    header = {"format": "pt"}
    header.update({str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(tensors, header, path)
    return path


def _prepare_tensors(state_dict: Mapping[str, Any], *, fp16: bool) -> dict[str, Any]:
    """Contiguous tensors that share no memory (safetensors refuses shared or strided tensors)."""
    import torch

    seen: set[int] = set()
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; it cannot be saved."
            )
        tensor = value.to(torch.float16) if fp16 and value.is_floating_point() else value
        tensor = tensor.contiguous()
        # Views into a larger or an already used storage (tied weights, slices of a fused
        # tensor) get their own copy; everything else is written without copying.
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _atomic_save(tensors: Mapping[str, Any], metadata: dict[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        save_file(dict(tensors), str(tmp), metadata=metadata)
        with open(tmp, "r+b") as handle:  # noqa: PTH123 - need the raw handle for fsync
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
