"""Square crop boxes: pure geometry on integer pixel coordinates.

A box is ``(left, top, right, bottom)`` in the pixels of the picture as it is meant to be seen (after
EXIF orientation), right and bottom exclusive, so its side is ``right - left``. Every box made here
is a square that lies inside the picture; resizing it to the output side is a uniform scale, so the
aspect ratio of what was cropped never changes (the guide: "do this via crop, and not resize").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[int, int, int, int]
Region = tuple[float, float, float, float]

# Portraits put the face's centre on the upper third line of the square (rule of thirds).
PORTRAIT_FACE_LINE = 1.0 / 3.0


def largest_square(width: int, height: int) -> int:
    """The side of the largest square a ``width`` x ``height`` picture holds."""
    return min(int(width), int(height))


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def place_square(left: float, top: float, side: int, width: int, height: int) -> Box:
    """A ``side`` square whose top-left corner is as near ``(left, top)`` as the picture allows.

    Args:
        left / top: wanted corner, may be fractional or outside the picture.
        side: the square's side; at most ``min(width, height)``.
        width / height: the picture's size.

    Returns:
        The square moved inside the picture.

    Raises:
        ValueError: when the square does not fit in the picture at all.
    """
    side = int(side)
    if side < 1 or side > min(width, height):
        raise ValueError(f"a {side} px square does not fit in a {width}x{height} picture")
    x = _clamp(round(left), 0, width - side)
    y = _clamp(round(top), 0, height - side)
    return x, y, x + side, y + side


def center_box(width: int, height: int) -> Box:
    """The largest square in the middle of the picture."""
    side = largest_square(width, height)
    return place_square((width - side) / 2, (height - side) / 2, side, width, height)


def _slide(start: float, lo: float, hi: float, side: int) -> float:
    """Move a window ``[start, start + side)`` along one axis so it contains ``[lo, hi)`` if it can.

    When the subject is larger than the window the window is centred on it instead.
    """
    if hi - lo > side:
        return (lo + hi) / 2 - side / 2
    start = min(start, lo)  # subject's start must be inside
    return max(start, hi - side)  # and so must its end


def focal_box(width: int, height: int, subject: Region, *, face_line: float = PORTRAIT_FACE_LINE) -> Box:
    """The largest square that keeps ``subject`` (a face) in frame, placed for a portrait.

    On a landscape picture the square spans the full height and slides sideways to centre the
    subject; on a portrait it spans the full width and slides vertically to put the subject's centre
    on the ``face_line`` (the upper third by default). Either way the subject is kept whole when it
    is smaller than the square.

    Args:
        width / height: the picture's size in pixels.
        subject: ``(x0, y0, x1, y1)`` of the subject, in the same pixels (fractions allowed).
        face_line: where the subject's centre goes, as a fraction of the square from its top.

    Returns:
        The square box.
    """
    side = largest_square(width, height)
    x0, y0, x1, y1 = subject
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = (width - side) / 2, (height - side) / 2
    if width > height:
        left = _slide(cx - side / 2, x0, x1, side)
    elif height > width:
        top = _slide(cy - side * face_line, y0, y1, side)
    return place_square(left, top, side, width, height)


def best_window(
    profile: Sequence[float], window: int, *, prefer: str = "center", tolerance: float = 0.02
) -> int:
    """Where a window of ``window`` cells along ``profile`` holds the most weight.

    Args:
        profile: non-negative weights along one axis (e.g. saliency summed over columns).
        window: the window length in cells (1..len(profile)).
        prefer: among windows within ``tolerance`` of the best, ``"center"`` picks the one nearest the
            middle (a neutral choice on flat pictures) and ``"start"`` the first (heads are at the top).
        tolerance: relative slack that counts as a tie.

    Returns:
        The window's first cell index.
    """
    n = len(profile)
    if not 1 <= window <= n:
        raise ValueError(f"window {window} must be within 1..{n}")
    sums = []
    running = sum(profile[:window])
    sums.append(running)
    for i in range(1, n - window + 1):
        running += profile[i + window - 1] - profile[i - 1]
        sums.append(running)
    best = max(sums)
    near = [i for i, s in enumerate(sums) if s >= best * (1.0 - tolerance)]
    if prefer == "start":
        return near[0]
    middle = (n - window) / 2
    return min(near, key=lambda i: (abs(i - middle), i))


def validate_box(box: Sequence[float], width: int, height: int) -> Box:
    """Check a box someone set (the crop nudge, a JSON file) and return it as integers.

    Raises:
        ValueError: naming what is wrong: not four whole numbers, not a square, empty, or outside
            the ``width`` x ``height`` picture.
    """
    values = list(box)
    if len(values) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError(f"crop box {values!r} must be four numbers: left, top, right, bottom")
    if not all(float(v).is_integer() for v in values):
        raise ValueError(f"crop box {values!r} must be whole pixels")
    left, top, right, bottom = (int(v) for v in values)
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"crop box {values!r} is empty")
    if right - left != bottom - top:
        raise ValueError(
            f"crop box {values!r} is {right - left}x{bottom - top}, not a square: a square crop keeps the "
            "picture's proportions"
        )
    if left < 0 or top < 0 or right > width or bottom > height:
        raise ValueError(f"crop box {values!r} reaches outside the {width}x{height} picture")
    return left, top, right, bottom


def move_box(box: Box, dx: int, dy: int, width: int, height: int) -> Box:
    """The same square moved by ``(dx, dy)`` pixels, stopped at the picture's edges (the nudge)."""
    left, top, right, _ = box
    return place_square(left + dx, top + dy, right - left, width, height)


def resize_box(box: Box, side: int, width: int, height: int) -> Box:
    """The square resized to ``side`` about its centre, kept inside the picture.

    Raises:
        ValueError: when ``side`` is under 1 or larger than the picture's short side.
    """
    left, top, right, bottom = box
    cx, cy = (left + right) / 2, (top + bottom) / 2
    return place_square(cx - side / 2, cy - side / 2, side, width, height)


def scale_region(region: Region, sx: float, sy: float) -> Region:
    """Scale a region between two pixel grids (e.g. original -> decoded-at-half-size)."""
    x0, y0, x1, y1 = region
    return x0 * sx, y0 * sy, x1 * sx, y1 * sy


def contains(box: Box, region: Region, slack: float = 0.0) -> bool:
    """True when ``region`` lies inside ``box`` (within ``slack`` pixels)."""
    return (
        region[0] >= box[0] - slack
        and region[1] >= box[1] - slack
        and region[2] <= box[2] + slack
        and region[3] <= box[3] + slack
    )
