"""What prep remembers per dataset picture: the crop box you set, the one it used, and more.

One JSON file beside the pictures, ``<dataset>/crops.json``::

    {"version": 1,
     "images": {"hero_01.png": {"source": "hero_01.jpg", "source_size": [3024, 4032],
                                "user_box": [0, 400, 3024, 3424],   # set in the crop nudge; wins
                                "box": [0, 400, 3024, 3424], "method": "your box",
                                "upscale": null, "phash": "c3a1...", "flip": null, "excluded": false}}}

Keys are output file names (unique in the dataset). A box you set is re-applied on every run as long
as the source keeps its size; ``excluded`` pictures (a near-duplicate you dropped) are not re-made.
The file is rewritten atomically, so a crash never leaves half of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lib_dbchar.dataset.crop import Box, validate_box
from lib_dbchar.errors import DbcharError
from lib_dbchar.paths import atomic_write

STORE_FILE = "crops.json"
STORE_VERSION = 1


@dataclass(frozen=True)
class CropEntry:
    """What is known about one dataset picture.

    Attributes:
        source: file name of the original it was made from.
        source_size: the original's upright ``(width, height)``.
        user_box: the square you set (original pixels), re-applied on every run; ``None`` if unset.
        box: the square the last run used.
        method: how that square was chosen: "your box", "face", "saliency" or "center".
        upscale: the enlargement factor when the crop was smaller than the resolution, else ``None``.
        phash: 64-bit perceptual hash of the original, 16 hex digits (finds near-duplicates).
        flip: file name of the mirrored copy, if one was made.
        excluded: you dropped it (e.g. as a duplicate); prep does not make it again.
    """

    source: str
    source_size: tuple[int, int] | None = None
    user_box: Box | None = None
    box: Box | None = None
    method: str | None = None
    upscale: float | None = None
    phash: str | None = None
    flip: str | None = None
    excluded: bool = False

    def to_json(self) -> dict[str, Any]:
        """The entry as JSON values (tuples become lists)."""
        data = asdict(self)
        for key in ("source_size", "user_box", "box"):
            data[key] = list(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CropEntry:
        """Read an entry back; raises KeyError/TypeError/ValueError on malformed data."""

        def pair(v: Any) -> tuple[int, int] | None:
            return (int(v[0]), int(v[1])) if v is not None else None

        def quad(v: Any) -> Box | None:
            return tuple(int(x) for x in v) if v is not None else None  # type: ignore[return-value]

        return cls(
            source=str(data["source"]),
            source_size=pair(data.get("source_size")),
            user_box=quad(data.get("user_box")),
            box=quad(data.get("box")),
            method=data.get("method"),
            upscale=float(data["upscale"]) if data.get("upscale") is not None else None,
            phash=data.get("phash"),
            flip=data.get("flip"),
            excluded=bool(data.get("excluded", False)),
        )


def _parse_store(doc: Any) -> dict[str, CropEntry]:
    """The entries of a parsed ``crops.json``; raises ValueError/TypeError/KeyError when malformed."""
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), dict):
        raise TypeError(f"no 'images' object in {type(doc).__name__}")
    if doc.get("version", STORE_VERSION) > STORE_VERSION:
        raise ValueError(f"version {doc['version']} is newer than this dbchar understands")
    return {str(name): CropEntry.from_json(item) for name, item in doc["images"].items()}


@dataclass
class CropStore:
    """The ``crops.json`` of one dataset folder, in memory. Call :meth:`save` to write it."""

    path: Path
    entries: dict[str, CropEntry] = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, dataset_dir: Path) -> CropStore:
        """Load ``<dataset_dir>/crops.json`` (empty when it does not exist yet)."""
        return cls.load(Path(dataset_dir) / STORE_FILE)

    @classmethod
    def load(cls, path: Path) -> CropStore:
        """Read a store file; a missing file is an empty store.

        Raises:
            DbcharError: the file is not a crops store this version understands; the message names
                it and says how to recover (nothing is changed).
        """
        path = Path(path)
        if not path.exists():
            return cls(path)
        try:
            entries = _parse_store(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise DbcharError(
                f"{path} is not a readable crops file ({exc}). Fix it, or move it away to start over "
                "(the crop boxes you set are in it)."
            ) from None
        return cls(path, entries)

    def save(self) -> Path:
        """Write the store atomically (sorted by name, so diffs stay small)."""
        doc = {
            "version": STORE_VERSION,
            "about": "dbchar dataset prep: crop boxes (left, top, right, bottom in original pixels)",
            "images": {name: self.entries[name].to_json() for name in sorted(self.entries)},
        }
        return atomic_write(self.path, json.dumps(doc, indent=1) + "\n")

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.entries))

    def get(self, name: str) -> CropEntry | None:
        """The entry of a dataset picture, or ``None`` when prep never made it."""
        return self.entries.get(name)

    def put(self, name: str, entry: CropEntry) -> None:
        """Set (or replace) the entry of a dataset picture; :meth:`save` writes it."""
        self.entries[name] = entry

    def _require(self, name: str) -> CropEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise DbcharError(f"{name} is not a prepared picture of {self.path.parent}; run prep first")
        return entry

    def set_user_box(self, name: str, box: Box, source_size: tuple[int, int] | None = None) -> Box:
        """Remember the square you chose for a picture; the next run applies it.

        Args:
            name: the dataset picture's file name ("hero_01.png").
            box: ``(left, top, right, bottom)`` in the original's upright pixels; must be a square
                inside it.
            source_size: the original's size, when the store does not know it yet.

        Returns:
            The validated box.

        Raises:
            DbcharError: unknown picture or unknown size.
            ValueError: the box is not a square inside the picture (the message says how).
        """
        entry = self._require(name)
        size = source_size or entry.source_size
        if size is None:
            raise DbcharError(f"the size of {entry.source} is not known; run prep on it first")
        checked = validate_box(box, *size)
        self.entries[name] = replace(entry, user_box=checked, source_size=tuple(size))
        return checked

    def clear_user_box(self, name: str) -> None:
        """Forget the box you set; the next run chooses one again."""
        self.entries[name] = replace(self._require(name), user_box=None)

    def set_excluded(self, name: str, excluded: bool = True) -> None:
        """Mark a picture as dropped from (or back in) the dataset."""
        self.entries[name] = replace(self._require(name), excluded=excluded)

    def user_boxes(self) -> dict[str, Box]:
        """Every box you set, by picture name."""
        return {n: e.user_box for n, e in sorted(self.entries.items()) if e.user_box is not None}
