"""Score a rendered grid: our tagger on every cell, and a copy check against the training pictures.

Two measurements per cell, combined per column by :mod:`~lib_dbchar.pick.rank` (whose docstring
gives the formula):

* **Tags.** A :data:`TagFn` (normally :func:`tagger_tag_fn`, our WD14 runner) gives each cell's
  tags with confidences; a tag counts when it is *strictly above* ``tag_threshold`` (the tagger's
  own rule). Tags are compared by :func:`~lib_dbchar.tagger.captions.tag_key` (case, ``_`` and
  spaces do not matter; kaomoji stay as they are), so ``Red_Hair`` from a caption matches
  ``red hair`` from the tagger.
* **Copying.** Each cell is compared with every training picture by a small signature: a 16x16
  greyscale thumbnail (layout) and an 8x8 colour thumbnail (colours), each centred on its mean
  and scaled to unit length, so their dot product is a correlation in -1..1. Box-filter
  downsampling averages 32x32-pixel blocks of a 512 px picture: resizing, JPEG blocking and
  re-encoding noise vanish, and the mean-centring ignores a uniform brightness/contrast shift. The
  similarity of two pictures is the *smaller* of the two correlations, because a copy agrees in
  layout *and* colours while a character's own pictures often share one of them. Training
  pictures are also compared mirrored (training flips them). A cell at or above
  ``copy_similarity`` (0.95) is flagged. It is a cheap check (about 1.4 ms to sign a decoded
  512 px picture and well under a microsecond per pair on one CPU core), not a perceptual metric:
  it finds reproductions, not likeness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lib_dbchar.config import setting, to_dict
from lib_dbchar.jobs import JobContext
from lib_dbchar.pick.rank import (
    SOURCE_KEY,
    CellScore,
    ColumnScore,
    Components,
    ProbeInfo,
    Ranking,
    Weights,
    column_components,
    column_evidence,
    combined_score,
    load_ranking,
    loss_at,
    rank_columns,
    save_ranking,
)
from lib_dbchar.tagger.captions import tag_key

__all__ = [
    "CellScore",
    "ColumnScore",
    "Ranking",
    "ScoreSettings",
    "Signatures",
    "SignedFiles",
    "TagFn",
    "load_ranking",
    "nearest",
    "save_ranking",
    "score_grid",
    "signatures",
    "tagger_tag_fn",
]

# Per picture: tag -> confidence (every tag at or above the TagFn's floor).
TagFn = Callable[[Sequence[Path]], list[dict[str, float]]]

GREY_SIDE = 16
COLOUR_SIDE = 8
# A thumbnail whose pixels vary less than this (0..1 scale, L2 norm after centring) is flat: a
# solid picture has no layout to correlate, so flat-vs-flat compares mean brightness instead.
_FLAT = 1e-3
TAG_BATCH = 16  # cells tagged between two stop checks


@dataclass(frozen=True)
class ScoreSettings:
    """How the grid is scored (validate a form's dict with ``config.from_dict``)."""

    tag_threshold: float = setting(
        0.35,
        label="Tag threshold",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        help="A tag counts on a sample when the tagger is more sure than this (the Tags tab's default).",
    )
    copy_similarity: float = setting(
        0.95,
        label="Copy similarity",
        minimum=0.0,
        maximum=1.0,
        step=0.01,
        help="A sample this alike to a training picture (1 = the same picture resized) is flagged as a copy.",
    )
    trait_min_share: float = setting(
        0.8,
        label="Trait share",
        minimum=0.05,
        maximum=1.0,
        step=0.05,
        help="A dataset tag on at least this share of the pictures is a trait of the character.",
    )
    pose_weight: float = setting(
        1.0, label="Pose weight", minimum=0.0, maximum=10.0, help="Weight of new poses/outfits/places."
    )
    trait_weight: float = setting(
        1.0, label="Trait weight", minimum=0.0, maximum=10.0, help="Weight of the character's traits."
    )
    leak_weight: float = setting(
        1.0, label="Leak penalty", minimum=0.0, maximum=10.0, help="Penalty for traits without the token."
    )
    drift_weight: float = setting(
        0.5, label="Drift penalty", minimum=0.0, maximum=10.0, help="Penalty for a changed class prompt."
    )
    copy_weight: float = setting(
        1.0, label="Copy penalty", minimum=0.0, maximum=10.0, help="Penalty per share of copied samples."
    )

    def __post_init__(self) -> None:
        for name in ("tag_threshold", "copy_similarity"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"ScoreSettings.{name}: {value!r} must be between 0 and 1")
        if not 0.0 < self.trait_min_share <= 1.0:
            raise ValueError(f"ScoreSettings.trait_min_share: {self.trait_min_share!r} must be in (0, 1]")
        for name in ("pose_weight", "trait_weight", "leak_weight", "drift_weight", "copy_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"ScoreSettings.{name}: {getattr(self, name)!r} must be 0 or more")
        if self.pose_weight == 0 and self.trait_weight == 0:
            msg = "ScoreSettings.pose_weight / trait_weight: at least one must be above 0"
            raise ValueError(msg)

    def weights(self) -> Weights:
        """The weights :func:`~lib_dbchar.pick.rank.combined_score` uses."""
        return Weights(
            self.pose_weight, self.trait_weight, self.leak_weight, self.drift_weight, self.copy_weight
        )


# --------------------------------------------------------------------------------------------------
# Tags


def tags_above(tags: Mapping[str, float], threshold: float) -> list[str]:
    """The tag keys strictly above ``threshold``, most confident first.

    Args:
        tags: tag (any spelling) -> confidence.
        threshold: 0..1.

    Returns:
        :func:`~lib_dbchar.tagger.captions.tag_key` forms, without duplicates.
    """
    out: dict[str, float] = {}
    for tag, score in tags.items():
        key = tag_key(tag)
        if key and float(score) > threshold and float(score) > out.get(key, -1.0):
            out[key] = float(score)
    return sorted(out, key=lambda k: -out[k])


def _found(wanted: Sequence[str], present: set[str]) -> list[str]:
    return [t for t in wanted if tag_key(t) in present]


@contextlib.contextmanager
def tagger_tag_fn(
    config: Any = None,
    *,
    device: str | None = "cpu",
    cache_dir: Path | str | None = None,
    floor: float = 0.05,
    batch_size: int = 8,
    session_factory: Any = None,
    tagger: Any = None,
) -> Iterator[TagFn]:
    """A :data:`TagFn` on our WD14 tagger, loaded once for the whole grid.

    Args:
        config: a :class:`~lib_dbchar.tagger.runner.TaggerConfig` (model, local ``model_dir``,
            downloads allowed, character threshold); ``None``: the default model.
        device: where the tagger runs (``"cpu"`` keeps the GPU for rendering).
        cache_dir: the tagger model cache (the ``tagger_cache_dir`` setting).
        floor: general tags at or below this are not reported (scoring applies its own threshold).
        batch_size: pictures per model call (fixed-batch models ignore it).
        session_factory: builds the ONNX session (tests).
        tagger: an already loaded :class:`~lib_dbchar.tagger.session.Tagger` to use (not closed here).

    Yields:
        The TagFn: paths -> per picture ``{tag: confidence}`` (general tags above ``floor``,
        character tags above the config's character threshold).

    Raises:
        TaggerModelError / ModelUnavailable: the model cannot be found or loaded (the message says
            what to do).
        ImageProblem: from the TagFn, for a picture that cannot be read (naming it).
    """
    from lib_dbchar.tagger.postprocess import Thresholds, select_batch
    from lib_dbchar.tagger.preprocess import load_and_prepare
    from lib_dbchar.tagger.runner import TaggerConfig, load_tagger

    config = config or TaggerConfig(allow_download=True)
    own = tagger is None
    if own:
        tagger = load_tagger(config, device=device, cache_dir=cache_dir, session_factory=session_factory)
    thresholds = Thresholds(general=floor, character=config.character_threshold)
    step = tagger.info.batch_size(batch_size)

    def tag(paths: Sequence[Path]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for start in range(0, len(paths), step):
            chunk = [load_and_prepare(Path(p), tagger.info.image_size) for p in paths[start : start + step]]
            for found in select_batch(tagger.predict(np.stack(chunk)), tagger.table, thresholds):
                out.append({t.name: t.score for t in (*found.character, *found.general)})
        return out

    try:
        yield tag
    finally:
        if own:
            tagger.close()


# --------------------------------------------------------------------------------------------------
# Copy check


@dataclass(frozen=True)
class Signatures:
    """Thumbnail signatures of N pictures.

    Attributes:
        grey: float64 ``[N, 256]`` centred, unit-length 16x16 greyscale thumbnails (zeros when flat).
        colour: float64 ``[N, 192]`` the same for 8x8 RGB thumbnails (centred on the overall mean).
        grey_mean / colour_mean: float64 ``[N]`` mean values (0..1), compared when both are flat.
        grey_flat / colour_flat: bool ``[N]``.
    """

    grey: np.ndarray
    colour: np.ndarray
    grey_mean: np.ndarray
    colour_mean: np.ndarray
    grey_flat: np.ndarray
    colour_flat: np.ndarray

    def __len__(self) -> int:
        return len(self.grey)


def _rgb(image: Any) -> Any:
    """RGB on white: transparent pixels count as the white a viewer shows (as the tagger sees them)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _centred(values: np.ndarray) -> tuple[np.ndarray, float, bool]:
    mean = float(values.mean())
    centred = values - mean
    norm = float(np.linalg.norm(centred))
    if norm < _FLAT:
        return np.zeros_like(centred), mean, True
    return centred / norm, mean, False


def _signature(image: Any) -> tuple[np.ndarray, np.ndarray, float, float, bool, bool]:
    from PIL import Image

    rgb = _rgb(image)
    grey = np.asarray(rgb.convert("L").resize((GREY_SIDE, GREY_SIDE), Image.BOX), dtype=np.float64) / 255.0
    colour = np.asarray(rgb.resize((COLOUR_SIDE, COLOUR_SIDE), Image.BOX), dtype=np.float64) / 255.0
    g, gm, gf = _centred(grey.ravel())
    c, cm, cf = _centred(colour.ravel())
    return g, c, gm, cm, gf, cf


def _stack(rows: Sequence[tuple]) -> Signatures:
    if not rows:
        empty = np.zeros((0,))
        flat = np.zeros((0,), dtype=bool)
        return Signatures(
            np.zeros((0, GREY_SIDE**2)), np.zeros((0, 3 * COLOUR_SIDE**2)), empty, empty, flat, flat
        )
    g, c, gm, cm, gf, cf = zip(*rows, strict=True)
    return Signatures(
        np.stack(g), np.stack(c), np.array(gm), np.array(cm), np.array(gf, bool), np.array(cf, bool)
    )


def _mirror(image: Any) -> Any:
    from PIL import Image

    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def signatures(images: Sequence[Any], *, mirrored: bool = False) -> Signatures:
    """Signatures of PIL images (see the module docstring).

    Args:
        images: PIL images, any mode and size.
        mirrored: sign the left-right mirror images instead.

    Returns:
        :class:`Signatures` with ``len(images)`` rows.
    """
    return _stack([_signature(_mirror(image) if mirrored else image) for image in images])


def _correlation(
    a: tuple[np.ndarray, np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> np.ndarray:
    """``[Na, Nb]`` correlations of ``(vectors, means, flat)`` triples: flat-vs-flat is
    ``1 - |mean difference|``, flat-vs-varied 0 (the vectors of flat rows are zeros)."""
    (a_vec, a_mean, a_flat), (b_vec, b_mean, b_flat) = a, b
    out = a_vec @ b_vec.T
    both = a_flat[:, None] & b_flat[None, :]
    out = np.where(both, 1.0 - np.abs(a_mean[:, None] - b_mean[None, :]), out)
    return np.clip(out, -1.0, 1.0)


def similarity_matrix(cells: Signatures, training: Signatures) -> np.ndarray:
    """float64 ``[cells, training]`` similarities in -1..1: min(layout, colour) correlation."""
    grey = _correlation(
        (cells.grey, cells.grey_mean, cells.grey_flat),
        (training.grey, training.grey_mean, training.grey_flat),
    )
    colour = _correlation(
        (cells.colour, cells.colour_mean, cells.colour_flat),
        (training.colour, training.colour_mean, training.colour_flat),
    )
    return np.minimum(grey, colour)


def nearest(
    cells: Signatures, training: Signatures, mirrored: Signatures | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest training picture of each cell.

    Args:
        cells: the cells' signatures (N rows).
        training: the training pictures' signatures (T rows).
        mirrored: the training pictures' mirror signatures (T rows), or ``None``.

    Returns:
        ``(index, similarity)``: int ``[N]`` (-1 without training pictures) and float64 ``[N]``.
    """
    if len(training) == 0 or len(cells) == 0:
        return np.full(len(cells), -1), np.zeros(len(cells))
    sims = similarity_matrix(cells, training)
    if mirrored is not None:
        sims = np.maximum(sims, similarity_matrix(cells, mirrored))
    index = sims.argmax(axis=1)
    return index, sims[np.arange(len(cells)), index]


def _open(path: Path) -> Any:
    from lib_dbchar.tagger.preprocess import open_image

    return open_image(Path(path))


@dataclass(frozen=True)
class SignedFiles:
    """Signatures of picture files.

    Attributes:
        paths: the readable files, in the order given.
        signatures: one row per readable file.
        mirrored: the mirror images' signatures (``None`` unless asked for).
        problems: one message per unreadable file, naming it.
    """

    paths: list[Path]
    signatures: Signatures
    mirrored: Signatures | None
    problems: list[str]


def sign_files(paths: Sequence[Path], *, mirrored: bool = False) -> SignedFiles:
    """Sign picture files one at a time (only the thumbnails stay in memory); unreadable ones are
    reported and left out.

    Args:
        paths: picture files.
        mirrored: also sign their mirror images (training pictures: training flips them).

    Returns:
        :class:`SignedFiles`.
    """
    from lib_dbchar.tagger.errors import ImageProblem

    kept, rows, mirror_rows, problems = [], [], [], []
    for path in paths:
        try:
            image = _open(path)
            image.load()
        except (ImageProblem, OSError) as exc:
            problems.append(f"{path}: cannot be read ({exc}); it was left out of the scoring")
            continue
        kept.append(Path(path))
        rows.append(_signature(image))
        if mirrored:
            mirror_rows.append(_signature(_mirror(image)))
    return SignedFiles(kept, _stack(rows), _stack(mirror_rows) if mirrored else None, problems)


# --------------------------------------------------------------------------------------------------
# The grid


def _probe_infos(grid: Any) -> dict[str, ProbeInfo]:
    return {
        p.id: ProbeInfo(p.id, p.kind, getattr(p, "label", p.id), tuple(getattr(p, "expect_tags", ())))
        for p in grid.probes
    }


def _cell_scores(
    cells: Sequence[Any],
    *,
    paths: Sequence[Path],
    tags: Sequence[Mapping[str, float]],
    near: tuple[np.ndarray, np.ndarray],
    training: Sequence[Path],
    probes: Mapping[str, ProbeInfo],
    traits: Sequence[str],
    settings: ScoreSettings,
) -> list[CellScore]:
    out = []
    index, sims = near
    for i, cell in enumerate(cells):
        present = tags_above(tags[i], settings.tag_threshold)
        present_set = set(present)
        probe = probes.get(cell.probe_id)
        found_traits = _found(traits, present_set)
        similarity = round(float(sims[i]), 4)
        out.append(
            CellScore(
                probe_id=cell.probe_id,
                column=cell.column,
                seed=int(cell.seed),
                expected_found=_found(probe.expect_tags if probe else (), present_set),
                traits_found=found_traits,
                trait_share=round(len(found_traits) / len(traits), 4) if traits else 0.0,
                nearest_training=str(training[index[i]]) if index[i] >= 0 else "",
                similarity=similarity,
                copied=bool(index[i] >= 0 and similarity >= settings.copy_similarity),
                tags=present,
                image=str(paths[i]),
            )
        )
    return out


def _tag_cells(paths: Sequence[Path], tag_fn: TagFn, ctx: JobContext, done: int, total: int) -> list[dict]:
    out: list[dict] = []
    for start in range(0, len(paths), TAG_BATCH):
        ctx.check_stop("scoring")
        chunk = list(paths[start : start + TAG_BATCH])
        found = tag_fn(chunk)
        if len(found) != len(chunk):
            msg = f"the tagger returned {len(found)} results for {len(chunk)} pictures"
            raise ValueError(msg)
        out.extend(found)
        ctx.report(done + start + len(chunk), total, f"Tagging samples {start + len(chunk)}/{len(paths)}")
    return out


def _score_column(
    column: Any,
    cells: list[CellScore],
    *,
    probes: Mapping[str, ProbeInfo],
    traits: Sequence[str],
    source_tags: Mapping[tuple[str, int], Sequence[str]],
    loss_records: Sequence[Mapping[str, Any]],
    weights: Weights,
) -> ColumnScore:
    is_source = column.key == SOURCE_KEY
    parts: Components = column_components(
        cells, probes, source_tags, has_traits=bool(traits), is_source=is_source
    )
    loss, smoothed = loss_at(loss_records, int(column.step)) if not is_source else (None, None)
    measured = [k for k in ("pose", "traits", "leak", "drift") if getattr(parts, k) is not None]
    return ColumnScore(
        column=column.key,
        label=column.label,
        step=int(column.step),
        score=combined_score(parts, weights),
        pose=round(parts.pose or 0.0, 4),
        traits=round(parts.traits or 0.0, 4),
        leak=round(parts.leak or 0.0, 4),
        drift=round(parts.drift or 0.0, 4),
        copies=parts.copies,
        loss=loss,
        evidence=column_evidence(
            cells,
            probes,
            traits,
            parts,
            step=int(column.step),
            loss=loss,
            loss_smoothed=smoothed,
            is_source=is_source,
        ),
        cells=cells,
        loss_smoothed=smoothed,
        measured=measured,
    )


def score_grid(  # noqa: PLR0917 -- the shared contract's signature (issue #7)
    grid: Any,
    traits: Sequence[str],
    training_images: Sequence[Path],
    tag_fn: TagFn,
    settings: ScoreSettings | None = None,
    ctx: JobContext | None = None,
) -> Ranking:
    """Tag every cell, check it against the training pictures and rank the columns.

    Args:
        grid: a :class:`~lib_dbchar.pick.grid.Grid` (``probes``, ``columns``, ``cells``,
            ``image_path(cell)``, ``run_dir``).
        traits: the character's constant tags (:func:`~lib_dbchar.pick.probes.character_traits`).
        training_images: the dataset's pictures (the copy check's references).
        tag_fn: see :data:`TagFn`.
        settings: thresholds and weights.
        ctx: progress per picture signed or tagged; stop checked between tagger batches.

    Returns:
        The :class:`Ranking` (not written; :func:`save_ranking` or ``run_pick`` writes it). The
        training loss comes from the run's ``logging/loss.jsonl``.

    Raises:
        JobStopped: the user stopped (nothing was written).
        ValueError: the TagFn returned the wrong number of results.
    """
    from lib_dbchar.train.run import RunFolders, read_loss_log

    settings = settings or ScoreSettings()
    ctx = ctx or JobContext()
    probes = _probe_infos(grid)
    cell_paths = [Path(grid.image_path(c)) for c in grid.cells]
    total = len(cell_paths) + len(training_images) + len(cell_paths)

    training = sign_files(training_images, mirrored=True)
    warnings = list(training.problems)
    train_paths = training.paths
    ctx.report(len(training_images), total, f"Read {len(train_paths)} training pictures")
    if not train_paths:
        warnings.append("no readable training picture: the copy check could not run")
    signed = sign_files(cell_paths)
    warnings += signed.problems
    kept_paths = signed.paths
    readable = {str(p) for p in kept_paths}
    cells = [c for c, p in zip(grid.cells, cell_paths, strict=True) if str(p) in readable]
    near = nearest(signed.signatures, training.signatures, training.mirrored)
    done = len(training_images) + len(cell_paths)
    ctx.report(done, total, f"Compared {len(cells)} samples with the training pictures")
    tags = _tag_cells(kept_paths, tag_fn, ctx, done, total)
    scored = _cell_scores(
        cells,
        paths=kept_paths,
        tags=tags,
        near=near,
        training=train_paths,
        probes=probes,
        traits=traits,
        settings=settings,
    )
    if not traits:
        warnings.append("no character traits known: the traits and leak checks were not run")

    source_tags = {(c.probe_id, c.seed): c.tags for c in scored if c.column == SOURCE_KEY}
    loss_records = read_loss_log(RunFolders(Path(grid.run_dir)).loss_log)
    columns = [
        _score_column(
            column,
            [c for c in scored if c.column == column.key],
            probes=probes,
            traits=traits,
            source_tags=source_tags,
            loss_records=loss_records,
            weights=settings.weights(),
        )
        for column in grid.columns
    ]
    ordered, picks, reasons = rank_columns(columns, probes)
    return Ranking(
        run_dir=str(grid.run_dir),
        columns=ordered,
        recommended=picks["recommended"],
        frontal=picks["frontal"],
        reasons=reasons,
        settings=to_dict(settings),
        traits=list(traits),
        warnings=warnings,
    )
