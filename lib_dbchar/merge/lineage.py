"""Does the trained model really come from the chosen source model?

Add difference only moves the character if C is the model A was trained from: A - C is then the
training, and nothing else. With the wrong C, A - C also carries everything that separates two
unrelated models, and the merge comes out broken. This module measures how far two checkpoints
are apart, tensor by tensor, so a wizard can check the choice before merging.

The distance of two checkpoints is the median, over the UNet's (and text encoder's) weight
tensors present in both with one shape, of ``|a - b| / |b|`` (Frobenius norms). Fine-tuning
moves weights a little everywhere; an unrelated model differs a lot everywhere; the median is
not thrown by a few layers that moved far (or not at all).

Verdict (:func:`check_descent`), a heuristic:

* Against other models (best: B, the model the character goes onto): the trained model
  *descends* from the source when their distance is at most half its distance to every other
  model; it is *unrelated* when some other model is at least as close; otherwise *unclear*.
* Alone: *descends* below :data:`DESCENDS_BELOW` (0.05), *unrelated* above
  :data:`UNRELATED_ABOVE` (0.2). Reasoning: Dreambooth at the usual learning rates (1e-6 with
  Adam, a few thousand steps) moves each weight by at most ~1e-3 against typical weight scales
  of 0.02-0.1, i.e. a few percent; separately trained SD1 fine-tunes differ by tens of percent.
  These thresholds are not calibrated on a corpus of real models; prefer the comparison.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.detect import ARCH_LABELS, describe_checkpoint
from lib_dbchar.checkpoint.reader import CheckpointReader, open_checkpoint
from lib_dbchar.config import setting
from lib_dbchar.jobs import JobContext

DESCENDS_BELOW = 0.05
UNRELATED_ABOVE = 0.2
CLOSER_FACTOR = 0.5  # source distance must be at most this times the nearest other model's
_COMPONENTS = (
    ("unet", "model.diffusion_model."),
    ("text_encoder", "cond_stage_model."),
    ("text_encoder", "conditioner."),
)


@dataclass(frozen=True)
class LineageConfig:
    """How thoroughly to compare."""

    max_tensors: int = setting(
        0,
        label="Tensors compared",
        help="0 compares every weight tensor; a number compares an even sample of that many (faster).",
        minimum=0,
        maximum=100000,
    )


@dataclass(frozen=True)
class LineageDistance:
    """How far checkpoint A is from checkpoint B.

    Attributes:
        median: median over compared tensors of ``|a - b| / |b|``; 0 for identical weights.
        by_component: the same median per component (``"unet"``, ``"text_encoder"``).
        tensors: how many tensors were compared.
    """

    median: float
    by_component: dict[str, float]
    tensors: int


@dataclass(frozen=True)
class DescentReport:
    """The answer to "was ``trained`` trained from ``source``?".

    Attributes:
        verdict: ``"descends"``, ``"unrelated"`` or ``"unclear"``.
        source_distance: :attr:`LineageDistance.median` of trained vs source (NaN when the
            architectures differ).
        other_distances: file name -> distance of trained vs each other model given.
        message: one sentence for the user.
    """

    verdict: str
    source_distance: float
    message: str
    other_distances: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compared_keys(a: CheckpointReader, b: CheckpointReader, max_tensors: int = 0) -> list[str]:
    """The weight tensors both checkpoints have with one shape (UNet and text encoder, floats, >= 2-D).

    Args:
        a, b: open checkpoints.
        max_tensors: 0 for all, else an even sample of at most that many (first and last kept).
    """
    keys = [
        k
        for k in a
        if _component(k) is not None
        and k in b
        and len(a.shape(k)) >= 2
        and a.shape(k) == b.shape(k)
        and a.dtype(k).startswith(("float", "bfloat"))
        and b.dtype(k).startswith(("float", "bfloat"))
    ]
    if max_tensors and len(keys) > max_tensors:
        step = (len(keys) - 1) / max(max_tensors - 1, 1)
        keys = [keys[round(i * step)] for i in range(max_tensors)]
    return keys


def _component(key: str) -> str | None:
    return next((name for name, prefix in _COMPONENTS if key.startswith(prefix)), None)


def relative_distance(a: Any, b: Any) -> float | None:
    """``|a - b| / |b|`` in float32 with a float64 sum; None when ``b`` is all zeros."""
    b32 = b.float()
    base = float(b32.double().norm())
    if base == 0.0:
        return None
    return float((a.float() - b32).double().norm()) / base


def lineage_distance(
    a: Path | str, b: Path | str, *, config: LineageConfig | None = None, ctx: JobContext | None = None
) -> LineageDistance:
    """Measure how far checkpoint ``a`` is from checkpoint ``b``, one tensor pair in memory at a time.

    Args:
        a, b: checkpoint files of one architecture.
        config: sampling.
        ctx: progress per tensor; stop requests between tensors.

    Returns:
        The :class:`LineageDistance`; ``median`` is NaN when no tensor could be compared.

    Raises:
        JobStopped: the user stopped it.
    """
    config = config or LineageConfig()
    ctx = ctx or JobContext()
    with open_checkpoint(a) as ra, open_checkpoint(b) as rb:
        keys = compared_keys(ra, rb, config.max_tensors)
        found: dict[str, list[float]] = {}
        for done, key in enumerate(keys):
            ctx.check_stop("model comparison")
            distance = relative_distance(ra.load(key), rb.load(key))
            if distance is not None:
                found.setdefault(_component(key) or "", []).append(distance)
            ctx.report(done + 1, len(keys), f"Comparing {Path(a).name} and {Path(b).name}")
    every = [d for values in found.values() for d in values]
    return LineageDistance(
        median=statistics.median(every) if every else math.nan,
        by_component={name: statistics.median(values) for name, values in found.items()},
        tensors=len(every),
    )


def check_descent(
    trained: Path | str,
    source: Path | str,
    others: Sequence[Path | str] = (),
    *,
    config: LineageConfig | None = None,
    ctx: JobContext | None = None,
) -> DescentReport:
    """Check that ``trained`` was trained from ``source`` (see the module docstring for the rule).

    Args:
        trained: the Dreambooth checkpoint (the merge's A).
        source: the model it should come from (the merge's C).
        others: models it should *not* come from, for comparison (the merge's B is ideal).
        config: sampling.
        ctx: progress and stop requests.

    Returns:
        The :class:`DescentReport`.
    """
    different = _architecture_mismatch(trained, source)
    if different:
        return DescentReport("unrelated", math.nan, different)
    near = lineage_distance(trained, source, config=config, ctx=ctx).median
    far = {Path(o).name: lineage_distance(trained, o, config=config, ctx=ctx).median for o in others}
    verdict, message = _verdict(near, far, Path(source).name)
    return DescentReport(verdict, near, message, far)


def _architecture_mismatch(trained: Path | str, source: Path | str) -> str:
    with open_checkpoint(trained) as a, open_checkpoint(source) as b:
        arch_a, arch_b = describe_checkpoint(a.shapes()).arch, describe_checkpoint(b.shapes()).arch
    if arch_a == arch_b:
        return ""
    return (
        f"{Path(trained).name} is {ARCH_LABELS[arch_a]} and {Path(source).name} is {ARCH_LABELS[arch_b]}: "
        "it cannot have been trained from it."
    )


def _verdict(near: float, far: dict[str, float], source_name: str) -> tuple[str, str]:
    if math.isnan(near):
        return "unclear", f"No weights could be compared with {source_name}."
    if near == 0.0:
        return "descends", f"The weights equal {source_name}'s: this looks like the source itself, untrained."
    usable = {name: d for name, d in far.items() if not math.isnan(d)}
    return _against_others(near, usable, source_name) if usable else _alone(near, source_name)


def _against_others(near: float, far: dict[str, float], source_name: str) -> tuple[str, str]:
    closest_name, closest = min(far.items(), key=lambda item: item[1])
    distances = f"distance to {source_name} {near:.4f}, to {closest_name} {closest:.4f}"
    if near <= CLOSER_FACTOR * closest:
        return "descends", f"Trained from {source_name} ({distances})."
    if near >= closest:
        return "unrelated", (
            f"{closest_name} is at least as close as {source_name} ({distances}): "
            f"{source_name} is probably not the model this was trained from."
        )
    return "unclear", f"Not clearly apart ({distances})."


def _alone(near: float, source_name: str) -> tuple[str, str]:
    if near <= DESCENDS_BELOW:
        return "descends", f"Distance to {source_name} is {near:.4f}: small, as after fine-tuning."
    if near >= UNRELATED_ABOVE:
        return "unrelated", f"Distance to {source_name} is {near:.4f}: large, as between unrelated models."
    return "unclear", f"Distance to {source_name} is {near:.4f}: between fine-tuned and unrelated."
