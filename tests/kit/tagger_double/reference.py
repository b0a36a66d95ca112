"""The reference way to tag one picture, step by step as SmilingWolf's wd-tagger demo does it.

Written out here (not imported from the demo) so that tests can compare dbchar's tagger with it
bit for bit and ``bench/tagger.py`` can time it: one session, one picture per call.

* :func:`reference_input`: the demo's input component hands over the picture converted to RGBA;
  it is composited on white, padded centred to a white square, bicubic-resized to the model's
  side when that differs, turned into float32 and reversed to BGR.
* :func:`reference_tags`: probabilities zipped with the display names into Python pairs, strict
  ``>`` thresholds, MCut when asked (character floor 0.15), general tags sorted by descending
  probability, characters kept in CSV order.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

KAOMOJI = {
    "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
    "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
}  # fmt: skip


def reference_input(image: Image.Image, size: int) -> np.ndarray:
    """The demo's model input for one picture.

    Args:
        image: the picture as decoded (any mode; the demo's UI converts it to RGBA first).
        size: the model's input side.

    Returns:
        float32 ``[1, size, size, 3]``, BGR, 0..255.
    """
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255))
    canvas.alpha_composite(rgba)
    rgb = canvas.convert("RGB")
    width, height = rgb.size
    side = max(width, height)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - width) // 2, (side - height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    pixels = np.asarray(square, dtype=np.float32)[:, :, ::-1]
    return pixels[None]


def reference_labels(csv_path: Path) -> tuple[list[str], list[int], list[int], list[int]]:
    """Display names and the rating / general / character row indices of a ``selected_tags.csv``."""
    with Path(csv_path).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [r["name"] if r["name"] in KAOMOJI else r["name"].replace("_", " ") for r in rows]
    cats = [int(float(r["category"])) for r in rows]
    return (
        names,
        [i for i, c in enumerate(cats) if c == 9],
        [i for i, c in enumerate(cats) if c == 0],
        [i for i, c in enumerate(cats) if c == 4],
    )


def _mcut(values: list[float]) -> float:
    ordered = sorted(values, reverse=True)
    gaps = [a - b for a, b in itertools.pairwise(ordered)]
    at = gaps.index(max(gaps))
    return (ordered[at] + ordered[at + 1]) / 2


def reference_tags(
    probs: np.ndarray,
    labels: tuple[list[str], list[int], list[int], list[int]],
    general: float = 0.35,
    character: float = 0.85,
    general_mcut: bool = False,
    character_mcut: bool = False,
) -> tuple[list[tuple[str, float]], dict[str, float], dict[str, float]]:
    """The demo's selection for one picture.

    Returns:
        ``(general tags by descending probability, characters, ratings)``.
    """
    names, rating_idx, general_idx, character_idx = labels
    pairs = list(zip(names, probs.astype(float), strict=True))
    ratings = dict(pairs[i] for i in rating_idx)
    general_pairs = [pairs[i] for i in general_idx]
    if general_mcut:
        general = _mcut([p for _, p in general_pairs])
    kept = dict(x for x in general_pairs if x[1] > general)
    character_pairs = [pairs[i] for i in character_idx]
    if character_mcut:
        character = max(0.15, _mcut([p for _, p in character_pairs]))
    characters = dict(x for x in character_pairs if x[1] > character)
    return sorted(kept.items(), key=lambda x: x[1], reverse=True), characters, ratings
