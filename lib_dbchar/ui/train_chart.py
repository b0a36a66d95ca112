"""The Train tab's loss chart, drawn with Pillow.

A plain image rather than ``gr.LinePlot``: LinePlot's arguments and data format changed between
gradio 3.41 and 4.x (and it pulls in altair), while an image shows the same in both. The raw loss
is drawn faint and the smoothed curve (TensorBoard's smoothing, the guide's 0.99) on top. "Pick a
checkpoint" marks the steps of the saved checkpoints on it (dashed lines, the recommended one solid),
so the loss at each column of its grid can be read off the same picture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lib_dbchar.ui.train_logic import smooth

WIDTH, HEIGHT = 640, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 12, 12, 28
BACKGROUND = (255, 255, 255)
AXES = (120, 120, 120)
RAW = (190, 200, 230)
SMOOTH = (30, 80, 200)
TEXT = (60, 60, 60)
MARKER = (230, 140, 30)
HIGHLIGHT = (200, 30, 60)
DASH = 4  # pixels drawn, then as many skipped, along a checkpoint marker


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low < 1e-12:  # a flat series still needs a visible band
        pad = abs(high) * 0.05 or 1.0
        return low - pad, high + pad
    return low, high


def _x_of(step: float, x_range: tuple[float, float]) -> float:
    x0, x1 = x_range
    return MARGIN_LEFT + (step - x0) / ((x1 - x0) or 1) * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)


def _points(
    steps: Sequence[float],
    values: Sequence[float],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
) -> list[tuple[float, float]]:
    """Plot coordinates of the finite points (non-finite ones are left out of the line)."""
    y0, y1 = y_range
    height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    out = []
    for step, value in zip(steps, values, strict=True):
        if not math.isfinite(value):
            continue
        y = MARGIN_TOP + (1 - (value - y0) / ((y1 - y0) or 1)) * height
        out.append((_x_of(step, x_range), y))
    return out


def _draw_markers(
    draw: Any, markers: Sequence[int], highlight: int | None, x_range: tuple[float, float]
) -> None:
    """Vertical lines at the checkpoint steps: dashed, the highlighted one solid and red, labelled."""
    bottom = HEIGHT - MARGIN_BOTTOM
    steps = sorted(set(int(m) for m in markers) | ({int(highlight)} if highlight is not None else set()))
    last_label = -1e9
    for step in steps:
        x = _x_of(step, x_range)
        if step == highlight:
            draw.line([(x, MARGIN_TOP), (x, bottom)], fill=HIGHLIGHT, width=2)
        else:
            for y in range(MARGIN_TOP, bottom, 2 * DASH):
                draw.line([(x, y), (x, min(y + DASH, bottom))], fill=MARKER, width=1)
        # Labels that would overlap the previous one are left out (the line still shows).
        if x - last_label >= 30 or step == highlight:
            draw.text((x + 2, MARGIN_TOP), str(step), fill=HIGHLIGHT if step == highlight else MARKER)
            last_label = x


def loss_chart(
    records: Sequence[dict[str, Any]],
    smoothing: float = 0.99,
    *,
    markers: Sequence[int] = (),
    highlight: int | None = None,
) -> Any:
    """Draw the loss of a run.

    Args:
        records: the loss log's records (``{"step": int, "loss": float, ...}``), in step order.
        smoothing: 0 to just under 1, as TensorBoard's slider.
        markers: steps to mark with a dashed vertical line (the saved checkpoints).
        highlight: one step to mark with a solid red line (the recommended checkpoint).

    Returns:
        An RGB ``PIL.Image`` of :data:`WIDTH` x :data:`HEIGHT`; with no records, an empty chart
        that says so (with the markers, when given, on a step axis of their own).
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    bottom, right = HEIGHT - MARGIN_BOTTOM, WIDTH - MARGIN_RIGHT
    draw.line([(MARGIN_LEFT, MARGIN_TOP), (MARGIN_LEFT, bottom), (right, bottom)], fill=AXES)
    steps = [float(r.get("step", i)) for i, r in enumerate(records)]
    raw = [float(r.get("loss", math.nan)) for r in records]
    marked = [float(m) for m in markers] + ([float(highlight)] if highlight is not None else [])
    if marked or steps:
        x_range = (min(steps + marked), max(steps + marked))
        _draw_markers(draw, markers, highlight, x_range)
    if not records:
        draw.text((MARGIN_LEFT + 10, HEIGHT // 2), "no steps logged yet", fill=TEXT)
        return image
    smoothed = smooth(raw, min(max(float(smoothing), 0.0), 0.999))
    y_range = _bounds(raw)
    for series, colour, width in ((raw, RAW, 1), (smoothed, SMOOTH, 2)):
        points = _points(steps, series, x_range, y_range)
        if len(points) > 1:
            draw.line(points, fill=colour, width=width)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
    draw.text((4, MARGIN_TOP), f"{y_range[1]:.4g}", fill=TEXT)
    draw.text((4, bottom - 10), f"{y_range[0]:.4g}", fill=TEXT)
    draw.text((MARGIN_LEFT, bottom + 8), f"step {int(x_range[0])}", fill=TEXT)
    draw.text((right - 80, bottom + 8), f"step {int(x_range[1])}", fill=TEXT)
    return image
