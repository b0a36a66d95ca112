"""From per-cell measurements to a ranked list of checkpoints, with the evidence in plain words.

:mod:`~lib_dbchar.pick.score` measures every cell of the grid (:class:`CellScore`); this module
turns a column's cells into five numbers, one score, a few sentences saying why, and the two picks
the guide asks for. The formula (weights from :class:`~lib_dbchar.pick.score.ScoreSettings`):

* ``pose`` (0..1, up) -- on probes with expected tags (side, behind, outfit, background): the share
  of those tags the tagger finds, averaged over the cells. Flexibility: an overfit checkpoint can
  only draw its dataset's pose.
* ``traits`` (0..1, up) -- on the character probes (frontal, side, behind, outfit, background):
  the share of the character's constant traits found. Accuracy: an underfit checkpoint (or the
  source model) does not know the character.
* ``quality`` -- the weighted *harmonic* mean of ``pose`` and ``traits``, like an F1 score: the
  guide's "just right" checkpoint needs both, and a harmonic mean is 0 when either is 0, so
  neither an underfit column (poses but no character) nor an overfit one (character but no
  poses) can win on one virtue. A metric that cannot be measured (no such probe, no traits) is
  left out of the mean and the evidence says so.
* ``leak`` (0..1, down) -- the share of traits found on the leak probe (the prompt without the
  token and without the traits): the character bleeding into everything the model draws.
* ``drift`` (0..1, down) -- on the drift probe (the class prompt): ``1 - Jaccard`` between the
  cell's tags and the source model's tags for the same prompt and seed. Prior preservation is
  meant to keep the class as the source drew it.
* ``copies`` (count, down) -- cells whose nearest training picture is at least ``copy_similarity``
  alike: memorised pictures, the surest sign of overfitting.

``score = quality - leak_weight*leak - drift_weight*drift - copy_weight*copies/cells``.

The recommended checkpoint is the trained column with the best score (ties: the earlier step,
which has trained less and merges better); the source column is scored for comparison and never
recommended. The *frontal* pick is the guide's second option, "overfit for frontal poses": among
trained columns without a single copy, the one whose frontal cells best show the traits and look
most like the dataset (ties: the later step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lib_dbchar.paths import atomic_write

PICK_DIR = "pick"
RANKING_FILE = "ranking.json"
RANKING_VERSION = 1
SOURCE_KEY = "source"
# Probe kinds that show the character (traits are looked for on them) and the control kinds.
CHARACTER_KINDS = ("frontal", "side", "behind", "outfit", "background")
LEAK_KIND = "leak"
DRIFT_KIND = "drift"
FRONTAL_KIND = "frontal"
# TensorBoard's slider at the guide's setting; the loss beside a checkpoint is read off this curve.
LOSS_SMOOTHING = 0.99


@dataclass
class CellScore:
    """What the tagger and the copy check found on one cell.

    Attributes:
        probe_id / column / seed: which cell.
        expected_found: the probe's expected tags the tagger found.
        traits_found: the character's traits the tagger found.
        trait_share: ``len(traits_found) / len(traits)`` (0 when there are no traits).
        nearest_training: the most similar training picture (path; ``""`` without training pictures).
        similarity: how alike it is, -1..1 (1: the same picture after resizing/re-encoding).
        copied: ``similarity >= copy_similarity``.
        tags: every tag above the threshold, most confident first (drift compares these).
        image: the cell's picture (path).
    """

    probe_id: str
    column: str
    seed: int
    expected_found: list[str]
    traits_found: list[str]
    trait_share: float
    nearest_training: str
    similarity: float
    copied: bool
    tags: list[str] = field(default_factory=list)
    image: str = ""


@dataclass
class ColumnScore:
    """One checkpoint's (or the source model's) result.

    Attributes:
        column: the grid column key (``"source"`` or the checkpoint's stem).
        label: the column's label.
        step: the training step (0 for the source).
        score: the combined score (see the module docstring); higher is better.
        pose / traits / leak / drift: the components, 0..1.
        copies: cells flagged as copies of a training picture.
        loss: the training loss logged at this step (``None`` when the log has no such step).
        evidence: sentences saying why, for the UI and the CLI.
        cells: the cells' measurements.
        loss_smoothed: the loss curve at this step with TensorBoard's 0.99 smoothing (the raw loss
            of one step is mostly noise from the random timestep).
        measured: which of ``pose``, ``traits``, ``leak``, ``drift`` could be measured.
    """

    column: str
    label: str
    step: int
    score: float
    pose: float
    traits: float
    leak: float
    drift: float
    copies: int
    loss: float | None
    evidence: list[str]
    cells: list[CellScore]
    loss_smoothed: float | None = None
    measured: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnScore:
        """Rebuild a column saved inside :meth:`Ranking.to_dict` (unknown keys are ignored).

        Raises:
            TypeError: a required field is missing (:meth:`Ranking.from_dict` names it as a ValueError).
        """
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["cells"] = [CellScore(**_known(CellScore, c)) for c in data.get("cells", [])]
        return cls(**values)


@dataclass
class Ranking:
    """The checkpoints of a run, best first, and the two picks.

    Attributes:
        run_dir: the run folder.
        columns: every column including the source, best score first.
        recommended: the column key to merge (``None`` when the run has no trained checkpoint).
        frontal: the "overfit for frontal poses" pick (may equal ``recommended``; ``None`` when no
            checkpoint qualifies).
        reasons: ``{"recommended": ..., "frontal": ...}``, one sentence each.
        settings: the :class:`~lib_dbchar.pick.score.ScoreSettings` used, as a dict.
        traits: the character traits looked for.
        warnings: cells or training pictures that could not be read, unmeasurable checks.
    """

    run_dir: str
    columns: list[ColumnScore]
    recommended: str | None
    frontal: str | None
    reasons: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    traits: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def column(self, key: str | None) -> ColumnScore | None:
        """The column with this key, or ``None``."""
        return next((c for c in self.columns if c.column == key), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``version`` added)."""
        return {"version": RANKING_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ranking:
        """Rebuild a ranking saved by :meth:`to_dict`.

        Raises:
            ValueError: a required field is missing or has the wrong shape (the message names it).
        """
        try:
            return cls(
                run_dir=str(data["run_dir"]),
                columns=[ColumnScore.from_dict(c) for c in data["columns"]],
                recommended=data.get("recommended"),
                frontal=data.get("frontal"),
                reasons=dict(data.get("reasons", {})),
                settings=dict(data.get("settings", {})),
                traits=list(data.get("traits", [])),
                warnings=list(data.get("warnings", [])),
            )
        except KeyError as exc:
            raise ValueError(f"ranking: missing {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"ranking: a column or cell has unexpected fields ({exc})") from None


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def ranking_path(run_dir: Path) -> Path:
    """``<run>/pick/ranking.json``."""
    return Path(run_dir) / PICK_DIR / RANKING_FILE


def save_ranking(run_dir: Path, ranking: Ranking) -> Path:
    """Write ``pick/ranking.json`` atomically and return its path."""
    text = json.dumps(ranking.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return atomic_write(ranking_path(run_dir), text)


def load_ranking(run_dir: Path) -> Ranking | None:
    """The saved ranking of a run, or ``None`` when it was never scored.

    Raises:
        ValueError: the file is damaged; the message names it and says how to recover.
    """
    path = ranking_path(run_dir)
    if not path.is_file():
        return None
    try:
        return Ranking.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); delete it and score the grid again.") from None


# --------------------------------------------------------------------------------------------------
# The components of a column


@dataclass(frozen=True)
class ProbeInfo:
    """What ranking needs to know of a probe (a :class:`~lib_dbchar.pick.probes.Probe` has it all)."""

    id: str
    kind: str
    label: str
    expect_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Weights:
    """How the components combine (see the module docstring)."""

    pose: float = 1.0
    traits: float = 1.0
    leak: float = 1.0
    drift: float = 0.5
    copies: float = 1.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def jaccard(a: Sequence[str], b: Sequence[str]) -> float:
    """``|a & b| / |a | b|`` of two tag lists (1.0 when both are empty)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 1.0


def weighted_harmonic(values: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """The weighted harmonic mean of ``values`` (0 when any value with weight > 0 is 0).

    Args:
        values: name -> value in 0..1.
        weights: name -> weight >= 0 (names absent here weigh 0).

    Returns:
        A float in 0..1; 0 when no value has a positive weight.
    """
    used = {k: v for k, v in values.items() if weights.get(k, 0.0) > 0}
    if not used:
        return 0.0
    if any(v <= 0 for v in used.values()):
        return 0.0
    total = sum(weights[k] for k in used)
    return total / sum(weights[k] / v for k, v in used.items())


@dataclass(frozen=True)
class Components:
    """A column's measured components (see :class:`ColumnScore`)."""

    pose: float | None
    traits: float | None
    leak: float | None
    drift: float | None
    copies: int
    cells: int


def column_components(
    cells: Sequence[CellScore],
    probes: Mapping[str, ProbeInfo],
    source_tags: Mapping[tuple[str, int], Sequence[str]],
    *,
    has_traits: bool,
    is_source: bool,
) -> Components:
    """Measure pose, traits, leak, drift and copies of one column.

    Args:
        cells: the column's cell scores.
        probes: probe id -> probe.
        source_tags: ``(probe id, seed)`` -> the source column's tags on that cell.
        has_traits: whether the character has traits to look for.
        is_source: the column is the source model (its drift is 0 by definition).

    Returns:
        The :class:`Components`; a component is ``None`` when nothing measures it.
    """
    pose, traits, leak, drift = [], [], [], []
    for cell in cells:
        probe = probes.get(cell.probe_id)
        if probe is None:
            continue
        if probe.expect_tags:
            pose.append(len(cell.expected_found) / len(probe.expect_tags))
        if has_traits and probe.kind in CHARACTER_KINDS:
            traits.append(cell.trait_share)
        if has_traits and probe.kind == LEAK_KIND:
            leak.append(cell.trait_share)
        if probe.kind == DRIFT_KIND:
            if is_source:
                drift.append(0.0)
            elif (cell.probe_id, cell.seed) in source_tags:
                drift.append(1.0 - jaccard(cell.tags, source_tags[(cell.probe_id, cell.seed)]))
    return Components(
        pose=_mean(pose) if pose else None,
        traits=_mean(traits) if traits else None,
        leak=_mean(leak) if leak else None,
        drift=_mean(drift) if drift else None,
        copies=sum(1 for c in cells if c.copied),
        cells=len(cells),
    )


def combined_score(parts: Components, weights: Weights) -> float:
    """``quality - penalties`` (module docstring), rounded to 4 digits."""
    quality = weighted_harmonic(
        {k: v for k, v in (("pose", parts.pose), ("traits", parts.traits)) if v is not None},
        {"pose": weights.pose, "traits": weights.traits},
    )
    penalty = weights.leak * (parts.leak or 0.0) + weights.drift * (parts.drift or 0.0)
    if parts.cells:
        penalty += weights.copies * parts.copies / parts.cells
    return round(quality - penalty, 4)


# --------------------------------------------------------------------------------------------------
# Evidence


def _share_text(found: int, total: int) -> str:
    return f"{found}/{total}"


def _pose_evidence(cells: Sequence[CellScore], probes: Mapping[str, ProbeInfo]) -> list[str]:
    out = []
    for probe in probes.values():
        if not probe.expect_tags:
            continue
        own = [c for c in cells if c.probe_id == probe.id]
        if not own:
            continue
        hits = sum(1 for c in own if len(c.expected_found) == len(probe.expect_tags))
        wanted = ", ".join(repr(t) for t in probe.expect_tags)
        out.append(f"{probe.id}: {_share_text(hits, len(own))} samples show {wanted}")
    return out


def _traits_evidence(
    cells: Sequence[CellScore], probes: Mapping[str, ProbeInfo], traits: Sequence[str], share: float | None
) -> list[str]:
    if share is None:
        return ["traits: not measured (no character traits known; tag the dataset first)"]
    own = [c for c in cells if probes.get(c.probe_id) and probes[c.probe_id].kind in CHARACTER_KINDS]
    misses = {t: sum(1 for c in own if t not in c.traits_found) for t in traits}
    worst = [t for t, n in sorted(misses.items(), key=lambda kv: -kv[1]) if n > 0][:3]
    text = f"traits: {share:.0%} of the character's traits found on the character samples"
    if worst:
        text += f" (missing most often: {', '.join(worst)})"
    return [text]


def _leak_evidence(
    cells: Sequence[CellScore], probes: Mapping[str, ProbeInfo], leak: float | None
) -> list[str]:
    if leak is None:
        return []
    own = [c for c in cells if probes.get(c.probe_id) and probes[c.probe_id].kind == LEAK_KIND]
    leaking = sum(1 for c in own if c.traits_found)
    if not leaking:
        return ["leak: no trait appears without the token"]
    return [
        f"leak: traits appear on {_share_text(leaking, len(own))} samples without the token "
        f"({leak:.0%} of the traits on average)"
    ]


def _drift_evidence(drift: float | None, is_source: bool) -> list[str]:
    if is_source:
        return []
    if drift is None:
        return ["drift: not measured (no class-prompt probe with a source column)"]
    return [f"drift: the class prompt's tags moved {drift:.0%} away from the source model's"]


def _copy_evidence(cells: Sequence[CellScore]) -> list[str]:
    copied = [c for c in cells if c.copied]
    if not copied:
        best = max(cells, key=lambda c: c.similarity, default=None)
        if best is None or not best.nearest_training:
            return []
        return [f"copies: none (closest: {best.similarity:.2f} to {Path(best.nearest_training).name})"]
    shown = "; ".join(
        f"{c.probe_id}-{c.seed} ~ {Path(c.nearest_training).name} ({c.similarity:.2f})" for c in copied[:3]
    )
    more = f" and {len(copied) - 3} more" if len(copied) > 3 else ""
    return [f"copies: {len(copied)} samples look like training pictures: {shown}{more}"]


def _loss_evidence(step: int, loss: float | None, smoothed: float | None) -> list[str]:
    if loss is None:
        return []
    text = f"loss at step {step}: {loss:.4f}"
    if smoothed is not None:
        text += f" (smoothed {smoothed:.4f})"
    return [text]


def column_evidence(
    cells: Sequence[CellScore],
    probes: Mapping[str, ProbeInfo],
    traits: Sequence[str],
    parts: Components,
    *,
    step: int,
    loss: float | None,
    loss_smoothed: float | None,
    is_source: bool,
) -> list[str]:
    """The sentences that explain a column's score, most telling first."""
    out = []
    if is_source:
        out.append("the source model: shown for comparison, never recommended")
    out += _pose_evidence(cells, probes)
    out += _traits_evidence(cells, probes, traits, parts.traits)
    out += _leak_evidence(cells, probes, parts.leak)
    out += _drift_evidence(parts.drift, is_source)
    out += _copy_evidence(cells)
    out += _loss_evidence(step, loss, loss_smoothed)
    return out


# --------------------------------------------------------------------------------------------------
# Loss at a step


def loss_at(records: Sequence[Mapping[str, Any]], step: int) -> tuple[float | None, float | None]:
    """The logged loss at ``step`` and the smoothed curve there.

    Args:
        records: ``loss.jsonl`` records (``step``, ``loss``), in log order.
        step: the checkpoint's step (0: the source model, which has no loss).

    Returns:
        ``(loss, smoothed)``: the loss of the last record at or before ``step`` and TensorBoard's
        debiased moving average (weight :data:`LOSS_SMOOTHING`) at that record; ``(None, None)``
        when no record is at or before ``step``.
    """
    last, count, raw, smoothed = 0.0, 0, None, None
    for record in sorted(records, key=lambda r: int(r.get("step", 0))):
        if int(record.get("step", 0)) > step or step <= 0:
            break
        value = record.get("loss")
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        count += 1
        last = last * LOSS_SMOOTHING + (1 - LOSS_SMOOTHING) * float(value)
        raw, smoothed = float(value), last / (1 - LOSS_SMOOTHING**count)
    return raw, (round(smoothed, 6) if smoothed is not None else None)


# --------------------------------------------------------------------------------------------------
# The picks


def _recommend(columns: Sequence[ColumnScore]) -> tuple[str | None, str]:
    trained = [c for c in columns if c.column != SOURCE_KEY]
    if not trained:
        return None, "no trained checkpoint in the grid: train first, or add a checkpoint"
    best = min(trained, key=lambda c: (-c.score, c.step))
    source = next((c for c in columns if c.column == SOURCE_KEY), None)
    text = (
        f"{best.label}: the best score among the trained checkpoints ({best.score:.3f}; "
        f"pose {best.pose:.0%}, traits {best.traits:.0%}, leak {best.leak:.0%}, drift {best.drift:.0%}, "
        f"{best.copies} copies)"
    )
    if source is not None and source.score >= best.score:
        text += "; it does not beat the source model: the character may not be learnt yet"
    return best.column, text


def frontal_fit(cells: Sequence[CellScore], probes: Mapping[str, ProbeInfo]) -> float | None:
    """How well a column draws the character as the dataset shows it: the mean over its frontal
    cells of ``(trait share + similarity to the nearest training picture) / 2``; ``None`` without
    frontal cells."""
    own = [c for c in cells if probes.get(c.probe_id) and probes[c.probe_id].kind == FRONTAL_KIND]
    if not own:
        return None
    return _mean([(c.trait_share + max(0.0, c.similarity)) / 2 for c in own])


def _frontal(columns: Sequence[ColumnScore], probes: Mapping[str, ProbeInfo]) -> tuple[str | None, str]:
    trained = [c for c in columns if c.column != SOURCE_KEY]
    fits = {c.column: frontal_fit(c.cells, probes) for c in trained}
    if not any(v is not None for v in fits.values()):
        return None, "no frontal probe (or no trained checkpoint): nothing to pick for frontal poses"
    clean = [c for c in trained if c.copies == 0 and fits[c.column] is not None]
    if not clean:
        return None, "every checkpoint copies a training picture somewhere; none is offered for frontal poses"
    best = min(clean, key=lambda c: (-(fits[c.column] or 0.0), -c.step))
    return best.column, (
        f"{best.label}: the most faithful frontal samples without copying a training picture "
        f"(fit {fits[best.column]:.2f}); the guide's 'overfit for frontal poses' model, for merging "
        "onto models you use for frontal pictures"
    )


def rank_columns(
    columns: Sequence[ColumnScore], probes: Mapping[str, ProbeInfo]
) -> tuple[list[ColumnScore], dict[str, str | None], dict[str, str]]:
    """Sort columns best first and choose the two picks.

    Args:
        columns: scored columns (any order).
        probes: probe id -> probe.

    Returns:
        ``(sorted columns, {"recommended": key, "frontal": key}, reasons)``.
    """
    ordered = sorted(columns, key=lambda c: (-c.score, c.step))
    recommended, why = _recommend(ordered)
    frontal, why_frontal = _frontal(ordered, probes)
    return (
        ordered,
        {"recommended": recommended, "frontal": frontal},
        {
            "recommended": why,
            "frontal": why_frontal,
        },
    )
