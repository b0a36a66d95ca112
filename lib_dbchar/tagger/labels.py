"""``selected_tags.csv``: the names and categories of a WD14 model's outputs, in output order.

Each row is ``tag_id,name,category,count``. Category 9 is a rating, 0 a general tag, 4 a character;
other categories (none in SmilingWolf's files today) are read but never selected. Some exports write
categories as ``9.0``, so they are parsed numerically.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib_dbchar.tagger.errors import TaggerModelError

RATING, GENERAL, CHARACTER = 9, 0, 4

# Tags whose underscores are part of the face, not word separators (the model author's list).
KAOMOJI: frozenset[str] = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
        "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)  # fmt: skip

_REQUIRED_COLUMNS = ("name", "category")


def display_name(raw: str) -> str:
    """The caption form of a tag: ``long_hair`` -> ``long hair``; kaomoji such as ``^_^`` stay as they are."""
    return raw if raw in KAOMOJI else raw.replace("_", " ")


@dataclass(frozen=True, eq=False)
class TagTable:
    """The model's output rows.

    Attributes:
        names: raw CSV names (``long_hair``), one per model output, in output order.
        categories: int64 ``[T]`` category of each row.
        display: caption forms of ``names`` (see :func:`display_name`).
        rating / general / character: int64 index arrays into the outputs, ascending.
    """

    names: tuple[str, ...]
    categories: np.ndarray
    display: tuple[str, ...] = field(init=False)
    rating: np.ndarray = field(init=False)
    general: np.ndarray = field(init=False)
    character: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        cats = np.asarray(self.categories, dtype=np.int64)
        if cats.shape != (len(self.names),):
            raise ValueError(f"{len(self.names)} names but categories of shape {cats.shape}")
        # Frozen: the derived fields are set once here and never change.
        object.__setattr__(self, "categories", cats)
        object.__setattr__(self, "display", tuple(display_name(n) for n in self.names))
        for attr, category in (("rating", RATING), ("general", GENERAL), ("character", CHARACTER)):
            object.__setattr__(self, attr, np.flatnonzero(cats == category))

    def __len__(self) -> int:
        return len(self.names)


def _category(value: str, path: Path, line: int) -> int:
    try:
        number = float(value)
    except ValueError:
        raise TaggerModelError(
            f"{path}, line {line}: category {value!r} is not a number; the file is damaged, "
            "download selected_tags.csv again"
        ) from None
    if not number.is_integer():
        raise TaggerModelError(f"{path}, line {line}: category {value!r} is not a whole number")
    return int(number)


def read_tag_table(path: Path) -> TagTable:
    """Read a ``selected_tags.csv``.

    Args:
        path: the CSV file (UTF-8, with a header row naming at least ``name`` and ``category``).

    Returns:
        The :class:`TagTable`, rows in file order (= model output order).

    Raises:
        TaggerModelError: the file is missing, unreadable, lacks a column, has a non-numeric
            category or holds no rows; the message names the file and line.
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise TaggerModelError(
                    f"{path} has no {', '.join(missing)} column (header: {reader.fieldnames}); "
                    "it is not a WD14 selected_tags.csv"
                )
            names, categories = [], []
            for line, row in enumerate(reader, start=2):
                name = (row.get("name") or "").strip()
                if not name:
                    raise TaggerModelError(f"{path}, line {line}: empty tag name; the file is damaged")
                names.append(name)
                categories.append(_category((row.get("category") or "").strip(), path, line))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaggerModelError(f"cannot read {path}: {exc}") from exc
    if not names:
        raise TaggerModelError(f"{path} lists no tags; download selected_tags.csv again")
    return TagTable(tuple(names), np.array(categories, dtype=np.int64))
