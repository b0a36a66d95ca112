"""Tag a folder of pictures: the settings, the batch pipeline and its result.

A UI tab or the CLI calls :func:`run_tagging` with a :class:`TaggerConfig` (validated from the
form's dict by :func:`lib_dbchar.config.from_dict`) and shows the :class:`TaggingResult`.

The pipeline keeps the model busy: worker threads decode and prepare the next pictures (PIL and
numpy release the GIL for that work) while the main thread runs the current batch through the one
session, selects tags and writes captions. Batches are as large as the model allows (its batch
axis is read from the session; v2.0 exports take one picture at a time). A picture that cannot be
read is reported and skipped; the run goes on. Every caption is written atomically through a
:class:`~lib_dbchar.tagger.backups.CaptionJournal`, so a whole run can be undone.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lib_dbchar.config import setting
from lib_dbchar.errors import DbcharError, JobStopped
from lib_dbchar.jobs import JobContext
from lib_dbchar.paths import atomic_write
from lib_dbchar.tagger.backups import CaptionJournal, backup_root
from lib_dbchar.tagger.captions import (
    ORDERS,
    WRITE_MODES,
    CaptionStyle,
    caption_path,
    caption_tags,
    merge_caption,
    parse_replacements,
    parse_tag_list,
    read_caption,
)
from lib_dbchar.tagger.errors import ImageProblem
from lib_dbchar.tagger.models import DEFAULT_MODEL, MODEL_KEYS, resolve_model_files
from lib_dbchar.tagger.postprocess import ImageTags, Thresholds, select_batch
from lib_dbchar.tagger.preprocess import IMAGE_SUFFIXES, is_image_file, load_and_prepare
from lib_dbchar.tagger.session import CUDA, SessionFactory, Tagger, TaggerHolder, core_count

_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")
# Batch sizes when the user leaves it at 0 and the model's batch is dynamic: on a CPU larger
# batches gain little and cost memory; a GPU wants more pictures per call.
AUTO_BATCH_CPU = 8
AUTO_BATCH_GPU = 32


@dataclass(frozen=True)
class TaggerConfig:
    """The Tags tab's form and the CLI's options (validate a dict with ``config.from_dict``)."""

    model: str = setting(
        DEFAULT_MODEL,
        label="Tagger model",
        choices=MODEL_KEYS,
        help="SmilingWolf's WD14 taggers, downloaded once at a pinned revision. v3 models know newer "
        "tags and take batches; eva02-large is the most accurate and the slowest.",
    )
    model_dir: str = setting(
        "",
        label="Local model folder",
        help="A folder holding model.onnx and selected_tags.csv of a WD14 model; when set it replaces "
        "the model above and nothing is downloaded.",
    )
    general_threshold: float = setting(
        0.35,
        label="General tag threshold",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        help="A general tag is written when the model is more sure than this (strictly above). "
        "Lower: more tags, more mistakes. Model cards: ~0.27 for swinv2/convnext v3, ~0.53 for eva02-large.",
    )
    character_threshold: float = setting(
        0.85,
        label="Character tag threshold",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        help="The same for character names; kept high because a wrong name poisons training.",
    )
    general_mcut: bool = setting(
        False,
        label="MCut for general tags",
        help="Let each picture choose its own threshold at the largest drop in confidence.",
    )
    character_mcut: bool = setting(
        False,
        label="MCut for character tags",
        help="MCut for character names (never below 0.15).",
    )
    write_mode: str = setting(
        "skip",
        label="Existing captions",
        choices=WRITE_MODES,
        help="skip: leave pictures that already have a caption alone; overwrite: replace it; "
        "append / prepend: add the new tags after / before the existing ones (no duplicates).",
    )
    escape: bool = setting(
        False,
        label="Escape brackets",
        help="Write \\( \\) for prompt use. Leave off for training captions.",
    )
    order: str = setting(
        "confidence",
        label="Tag order",
        choices=ORDERS,
        help="Characters first, then general tags by falling confidence, or each group A-Z.",
    )
    max_tags: int = setting(
        0,
        label="Most tags per caption",
        minimum=0,
        maximum=1000,
        help="Keep only this many of the most confident tags (0: no limit).",
    )
    exclude: str = setting(
        "",
        label="Never write these tags",
        multiline=True,
        help="Comma-separated; matched ignoring case, with '_' or spaces (e.g. 'solo, simple background').",
    )
    always_first: str = setting(
        "",
        label="Always first",
        help="Tags put at the front of every caption, e.g. your instance token.",
    )
    replacements: str = setting(
        "",
        label="Replacements",
        multiline=True,
        help="'old -> new' pairs, one per line or comma-separated; an empty new drops the tag.",
    )
    caption_extension: str = setting(".txt", label="Caption extension", help="Written beside each picture.")
    recursive: bool = setting(False, label="Include sub-folders")
    exif_transpose: bool = setting(
        True,
        label="Respect EXIF rotation",
        help="Rotate phone photos upright before tagging (the reference taggers do not).",
    )
    batch_size: int = setting(
        0,
        label="Batch size",
        minimum=0,
        maximum=256,
        help="Pictures per model call; 0 picks one (8 on a CPU, 32 on a GPU). Models that take one "
        "picture at a time ignore it.",
    )
    workers: int = setting(
        0,
        label="Loader threads",
        minimum=0,
        maximum=64,
        help="Threads preparing pictures; 0: one per core.",
    )
    allow_download: bool = setting(
        True,
        label="Download the model if missing",
        help="Off: use only the cache or the local folder.",
    )

    def __post_init__(self) -> None:
        if not self.model_dir.strip() and self.model not in MODEL_KEYS:
            raise ValueError(
                f"TaggerConfig.model: {self.model!r} is not one of {', '.join(MODEL_KEYS)} "
                "(or set model_dir to a local model folder)"
            )
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TaggerConfig.{name}: {value!r} must be between 0 and 1")
        if self.write_mode not in WRITE_MODES:
            modes = ", ".join(WRITE_MODES)
            raise ValueError(f"TaggerConfig.write_mode: {self.write_mode!r} is not one of {modes}")
        if self.order not in ORDERS:
            raise ValueError(f"TaggerConfig.order: {self.order!r} is not one of {', '.join(ORDERS)}")
        if not _EXTENSION.match(self.caption_extension) or self.caption_extension.lower() in IMAGE_SUFFIXES:
            raise ValueError(
                f"TaggerConfig.caption_extension: {self.caption_extension!r} must look like "
                "'.txt' and must not be a picture format"
            )
        for name in ("max_tags", "batch_size", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"TaggerConfig.{name}: {getattr(self, name)!r} must be 0 or more")
        try:
            parse_replacements(self.replacements)
        except ValueError as exc:
            raise ValueError(f"TaggerConfig.replacements: {exc}") from None

    def thresholds(self) -> Thresholds:
        """The tag selection rule."""
        return Thresholds(
            self.general_threshold, self.character_threshold, self.general_mcut, self.character_mcut
        )

    def caption_style(self) -> CaptionStyle:
        """The caption formatting rule."""
        return CaptionStyle(
            escape=self.escape,
            order=self.order,
            max_tags=self.max_tags,
            exclude=parse_tag_list(self.exclude),
            always_first=parse_tag_list(self.always_first),
            replacements=parse_replacements(self.replacements),
        )


@dataclass(frozen=True)
class ImageResult:
    """One picture's outcome.

    Attributes:
        image: the picture.
        caption: its caption file.
        action: ``written`` (new caption), ``overwritten``, ``appended``, ``prepended``, or ``kept``
            (an existing caption left alone in skip mode).
        tags: the caption now in the file.
        scores: the tagger's selection with probabilities (``None`` for kept pictures that were not
            run through the model).
    """

    image: str
    caption: str
    action: str
    tags: list[str]
    scores: ImageTags | None = None

    def to_dict(self) -> dict:
        out = {"image": self.image, "caption": self.caption, "action": self.action, "tags": list(self.tags)}
        if self.scores is not None:
            out.update(self.scores.to_dict())
        return out


@dataclass(frozen=True)
class Problem:
    """A picture that was not tagged, and why (the message names the file and says what to do)."""

    path: str
    message: str


@dataclass
class TaggingResult:
    """What a tagging run did (serialises to JSON with :meth:`to_dict`).

    Attributes:
        model / revision / model_source: the model used (``model_source``: cache, download or folder).
        provider: the onnxruntime provider that ran the model; ``providers`` all in use.
        batch_size / workers: as run.
        images: per-picture outcomes, in file order.
        problems: pictures skipped, with the reason.
        warnings: provider fall-backs, install problems.
        load_seconds / seconds: model loading time; tagging time (loading excluded).
        backup: the caption backup folder of this run (``""`` when nothing was written).
        json_path: where the per-picture JSON went (``""`` when not asked for).
        stopped: the user stopped the run; ``images`` holds what was finished.
    """

    model: str
    revision: str
    model_source: str
    provider: str
    providers: list[str]
    batch_size: int
    workers: int
    images: list[ImageResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    load_seconds: float = 0.0
    seconds: float = 0.0
    backup: str = ""
    json_path: str = ""
    stopped: bool = False

    @property
    def tagged(self) -> int:
        """Pictures run through the model."""
        return sum(1 for r in self.images if r.scores is not None)

    @property
    def images_per_second(self) -> float:
        return self.tagged / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        """Pictures per action, plus ``problems``."""
        out: dict[str, int] = {}
        for r in self.images:
            out[r.action] = out.get(r.action, 0) + 1
        out["problems"] = len(self.problems)
        return out

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k not in ("images", "problems")}
        data["images"] = [r.to_dict() for r in self.images]
        data["problems"] = [asdict(p) for p in self.problems]
        data["images_per_second"] = round(self.images_per_second, 3)
        data["counts"] = self.counts()
        return data

    def summary(self) -> str:
        """A few lines for a log or the CLI."""
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items())
        lines = [
            f"{self.model} ({self.model_source}{', ' + self.revision[:10] if self.revision else ''}) on "
            f"{self.provider}, batch {self.batch_size}: {counts}",
            f"{self.tagged} pictures in {self.seconds:.1f} s ({self.images_per_second:.1f}/s), "
            f"model loaded in {self.load_seconds:.1f} s",
        ]
        if self.backup:
            lines.append(f"previous captions backed up in {self.backup} (undo restores them)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"skipped: {p.message}" for p in self.problems]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Which pictures, which captions


def list_images(source: Path | Sequence[Path], *, recursive: bool = False) -> tuple[Path, list[Path]]:
    """The pictures to tag and the folder they belong to (where backups go).

    Args:
        source: a folder, or a list of picture files.
        recursive: with a folder, include its sub-folders (never dbchar's own backup folder).

    Returns:
        ``(root, pictures)``, pictures sorted by path.

    Raises:
        DbcharError: the folder does not exist, a listed file is missing, or there is no picture.
    """
    if isinstance(source, str | Path):
        folder = Path(source)
        if not folder.is_dir():
            raise DbcharError(f"{folder} is not a folder; give the folder holding the pictures")
        candidates = folder.rglob("*") if recursive else folder.iterdir()
        hidden = backup_root(folder).parent
        images = sorted(p for p in candidates if hidden not in p.parents and is_image_file(p))
        root = folder
    else:
        images = sorted(Path(p) for p in source)
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise DbcharError(f"pictures not found: {', '.join(missing)}")
        root = Path(_common_folder(images)) if images else Path()
    if not images:
        raise DbcharError(f"no pictures in {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return root, images


def _common_folder(paths: Sequence[Path]) -> str:
    return os.path.commonpath([str(p.resolve().parent) for p in paths])


@dataclass(frozen=True)
class _Job:
    image: Path
    caption: Path
    existing: list[str] | None


def plan_jobs(
    images: Sequence[Path], config: TaggerConfig, *, tag_kept: bool = False
) -> tuple[list[_Job], list[ImageResult], list[Problem]]:
    """Split pictures into ones to tag, captions kept as they are, and problems.

    Two pictures sharing a stem (``a.png``, ``a.jpg``) would share ``a.txt``: the second is a
    problem. In skip mode pictures with a caption are kept without running the model, unless
    ``tag_kept`` (the JSON report wants their scores).
    """
    jobs, kept, problems = [], [], []
    owners: dict[Path, Path] = {}
    for image in images:
        caption = caption_path(image, config.caption_extension)
        if caption in owners:
            problems.append(
                Problem(
                    str(image),
                    f"{image}: shares the caption file {caption.name} with "
                    f"{owners[caption].name}; rename one of the two pictures",
                )
            )
            continue
        owners[caption] = image
        try:
            existing = read_caption(caption)
        except (OSError, UnicodeDecodeError) as exc:
            message = f"{caption} is not readable as UTF-8 text ({exc}); fix or delete it"
            problems.append(Problem(str(image), message))
            continue
        if existing is not None and config.write_mode == "skip" and not tag_kept:
            kept.append(ImageResult(str(image), str(caption), "kept", existing))
            continue
        jobs.append(_Job(image, caption, existing))
    return jobs, kept, problems


# --------------------------------------------------------------------------------------------------
# The pipeline


def prepared_images(
    paths: Sequence[Path], size: int, *, workers: int, window: int, exif_transpose: bool = True
) -> Iterator[tuple[Path, np.ndarray | ImageProblem]]:
    """Decode and prepare pictures in worker threads, yielding them in order.

    At most ``window`` pictures are in flight, so memory stays bounded (each is float32
    ``[S, S, 3]``, 2.4 MB at S = 448). Closing the iterator early cancels what has not started.

    Yields:
        ``(path, array)`` or ``(path, ImageProblem)`` for a picture that could not be read.
    """
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="dbchar-tagger")
    pending: deque[tuple[Path, Future]] = deque()
    todo = iter(paths)
    try:
        for path in todo:
            pending.append((path, pool.submit(load_and_prepare, path, size, exif_transpose=exif_transpose)))
            if len(pending) >= window:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load_and_prepare, nxt, size, exif_transpose=exif_transpose)))
            try:
                yield path, future.result()
            except ImageProblem as exc:
                yield path, exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def load_tagger(
    config: TaggerConfig,
    *,
    device: str | None = "auto",
    cache_dir: Path | str | None = None,
    session_factory: SessionFactory | None = None,
    holder: TaggerHolder | None = None,
) -> Tagger:
    """Resolve the configured model (cache, download or folder) and load it.

    Args:
        config: the settings (``model`` / ``model_dir`` / ``allow_download`` are used).
        device: see :func:`~lib_dbchar.tagger.session.choose_providers`.
        cache_dir: the model cache folder; ``None`` for Hugging Face's.
        session_factory: builds the session (tests).
        holder: reuse the session this holder keeps when it is for the same model and device (a
            UI tab keeps one between clicks and calls ``holder.release()`` before training).

    Raises:
        TaggerModelError / ModelUnavailable: see :mod:`lib_dbchar.tagger.models` and
            :meth:`Tagger.load`.
    """
    files = resolve_model_files(
        config.model,
        config.model_dir,
        cache_dir=Path(cache_dir) if cache_dir else None,
        allow_download=config.allow_download,
    )
    if holder is not None:
        return holder.get(files, device=device, session_factory=session_factory)
    return Tagger.load(files, device=device, session_factory=session_factory)


def _action(existing: list[str] | None, mode: str) -> str:
    if existing is None:
        return "written"
    return {"overwrite": "overwritten", "append": "appended", "prepend": "prepended"}.get(mode, "kept")


@dataclass
class _Run:
    """The mutable state of one run (kept out of the functions so each stays small)."""

    config: TaggerConfig
    tagger: Tagger
    journal: CaptionJournal
    ctx: JobContext
    result: TaggingResult
    total: int
    style: CaptionStyle = field(init=False)
    thresholds: Thresholds = field(init=False)
    done: int = 0

    def __post_init__(self) -> None:
        self.style = self.config.caption_style()
        self.thresholds = self.config.thresholds()

    def problem(self, path: Path, exc: Exception) -> None:
        self.result.problems.append(Problem(str(path), str(exc)))
        self.done += 1
        self.ctx.report(self.done, self.total, f"Skipped {path.name}: {exc}")

    def flush(self, jobs: list[_Job], arrays: list[np.ndarray]) -> None:
        """Run one batch through the model and write its captions."""
        if not jobs:
            return
        self.ctx.check_stop("tagging")
        probs = self.tagger.predict(np.stack(arrays))
        for job, tags in zip(jobs, select_batch(probs, self.tagger.table, self.thresholds), strict=True):
            caption = caption_tags(tags, self.style)
            merged = merge_caption(job.existing, caption, self.config.write_mode)
            if merged is None:
                final = list(job.existing or [])
            else:
                self.journal.write(job.caption, merged)
                final = merged
            action = _action(job.existing, self.config.write_mode)
            self.result.images.append(ImageResult(str(job.image), str(job.caption), action, final, tags))
            self.done += 1
            self.ctx.report(self.done, self.total, f"Tagged {self.done}/{self.total}: {job.image.name}")
        jobs.clear()
        arrays.clear()


def _auto_batch(tagger: Tagger, wanted: int) -> int:
    if wanted:
        return tagger.info.batch_size(wanted)
    return tagger.info.batch_size(AUTO_BATCH_GPU if tagger.info.provider == CUDA else AUTO_BATCH_CPU)


def _write_json(path: Path, result: TaggingResult, config: TaggerConfig) -> None:
    doc = {
        "model": result.model,
        "revision": result.revision,
        "provider": result.provider,
        "thresholds": asdict(config.thresholds()),
        # Which model this was, as the settings name it: "Pick a checkpoint" scores with the same one.
        "tagger": {"model": config.model, "model_dir": config.model_dir},
        "stopped": result.stopped,
        "images": [r.to_dict() for r in result.images if r.scores is not None],
        "problems": [asdict(p) for p in result.problems],
    }
    atomic_write(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


def run_tagging(
    config: TaggerConfig,
    source: Path | Sequence[Path],
    ctx: JobContext | None = None,
    *,
    device: str | None = "auto",
    cache_dir: Path | str | None = None,
    json_out: Path | str | None = None,
    tagger: Tagger | None = None,
    session_factory: SessionFactory | None = None,
) -> TaggingResult:
    """Tag every picture of a folder (or a list) and write ``stem<ext>`` captions beside them.

    Args:
        config: the settings.
        source: a folder (see ``config.recursive``) or picture files.
        ctx: progress (one report per picture) and stop requests (honoured between batches).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``/``"cuda:N"`` (the host's device); see
            :func:`~lib_dbchar.tagger.session.choose_providers`.
        cache_dir: the model cache folder (the ``tagger_cache_dir`` setting); ``None`` for Hugging
            Face's.
        json_out: also write every picture's scored tags to this JSON file.
        tagger: a loaded :class:`Tagger` to reuse (a UI keeps one in a ``TaggerHolder``); it must
            be for ``config``'s model. Without it one is loaded here and closed at the end.
        session_factory: builds the ONNX session (tests); default onnxruntime.

    Returns:
        The :class:`TaggingResult`.

    Raises:
        DbcharError: no pictures / missing folder; TaggerModelError / ModelUnavailable for the model.
        JobStopped: the user stopped the run. Captions written until then are complete and recorded
            in the backup (undo removes them), and ``json_out`` holds the finished pictures.
    """
    ctx = ctx or JobContext()
    root, images = list_images(source, recursive=config.recursive)
    jobs, kept, problems = plan_jobs(images, config, tag_kept=json_out is not None)
    total = len(jobs) + len(kept) + len(problems)
    owned = tagger is None
    started = time.perf_counter()
    if tagger is None:
        ctx.report(0, total, "Loading the tagger model")
        tagger = load_tagger(config, device=device, cache_dir=cache_dir, session_factory=session_factory)
    try:
        return _tag_all(
            config=config,
            tagger=tagger,
            root=root,
            jobs=jobs,
            kept=kept,
            problems=problems,
            ctx=ctx,
            load_seconds=time.perf_counter() - started,
            json_out=Path(json_out) if json_out else None,
        )
    finally:
        if owned:
            tagger.close()


def _tag_all(
    *,
    config: TaggerConfig,
    tagger: Tagger,
    root: Path,
    jobs: list[_Job],
    kept: list[ImageResult],
    problems: list[Problem],
    ctx: JobContext,
    load_seconds: float,
    json_out: Path | None,
) -> TaggingResult:
    batch = _auto_batch(tagger, config.batch_size)
    workers = config.workers or core_count()
    result = TaggingResult(
        model=tagger.files.name,
        revision=tagger.files.revision,
        model_source=tagger.files.source,
        provider=tagger.info.provider,
        providers=list(tagger.info.providers),
        batch_size=batch,
        workers=workers,
        images=list(kept),
        problems=list(problems),
        warnings=list(tagger.warnings),
        load_seconds=load_seconds,
    )
    started = time.perf_counter()
    total = len(jobs) + len(kept) + len(problems)
    with CaptionJournal(root, f"tagging ({config.write_mode})") as journal:
        run = _Run(config, tagger, journal, ctx, result, total, done=len(kept) + len(problems))
        by_image = {job.image: job for job in jobs}
        pending_jobs: list[_Job] = []
        pending_arrays: list[np.ndarray] = []
        stream = prepared_images(
            [j.image for j in jobs],
            tagger.info.image_size,
            workers=workers,
            window=batch + 2 * workers,
            exif_transpose=config.exif_transpose,
        )
        try:
            for path, item in stream:
                if isinstance(item, ImageProblem):
                    run.problem(path, item)
                    continue
                pending_jobs.append(by_image[path])
                pending_arrays.append(item)
                if len(pending_jobs) >= batch:
                    run.flush(pending_jobs, pending_arrays)
            run.flush(pending_jobs, pending_arrays)
        except JobStopped:
            result.stopped = True
            raise
        finally:
            stream.close()
            result.seconds = time.perf_counter() - started
            result.backup = str(journal.folder or "")
            if json_out is not None:
                result.json_path = str(json_out)
                _write_json(json_out, result, config)
    result.backup = str(journal.folder or "")
    return result
