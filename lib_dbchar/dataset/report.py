"""The dataset health report and the result of a prep run: dataclasses that serialise to JSON.

:func:`assess` is pure: it takes plain facts about each picture and returns a :class:`HealthReport`
with a plain-language verdict. :func:`dataset_health` recomputes it at any time from a dataset
folder (``crops.json`` plus the captions on disk), so the Tags tab can refresh the pose counts once
tags exist without preparing again.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_dbchar.dataset.boxes import CropStore
from lib_dbchar.dataset.dedupe import DuplicatePair, find_duplicates
from lib_dbchar.paths import atomic_write

FEW_PICTURES = 15  # the guide: "~20+ quality images"
MANY_PICTURES = 200
# The guide's overfitting test prompts poses the dataset lacks: these tags tell which ones it has.
POSE_TAGS = ("from side", "from behind", "full body", "upper body")
FAR_FROM_SQUARE = 1.6  # long side / short side beyond which a square crop loses a lot
WIDE_RESOLUTION_SPREAD = 4.0
NAMES_SHOWN = 5


@dataclass(frozen=True)
class ImageFacts:
    """What the report needs to know about one dataset picture.

    Attributes:
        name: dataset file name.
        source_size: the original's upright ``(width, height)``.
        crop_side: side of the square cut from the original, in its pixels.
        upscale: enlargement factor when ``crop_side`` was under the resolution, else ``None``.
        caption: the caption text, ``None`` when the picture has none.
    """

    name: str
    source_size: tuple[int, int]
    crop_side: int
    upscale: float | None = None
    caption: str | None = None


@dataclass(frozen=True)
class SmallImage:
    """A picture whose crop was under the resolution: its crop side and enlargement factor."""

    name: str
    crop_side: int
    factor: float


@dataclass(frozen=True)
class AspectSpread:
    """How the originals were shaped: counts, and the extreme width/height ratios."""

    portrait: int
    square: int
    landscape: int
    narrowest: float
    widest: float


@dataclass(frozen=True)
class ResolutionSpread:
    """Short sides of the originals in pixels, and their sizes in megapixels."""

    smallest_side: int
    median_side: int
    largest_side: int
    smallest_megapixels: float
    largest_megapixels: float


@dataclass(frozen=True)
class PoseCounts:
    """How many captioned pictures carry each pose tag (``tagged`` = pictures with a caption)."""

    tagged: int
    from_side: int
    from_behind: int
    full_body: int
    upper_body: int


@dataclass(frozen=True)
class Finding:
    """One thing the report says: ``level`` is "warning" (worth fixing) or "info"."""

    level: str
    text: str


@dataclass
class HealthReport:
    """Is this dataset ready to train on?

    Attributes:
        count: dataset pictures (mirrored copies not counted).
        level: "good", "check" (warnings) or "empty".
        verdict: one plain sentence.
        findings: what to look at, most important first.
        too_small / duplicates / missing_captions: the lists behind the findings.
        aspect / resolution: the spread of the originals (``None`` when empty).
        poses: pose-tag counts, ``None`` until some picture has a caption.
    """

    count: int
    level: str
    verdict: str
    findings: list[Finding] = field(default_factory=list)
    too_small: list[SmallImage] = field(default_factory=list)
    duplicates: list[DuplicatePair] = field(default_factory=list)
    missing_captions: list[str] = field(default_factory=list)
    aspect: AspectSpread | None = None
    resolution: ResolutionSpread | None = None
    poses: PoseCounts | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON values."""
        return to_jsonable(self)

    def as_text(self) -> str:
        """The report as a few lines for a terminal."""
        lines = [f"Dataset health: {self.verdict}"]
        lines += [f"  [{f.level}] {f.text}" for f in self.findings]
        return "\n".join(lines)


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or list/dict of them) as plain JSON values; paths become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def caption_tags(text: str) -> set[str]:
    """The tags of a comma-separated caption, lower-cased, underscores as spaces."""
    return {t.strip().lower().replace("_", " ") for t in text.split(",") if t.strip()}


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def count_poses(captions: Iterable[str | None]) -> PoseCounts | None:
    """Pose-tag counts over captions; ``None`` when no picture has a caption yet."""
    tag_sets = [caption_tags(c) for c in captions if c is not None]
    if not tag_sets:
        return None
    counts = [sum(tag in tags for tags in tag_sets) for tag in POSE_TAGS]
    return PoseCounts(len(tag_sets), *counts)


def aspect_spread(sizes: Sequence[tuple[int, int]]) -> AspectSpread | None:
    """Counts of portrait / square (within 5 %) / landscape sizes and the extreme ratios."""
    if not sizes:
        return None
    ratios = [w / h for w, h in sizes]
    square = sum(0.95 <= r <= 1.05 for r in ratios)
    landscape = sum(r > 1.05 for r in ratios)
    return AspectSpread(
        len(ratios) - square - landscape, square, landscape, round(min(ratios), 3), round(max(ratios), 3)
    )


def resolution_spread(sizes: Sequence[tuple[int, int]]) -> ResolutionSpread | None:
    """Smallest, median and largest short side, and the megapixel range, of the sizes."""
    if not sizes:
        return None
    sides = sorted(min(s) for s in sizes)
    megapixels = [w * h / 1e6 for w, h in sizes]
    return ResolutionSpread(
        sides[0],
        int(statistics.median(sides)),
        sides[-1],
        round(min(megapixels), 2),
        round(max(megapixels), 2),
    )


def _count_findings(n: int) -> list[Finding]:
    if n < FEW_PICTURES:
        return [
            Finding(
                "warning",
                f"Only {n} pictures: the guide uses about 20 or more. Add at least {FEW_PICTURES - n} "
                "more, in different poses and framings of the one design.",
            )
        ]
    if n > MANY_PICTURES:
        return [
            Finding(
                "warning",
                f"{n} pictures is far more than the ~20 the guide uses: epochs get long and class images "
                "multiply (10 per picture). Keep the best ones.",
            )
        ]
    return []


def _pose_findings(poses: PoseCounts | None, n: int) -> list[Finding]:
    if poses is None:
        return [
            Finding("info", "No captions yet: tag the pictures (Tags tab) so each gets its own description.")
        ]
    out = []
    if poses.tagged < n:
        out.append(Finding("warning", f"{n - poses.tagged} of {n} pictures have no caption yet: tag them."))
    turned = poses.from_side + poses.from_behind
    if turned == 0:
        out.append(
            Finding(
                "info",
                "No picture is tagged 'from side' or 'from behind': those poses make a good overfitting test "
                "(a checkpoint that can no longer draw them has overfit).",
            )
        )
    elif turned * 2 >= poses.tagged:
        out.append(
            Finding(
                "info",
                f"{turned} of {poses.tagged} captioned pictures are side or back views: a side/back "
                "overfitting test tells little here; test with a pose the dataset lacks.",
            )
        )
    else:
        out.append(
            Finding(
                "info",
                f"{poses.from_side} side and {poses.from_behind} back views: test overfitting with the "
                "poses the dataset has least of.",
            )
        )
    if poses.full_body == 0:
        out.append(
            Finding(
                "info",
                "None is tagged 'full body': the outfit below the waist is learnt from nothing; add a few "
                "full-body pictures if it matters.",
            )
        )
    return out


def _shape_findings(sizes: Sequence[tuple[int, int]], resolution: ResolutionSpread | None) -> list[Finding]:
    out = []
    far = [s for s in sizes if max(s) / min(s) > FAR_FROM_SQUARE]
    if sizes and len(far) * 2 > len(sizes):
        out.append(
            Finding(
                "info",
                f"{len(far)} of {len(sizes)} originals are far from square: their squares drop a lot; check "
                "that the crops keep the character.",
            )
        )
    if resolution and resolution.largest_side > WIDE_RESOLUTION_SPREAD * resolution.smallest_side:
        out.append(
            Finding(
                "info",
                f"Resolutions vary a lot (short sides {resolution.smallest_side} to "
                f"{resolution.largest_side} px): the small ones come out softer.",
            )
        )
    return out


def assess(
    facts: Sequence[ImageFacts], duplicates: Sequence[DuplicatePair], *, resolution: int
) -> HealthReport:
    """Judge a dataset from facts about its pictures.

    Args:
        facts: one entry per dataset picture (mirrored copies left out).
        duplicates: near-duplicate pairs among them.
        resolution: the output side, to phrase the too-small finding.

    Returns:
        The :class:`HealthReport`.
    """
    n = len(facts)
    if n == 0:
        return HealthReport(
            0,
            "empty",
            "Empty: no pictures were prepared yet.",
            [Finding("warning", "Add about 20 pictures of the character and prepare them.")],
        )
    sizes = [f.source_size for f in facts]
    small = sorted(
        (SmallImage(f.name, f.crop_side, round(f.upscale, 2)) for f in facts if f.upscale),
        key=lambda s: -s.factor,
    )
    missing = sorted(f.name for f in facts if f.caption is None)
    poses = count_poses(f.caption for f in facts)
    spread = resolution_spread(sizes)
    findings = _count_findings(n)
    if small:
        findings.append(
            Finding(
                "warning",
                f"{len(small)} pictures were smaller than {resolution} px and were enlarged (up to "
                f"{small[0].factor:.1f}x): {_names([s.name for s in small])}. Enlarged pictures teach blur; "
                "use larger versions if you have them.",
            )
        )
    if duplicates:
        shown = [f"{d.first} ~ {d.second}" for d in duplicates]
        findings.append(
            Finding(
                "warning",
                f"{len(duplicates)} near-duplicate pairs: {_names(shown)}. Keep one of each pair; a "
                "duplicate counts that picture twice.",
            )
        )
    findings += _pose_findings(poses, n) + _shape_findings(sizes, spread)
    warnings = [f for f in findings if f.level == "warning"]
    if warnings:
        verdict = f"{n} pictures, {len(warnings)} thing(s) to check before training."
    else:
        verdict = f"{n} pictures, nothing to fix: ready for {'training' if poses else 'tagging'}."
    return HealthReport(
        count=n,
        level="check" if warnings else "good",
        verdict=verdict,
        findings=sorted(findings, key=lambda f: f.level != "warning"),
        too_small=small,
        duplicates=list(duplicates),
        missing_captions=missing,
        aspect=aspect_spread(sizes),
        resolution=spread,
        poses=poses,
    )


def read_caption(path: Path) -> str | None:
    """A caption file's text (undecodable bytes replaced), or ``None`` when there is none."""
    return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None


def dataset_health(dataset_dir: Path, *, resolution: int = 512, max_distance: int = 6) -> HealthReport:
    """The health report of a dataset folder as it is now (after tagging, after excluding, ...).

    Reads ``crops.json`` for what prep knew about each picture and the ``.txt`` captions beside the
    pictures; pictures excluded or missing on disk are left out.
    """
    dataset_dir = Path(dataset_dir)
    store = CropStore.for_dataset(dataset_dir)
    facts, hashes = [], {}
    for name in store:
        entry = store.get(name)
        if (
            entry.excluded
            or entry.box is None
            or entry.source_size is None
            or not (dataset_dir / name).is_file()
        ):
            continue
        caption = read_caption((dataset_dir / name).with_suffix(".txt"))
        facts.append(ImageFacts(name, entry.source_size, entry.box[2] - entry.box[0], entry.upscale, caption))
        if entry.phash:
            hashes[name] = int(entry.phash, 16)
    return assess(facts, find_duplicates(hashes, max_distance), resolution=resolution)


def write_json(path: Path, obj: Any) -> Path:
    """Write a result dataclass as indented JSON, atomically."""
    return atomic_write(path, json.dumps(to_jsonable(obj), indent=1, ensure_ascii=False) + "\n")
