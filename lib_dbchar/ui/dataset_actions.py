"""What the Dataset tab's buttons do, as plain functions of a project folder (no gradio here).

* :func:`prepare` -- import a folder or uploads into the project's dataset with ``run_prep``;
* :func:`open_nudge` / :func:`accept_box` / :func:`reset_box` -- the crop nudge: show a picture's
  original with its square, store the square the user set (``crops.json``) and make that picture
  again, so the box is applied now and on every later run;
* :func:`drop_duplicate` / :func:`restore_picture` -- keep one of a near-duplicate pair;
* :func:`look` -- everything the tab shows about a dataset, read fresh from disk.

Each raises :class:`~lib_dbchar.errors.DbcharError` with a message for the user when something
cannot be done; the tab shows it. Long ones take the job's :class:`~lib_dbchar.jobs.JobContext`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lib_dbchar.config import from_dict
from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.dataset.crop import Box, validate_box
from lib_dbchar.dataset.decode import BadImage, decode_preview
from lib_dbchar.dataset.dedupe import DuplicatePair, exclude_images, restore_images
from lib_dbchar.dataset.options import PrepConfig
from lib_dbchar.dataset.prep import (
    METHOD_USER,
    PrepResult,
    PrepStopped,
    Upscaler,
    lanczos_upscale,
    propose_crop,
    run_prep,
)
from lib_dbchar.dataset.report import HealthReport, dataset_health
from lib_dbchar.errors import DbcharError
from lib_dbchar.host.base import LANCZOS, Host
from lib_dbchar.jobs import JobContext
from lib_dbchar.projects import Project, open_project
from lib_dbchar.ui.dataset_files import (
    CAPTION_SUFFIX,
    ORIGINALS_DIR,
    DatasetPicture,
    SourceRecord,
    dataset_pictures,
    excluded_pictures,
    import_uploads,
    merge_report,
    read_report,
    sources_of,
    write_report,
)

#: Long side of the original as the nudge shows it; boxes stay in the original's pixels.
PREVIEW_SIDE = 1024


def project_for(host: Host, name: str | None) -> Project:
    """The project picked in the page.

    Raises:
        DbcharError: none picked, or it does not exist (any more).
    """
    if not (name or "").strip():
        msg = "Pick a project at the top of the page (or create one) first."
        raise DbcharError(msg)
    return open_project(host.projects_dir(), name)


def model_cache(host: Host) -> Path | None:
    """Where the face detector is cached: the tagger's model cache setting, else Hugging Face's."""
    cache = host.settings().tagger_cache_dir.strip()
    return Path(cache).expanduser() if cache else None


# --------------------------------------------------------------------------------------------------
# Upscalers


class HostUpscaler:
    """A host upscaler as prep's :data:`~lib_dbchar.dataset.prep.Upscaler`: square crop -> side x side.

    Prep enlarges on several worker threads; a model upscaler holds the GPU, so calls go one at a
    time. The webui's upscalers round the size down to a multiple of 8; a square result of another
    side is brought to the exact side with Lanczos (uniform: the square stays a square). A result
    that is not square is returned as is and prep falls back to Lanczos, with a note.
    """

    def __init__(self, host: Host, name: str) -> None:
        self.host = host
        self.name = name
        self._lock = threading.Lock()

    def __call__(self, image: Any, side: int) -> Any:
        """Enlarge the square crop ``image`` (PIL, RGB) to ``side`` x ``side``."""
        with self._lock:
            out = self.host.upscale(image, self.name, side / image.width)
        if out.size != (side, side) and out.width == out.height:
            out = lanczos_upscale(out.convert("RGB"), side)
        return out


def prep_upscaler(host: Host, name: str | None) -> Upscaler:
    """The enlarger prep uses for small pictures: Lanczos (the default) or one of the host's.

    Raises:
        DbcharError: the host offers no upscaler called ``name``.
    """
    if not name or name == LANCZOS:
        return lanczos_upscale
    if name not in host.upscalers():
        msg = f"No upscaler called {name!r} here; pick one of {', '.join(host.upscalers())}."
        raise DbcharError(msg)
    return HostUpscaler(host, name)


# --------------------------------------------------------------------------------------------------
# Import


def _folder(text: str) -> Path:
    # People paste paths from their file manager, often quoted.
    cleaned = text.strip().strip('"').strip("'").strip()
    folder = Path(cleaned).expanduser()
    if not folder.is_dir():
        msg = f"{folder} is not a folder: give the folder that holds the pictures."
        raise DbcharError(msg)
    return folder


def _run(
    config: PrepConfig, src: Path | Sequence[Path], dst: Path, job: JobContext, **kwargs: Any
) -> PrepResult:
    """``run_prep``, with a stop turned into the partial result (its ``stopped`` is True)."""
    try:
        return run_prep(config, src, dst, job, **kwargs)
    except PrepStopped as stopped:
        return stopped.result


def prepare(
    host: Host,
    project: Project,
    config: PrepConfig,
    job: JobContext,
    *,
    folder: str = "",
    uploads: Sequence[Path] = (),
    upscaler: str | None = None,
) -> PrepResult:
    """Prepare pictures into the project's dataset folder (the Prepare button).

    The folder is only read. Uploads are first copied into ``<project>/originals/`` (the browser's
    upload folder is temporary), so that their originals stay at hand for the crop nudge.

    Args:
        host: for the upscaler and the model cache.
        project: the project; pictures go to its ``dataset/``.
        config: the prep settings.
        job: progress and stop.
        folder: a folder of pictures (as typed; quotes are removed), or "".
        uploads: uploaded files (pictures and captions), or none.
        upscaler: the host upscaler for small pictures (``None``/"Lanczos": Lanczos).

    Returns:
        The run's result; ``stopped`` is True when the user stopped it (what is done is kept).

    Raises:
        DbcharError: nothing or both given, not a folder, unreadable records, or prep's own refusals.
    """
    if folder.strip() and uploads:
        msg = "Give a folder or upload pictures, not both at once: prepare one, then the other."
        raise DbcharError(msg)
    if not folder.strip() and not uploads:
        msg = "Give the folder that holds the pictures, or upload them, then press Prepare."
        raise DbcharError(msg)
    enlarge = prep_upscaler(host, upscaler)
    record = SourceRecord.for_dataset(project.dataset_dir)  # a broken record stops before any work
    src: Path | list[Path] = (
        _folder(folder) if folder.strip() else import_uploads(uploads, project.root / ORIGINALS_DIR)
    )
    result = _run(config, src, project.dataset_dir, job, upscaler=enlarge, model_cache=model_cache(host))
    record.remember(sources_of(result, src))
    record.save()
    return result


# --------------------------------------------------------------------------------------------------
# The crop nudge


@dataclass(frozen=True)
class NudgeView:
    """One picture opened in the crop nudge.

    Attributes:
        picture: the dataset picture's name.
        original: its original file.
        size: the original's upright ``(width, height)``; ``box`` is in these pixels.
        box: the square to start from (the one prep used, or yours).
        method: how that square was chosen ("your box", "face", "saliency", "center").
        preview: the original reduced to at most :data:`PREVIEW_SIDE` px (a PIL image).
        notes: what decoding did, or why the square was chosen anew.
    """

    picture: str
    original: Path
    size: tuple[int, int]
    box: Box
    method: str
    preview: Any
    notes: list[str] = field(default_factory=list)

    @property
    def caption(self) -> str:
        """One line under the picture: where it is from, its size and how the square was chosen."""
        side = self.box[2] - self.box[0]
        text = (
            f"{self.picture}: original {self.original.name} ({self.size[0]}x{self.size[1]}); "
            f"square of {side} px chosen by {self.method}. Drag it or use the arrow keys, then Accept."
        )
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")


def original_of(dataset_dir: Path, picture: str) -> Path:
    """The original a dataset picture was made from.

    Raises:
        DbcharError: prep did not make it, its original is not recorded, or it is gone.
    """
    store = CropStore.for_dataset(dataset_dir)
    if store.get(picture) is None:
        msg = f"{picture} is not a prepared picture of this project; press Refresh."
        raise DbcharError(msg)
    original = SourceRecord.for_dataset(dataset_dir).original(picture)
    if original is None:
        msg = (
            f"Where the original of {picture} is was not recorded (prepared outside this tab?): "
            "prepare it again here from its folder, then adjust its crop."
        )
        raise DbcharError(msg)
    if not original.is_file():
        msg = (
            f"The original of {picture} is no longer at {original}: put it back, or prepare it again "
            "from where it is now."
        )
        raise DbcharError(msg)
    return original


def open_nudge(dataset_dir: Path, picture: str, config: PrepConfig) -> NudgeView:
    """Open a picture in the crop nudge: its original, reduced, with the square it has now.

    The square is the one you set, else the one the last run used; when that no longer fits the
    original (it changed), a new one is proposed (without the face detector: no download here).

    Raises:
        DbcharError: no original (see :func:`original_of`), or it cannot be decoded.
    """
    dataset_dir = Path(dataset_dir)
    original = original_of(dataset_dir, picture)
    entry = CropStore.for_dataset(dataset_dir).get(picture)
    try:
        decoded = decode_preview(
            original, max_side=PREVIEW_SIDE, max_pixels=config.max_pixels, background=config.background_rgb
        )
    except BadImage as exc:
        msg = f"{original}: {exc}"
        raise DbcharError(msg) from None
    notes = list(decoded.notes)
    box, method = entry.user_box or entry.box, METHOD_USER if entry.user_box else (entry.method or "")
    try:
        box = validate_box(box, *decoded.size) if box is not None else None
    except ValueError as exc:
        notes.append(f"the earlier square no longer fits ({exc})")
        box = None
    if box is None:
        proposal = propose_crop(original, config)
        box, method = proposal.box, proposal.method
    return NudgeView(picture, original, decoded.size, box, method, decoded.image, notes)


def parse_box(text: str, picture: str) -> Box:
    """Read the square the page's script wrote (JSON ``{"picture", "x", "y", "side"}``).

    Returns:
        ``(left, top, right, bottom)`` in the original's pixels (not yet checked against its size).

    Raises:
        DbcharError: nothing usable received, or the square belongs to another picture.
    """
    try:
        data = json.loads(text or "")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        msg = "No crop square came from the page: open the picture again, move the square, accept."
        raise DbcharError(msg)
    if data.get("picture") != picture:
        owner = data.get("picture") or "no picture"
        msg = f"The square on the page belongs to {owner}, not {picture}: pick the picture again."
        raise DbcharError(msg)
    values = [data.get(k) for k in ("x", "y", "side")]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and float(v).is_integer() for v in values
    ):
        msg = f"The crop square {values} is not three whole numbers (x, y, side): move it again."
        raise DbcharError(msg)
    x, y, side = (int(v) for v in values)
    return x, y, x + side, y + side


@dataclass(frozen=True)
class Remade:
    """What re-making one picture did.

    Attributes:
        picture: the dataset picture's name.
        result: the one-picture run's result.
        message: one line for the status box.
    """

    picture: str
    result: PrepResult
    message: str


def _remake(
    host: Host, project: Project, picture: str, *, config: PrepConfig, job: JobContext, upscaler: str | None
) -> PrepResult:
    """Run prep on the one original of ``picture`` and fold the result into the dataset's report."""
    dataset_dir = project.dataset_dir
    original = original_of(dataset_dir, picture)
    files = [original]
    if original.with_suffix(CAPTION_SUFFIX).is_file():
        files.append(original.with_suffix(CAPTION_SUFFIX))
    enlarge = prep_upscaler(host, upscaler)
    previous = read_report(dataset_dir)
    result = _run(config, files, dataset_dir, job, upscaler=enlarge, model_cache=model_cache(host))
    write_report(dataset_dir, merge_report(previous, result))
    return result


def _outcome(picture: str, result: PrepResult, done: str) -> Remade:
    made = next((p for p in result.prepared if p.name == picture), None)
    if made is None:
        why = "; ".join(f"{s.file}: {s.reason}" for s in result.skipped) or "it was not made"
        msg = f"{picture} could not be made again ({why})."
        raise DbcharError(msg)
    side = made.box[2] - made.box[0]
    message = f"{done} {picture} made again from a {side} px square at ({made.box[0]}, {made.box[1]})"
    if made.upscale:
        message += f", enlarged {made.upscale:.2f}x"
    return Remade(picture, result, message + ".")


def accept_box(
    host: Host,
    project: Project,
    picture: str,
    text: str,
    *,
    config: PrepConfig,
    job: JobContext,
    upscaler: str | None = None,
) -> Remade:
    """Store the square the user set for ``picture`` and make the picture again with it.

    The box goes into ``crops.json`` as the picture's ``user_box``: every later run applies it too
    (for as long as the original keeps its size).

    Args:
        host / project: where.
        picture: the dataset picture's name.
        text: the box as the page wrote it (see :func:`parse_box`).
        config: the prep settings (resolution, mirrored copy, ...); the crop mode does not matter,
            the box wins.
        job: progress and stop.
        upscaler: for a square smaller than the resolution.

    Raises:
        DbcharError: the box is unusable (the message says why) or the picture cannot be made.
    """
    box = parse_box(text, picture)
    side = box[2] - box[0]
    if side < config.min_side:
        msg = (
            f"The square is {side} px, under the smallest usable crop ({config.min_side} px): make it larger."
        )
        raise DbcharError(msg)
    original_of(project.dataset_dir, picture)  # before storing anything: is there an original to crop?
    store = CropStore.for_dataset(project.dataset_dir)
    try:
        store.set_user_box(picture, box)
    except ValueError as exc:
        msg = f"{picture}: {exc}."
        raise DbcharError(msg) from None
    store.save()
    # "manual": only boxes you set are used, so no face detector is loaded for a box we already have.
    result = _remake(
        host, project, picture, config=replace(config, crop="manual"), job=job, upscaler=upscaler
    )
    return _outcome(picture, result, "Saved your square;")


def reset_box(
    host: Host,
    project: Project,
    picture: str,
    *,
    config: PrepConfig,
    job: JobContext,
    upscaler: str | None = None,
) -> Remade:
    """Forget the square the user set for ``picture`` and let prep choose again (focal in manual mode)."""
    original_of(project.dataset_dir, picture)
    store = CropStore.for_dataset(project.dataset_dir)
    store.clear_user_box(picture)
    store.save()
    automatic = config if config.crop != "manual" else replace(config, crop="focal")
    result = _remake(host, project, picture, config=automatic, job=job, upscaler=upscaler)
    return _outcome(picture, result, "Back to an automatic square;")


# --------------------------------------------------------------------------------------------------
# Duplicates and the dataset as it is


@dataclass(frozen=True)
class DatasetLook:
    """Everything the tab shows about a dataset, read from disk.

    Attributes:
        pictures: the pictures in the dataset.
        excluded: the names taken out of it.
        health: the health report (its ``duplicates`` are the pairs the tab lists).
        report: the last prep report (JSON values), or ``None``.
    """

    pictures: list[DatasetPicture]
    excluded: list[str]
    health: HealthReport
    report: dict[str, Any] | None

    @property
    def pairs(self) -> list[DuplicatePair]:
        """The near-duplicate pairs, closest first (from the health report)."""
        return list(self.health.duplicates)


def view_config(resolution: Any, duplicate_distance: Any) -> PrepConfig:
    """The two settings the dataset view depends on, from the form's widgets.

    A value the form would reject (being typed) shows the view with the default instead: the view
    only phrases the too-small finding with the resolution, and Prepare reports the bad value.
    """
    try:
        return from_dict(PrepConfig, {"resolution": resolution, "duplicate_distance": duplicate_distance})
    except ValueError:
        return PrepConfig()


def look(dataset_dir: Path, config: PrepConfig) -> DatasetLook:
    """Read the dataset folder: pictures, excluded ones, health (with duplicates), last report."""
    dataset_dir = Path(dataset_dir)
    health = dataset_health(dataset_dir, resolution=config.resolution, max_distance=config.duplicate_distance)
    return DatasetLook(
        dataset_pictures(dataset_dir), excluded_pictures(dataset_dir), health, read_report(dataset_dir)
    )


def find_pair(pairs: Sequence[DuplicatePair], label: str | None) -> DuplicatePair:
    """The pair listed as ``label`` (see :func:`~lib_dbchar.ui.dataset_render.pair_label`).

    Raises:
        DbcharError: no such pair any more (none picked, or the list changed meanwhile).
    """
    from lib_dbchar.ui.dataset_render import pair_label  # the label's one definition

    found = next((p for p in pairs if pair_label(p) == label), None)
    if found is None:
        msg = "Pick a pair first (the list is refreshed after every change)."
        raise DbcharError(msg)
    return found


def drop_duplicate(dataset_dir: Path, pair: DuplicatePair, keep: str) -> str:
    """Keep one picture of a near-duplicate pair; the other moves to ``excluded/`` (undo: restore).

    Args:
        dataset_dir: the dataset folder.
        pair: the pair.
        keep: ``"first"`` or ``"second"``: the one that stays.

    Returns:
        A message for the user.

    Raises:
        DbcharError: the move is impossible (a file of that name is already in ``excluded/``).
    """
    if keep not in ("first", "second"):
        msg = f"keep must be 'first' or 'second', not {keep!r}"
        raise ValueError(msg)
    kept, dropped = (pair.first, pair.second) if keep == "first" else (pair.second, pair.first)
    exclude_images(dataset_dir, [dropped])
    return f"Kept {kept}; moved {dropped} (with its caption) to excluded/. Restore it below if needed."


def restore_picture(dataset_dir: Path, picture: str) -> str:
    """Put an excluded picture back into the dataset; returns a message for the user."""
    if not picture:
        msg = "Pick an excluded picture to restore."
        raise DbcharError(msg)
    restore_images(dataset_dir, [picture])
    return f"Restored {picture} to the dataset."
