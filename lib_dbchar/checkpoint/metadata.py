"""Checkpoint identity (the webui's hashes) and the metadata a merged checkpoint carries.

The webui names a checkpoint by two hashes: the full-file SHA-256 (its ``[shorthash]`` is the first
10 hex digits) and the legacy "model hash" (SHA-256 of the 64 KiB at offset 1 MiB, 8 hex digits).
Its merger writes ``sd_merge_recipe`` (how the file was made) and ``sd_merge_models`` (every
ancestor by SHA-256, carried over from merged inputs) into the safetensors metadata; the webui's
metadata viewer and model sites read them. :func:`webui_merge_fields` builds both the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.jobs import JobContext

_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000
_CHUNK = 1 << 22
# The webui keeps a checkpoint's preview image out of the metadata it copies into merges.
_NOT_COPIED = frozenset({"modelspec.thumbnail"})
MERGE_RECIPE = "sd_merge_recipe"
MERGE_MODELS = "sd_merge_models"


def legacy_hash(path: Path | str) -> str:
    """The webui's old 8-hex-digit "model hash" (only 64 KiB at offset 1 MiB are hashed)."""
    with open(path, "rb") as handle:  # noqa: PTH123 - raw handle for seek/read
        handle.seek(_LEGACY_OFFSET)
        return hashlib.sha256(handle.read(_LEGACY_LENGTH)).hexdigest()[:8]


def file_sha256(path: Path | str, ctx: JobContext | None = None) -> str:
    """SHA-256 of the whole file, as the webui shows it (hex).

    Args:
        path: the file.
        ctx: progress per 4 MiB chunk (in bytes) and stop checks between chunks.

    Raises:
        JobStopped: the user asked to stop.
    """
    ctx = ctx or JobContext()
    path = Path(path)
    total = path.stat().st_size
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb", buffering=0) as handle:  # noqa: PTH123
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while count := handle.readinto(buffer):
            digest.update(view[:count])
            done += count
            ctx.report(done, total, f"Hashing {path.name}")
            ctx.check_stop("hashing")
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """One input of a merge as the webui identifies it.

    Attributes:
        path: the file.
        name: its name as the webui lists it (the file name, folders relative to the models dir).
        sha256: full-file SHA-256 (hex), or None when not computed.
        legacy_hash: the old 8-digit model hash.
        metadata: the file's metadata strings.
    """

    path: str
    name: str
    sha256: str | None
    legacy_hash: str
    metadata: dict[str, str] = field(default_factory=dict)


def identify(
    path: Path | str,
    metadata: Mapping[str, str],
    *,
    sha256: str | None = None,
    compute_sha256: bool = True,
    name: str | None = None,
    ctx: JobContext | None = None,
) -> ModelIdentity:
    """Collect a merge input's identity.

    Args:
        path: the checkpoint.
        metadata: its metadata strings.
        sha256: a hash the host already knows (the webui caches them); skips hashing.
        compute_sha256: hash the file when ``sha256`` is not given (seconds per GB).
        name: the webui-style name; default the file name.
        ctx: progress while hashing.
    """
    path = Path(path)
    if sha256 is None and compute_sha256:
        sha256 = file_sha256(path, ctx)
    return ModelIdentity(str(path), name or path.name, sha256, legacy_hash(path), dict(metadata))


def copied_metadata(inputs: Sequence[ModelIdentity]) -> dict[str, str]:
    """The inputs' metadata merged in order (A, B, C; later values win), as the webui copies it."""
    out: dict[str, str] = {}
    for model in inputs:
        out.update({k: v for k, v in model.metadata.items() if k not in _NOT_COPIED})
    return out


def webui_merge_fields(recipe: Mapping[str, Any], inputs: Sequence[ModelIdentity]) -> dict[str, str]:
    """``sd_merge_recipe`` and ``sd_merge_models`` as the webui's merger writes them.

    Args:
        recipe: the webui-style recipe (``interp_method``, ``multiplier``, ... see
            :func:`lib_dbchar.merge.run.webui_recipe`).
        inputs: A, B (and C) in that order.

    Returns:
        The two metadata strings (JSON). Each input is keyed by its SHA-256 (``"None"`` if it
        was not computed) with its name, legacy hash and own recipe; ancestors listed in an
        input's ``sd_merge_models`` are carried over.
    """
    models: dict[str, Any] = {}
    for model in inputs:
        own_recipe = _json_or_none(model.metadata.get(MERGE_RECIPE))
        models[str(model.sha256)] = {
            "name": model.name,
            "legacy_hash": model.legacy_hash,
            MERGE_RECIPE: own_recipe,
        }
        ancestors = _json_or_none(model.metadata.get(MERGE_MODELS))
        if isinstance(ancestors, dict):
            models.update(ancestors)
    return {MERGE_RECIPE: json.dumps(dict(recipe)), MERGE_MODELS: json.dumps(models)}


def _json_or_none(value: str | None) -> Any:
    if not value:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return None
