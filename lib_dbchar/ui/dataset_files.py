"""The files behind the Dataset tab: where each picture's original is, uploads, the last report.

Prep's ``crops.json`` knows each dataset picture's source by file name only; to show the original
again in the crop nudge and to re-make one picture, the tab also needs its folder. So the tab keeps
``<dataset>/sources.json``::

    {"version": 1, "sources": {"hero_01.png": "/home/me/pictures/hero_01.jpg", ...}}

Uploaded pictures are copied once into ``<project>/originals/`` (the browser's upload folder is
temporary) and prepared from there; a folder the user names is only read, never copied or changed.
Nothing here imports gradio: the tab's handlers call these plain functions, and so do the tests.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.dataset.prep import REPORT_FILE, PrepResult
from lib_dbchar.dataset.report import to_jsonable
from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write

SOURCES_FILE = "sources.json"
SOURCES_VERSION = 1
ORIGINALS_DIR = "originals"
CAPTION_SUFFIX = ".txt"


@dataclass
class SourceRecord:
    """``<dataset>/sources.json`` in memory: dataset picture name -> the original's path.

    Attributes:
        path: the record file.
        sources: picture name ("hero_01.png") -> absolute path of its original, as a string.
    """

    path: Path
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, dataset_dir: Path) -> SourceRecord:
        """Load the record of a dataset folder (empty when there is none yet).

        Raises:
            DbcharError: the file is not a record this version can read; the message names it.
        """
        path = Path(dataset_dir) / SOURCES_FILE
        if not path.exists():
            return cls(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            sources = {str(k): str(v) for k, v in doc["sources"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            msg = (
                f"{path} is not a readable list of originals ({exc}). Move it away; preparing the "
                "pictures again from their folder writes a new one."
            )
            raise DbcharError(msg) from None
        return cls(path, sources)

    def remember(self, found: Mapping[str, Path]) -> None:
        """Record where the originals of some pictures are (absolute paths)."""
        self.sources.update({name: str(Path(p).resolve()) for name, p in found.items()})

    def original(self, name: str) -> Path | None:
        """The recorded original of a dataset picture, or ``None`` when none is recorded."""
        value = self.sources.get(name)
        return Path(value) if value else None

    def save(self) -> Path:
        """Write the record atomically, sorted by picture name."""
        doc = {"version": SOURCES_VERSION, "sources": dict(sorted(self.sources.items()))}
        return atomic_write(self.path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def sources_of(result: PrepResult, src: Path | Sequence[Path]) -> dict[str, Path]:
    """Where the original of each picture a run prepared is.

    Args:
        result: the run's result (``PreparedImage.source`` is the original's file name).
        src: what the run was given: a folder, or a list of files with distinct names.

    Returns:
        Picture name -> original path, for every prepared picture whose original is known.
    """
    if isinstance(src, str | os.PathLike):
        return {p.name: Path(src) / p.source for p in result.prepared}
    by_name = {Path(f).name: Path(f) for f in src}
    return {p.name: by_name[p.source] for p in result.prepared if p.source in by_name}


# --------------------------------------------------------------------------------------------------
# Uploads


def upload_paths(files: Any) -> list[Path]:
    """The local paths of what a ``gr.File(file_count="multiple")`` delivered.

    Gradio hands over plain paths, temporary-file objects (``.name`` is the path) or dicts with a
    ``path``/``name`` key depending on its version and settings; all become paths here.

    Args:
        files: ``None``, one such value, or a list of them.

    Returns:
        The paths, in the order given.
    """
    if files is None:
        return []
    items = files if isinstance(files, list | tuple) else [files]
    paths = []
    for item in items:
        if isinstance(item, dict):
            value = item.get("path") or item.get("name")
        else:
            value = item if isinstance(item, str | os.PathLike) else getattr(item, "name", None)
        if value:
            paths.append(Path(value))
    return paths


def _same_file(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def _free_stem(stem: str, group: Sequence[Path], folder: Path, taken: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ...: the first under which no file of ``group`` clashes.

    A clash is a stem another group of this upload took, or a different file of the same name
    already in ``folder``; the very same file (an upload repeated) is no clash, so uploading a
    picture twice keeps one copy.
    """
    candidate, n = stem, 1
    while candidate in taken or any(
        (folder / f"{candidate}{f.suffix}").exists() and not _same_file(f, folder / f"{candidate}{f.suffix}")
        for f in group
    ):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def _upload_groups(files: Sequence[Path]) -> list[tuple[str, list[Path]]]:
    """Group uploads into pictures with their captions: ``[(stem, files)]``.

    Browsers upload every file into its own temporary folder, so a caption is matched to its
    picture by stem alone. Two pictures of one stem (``a.png`` from two folders) are two groups:
    the n-th file of each suffix goes to the n-th group of that stem.
    """
    groups: dict[tuple[str, int], list[Path]] = {}
    seen: dict[tuple[str, str], int] = {}
    for f in files:
        key = (f.stem, f.suffix.lower())
        index = seen.get(key, 0)
        seen[key] = index + 1
        groups.setdefault((f.stem, index), []).append(f)
    return [(stem, group) for (stem, _), group in groups.items()]


def import_uploads(files: Iterable[Path], originals_dir: Path) -> list[Path]:
    """Copy uploaded files into the project's ``originals/`` folder, where prep reads them from.

    A picture and its caption (same stem) stay together: when a different file of that name is
    already there (or another upload of this batch has that name), both are copied under
    ``<stem>-2`` (``-3``, ...). Nothing there is replaced.

    Args:
        files: the uploaded files (pictures and ``.txt`` captions).
        originals_dir: ``<project>/originals``; created when needed.

    Returns:
        The copies' paths, in the order of ``files`` (a repeated upload appears once).

    Raises:
        DbcharError: an uploaded file has gone (the browser upload expired); upload it again.
    """
    files = list(dict.fromkeys(Path(f) for f in files))
    gone = [f.name for f in files if not f.is_file()]
    if gone:
        raise DbcharError(f"The uploaded file(s) {', '.join(gone)} are gone; upload them again.")
    originals_dir = Path(originals_dir)
    originals_dir.mkdir(parents=True, exist_ok=True)
    copies: dict[Path, Path] = {}
    taken: set[str] = set()
    for stem, group in _upload_groups(files):
        free = _free_stem(stem, group, originals_dir, taken)
        taken.add(free)
        for f in group:
            target = originals_dir / f"{free}{f.suffix}"
            if not target.exists():
                shutil.copyfile(f, target)
            copies[f] = target
    return list(dict.fromkeys(copies[f] for f in files))


# --------------------------------------------------------------------------------------------------
# What the dataset holds


@dataclass(frozen=True)
class DatasetPicture:
    """One picture of the dataset as the tab lists it.

    Attributes:
        name: its file name in the dataset folder.
        path: the file.
        method: how its square was chosen ("your box", "face", "saliency", "center").
        upscale: the enlargement factor when it was smaller than the resolution, else ``None``.
        flip: the mirrored copy's file name, if any.
    """

    name: str
    path: Path
    method: str | None = None
    upscale: float | None = None
    flip: str | None = None


def dataset_pictures(dataset_dir: Path) -> list[DatasetPicture]:
    """The pictures prep made that are in the dataset now (not excluded, on disk), by name."""
    dataset_dir = Path(dataset_dir)
    store = CropStore.for_dataset(dataset_dir)
    pictures = []
    for name in store:
        entry = store.get(name)
        path = dataset_dir / name
        if not entry.excluded and path.is_file():
            pictures.append(DatasetPicture(name, path, entry.method, entry.upscale, entry.flip))
    return pictures


def excluded_pictures(dataset_dir: Path) -> list[str]:
    """Names of the pictures taken out of the dataset (near-duplicates you dropped), by name."""
    store = CropStore.for_dataset(Path(dataset_dir))
    return [name for name in store if store.get(name).excluded]


# --------------------------------------------------------------------------------------------------
# The last report


def read_report(dataset_dir: Path) -> dict[str, Any] | None:
    """The last ``prep-report.json`` of a dataset as JSON values, or ``None`` when absent/unreadable.

    An unreadable report only means the tab shows no earlier results: the pictures, ``crops.json``
    and the health report (recomputed from them) are what counts.
    """
    path = Path(dataset_dir) / REPORT_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def merge_report(previous: Mapping[str, Any] | None, result: PrepResult) -> dict[str, Any]:
    """The dataset's report after re-making some pictures: the earlier run's, updated by ``result``.

    Re-making one picture (after moving its crop) must not wipe the earlier run's list of skipped
    files: those entries stay, the re-made pictures replace their earlier entries, and the health
    and duplicates come from ``result`` (they describe the whole dataset as it is now).

    Args:
        previous: the report before the re-run (JSON values), or ``None``.
        result: the re-run's result.

    Returns:
        The merged report as JSON values.
    """
    fresh = result.to_dict()
    if not previous:
        return fresh
    remade = {p["name"] for p in fresh["prepared"]}
    sources = {p["source"] for p in fresh["prepared"]} | {s["file"] for s in fresh["skipped"]}
    merged = dict(previous)
    merged["prepared"] = sorted(
        [p for p in previous.get("prepared", []) if p.get("name") not in remade] + fresh["prepared"],
        key=lambda p: p["name"],
    )
    merged["skipped"] = sorted(
        [s for s in previous.get("skipped", []) if s.get("file") not in sources] + fresh["skipped"],
        key=lambda s: s["file"],
    )
    for key in ("health", "duplicates", "dataset_dir"):
        merged[key] = fresh[key]
    # "stopped" stays the earlier run's: an import stopped half-way is still unfinished.
    merged["stopped"] = bool(previous.get("stopped"))
    return merged


def write_report(dataset_dir: Path, report: Mapping[str, Any]) -> Path:
    """Write a report (JSON values) as the dataset's ``prep-report.json``, atomically."""
    text = json.dumps(to_jsonable(dict(report)), indent=1, ensure_ascii=False) + "\n"
    return atomic_write(Path(dataset_dir) / REPORT_FILE, text)
