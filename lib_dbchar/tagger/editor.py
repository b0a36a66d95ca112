"""The tag editor's core: look at the tags of a whole dataset and change them in bulk, safely.

The loop a user goes through after tagging:

1. :func:`load_dataset` reads every picture's caption; :func:`tag_frequencies` shows which tags
   occur how often.
2. :func:`filter_entries` narrows the set ("pictures with ``smile`` but not ``closed eyes``").
3. A bulk change on that set -- :func:`plan_add`, :func:`plan_remove`, :func:`plan_replace`
   (plain or regex) -- is first a :class:`BulkEdit` the UI can show, then :func:`apply_edit`
   writes it, after backing up every caption it changes; :func:`undo_last_edit` takes it back.
4. :func:`common_traits` lists tags on >= 80 % of the pictures (hair and eye colour, the signature
   outfit): dropping them (:func:`plan_drop_traits`) lets the instance token absorb them.

Single captions are edited with :func:`save_caption`. Tags are matched through
:func:`~lib_dbchar.tagger.captions.tag_key` (case, ``_`` versus space and escaping do not matter).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from lib_dbchar.errors import DbcharError
from lib_dbchar.jobs import JobContext
from lib_dbchar.tagger.backups import CaptionJournal, UndoResult, backup_root, undo_last
from lib_dbchar.tagger.captions import (
    caption_path,
    dedupe,
    read_caption,
    split_caption,
    tag_key,
    write_caption,
)
from lib_dbchar.tagger.preprocess import is_image_file

TRAIT_SHARE = 0.8


@dataclass(frozen=True)
class CaptionEntry:
    """One picture and its caption.

    Attributes:
        image: the picture.
        caption: its caption file (may not exist yet).
        tags: the caption's tags (empty when there is no caption).
        exists: whether the caption file exists.
    """

    image: Path
    caption: Path
    tags: tuple[str, ...]
    exists: bool


@dataclass(frozen=True)
class TagDataset:
    """The pictures of a folder with their captions, sorted by file name.

    Attributes:
        folder: the dataset folder (backups go below it).
        entries: one per picture.
        problems: captions that could not be read, as messages (their pictures are left out, so
            a bulk edit never rewrites a file it could not read).
    """

    folder: Path
    entries: tuple[CaptionEntry, ...]
    problems: tuple[str, ...] = ()

    def entry(self, image: Path | str) -> CaptionEntry:
        """The entry of a picture, given its path or file name.

        Raises:
            KeyError: no such picture in the dataset.
        """
        wanted = str(image)
        for e in self.entries:
            if wanted in (str(e.image), e.image.name):
                return e
        raise KeyError(f"{image} is not a picture of {self.folder}")


def _images(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    skip = backup_root(folder).parent
    return sorted(p for p in pattern if is_image_file(p) and skip not in p.parents)


def load_dataset(folder: Path, *, extension: str = ".txt", recursive: bool = False) -> TagDataset:
    """Read the captions of every picture in ``folder``.

    Args:
        folder: the dataset folder.
        extension: caption file extension.
        recursive: include sub-folders.

    Returns:
        The :class:`TagDataset`; unreadable captions are listed in ``problems``.

    Raises:
        DbcharError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DbcharError(f"{folder} is not a folder; choose the folder holding the pictures")
    entries, problems = [], []
    for image in _images(folder, recursive):
        path = caption_path(image, extension)
        try:
            tags = read_caption(path)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: not readable as UTF-8 text ({exc}); fix or delete it, it is left alone")
            continue
        entries.append(CaptionEntry(image, path, tuple(tags or ()), tags is not None))
    return TagDataset(folder, tuple(entries), tuple(problems))


@dataclass(frozen=True)
class TagCount:
    """How often a tag occurs.

    Attributes:
        tag: its most frequent spelling.
        count: pictures whose caption has it.
        share: ``count`` over the number of pictures (0..1).
    """

    tag: str
    count: int
    share: float


def tag_frequencies(entries: Iterable[CaptionEntry] | TagDataset) -> list[TagCount]:
    """Every tag with the number of pictures carrying it, most frequent first (ties A-Z).

    A tag repeated within one caption counts once for that picture.
    """
    items = list(entries.entries if isinstance(entries, TagDataset) else entries)
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for entry in items:
        for tag in dedupe(entry.tags):
            key = tag_key(tag)
            counts[key] += 1
            spellings.setdefault(key, Counter())[tag] += 1
    total = max(1, len(items))
    rows = [TagCount(spellings[k].most_common(1)[0][0], n, n / total) for k, n in counts.items()]
    return sorted(rows, key=lambda r: (-r.count, tag_key(r.tag)))


def filter_entries(
    entries: Iterable[CaptionEntry] | TagDataset,
    *,
    require: Sequence[str] = (),
    exclude: Sequence[str] = (),
    any_of: Sequence[str] = (),
) -> list[CaptionEntry]:
    """Pictures whose captions have all of ``require``, none of ``exclude`` and one of ``any_of``.

    Empty criteria do not filter. Returns the entries in their original order.
    """
    items = entries.entries if isinstance(entries, TagDataset) else entries
    need = {tag_key(t) for t in require}
    avoid = {tag_key(t) for t in exclude}
    some = {tag_key(t) for t in any_of}
    out = []
    for entry in items:
        keys = {tag_key(t) for t in entry.tags}
        if need <= keys and not (avoid & keys) and (not some or some & keys):
            out.append(entry)
    return out


def save_caption(entry: CaptionEntry, tags: Sequence[str] | str) -> CaptionEntry:
    """Replace one picture's caption (a list of tags, or caption text); duplicates are removed.

    Returns:
        The updated entry.
    """
    new = dedupe(split_caption(tags) if isinstance(tags, str) else [t.strip() for t in tags if t.strip()])
    write_caption(entry.caption, new)
    return CaptionEntry(entry.image, entry.caption, tuple(new), True)


@dataclass(frozen=True)
class CaptionChange:
    """One caption a bulk edit changes."""

    entry: CaptionEntry
    after: tuple[str, ...]

    @property
    def before(self) -> tuple[str, ...]:
        return self.entry.tags


@dataclass(frozen=True)
class BulkEdit:
    """A planned bulk change: shown to the user, then applied with :func:`apply_edit`.

    Attributes:
        label: what it does ("remove: red hair").
        changes: the captions that change (unchanged ones are not listed).
    """

    label: str
    changes: tuple[CaptionChange, ...]

    def to_dict(self) -> dict:
        """JSON form: the label and, per caption, the tags before and after."""
        return {
            "label": self.label,
            "changes": [
                {"caption": str(c.entry.caption), "before": list(c.before), "after": list(c.after)}
                for c in self.changes
            ],
        }


def _plan(label: str, entries: Iterable[CaptionEntry], change: Callable[[list[str]], list[str]]) -> BulkEdit:
    changes = []
    for entry in entries:
        after = tuple(dedupe(change(list(entry.tags))))
        if after != entry.tags or (not entry.exists and after):
            changes.append(CaptionChange(entry, after))
    return BulkEdit(label, tuple(changes))


def plan_add(entries: Iterable[CaptionEntry], tags: Sequence[str], *, at_start: bool = False) -> BulkEdit:
    """Add ``tags`` to every caption that lacks them, at the end (or the start)."""
    new = [t.strip() for t in tags if t.strip()]
    if not new:
        msg = "name at least one tag to add"
        raise ValueError(msg)
    if at_start:
        return _plan(f"add at start: {', '.join(new)}", entries, lambda old: [*new, *old])
    return _plan(f"add: {', '.join(new)}", entries, lambda old: [*old, *new])


def plan_remove(entries: Iterable[CaptionEntry], tags: Sequence[str]) -> BulkEdit:
    """Remove ``tags`` from every caption."""
    gone = {tag_key(t) for t in tags if t.strip()}
    if not gone:
        msg = "name at least one tag to remove"
        raise ValueError(msg)
    label = f"remove: {', '.join(t.strip() for t in tags if t.strip())}"
    return _plan(label, entries, lambda old: [t for t in old if tag_key(t) not in gone])


def _replace_plain(tags: list[str], key: str, replacement: str) -> list[str]:
    out = []
    for tag in tags:
        if tag_key(tag) != key:
            out.append(tag)
        elif replacement:
            out.append(replacement)
    return out


def plan_replace(entries: Iterable[CaptionEntry], old: str, new: str, *, regex: bool = False) -> BulkEdit:
    """Replace a tag by another in every caption.

    Args:
        entries: the captions to change.
        old: the tag to replace; with ``regex``, a Python regular expression applied to each tag
            (``re.sub``, so ``(\\w+) hair`` -> ``\\1 hair`` rewrites parts of tags).
        new: the replacement (an empty result removes the tag).
        regex: treat ``old`` as a regular expression.

    Raises:
        ValueError: ``old`` is empty or not a valid regular expression (the message says why).
    """
    if not old.strip():
        msg = "name the tag (or pattern) to replace"
        raise ValueError(msg)
    if not regex:
        key, replacement = tag_key(old), new.strip()
        return _plan(f"replace: {old} -> {new}", entries, lambda tags: _replace_plain(tags, key, replacement))
    try:
        pattern = re.compile(old)
    except re.error as exc:
        raise ValueError(f"pattern {old!r} is not a valid regular expression: {exc}") from None
    return _plan(
        f"regex replace: {old} -> {new}",
        entries,
        lambda tags: [s for s in (pattern.sub(new, t).strip() for t in tags) if s],
    )


def common_traits(
    dataset: TagDataset | Iterable[CaptionEntry], min_share: float = TRAIT_SHARE
) -> list[TagCount]:
    """Tags on at least ``min_share`` of the pictures: the character's fixed traits.

    Args:
        dataset: the captions.
        min_share: 0..1; 0.8 by default.

    Returns:
        The tags, most frequent first.
    """
    if not 0.0 < min_share <= 1.0:
        raise ValueError(f"min_share {min_share} must be in (0, 1]")
    return [row for row in tag_frequencies(dataset) if row.share >= min_share]


def plan_drop_traits(dataset: TagDataset, traits: Sequence[str]) -> BulkEdit:
    """Remove the chosen traits from every caption, so the instance token learns them."""
    edit = plan_remove(dataset.entries, traits)
    return BulkEdit(f"drop traits: {', '.join(traits)}", edit.changes)


@dataclass(frozen=True)
class EditResult:
    """What :func:`apply_edit` wrote.

    Attributes:
        label: the edit.
        written: captions written.
        backup: the backup folder (``""`` when nothing was written).
    """

    label: str
    written: list[str]
    backup: str

    def to_dict(self) -> dict:
        return asdict(self)


def apply_edit(dataset: TagDataset, edit: BulkEdit, ctx: JobContext | None = None) -> EditResult:
    """Write a bulk edit, backing up every caption first (undo with :func:`undo_last_edit`).

    Each caption is written atomically; on a stop request the captions written so far stay
    written and recorded, so undo takes back exactly those.

    Raises:
        JobStopped: the user stopped it between two captions.
    """
    ctx = ctx or JobContext()
    written: list[str] = []
    total = len(edit.changes)
    with CaptionJournal(dataset.folder, edit.label) as journal:
        for done, change in enumerate(edit.changes):
            ctx.check_stop("bulk edit")
            journal.write(change.entry.caption, change.after)
            written.append(str(change.entry.caption))
            ctx.report(done + 1, total, f"{edit.label}: {change.entry.caption.name}")
    return EditResult(edit.label, written, str(journal.folder or ""))


def undo_last_edit(dataset: TagDataset | Path) -> UndoResult:
    """Undo the last bulk write (edit or tagging run) of the dataset's captions.

    Raises:
        DbcharError: nothing to undo.
    """
    folder = dataset.folder if isinstance(dataset, TagDataset) else Path(dataset)
    return undo_last(folder)
