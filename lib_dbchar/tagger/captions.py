"""Caption text: from selected tags to the ``", "``-joined line beside each picture, and back.

Captions feed training (``[filewords]``), so by default they are written **unescaped**: ``ganyu
(genshin impact)``. The prompt form escapes ``\\``, ``(`` and ``)`` with a backslash, the way the
webui's interrogators do, so the text can be pasted into a prompt without becoming attention syntax.

Tags are compared through :func:`tag_key` (unescaped, case-folded, underscores as spaces except in
kaomoji), so ``Long_Hair``, ``long hair`` and ``long\\ hair`` are one tag for exclusion, replacement
and duplicate removal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lib_dbchar.paths import atomic_write
from lib_dbchar.tagger.labels import KAOMOJI
from lib_dbchar.tagger.postprocess import ImageTags, ScoredTag

WRITE_MODES = ("skip", "overwrite", "append", "prepend")
ORDERS = ("confidence", "alphabetical")
SEPARATOR = ", "

_ESCAPE = re.compile(r"([\\()])")
_UNESCAPE = re.compile(r"\\([\\()])")


def escape_tag(tag: str) -> str:
    """``ganyu (genshin impact)`` -> ``ganyu \\(genshin impact\\)``; backslashes are doubled."""
    return _ESCAPE.sub(r"\\\1", tag)


def unescape_tag(tag: str) -> str:
    """The inverse of :func:`escape_tag`."""
    return _UNESCAPE.sub(r"\1", tag)


def tag_key(tag: str) -> str:
    """A tag's identity for matching: unescaped, trimmed, case-folded, ``_`` as space (not in kaomoji)."""
    plain = unescape_tag(tag).strip()
    if plain in KAOMOJI:
        return plain
    return " ".join(plain.replace("_", " ").split()).casefold()


def split_caption(text: str) -> list[str]:
    """Tags of a caption text: split on commas and new lines, trimmed, empty ones dropped."""
    return [part.strip() for part in re.split(r"[,\n]", text) if part.strip()]


def join_caption(tags: Iterable[str]) -> str:
    """The caption text: tags joined by ``", "``."""
    return SEPARATOR.join(tags)


def dedupe(tags: Iterable[str]) -> list[str]:
    """Drop repeated tags (by :func:`tag_key`), keeping the first spelling and position."""
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            out.append(tag)
    return out


def parse_tag_list(text: str) -> tuple[str, ...]:
    """A user's comma- or line-separated tag list (exclusions, always-first tags) as a tuple."""
    return tuple(split_caption(text or ""))


def parse_replacements(text: str) -> tuple[tuple[str, str], ...]:
    """``"old -> new"`` pairs, separated by commas or new lines.

    Raises:
        ValueError: an item without ``->`` or with nothing before it; the message quotes it.
    """
    pairs = []
    for item in split_caption(text or ""):
        old, arrow, new = item.partition("->")
        if not arrow or not old.strip():
            raise ValueError(f"replacement {item!r} is not 'old -> new' (e.g. 'red hair -> crimson hair')")
        pairs.append((old.strip(), new.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class CaptionStyle:
    """How selected tags become a caption.

    Attributes:
        escape: escape ``\\ ( )`` for prompt use (off for training captions).
        order: ``"confidence"`` (characters, then general tags, each by falling probability) or
            ``"alphabetical"`` (characters, then general tags, each A-Z).
        max_tags: keep at most this many of the tagger's tags, the most confident first (0: all).
        exclude: tags never written, matched case-insensitively against the raw (``long_hair``)
            and the display (``long hair``) form.
        always_first: tags put at the very front, as typed (e.g. the instance token).
        replacements: ``(old, new)`` pairs applied to the tagger's tags; an empty ``new`` drops it.
    """

    escape: bool = False
    order: str = "confidence"
    max_tags: int = 0
    exclude: tuple[str, ...] = ()
    always_first: tuple[str, ...] = ()
    replacements: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order {self.order!r} is not one of {', '.join(ORDERS)}")
        if self.max_tags < 0:
            raise ValueError(f"max_tags {self.max_tags} must be 0 (no limit) or more")


def _excluded(tag: ScoredTag, keys: set[str], folded: set[str]) -> bool:
    return bool(
        {tag.raw.casefold(), tag.name.casefold()} & folded or {tag_key(tag.raw), tag_key(tag.name)} & keys
    )


def caption_tags(tags: ImageTags, style: CaptionStyle = CaptionStyle()) -> list[str]:
    """The caption of one picture as a tag list (ratings are never included).

    Order of operations: exclusions; the ``max_tags`` most confident tags of either kind (a
    character wins a tie); ordering; escaping; replacements; always-first tags in front;
    duplicates removed. Replacement results and always-first tags are written as typed.

    Args:
        tags: the tagger's selection for the picture.
        style: the caption rules.

    Returns:
        Tags in caption order.
    """
    folded = {e.strip().casefold() for e in style.exclude}
    keys = {tag_key(e) for e in style.exclude}
    chosen = [t for t in (*tags.character, *tags.general) if not _excluded(t, keys, folded)]
    if style.max_tags:
        ranked = sorted(chosen, key=lambda t: -t.score)  # stable: characters win ties
        keep = {id(t) for t in ranked[: style.max_tags]}
        chosen = [t for t in chosen if id(t) in keep]
    if style.order == "alphabetical":
        characters = {id(t) for t in tags.character}
        chosen.sort(key=lambda t: (id(t) not in characters, t.name.casefold()))
    names = [escape_tag(t.name) if style.escape else t.name for t in chosen]
    replace = {tag_key(old): new for old, new in style.replacements}
    names = [replace.get(tag_key(n), n) for n in names]
    return dedupe([*style.always_first, *(n for n in names if n)])


def merge_caption(existing: Sequence[str] | None, new: Sequence[str], mode: str) -> list[str] | None:
    """What to write when a caption file may exist already.

    Args:
        existing: the tags of the current caption, or ``None`` when there is no caption file.
        new: the tagger's caption.
        mode: ``skip`` (keep an existing caption untouched), ``overwrite``, ``append`` (existing
            tags, then new ones) or ``prepend`` (new, then existing).

    Returns:
        The tags to write, or ``None`` to leave the file alone. Duplicates are removed (first wins).

    Raises:
        ValueError: unknown mode.
    """
    if mode not in WRITE_MODES:
        raise ValueError(f"write mode {mode!r} is not one of {', '.join(WRITE_MODES)}")
    if existing is None:
        return dedupe(new)
    if mode == "skip":
        return None
    if mode == "overwrite":
        return dedupe(new)
    if mode == "append":
        return dedupe([*existing, *new])
    return dedupe([*new, *existing])


def caption_path(image: Path, extension: str = ".txt") -> Path:
    """``hero_03.png`` -> ``hero_03.txt`` beside it."""
    return Path(image).with_suffix(extension)


def read_caption(path: Path) -> list[str] | None:
    """Tags of a caption file, or ``None`` when it does not exist.

    Raises:
        UnicodeDecodeError / OSError: the file exists but cannot be read as UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        return None
    return split_caption(path.read_text(encoding="utf-8-sig"))


def write_caption(path: Path, tags: Sequence[str]) -> Path:
    """Write a caption atomically (no trailing new line, as trainers read the text verbatim)."""
    return atomic_write(Path(path), join_caption(tags))
