"""What the Tags tab shows, computed from the tagger core: tables, gallery items, one-line summaries.

Plain functions over the core's dataclasses (no gradio here), so the tests check the values the
page would show without building it. :mod:`lib_dbchar.ui.tags_editor` and
:mod:`lib_dbchar.ui.tags_tagging` turn them into component values.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.dataset.decode import decode_preview
from lib_dbchar.errors import DbcharError
from lib_dbchar.projects import Project
from lib_dbchar.tagger.backups import UndoResult, backup_root, last_backup_label
from lib_dbchar.tagger.captions import join_caption, split_caption, tag_key
from lib_dbchar.tagger.editor import (
    BulkEdit,
    CaptionEntry,
    EditResult,
    TagCount,
    TagDataset,
    common_traits,
    filter_entries,
    plan_add,
    plan_remove,
    plan_replace,
    tag_frequencies,
)
from lib_dbchar.tagger.errors import TaggerModelError
from lib_dbchar.tagger.models import fetch_model_files, get_model, local_model_files
from lib_dbchar.tagger.runner import TaggingResult

logger = logging.getLogger(__name__)

FREQUENCY_HEADERS = ["Tag", "Pictures", "Share"]
PREVIEW_HEADERS = ["Picture", "Removed", "Added", "New caption"]
#: The bulk edits, as the operation menu lists them.
BULK_OPERATIONS = ("remove", "add", "add at start", "replace", "replace (regex)")
#: The gallery shows at most this many pictures (a browser slows down past a few hundred).
MAX_GALLERY = 300
#: Long side of a gallery thumbnail, in pixels.
THUMB_SIDE = 256
#: Long side of the picture shown beside its caption.
VIEW_SIDE = 768
# Pictures over this many pixels are not decoded for display (a decompression-bomb guard; the
# tagger and the Dataset tab report such files themselves).
MAX_DISPLAY_PIXELS = 200_000_000
# Thumbnails kept in memory between clicks (about 200 KB each at 256 px).
THUMB_CACHE_SIZE = 512


# --------------------------------------------------------------------------------------------------
# Small conversions


def tag_list(value: Any) -> list[str]:
    """Tags from a widget value: a multiselect's list, a comma-separated text, or None."""
    if value is None:
        return []
    if isinstance(value, str):
        return split_caption(value)
    return [str(v).strip() for v in value if str(v).strip()]


def percent(share: float) -> str:
    """``0.8333`` -> ``"83%"`` (whole percents: a 20-picture set moves in steps of 5)."""
    return f"{round(share * 100)}%"


def frequency_rows(counts: Iterable[TagCount]) -> list[list[Any]]:
    """Rows of the frequency table: ``[tag, pictures, share]``, most frequent first."""
    return [[row.tag, row.count, percent(row.share)] for row in counts]


def table(headers: Sequence[str], rows: list[list[Any]]) -> dict[str, Any]:
    """A Dataframe value that keeps its headers when there are no rows (gradio 3 drops them otherwise)."""
    return {"headers": list(headers), "data": rows}


# --------------------------------------------------------------------------------------------------
# The project


def project_tokens(project: Project) -> list[str]:
    """The instance tokens of the project's concepts (``[]`` when there is no concept yet).

    A concept file that cannot be read gives no token: prefilling is a convenience, and the
    Concept tab reports the file's problem where it can be fixed.
    """
    if not project.concept_file.is_file():
        return []
    try:
        from lib_dbchar.concept import load_concepts
    except ImportError:  # an install without the Concept feature
        return []
    try:
        concepts = load_concepts(project.concept_file)
    except (OSError, ValueError) as exc:
        logger.warning("dbchar: no instance token to prefill: %s", exc)
        return []
    return [c.instance_token.strip() for c in concepts if c.instance_token.strip()]


def prefill_always_first(current: str, last_prefill: str, tokens: Sequence[str]) -> tuple[str, str]:
    """The "Always first" text after switching project: the new token, unless the user typed their own.

    Args:
        current: the text in the box now.
        last_prefill: what was last put there automatically ("" if nothing).
        tokens: the project's instance tokens.

    Returns:
        ``(text to show, what was prefilled)``.
    """
    token = ", ".join(tokens)
    if (current or "").strip() in ("", (last_prefill or "").strip()):
        return token, token
    return current, last_prefill


# --------------------------------------------------------------------------------------------------
# Thumbnails


class Thumbnails:
    """Small previews of the dataset's pictures, kept between clicks (bounded, thread-safe).

    A picture is decoded again when its file changes (size or modification time). A file that
    cannot be shown gets a grey square; the caller names the problem.
    """

    def __init__(self, side: int = THUMB_SIDE, capacity: int = THUMB_CACHE_SIZE) -> None:
        self.side = side
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> Any:
        """The thumbnail of ``path`` (a PIL RGB image, at most ``side`` pixels on its long side)."""
        try:
            stat = Path(path).stat()
        except OSError:
            return placeholder(self.side)
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = display_image(Path(path), self.side)
        with self._lock:
            self._items[key] = image
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return image


def placeholder(side: int) -> Any:
    """A grey square standing in for a picture that cannot be shown."""
    from PIL import Image

    return Image.new("RGB", (side, side), (128, 128, 128))


def display_image(path: Path, side: int = VIEW_SIDE) -> Any:
    """``path`` decoded for display: upright 8-bit RGB, at most ``side`` pixels on its long side.

    Returns a grey square when the file cannot be read (the gallery goes on).
    """
    try:
        return decode_preview(path, max_side=side, max_pixels=MAX_DISPLAY_PIXELS).image
    except (DbcharError, OSError) as exc:
        logger.warning("dbchar: cannot show %s: %s", path, exc)
        return placeholder(side)


# --------------------------------------------------------------------------------------------------
# The editor's view of a dataset


@dataclass(frozen=True)
class EditorView:
    """Everything the tag editor shows for one dataset and one filter.

    Attributes:
        rows: the frequency table, ``[tag, pictures, share]`` per tag, most frequent first.
        tags: every tag (filter menu choices), most frequent first.
        items: gallery items ``(thumbnail, caption text)`` of the filtered pictures.
        shown: the pictures behind ``items``, as paths, in gallery order.
        summary: "3 of 20 pictures match ..." plus unreadable captions.
        traits: ``(label, tag)`` choices for the character traits (>= ``min_share``).
        checked: the traits still ticked.
        backup: where caption backups go and what Undo would take back.
        caption: the selected picture's caption read again, or None when no picture is selected.
    """

    rows: list[list[Any]]
    tags: list[str]
    items: list[tuple[Any, str]]
    shown: list[str]
    summary: str
    traits: list[tuple[str, str]]
    checked: list[str]
    backup: str
    caption: str | None


def trait_choices(dataset: TagDataset, min_share: float, tokens: Sequence[str]) -> list[tuple[str, str]]:
    """``(label, tag)`` for the tags on at least ``min_share`` of the pictures.

    The instance tokens are left out: they are on every caption on purpose.
    """
    skip = {tag_key(t) for t in tokens}
    return [
        (f"{row.tag} ({percent(row.share)})", row.tag)
        for row in common_traits(dataset, min_share)
        if tag_key(row.tag) not in skip
    ]


def filter_summary(
    matched: int, total: int, shown: int, require: Sequence[str], exclude: Sequence[str]
) -> str:
    """One line: how many pictures match the filter, and how many the gallery shows."""
    if total == 0:
        return "No pictures in this project's dataset yet: add them in the Dataset tab."
    parts = []
    if require:
        parts.append("with " + " and ".join(require))
    if exclude:
        parts.append("without " + " or ".join(exclude))
    text = f"{matched} of {total} pictures" + (f" ({'; '.join(parts)})" if parts else "")
    if shown < matched:
        text += f"; the gallery shows the first {shown}"
    return text + "."


def backup_text(folder: Path) -> str:
    """Where caption backups of ``folder`` go, and what Undo would take back."""
    label = last_backup_label(folder)
    undo = f"Undo takes back: {label}." if label else "Nothing to undo yet."
    return f"Caption backups: {backup_root(folder)}. {undo}"


def build_view(
    dataset: TagDataset,
    *,
    require: Sequence[str] = (),
    exclude: Sequence[str] = (),
    min_share: float = 0.8,
    tokens: Sequence[str] = (),
    checked: Sequence[str] = (),
    selected: str = "",
    thumbnail: Callable[[Path], Any] | None = None,
) -> EditorView:
    """Compute the editor's view of ``dataset`` under a filter.

    Args:
        dataset: from :func:`~lib_dbchar.tagger.editor.load_dataset`.
        require / exclude: the filter: pictures with all of ``require`` and none of ``exclude``.
        min_share: traits are tags on at least this share of the pictures (0..1].
        tokens: instance tokens, left out of the traits.
        checked: traits ticked before; those still listed stay ticked.
        selected: the picture whose caption is open ("" for none).
        thumbnail: ``path -> image`` for the gallery (default: the path itself).

    Returns:
        The :class:`EditorView`.
    """
    counts = tag_frequencies(dataset)
    items, shown, summary = filtered_gallery(dataset, require, exclude, thumbnail)
    if dataset.problems:
        summary += "\n" + "\n".join(dataset.problems)
    traits = trait_choices(dataset, min_share, tokens)
    listed = {tag for _, tag in traits}
    return EditorView(
        rows=frequency_rows(counts),
        tags=[row.tag for row in counts],
        items=items,
        shown=shown,
        summary=summary,
        traits=traits,
        checked=[t for t in checked if t in listed],
        backup=backup_text(dataset.folder),
        caption=selected_caption(dataset, selected),
    )


def filtered_gallery(
    dataset: TagDataset,
    require: Sequence[str],
    exclude: Sequence[str],
    thumbnail: Callable[[Path], Any] | None = None,
) -> tuple[list[tuple[Any, str]], list[str], str]:
    """The gallery for a filter: ``(items, shown paths, summary line)`` (see :class:`EditorView`)."""
    matched = filter_entries(dataset, require=require, exclude=exclude)
    visible = matched[:MAX_GALLERY]
    thumb = thumbnail or str
    items = [(thumb(e.image), join_caption(e.tags) or "(no caption)") for e in visible]
    summary = filter_summary(len(matched), len(dataset.entries), len(visible), require, exclude)
    return items, [str(e.image) for e in visible], summary


def selected_caption(dataset: TagDataset, selected: str) -> str | None:
    """The caption text of the selected picture, or None when none is selected (or it is gone)."""
    if not selected:
        return None
    try:
        return join_caption(dataset.entry(selected).tags)
    except KeyError:
        return None


# --------------------------------------------------------------------------------------------------
# Bulk edits


def plan_bulk(entries: Sequence[CaptionEntry], operation: str, tags: str, replacement: str = "") -> BulkEdit:
    """Plan one bulk edit of the filtered pictures, as the bulk-edit panel describes it.

    Args:
        entries: the filtered pictures.
        operation: one of :data:`BULK_OPERATIONS`.
        tags: add/remove: comma-separated tags; replace: the tag to find; regex: the pattern
            (not split on commas, a pattern may hold one).
        replacement: replace: the new tag (empty removes the tag); regex: the substitution
            (``\\1`` refers to a group).

    Raises:
        ValueError: unknown operation, no tag given, or an invalid regular expression; the
            message says which.
    """
    if operation == "add":
        return plan_add(entries, split_caption(tags))
    if operation == "add at start":
        return plan_add(entries, split_caption(tags), at_start=True)
    if operation == "remove":
        return plan_remove(entries, split_caption(tags))
    if operation == "replace":
        return plan_replace(entries, (tags or "").strip(), replacement or "")
    if operation == "replace (regex)":
        return plan_replace(entries, tags or "", replacement or "", regex=True)
    raise ValueError(f"bulk edit {operation!r} is not one of {', '.join(BULK_OPERATIONS)}")


def preview_rows(edit: BulkEdit) -> list[list[str]]:
    """``[picture, removed tags, added tags, new caption]`` per caption the edit changes."""
    rows = []
    for change in edit.changes:
        before = {tag_key(t) for t in change.before}
        after = {tag_key(t) for t in change.after}
        removed = [t for t in change.before if tag_key(t) not in after]
        added = [t for t in change.after if tag_key(t) not in before]
        rows.append(
            [change.entry.image.name, join_caption(removed), join_caption(added), join_caption(change.after)]
        )
    return rows


def preview_message(edit: BulkEdit, filtered: int) -> str:
    """What applying ``edit`` would do, in one line."""
    if not edit.changes:
        return f"{edit.label}: nothing changes in the {filtered} filtered pictures."
    return (
        f"{edit.label}: changes {len(edit.changes)} of the {filtered} filtered pictures. "
        "Apply writes them; the old captions are backed up and Undo takes them back."
    )


def edit_message(result: EditResult) -> str:
    """What a bulk write did, and where the backup is."""
    if not result.written:
        return f"{result.label}: nothing to change."
    return (
        f"{result.label}: wrote {len(result.written)} captions. The previous ones are in "
        f"{result.backup}; Undo takes them back."
    )


def undo_message(result: UndoResult) -> str:
    """What an undo did, naming the captions it left alone."""
    text = f"Undid {result.label}: restored {len(result.restored)} captions"
    if result.removed:
        text += f", removed {len(result.removed)} it had created"
    text += "."
    if result.conflicts:
        text += (
            f" Left {len(result.conflicts)} alone because they were edited since: "
            f"{', '.join(result.conflicts)}."
        )
    return text


# --------------------------------------------------------------------------------------------------
# Tagging


def tagging_message(result: TaggingResult) -> str:
    """The status line after a tagging run."""
    counts = ", ".join(f"{n} {action}" for action, n in result.counts().items() if n)
    speed = f" ({result.images_per_second:.1f} pictures/s)" if result.tagged else ""
    pictures = "picture" if result.tagged == 1 else "pictures"
    return f"Tagged {result.tagged} {pictures} on {result.provider}{speed}: {counts or 'nothing to do'}."


def provider_text(result: TaggingResult) -> str:
    """Which model ran where, with any warning about the provider."""
    source = f"{result.model_source}, {result.revision[:10]}" if result.revision else result.model_source
    lines = [
        f"Model {result.model} ({source}) ran on {result.provider}, batch {result.batch_size}, "
        f"{result.workers} loader threads."
    ]
    lines += [f"Warning: {w}" for w in result.warnings]
    return "\n".join(lines)


def model_info(model: str, model_dir: str, cache_dir: str | None) -> str:
    """A line about the chosen model: what it is, and whether it is on this machine.

    Args:
        model: a registry key.
        model_dir: a local model folder ("" to use ``model``).
        cache_dir: the tagger cache setting ("" or None: the Hugging Face cache).
    """
    if (model_dir or "").strip():
        try:
            files = local_model_files(Path(model_dir.strip()))
        except TaggerModelError as exc:
            return f"Local model folder: {exc}."
        return f"Local model folder {files.model_path.parent}: model.onnx and selected_tags.csv found."
    try:
        entry = get_model(model)
    except ValueError as exc:
        return str(exc)
    about = f"{entry.label}: {entry.repo_id} at {entry.revision[:10]}, ~{entry.size_mb} MB"
    where = cache_dir or "the Hugging Face cache"
    try:
        files = fetch_model_files(
            entry, cache_dir=Path(cache_dir) if cache_dir else None, allow_download=False
        )
    except TaggerModelError:
        return f"{about}. Not in {where} yet: the first run downloads it."
    except ImportError:
        return f"{about}. huggingface_hub is not installed, so it cannot be downloaded; use a local folder."
    return f"{about}. In {where}: {files.model_path.parent}."
