"""From the model's probabilities to the tags of one picture, as the model author's demo selects them.

* The outputs are probabilities already (the exports end in a sigmoid); nothing is applied on top.
* Thresholds are strict: a tag is kept when its probability is ``>`` the threshold, compared in
  float64 (the demo compares Python floats), so a float32 0.35 is *not* above 0.35.
* MCut (optional, per category): sort descending, find the largest drop between neighbours and
  put the threshold halfway across it. For characters the MCut threshold is floored at 0.15.
* General and character tags come out sorted by descending probability; equal probabilities keep
  the CSV order (the demo's sort is stable). Ratings are reported as scores, never selected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lib_dbchar.tagger.labels import TagTable

CHARACTER_MCUT_FLOOR = 0.15


@dataclass(frozen=True)
class Thresholds:
    """How tags are selected.

    Attributes:
        general / character: strict thresholds in 0..1 (defaults: the demo's 0.35 / 0.85).
        general_mcut / character_mcut: replace the threshold by MCut's for that category.
    """

    general: float = 0.35
    character: float = 0.85
    general_mcut: bool = False
    character_mcut: bool = False


@dataclass(frozen=True)
class ScoredTag:
    """A selected tag.

    Attributes:
        name: the caption form (``long hair``; kaomoji unchanged).
        raw: the CSV name (``long_hair``).
        score: the model's probability.
    """

    name: str
    raw: str
    score: float


@dataclass(frozen=True)
class ImageTags:
    """Everything the tagger says about one picture.

    Attributes:
        general: selected general tags, highest probability first.
        character: selected character tags, highest probability first.
        rating: every rating's probability, in CSV order (``{"general": 0.93, "sensitive": ...}``).
    """

    general: tuple[ScoredTag, ...]
    character: tuple[ScoredTag, ...]
    rating: dict[str, float]

    def to_dict(self) -> dict:
        """JSON form: ordered ``[name, score]`` pairs for general and character tags, and the ratings."""
        return {
            "general": [[t.name, t.score] for t in self.general],
            "character": [[t.name, t.score] for t in self.character],
            "rating": dict(self.rating),
        }


def mcut_threshold(probs: np.ndarray) -> float:
    """MCut: the midpoint of the largest gap between consecutive sorted probabilities.

    (Largeron, Moulin & Géry, "MCut: A Thresholding Strategy for Multi-label Classification",
    IDA 2012.) With ties for the largest gap, the one between the highest values wins.

    Args:
        probs: float ``[K]`` probabilities of one category.

    Returns:
        The threshold (float). With fewer than two values there is no gap: 0.0, which keeps any
        positive probability.
    """
    values = np.sort(np.asarray(probs, dtype=np.float64))[::-1]
    if values.size < 2:
        return 0.0
    gaps = values[:-1] - values[1:]
    cut = int(np.argmax(gaps))
    return float((values[cut] + values[cut + 1]) / 2.0)


def _select(
    probs: np.ndarray, indices: np.ndarray, table: TagTable, threshold: float
) -> tuple[ScoredTag, ...]:
    scores = probs[indices]
    kept = np.flatnonzero(scores > threshold)
    # Stable sort on the negated scores: descending, ties in CSV order.
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    return tuple(
        ScoredTag(table.display[indices[k]], table.names[indices[k]], float(scores[k])) for k in kept
    )


def select_tags(probs: np.ndarray, table: TagTable, thresholds: Thresholds = Thresholds()) -> ImageTags:
    """Select the tags of one picture.

    Args:
        probs: float32 ``[T]`` model output for one picture, in ``table`` order.
        table: the model's :class:`TagTable`.
        thresholds: the selection rule.

    Returns:
        The picture's :class:`ImageTags`.

    Raises:
        ValueError: ``probs`` does not have one value per table row.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (len(table),):
        raise ValueError(f"expected {len(table)} probabilities (one per CSV row), got shape {p.shape}")
    general_thr = mcut_threshold(p[table.general]) if thresholds.general_mcut else thresholds.general
    character_thr = thresholds.character
    if thresholds.character_mcut:
        character_thr = max(CHARACTER_MCUT_FLOOR, mcut_threshold(p[table.character]))
    rating = {table.display[i]: float(p[i]) for i in table.rating}
    return ImageTags(
        general=_select(p, table.general, table, general_thr),
        character=_select(p, table.character, table, character_thr),
        rating=rating,
    )


def select_batch(
    probs: np.ndarray, table: TagTable, thresholds: Thresholds = Thresholds()
) -> list[ImageTags]:
    """:func:`select_tags` for each row of a float32 ``[N, T]`` output."""
    return [select_tags(row, table, thresholds) for row in np.asarray(probs)]
