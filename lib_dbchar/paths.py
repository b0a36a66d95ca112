"""File names from user input, and writes that cannot leave a half-written file behind.

Names a user types (project, run, output model) become file names only through
:func:`safe_name`; new files that must not replace existing ones go through :func:`new_path`;
files that matter (captions, checkpoints, presets, concepts) are written with :func:`atomic_write`.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from lib_dbchar.errors import NameRejected, TargetExists

# Windows refuses these as file names whatever the extension; users share folders across systems.
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
# Anything that is a separator, a wildcard or a control character on some system becomes "_".
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
MAX_NAME_LENGTH = 100


def safe_name(name: str, *, what: str = "name") -> str:
    """Turn a name the user typed into one safe as a single path component.

    Separators, wildcards and control characters become ``_``; surrounding spaces and dots go
    (a leading dot hides a file, a trailing one vanishes on Windows); ``..`` never survives.

    Args:
        name: what the user typed, e.g. ``"Star Guardian/Neeko"``.
        what: how to call the name in error messages ("project name", "run name", ...).

    Returns:
        The sanitised name, e.g. ``"Star Guardian_Neeko"``.

    Raises:
        NameRejected: when nothing usable is left, or the name is reserved on Windows.
    """
    cleaned = unicodedata.normalize("NFC", str(name))
    cleaned = _UNSAFE.sub("_", cleaned).strip().strip(".").strip()
    cleaned = re.sub(r"\.{2,}", ".", cleaned)
    cleaned = cleaned[:MAX_NAME_LENGTH].rstrip(". ")
    if not cleaned or set(cleaned) <= {"_", " ", "."}:
        raise NameRejected(f"The {what} {name!r} has no usable characters; type letters or digits.")
    if cleaned.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise NameRejected(f"The {what} {name!r} is reserved on Windows; choose another.")
    return cleaned


def child_path(parent: Path, name: str, *, suffix: str = "", what: str = "name") -> Path:
    """``parent / (safe_name(name) + suffix)``, checked to stay inside ``parent``."""
    parent = Path(parent)
    candidate = parent / (safe_name(name, what=what) + suffix)
    if candidate.resolve().parent != parent.resolve():
        raise NameRejected(f"The {what} {name!r} would leave {parent}; choose a plain name.")
    return candidate


def new_path(
    parent: Path, name: str, *, suffix: str = "", what: str = "name", overwrite: bool = False
) -> Path:
    """A path for a new file or folder that must not silently replace an existing one.

    Raises:
        TargetExists: when the path exists and ``overwrite`` is False; the message names it.
    """
    path = child_path(parent, name, suffix=suffix, what=what)
    if path.exists() and not overwrite:
        raise TargetExists(f"{path} already exists; choose another {what} or allow overwriting.")
    return path


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` keeps its old content: a crash or a
    full disk never leaves a truncated caption or checkpoint where a good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # Keep the permissions of the file we replace (umask-default for new files).
        if path.exists():
            Path(tmp).chmod(path.stat().st_mode & 0o777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            Path(tmp).chmod(0o666 & ~umask)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise


def atomic_write(path: Path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + rename)."""
    if isinstance(data, str):
        with atomic_writer(path, "w", encoding=encoding) as handle:
            handle.write(data)
    else:
        with atomic_writer(path, "wb") as handle:
            handle.write(data)
    return Path(path)
