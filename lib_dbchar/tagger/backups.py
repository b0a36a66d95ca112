"""Caption backups: every bulk write keeps the captions it replaces, and the last one can be undone.

A :class:`CaptionJournal` wraps the writes of one bulk operation (a tagging run that overwrites or
extends captions, a bulk edit). Before it first touches a caption it copies the current file into
``<root>/.dbchar/caption-backups/<stamp>/`` (same relative path); when it closes it writes
``manifest.json`` there: which captions existed, and the SHA-256 of what was written.
:func:`undo_last` restores the newest not-yet-undone backup, but only files still holding what the
operation wrote: a caption edited since is reported as a conflict and left as it is, so an undo
never destroys later work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write
from lib_dbchar.tagger.captions import join_caption

BACKUP_DIR = Path(".dbchar") / "caption-backups"
MANIFEST = "manifest.json"
# Write the manifest every so many files as well as at the end, so a crash loses little undo data.
_MANIFEST_EVERY = 50


def backup_root(root: Path) -> Path:
    """Where the backups of captions under ``root`` live."""
    return Path(root) / BACKUP_DIR


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _relative(root: Path, path: Path) -> str:
    rel = os.path.relpath(Path(path).resolve(), Path(root).resolve())
    if rel.startswith(".."):
        raise ValueError(f"{path} is outside {root}; captions are backed up relative to that folder")
    return Path(rel).as_posix()


@dataclass
class JournalEntry:
    """One caption a bulk operation wrote.

    Attributes:
        caption: path relative to the root, ``/``-separated.
        existed: whether a caption was there before (its copy is in the backup folder).
        written: SHA-256 of the bytes the operation wrote.
    """

    caption: str
    existed: bool
    written: str = ""


@dataclass
class CaptionJournal:
    """Backs up, writes and records the captions of one bulk operation (use as a context manager).

    Attributes:
        root: the dataset folder (captions must be inside it).
        label: what the operation was, shown by undo ("tagging (overwrite)", "remove: red hair").
        folder: the backup folder, created on the first write.
    """

    root: Path
    label: str
    folder: Path | None = None
    entries: dict[str, JournalEntry] = field(default_factory=dict)
    created: str = ""

    def _open(self) -> Path:
        if self.folder is None:
            base = backup_root(self.root)
            base.mkdir(parents=True, exist_ok=True)
            self.created = time.strftime("%Y-%m-%dT%H:%M:%S")
            stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}"
            folder = base / stamp
            folder.mkdir()  # a name clash raises instead of mixing two backups
            self.folder = folder
        return self.folder

    def write(self, path: Path, tags: Sequence[str]) -> Path:
        """Write ``tags`` as the caption ``path``, backing up its current content first."""
        return self.write_text(path, join_caption(tags))

    def write_text(self, path: Path, text: str) -> Path:
        """Write ``text`` to the caption ``path`` atomically, backing up its current content first."""
        path = Path(path)
        rel = _relative(self.root, path)
        folder = self._open()
        if rel not in self.entries:
            existed = path.is_file()
            if existed:
                target = folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
            self.entries[rel] = JournalEntry(rel, existed)
        data = text.encode("utf-8")
        atomic_write(path, data)
        self.entries[rel].written = _sha256(data)
        if len(self.entries) % _MANIFEST_EVERY == 0:
            self._save()
        return path

    def _save(self, undone: bool = False) -> None:
        if self.folder is None:
            return
        doc = {
            "label": self.label,
            "created": self.created,
            "root": str(Path(self.root).resolve()),
            "undone": undone,
            "files": [asdict(e) for e in self.entries.values()],
        }
        atomic_write(self.folder / MANIFEST, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")

    def close(self) -> Path | None:
        """Record the manifest; returns the backup folder (``None`` when nothing was written)."""
        self._save()
        return self.folder

    def __enter__(self) -> CaptionJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class UndoResult:
    """What :func:`undo_last` did.

    Attributes:
        label: the operation undone.
        backup: its backup folder.
        restored: captions put back (relative paths).
        removed: captions the operation had created, removed again.
        conflicts: captions changed since the operation, left untouched (relative paths).
    """

    label: str
    backup: str
    restored: list[str]
    removed: list[str]
    conflicts: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def _pending_backups(root: Path) -> list[Path]:
    base = backup_root(root)
    if not base.is_dir():
        return []
    found = []
    for folder in sorted(base.iterdir(), reverse=True):
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                doc = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a damaged manifest cannot be undone safely; older ones still can
            if not doc.get("undone"):
                found.append(folder)
    return found


def last_backup_label(root: Path) -> str | None:
    """The label of the operation :func:`undo_last` would undo, or ``None``."""
    pending = _pending_backups(root)
    if not pending:
        return None
    return json.loads((pending[0] / MANIFEST).read_text(encoding="utf-8")).get("label", "")


def undo_last(root: Path) -> UndoResult:
    """Undo the newest bulk write under ``root`` that is not undone yet.

    Raises:
        DbcharError: there is nothing to undo.
    """
    root = Path(root)
    pending = _pending_backups(root)
    if not pending:
        raise DbcharError(f"nothing to undo: no caption backup under {backup_root(root)}")
    folder = pending[0]
    doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    restored, removed, conflicts = [], [], []
    for item in doc.get("files", []):
        entry = JournalEntry(**item)
        path = root / entry.caption
        current = path.read_bytes() if path.is_file() else None
        if current is None or _sha256(current) != entry.written:
            conflicts.append(entry.caption)
            continue
        if entry.existed:
            atomic_write(path, (folder / entry.caption).read_bytes())
            restored.append(entry.caption)
        else:
            path.unlink()  # the operation created this caption; nobody changed it since
            removed.append(entry.caption)
    doc["undone"] = True
    atomic_write(folder / MANIFEST, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return UndoResult(doc.get("label", ""), str(folder), restored, removed, conflicts)
