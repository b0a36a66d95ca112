"""Dataset preparation: pictures in, square PNGs of the training resolution out, with a health report.

``run_prep(config, src, dst, ctx)`` reads every picture of ``src`` (a folder, or a list of uploaded
files), never writing to it, and writes ``<dst>/<stem>.png`` at ``config.resolution`` with the
source's caption (``<stem>.txt``) beside it. Each output is the largest square of the original (or
the box you set), resized uniformly: a crop, never a squash. A picture that cannot be used is skipped
with its reason and the batch goes on. ``<dst>/crops.json`` remembers boxes and hashes;
``<dst>/prep-report.json`` holds the :class:`PrepResult`.

Speed without losing quality: large JPEGs are decoded at 1/2..1/8 scale by libjpeg when the crop
still has at least twice the output resolution; the final resize is Lanczos with Pillow's
``reducing_gap`` (a box-filter pre-reduction far above the output size, then Lanczos); pictures
are prepared on a thread pool (Pillow releases the GIL while decoding, resizing and compressing)
with at most two per worker in flight, so memory stays bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from PIL import Image

from lib_dbchar.dataset.boxes import CropEntry, CropStore
from lib_dbchar.dataset.crop import Box, center_box, focal_box, largest_square, scale_region, validate_box
from lib_dbchar.dataset.decode import BadImage, Decoded, decode_image
from lib_dbchar.dataset.dedupe import EXCLUDED_DIR, DuplicatePair, hash_hex, move_files, phash
from lib_dbchar.dataset.focal import (
    Detection,
    DetectorUnavailable,
    FaceDetector,
    default_threads,
    load_face_detector,
    main_subject,
    saliency_box,
)
from lib_dbchar.dataset.options import PrepConfig
from lib_dbchar.dataset.report import HealthReport, dataset_health, to_jsonable, write_json
from lib_dbchar.errors import DbcharError, JobStopped, NameRejected, TargetExists
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write, atomic_writer, safe_name

REPORT_FILE = "prep-report.json"
OUTPUT_SUFFIX = ".png"
CAPTION_SUFFIX = ".txt"
FLIP_SUFFIX = "-flipped"
# Pre-reduce by an integer factor (box filter) while at least 2x the output remains, then Lanczos.
# Measured on 2-12 MP pictures against a full Lanczos: mean difference 0.05 of 255 levels, 99th
# percentile under 1 level, 2.6x faster than reducing_gap=3 (which rarely reduces below 3072 px).
REDUCING_GAP = 2.0
# Decode JPEGs reduced only while the crop keeps at least this many times the output side.
DRAFT_MARGIN = 2.0
# zlib level 3 writes 512 px PNGs ~3x faster than the default 6 for a few % more bytes; lossless either way.
PNG_COMPRESS_LEVEL = 3
IN_FLIGHT_PER_WORKER = 2
ANALYSIS_SIDE = 640  # the face detector's input side
MAX_AUTO_WORKERS = 4
# Files a folder of pictures often holds that are not pictures, and are not worth a "skipped" line.
_IGNORED_FILES = {"thumbs.db", "desktop.ini", "crops.json", REPORT_FILE}

METHOD_USER = "your box"
METHOD_FACE = "face"
METHOD_SALIENCY = "saliency"
METHOD_CENTER = "center"

Upscaler = Callable[[Image.Image, int], Image.Image]
"""Enlarges a square crop to ``side`` x ``side`` (the default is Lanczos; the webui offers its own)."""


def lanczos_upscale(image: Image.Image, side: int) -> Image.Image:
    """The default :data:`Upscaler`: a uniform Lanczos enlargement to ``side`` x ``side``."""
    return image.resize((side, side), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class PreparedImage:
    """One dataset picture this run wrote.

    Attributes:
        name: the PNG's file name in the dataset folder.
        source: the original's file name.
        source_size: the original's upright ``(width, height)``.
        box: the square cut from it, ``(left, top, right, bottom)`` in its pixels.
        method: how the square was chosen: "your box", "face", "saliency" or "center".
        upscale: enlargement factor when the square was under the resolution, else ``None``.
        flip: the mirrored copy's file name, if made.
        caption: "copied" (from the source), "kept" (the dataset's differs and was kept), "existing"
            (already in the dataset) or "none".
        notes: what decoding and cropping did ("EXIF orientation 6 applied", ...).
    """

    name: str
    source: str
    source_size: tuple[int, int]
    box: Box
    method: str
    upscale: float | None = None
    flip: str | None = None
    caption: str = "none"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SkippedFile:
    """A file that did not become a dataset picture, and why (the reason says what to do)."""

    file: str
    reason: str


@dataclass
class PrepResult:
    """What a prep run did. ``to_dict()`` is its JSON (also written to ``<dst>/prep-report.json``).

    Attributes:
        dataset_dir: where the pictures went.
        prepared: the pictures written, sorted by name.
        skipped: files not used, each with its reason.
        excluded: dataset pictures you excluded earlier, not made again.
        duplicates: near-duplicate pairs in the dataset (also in ``health``).
        health: the dataset health report.
        focal: how focal crops found the subject this run (detector name, or why saliency).
        stopped: True when the user stopped the run before the end.
        seconds: wall time of the run.
    """

    dataset_dir: Path
    prepared: list[PreparedImage] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    health: HealthReport | None = None
    focal: str = ""
    stopped: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON values (what ``prep-report.json`` / the API return)."""
        return to_jsonable(self)

    def as_text(self) -> str:
        """A summary for a terminal: counts, each skipped file with its reason, the health verdict."""
        lines = [f"Prepared {len(self.prepared)} pictures into {self.dataset_dir} in {self.seconds:.1f} s."]
        if self.focal:
            lines.append(f"Focal crops: {self.focal}")
        upscaled = [p for p in self.prepared if p.upscale]
        for p in upscaled:
            lines.append(f"  enlarged {p.upscale:.2f}x: {p.name} (crop side {p.box[2] - p.box[0]} px)")
        for s in self.skipped:
            lines.append(f"  skipped {s.file}: {s.reason}")
        if self.excluded:
            lines.append(f"  excluded earlier (not re-made): {', '.join(self.excluded)}")
        if self.health:
            lines.append(self.health.as_text())
        if self.stopped:
            lines.append("Stopped before the end: run again to finish (finished pictures are kept).")
        return "\n".join(lines)


class PrepStopped(JobStopped):
    """The user stopped prep; ``result`` holds what was done (also saved in the report file)."""

    def __init__(self, message: str, result: PrepResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class CropProposal:
    """The square prep would cut from one picture (what the crop nudge starts from).

    Attributes:
        source_size: the original's upright ``(width, height)``; boxes are in these pixels.
        box: the proposed square.
        method: "your box", "face", "saliency" or "center".
        faces: detected faces (empty unless the detector ran).
        upscale: the enlargement the box needs, or ``None``.
        notes: decoding notes and fallbacks.
    """

    source_size: tuple[int, int]
    box: Box
    method: str
    faces: list[Detection] = field(default_factory=list)
    upscale: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON values (what ``prep-report.json`` / the API return)."""
        return to_jsonable(self)


# --------------------------------------------------------------------------------------------------
# Finding and naming the sources


@dataclass(frozen=True)
class SourceFile:
    """A candidate picture and the caption file that travels with it (same stem, ``.txt``)."""

    path: Path
    caption: Path | None = None


def _is_candidate(path: Path) -> bool:
    name = path.name
    return (
        not name.startswith(".")
        and name.lower() not in _IGNORED_FILES
        and path.suffix.lower() != CAPTION_SUFFIX
    )


def collect_sources(src: Path | Sequence[Path]) -> list[SourceFile]:
    """The pictures to prepare: every file of a folder (not its sub-folders), or a list of files.

    Caption files (``.txt``) are not candidates themselves; each travels with the picture of the same
    stem. Hidden files and system clutter (Thumbs.db, desktop.ini) are ignored; anything else that is
    not a picture is tried and reported as skipped with its reason.

    Args:
        src: a folder, or the uploaded files (captions among them are matched by stem).

    Returns:
        Sources sorted by file name (the order that decides names on collisions).

    Raises:
        DbcharError: the folder or a listed file does not exist.
    """
    if isinstance(src, str | os.PathLike):
        folder = Path(src)
        if not folder.is_dir():
            raise DbcharError(f"{folder} is not a folder; give the folder that holds the pictures")
        files = [p for p in folder.iterdir() if p.is_file()]
    else:
        files = [Path(p) for p in src]
        absent = [str(p) for p in files if not p.is_file()]
        if absent:
            raise DbcharError(f"not a file: {', '.join(absent)}")
    captions = {(p.parent, p.stem): p for p in files if p.suffix.lower() == CAPTION_SUFFIX}
    chosen = sorted((p for p in files if _is_candidate(p)), key=lambda p: (p.name.lower(), p.name))
    return [SourceFile(p, captions.get((p.parent, p.stem))) for p in chosen]


@dataclass(frozen=True)
class PlannedItem:
    """One source with its output names and the box you set for it (if any)."""

    source: SourceFile
    name: str
    flip_name: str | None
    user_box: Box | None
    known_size: tuple[int, int] | None


def _output_stem(stem: str) -> str:
    try:
        return safe_name(stem, what="picture name")
    except NameRejected:
        return "picture"


def _unique_stem(base: str, flip: bool, free: Callable[[str], bool]) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first whose output names are ``free``."""
    candidate, n = base, 1
    while not free(f"{candidate}{OUTPUT_SUFFIX}") or (
        flip and not free(f"{candidate}{FLIP_SUFFIX}{OUTPUT_SUFFIX}")
    ):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def plan_items(
    sources: Sequence[SourceFile], dst: Path, store: CropStore, config: PrepConfig
) -> tuple[list[PlannedItem], list[SkippedFile], list[str]]:
    """Give each source its output names and decide what not to do before any decoding.

    Names are the source's stem (``a.jpg`` -> ``a.png``). A name is taken when another source of
    this batch has it, or when ``crops.json`` says prep made it from a source of another file name
    (an earlier import): then the later one gets ``a-2.png``. A picture made from a source of the
    same file name is the same picture, re-made. A dataset file prep did not make is never replaced.

    Returns:
        ``(planned, skipped, excluded_names)``.
    """
    planned, skipped, excluded = [], [], []
    taken: set[str] = set()
    for source in sources:

        def free(name: str, source_name: str = source.path.name) -> bool:
            entry = store.get(name)
            return name not in taken and (entry is None or entry.source == source_name)

        stem = _unique_stem(_output_stem(source.path.stem), config.flip, free)
        name = f"{stem}{OUTPUT_SUFFIX}"
        flip_name = f"{stem}{FLIP_SUFFIX}{OUTPUT_SUFFIX}" if config.flip else None
        taken.update(n for n in (name, flip_name) if n)
        entry = store.get(name)
        ours = entry is not None and entry.source == source.path.name
        if ours and entry.excluded:
            excluded.append(name)
            continue
        foreign = [n for n in (name, flip_name) if n and (dst / n).exists() and entry is None]
        if foreign:
            skipped.append(
                SkippedFile(
                    source.path.name,
                    f"the dataset already holds {foreign[0]}, which prep did not make; rename or move it "
                    "away",
                )
            )
            continue
        user_box = entry.user_box if ours else None
        if config.crop == "manual" and user_box is None:
            skipped.append(
                SkippedFile(
                    source.path.name,
                    "crop mode is manual and no crop box is set for it: set one in the Dataset tab, or "
                    "use the focal or center crop",
                )
            )
            continue
        planned.append(PlannedItem(source, name, flip_name, user_box, entry.source_size if ours else None))
    return planned, skipped, excluded


# --------------------------------------------------------------------------------------------------
# One picture


def _crop_side(item_box: Box | None, size: tuple[int, int]) -> int:
    return item_box[2] - item_box[0] if item_box else largest_square(*size)


def _min_scale(config: PrepConfig, user_box: Box | None) -> Callable[[tuple[int, int]], float]:
    """How far a JPEG may be decoded reduced: the crop must keep DRAFT_MARGIN x the output side."""

    def scale(size: tuple[int, int]) -> float:
        side = _crop_side(
            user_box if user_box and user_box[2] <= size[0] and user_box[3] <= size[1] else None, size
        )
        return DRAFT_MARGIN * config.resolution / max(1, side)

    return scale


def analysis_view(image: Image.Image, long_side: int = ANALYSIS_SIDE) -> Image.Image:
    """A cheap reduced copy for looking at the picture (detector, saliency, hash).

    An integer box reduction keeps the long side between ``long_side`` and twice that: enough for
    the detector's 640 px input, and one pass over the full picture instead of one per analysis.
    """
    factor = max(1, max(image.size) // long_side)
    return image.reduce(factor) if factor > 1 else image


def choose_box(
    decoded: Decoded,
    config: PrepConfig,
    detector: FaceDetector | None,
    user_box: Box | None = None,
    view: Image.Image | None = None,
) -> tuple[Box, str, list[Detection], list[str]]:
    """Pick the square for a decoded picture.

    A box you set wins (if it still fits the picture); otherwise the crop mode decides: the face
    (focal, with a detector that finds one), the most salient region (focal otherwise), or the
    middle (center).

    Args:
        decoded: the picture.
        config: crop mode and detection threshold.
        detector: face detector for focal crops, or ``None`` (saliency).
        user_box: the box you set, if any.
        view: a reduced copy to analyse (see :func:`analysis_view`); made here when ``None``.

    Returns:
        ``(box, method, faces, notes)``; the box and faces are in full-resolution upright pixels.
    """
    notes: list[str] = []
    width, height = decoded.size
    if user_box is not None:
        try:
            return validate_box(user_box, width, height), METHOD_USER, [], notes
        except ValueError as exc:
            notes.append(f"the crop box you set no longer fits ({exc}); chose a new one")
    if config.crop == "center":
        return center_box(width, height), METHOD_CENTER, [], notes
    view = view if view is not None else analysis_view(decoded.image)
    faces: list[Detection] = []
    if detector is not None:
        sx, sy = view.width / width, view.height / height
        found = detector.detect(view, config.detection_threshold)
        faces = [Detection(scale_region(d.box, 1 / sx, 1 / sy), d.score) for d in found]
        subject = main_subject(faces)
        if subject is not None:
            return focal_box(width, height, subject.box), METHOD_FACE, faces, notes
        notes.append("no face found: cropped on the busiest region")
    return saliency_box(view, decoded.size), METHOD_SALIENCY, faces, notes


def render_square(
    decoded: Decoded, box: Box, side: int, upscaler: Upscaler
) -> tuple[Image.Image, float | None]:
    """Cut ``box`` from the picture and scale it uniformly to ``side`` x ``side``.

    Returns:
        ``(square, upscale)``; ``upscale`` is the enlargement factor when the box was smaller than
        ``side`` (the upscaler made it), else ``None``.
    """
    sx, sy = decoded.scale
    region = scale_region(box, sx, sy)
    crop_side = box[2] - box[0]
    if crop_side >= side:
        # box= crops and resizes in one pass, with sub-pixel accuracy when the JPEG was decoded reduced.
        square = decoded.image.resize(
            (side, side), Image.Resampling.LANCZOS, box=region, reducing_gap=REDUCING_GAP
        )
        return square, None
    crop = decoded.image.crop(tuple(round(v) for v in region))
    square = upscaler(crop, side)
    if square.size != (side, side):
        raise DbcharError(f"the upscaler returned {square.size[0]}x{square.size[1]}, not {side}x{side}")
    return square.convert("RGB"), round(side / crop_side, 3)


def _save_png(image: Image.Image, path: Path) -> None:
    with atomic_writer(path) as handle:
        image.save(handle, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


@dataclass
class _Outcome:
    item: PlannedItem
    prepared: PreparedImage | None = None
    skipped: SkippedFile | None = None
    phash: int | None = None
    preview: Image.Image | None = None
    user_box_kept: bool = False


def _upscale_with_fallback(upscaler: Upscaler, notes: list[str]) -> Upscaler:
    if upscaler is lanczos_upscale:
        return upscaler

    def run(image: Image.Image, side: int) -> Image.Image:
        try:
            out = upscaler(image, side)
        except (RuntimeError, ValueError, OSError, DbcharError) as exc:  # an upscaler's own failure
            notes.append(f"the upscaler failed ({exc}); used Lanczos")
            return lanczos_upscale(image, side)
        if out.size != (side, side):
            notes.append(f"the upscaler returned {out.size[0]}x{out.size[1]}; resized uniformly with Lanczos")
            out = (
                lanczos_upscale(out.convert("RGB"), side)
                if out.width == out.height
                else lanczos_upscale(image, side)
            )
        return out

    return run


def prepare_one(
    item: PlannedItem, config: PrepConfig, dst: Path, detector: FaceDetector | None, upscaler: Upscaler
) -> _Outcome:
    """Decode, crop, resize and write one picture (and its mirror). Runs on a worker thread.

    Bad files become a skipped outcome; anything else (a full disk) propagates.
    """
    src = item.source.path
    try:
        decoded = decode_image(
            src,
            max_pixels=config.max_pixels,
            background=config.background_rgb,
            min_scale=_min_scale(config, item.user_box),
        )
    except BadImage as exc:
        return _Outcome(item, skipped=SkippedFile(src.name, str(exc)))
    view = analysis_view(decoded.image)
    box, method, _, notes = choose_box(decoded, config, detector, item.user_box, view)
    crop_side = box[2] - box[0]
    if crop_side < config.min_side:
        reason = (
            f"its square crop is only {crop_side} px (under the {config.min_side} px minimum): enlarging it "
            f"{config.resolution / crop_side:.0f}x would teach blur; use a larger version"
        )
        return _Outcome(item, skipped=SkippedFile(src.name, reason))
    if crop_side < config.resolution and config.small_images == "skip":
        reason = (
            f"its square crop is {crop_side} px, under the {config.resolution} px resolution "
            "(small pictures: skip)"
        )
        return _Outcome(item, skipped=SkippedFile(src.name, reason))
    notes = decoded.notes + notes
    square, upscale = render_square(decoded, box, config.resolution, _upscale_with_fallback(upscaler, notes))
    _save_png(square, dst / item.name)
    if item.flip_name:
        _save_png(square.transpose(Image.Transpose.FLIP_LEFT_RIGHT), dst / item.flip_name)
    prepared = PreparedImage(
        name=item.name,
        source=src.name,
        source_size=decoded.size,
        box=box,
        method=method,
        upscale=upscale,
        flip=item.flip_name,
        notes=notes,
    )
    return _Outcome(
        item,
        prepared=prepared,
        phash=phash(view),
        preview=square,
        user_box_kept=method == METHOD_USER,
    )


# --------------------------------------------------------------------------------------------------
# Captions and the store


def copy_caption(source_caption: Path | None, target: Path) -> str:
    """Bring a source caption into the dataset without overwriting one that differs.

    Returns:
        "copied", "kept" (the dataset's own differs: it may hold your edits), "existing" (no
        source caption but the dataset has one) or "none".
    """
    if source_caption is None:
        return "existing" if target.exists() else "none"
    data = source_caption.read_bytes()
    if target.exists():
        return "existing" if target.read_bytes() == data else "kept"
    atomic_write(target, data)
    return "copied"


def _record(store: CropStore, outcome: _Outcome) -> None:
    p, item = outcome.prepared, outcome.item
    store.put(
        p.name,
        CropEntry(
            source=p.source,
            source_size=p.source_size,
            user_box=item.user_box if outcome.user_box_kept else None,
            box=p.box,
            method=p.method,
            upscale=p.upscale,
            phash=hash_hex(outcome.phash) if outcome.phash is not None else None,
            flip=p.flip,
        ),
    )


def _retire_old_mirror(name: str, flip: str | None, dst: Path, store: CropStore) -> str | None:
    """Move an earlier run's mirrored copy aside when mirroring is now off; returns a note."""
    before = store.get(name)
    if flip or before is None or not before.flip or not (dst / before.flip).exists():
        return None
    files = [dst / before.flip, (dst / before.flip).with_suffix(CAPTION_SUFFIX)]
    try:
        move_files(files, dst / EXCLUDED_DIR)
    except TargetExists as exc:
        return f"the mirrored copy {before.flip} from an earlier run stays ({exc})"
    return f"mirroring is off: moved the earlier mirrored copy {before.flip} to {EXCLUDED_DIR}/"


def _finish_outcome(outcome: _Outcome, dst: Path, store: CropStore) -> None:
    """Main-thread bookkeeping once a picture is written: captions, an old mirror, the store entry."""
    p, item = outcome.prepared, outcome.item
    p.caption = copy_caption(item.source.caption, (dst / p.name).with_suffix(CAPTION_SUFFIX))
    if p.caption == "kept":
        p.notes.append(f"kept the dataset's own caption ({item.source.caption.name} differs)")
    if p.flip:
        copy_caption(item.source.caption, (dst / p.flip).with_suffix(CAPTION_SUFFIX))
    retired = _retire_old_mirror(p.name, p.flip, dst, store)
    if retired:
        p.notes.append(retired)
    _record(store, outcome)


# --------------------------------------------------------------------------------------------------
# The job


def _resolve_detector(
    config: PrepConfig, detector: FaceDetector | None, model_cache: Path | None, workers: int, ctx: JobContext
) -> tuple[FaceDetector | None, str]:
    if config.crop != "focal":
        return None, ""
    if detector is not None:
        return detector, detector.name
    if not config.face_detector:
        return None, "saliency (the face detector is switched off)"
    ctx.report(0, 0, "Loading the face detector (downloaded once, about 12 MB)")
    try:
        loaded = load_face_detector(
            model_cache, allow_download=config.allow_download, threads=default_threads(workers)
        )
    except DetectorUnavailable as exc:
        return None, f"saliency, because: {exc}"
    return loaded, loaded.name


def _check_folders(sources: Iterable[SourceFile], dst: Path) -> None:
    target = dst.resolve()
    inside = [s.path.name for s in sources if s.path.resolve().parent == target]
    if inside:
        raise DbcharError(
            f"the destination {dst} holds the sources ({', '.join(inside[:3])}): prep writes PNGs named "
            "after them and could replace your originals; choose another destination folder"
        )


def _worker_count(config: PrepConfig) -> int:
    return config.workers or max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def run_prep(
    config: PrepConfig,
    src: Path | Sequence[Path],
    dst: Path,
    ctx: JobContext | None = None,
    *,
    detector: FaceDetector | None = None,
    model_cache: Path | None = None,
    upscaler: Upscaler = lanczos_upscale,
) -> PrepResult:
    """Prepare a dataset: every usable picture of ``src`` becomes a square PNG in ``dst``.

    Args:
        config: the settings (validated by construction).
        src: a folder of pictures, or a list of files (uploads; captions among them by stem).
        dst: the dataset folder (a project's ``dataset/``); created if needed. Must not be the
            folder of the sources.
        ctx: progress (one unit per picture, with the square as preview) and stop requests.
        detector: a face detector to use for focal crops; ``None`` loads the default one into
            ``model_cache`` when ``config.face_detector`` is on (falling back to saliency).
        model_cache: Hugging Face cache folder for the detector (``None``: the default cache).
        upscaler: enlarges crops smaller than the resolution (Lanczos by default; the webui can
            pass its own). Its failures fall back to Lanczos with a note.

    Returns:
        The :class:`PrepResult`, also written to ``<dst>/prep-report.json``.

    Raises:
        PrepStopped: the user stopped; finished pictures, ``crops.json`` and the report are saved.
        DbcharError: the source is missing, the destination is the source folder, or ``crops.json``
            is unreadable (nothing is written then).
    """
    ctx = ctx or JobContext()
    started = time.monotonic()
    dst = Path(dst)
    sources = collect_sources(src)
    _check_folders(sources, dst)
    store = CropStore.for_dataset(dst)
    planned, skipped, excluded = plan_items(sources, dst, store, config)
    dst.mkdir(parents=True, exist_ok=True)
    workers = _worker_count(config)
    detector, focal = _resolve_detector(config, detector, model_cache, workers, ctx)
    result = PrepResult(dst, skipped=skipped, excluded=excluded, focal=focal)
    try:
        _run_batch(_Batch(config, dst, detector, upscaler, store, result, workers, ctx), planned)
    finally:
        # Whatever happened, the store describes exactly the pictures on disk.
        store.save()
    return _conclude(result, config, dst, started)


def _conclude(result: PrepResult, config: PrepConfig, dst: Path, started: float) -> PrepResult:
    result.prepared.sort(key=lambda p: p.name)
    result.skipped.sort(key=lambda s: s.file)
    result.health = dataset_health(dst, resolution=config.resolution, max_distance=config.duplicate_distance)
    result.duplicates = list(result.health.duplicates)
    result.seconds = round(time.monotonic() - started, 3)
    write_json(dst / REPORT_FILE, result)
    if result.stopped:
        raise PrepStopped(f"prep stopped by the user after {len(result.prepared)} pictures", result)
    return result


@dataclass
class _Batch:
    """Everything the batch loop shares (one run)."""

    config: PrepConfig
    dst: Path
    detector: FaceDetector | None
    upscaler: Upscaler
    store: CropStore
    result: PrepResult
    workers: int
    ctx: JobContext

    def submit(self, pool: ThreadPoolExecutor, item: PlannedItem) -> Future:
        return pool.submit(prepare_one, item, self.config, self.dst, self.detector, self.upscaler)

    def take(self, outcome: _Outcome, done: int, total: int) -> None:
        """Book one finished picture (main thread): result, captions, store, progress."""
        if outcome.skipped:
            self.result.skipped.append(outcome.skipped)
            self.ctx.report(done, total, f"{done}/{total} skipped {outcome.skipped.file}")
            return
        _finish_outcome(outcome, self.dst, self.store)
        self.result.prepared.append(outcome.prepared)
        self.ctx.report(done, total, f"{done}/{total} {outcome.prepared.name}", image=outcome.preview)


def _run_batch(batch: _Batch, planned: list[PlannedItem]) -> None:
    """Prepare ``planned`` on a thread pool with bounded work in flight; fill ``batch.result``."""
    total, done = len(planned), 0
    queue = iter(planned)
    pending: set[Future] = set()
    limit = batch.workers * IN_FLIGHT_PER_WORKER
    batch.ctx.report(0, total, f"Preparing {total} pictures")
    with ThreadPoolExecutor(max_workers=batch.workers, thread_name_prefix="dbchar-prep") as pool:
        try:
            while True:
                # Keep at most `limit` pictures decoded or queued: memory is bounded whatever the batch size.
                while len(pending) < limit and not batch.result.stopped:
                    item = next(queue, None)
                    if item is None:
                        break
                    pending.add(batch.submit(pool, item))
                if not pending:
                    return
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    done += 1
                    batch.take(future.result(), done, total)
                # Between units: a stop request lets the pictures in flight finish, then ends the batch.
                if not batch.result.stopped and batch.ctx.should_stop():
                    batch.result.stopped = True
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def propose_crop(
    path: Path,
    config: PrepConfig,
    *,
    detector: FaceDetector | None = None,
    user_box: Box | None = None,
) -> CropProposal:
    """The square prep would cut from one picture now (for the crop nudge to start from).

    Args:
        path: the original picture.
        config: the settings (crop mode, threshold, background).
        detector: a loaded face detector for focal crops (``None``: saliency).
        user_box: a box already set for it; proposed back when it still fits.

    Raises:
        BadImage: the file cannot be used (the message says why).
    """
    decoded = decode_image(
        Path(path),
        max_pixels=config.max_pixels,
        background=config.background_rgb,
        min_scale=_min_scale(config, user_box),
    )
    box, method, faces, notes = choose_box(
        decoded, replace(config, crop="focal") if config.crop == "manual" else config, detector, user_box
    )
    side = box[2] - box[0]
    upscale = round(config.resolution / side, 3) if side < config.resolution else None
    return CropProposal(decoded.size, box, method, faces, upscale, decoded.notes + notes)
