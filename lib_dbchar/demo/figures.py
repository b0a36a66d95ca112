"""Draw the demo's character: one simple figure with red hair in varied front-facing poses.

The pictures are drawn, not downloaded, so the demo runs offline. The background and the hair are
red enough that the bundled WD14 tagger double (which tags by mean colour) writes ``red_hair``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from lib_dbchar.paths import atomic_writer

__all__ = ["HAIR", "draw_figure", "write_pictures"]

HAIR = (200, 20, 25)  # the character's fixed hair colour
_BACKGROUND = (235, 120, 110)
_SKIN = (250, 215, 190)
_DRESS = (150, 20, 40)
_EYES = (30, 60, 200)


def _limb(draw, start: tuple[float, float], angle_deg: float, length: float, *, width: int, colour) -> None:
    """A straight limb from ``start`` at ``angle_deg`` (0 = straight down, positive = outwards)."""
    angle = math.radians(angle_deg)
    end = (start[0] + length * math.sin(angle), start[1] + length * math.cos(angle))
    draw.line([start, end], fill=colour, width=width)


def draw_figure(size: int, seed: int):
    """Draw the character facing the viewer in a pose picked by ``seed``.

    Args:
        size: the square picture's side in pixels.
        seed: picks the arm and leg angles, the head tilt and the figure's offset.

    Returns:
        A ``PIL.Image.Image`` in RGB mode, ``size`` x ``size``.
    """
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    s = size / 256  # drawn on a 256 px grid, scaled
    cx = size / 2 + rng.uniform(-20, 20) * s
    head_y = 70 * s + rng.uniform(-8, 8) * s
    head_r = 30 * s
    tilt = rng.uniform(-6, 6) * s
    # Long hair behind the head and shoulders: drawn first so the face covers it.
    draw.rounded_rectangle(
        [cx - 42 * s + tilt, head_y - 38 * s, cx + 42 * s + tilt, head_y + 70 * s],
        radius=int(30 * s),
        fill=HAIR,
    )
    shoulder_y = head_y + head_r + 8 * s
    arm = 55 * s
    for side in (-1, 1):
        _limb(
            draw,
            (cx + side * 26 * s, shoulder_y + 6 * s),
            side * rng.uniform(10, 140),
            arm,
            width=int(9 * s),
            colour=_SKIN,
        )
        _limb(
            draw,
            (cx + side * 12 * s, shoulder_y + 80 * s),
            side * rng.uniform(0, 35),
            60 * s,
            width=int(11 * s),
            colour=_SKIN,
        )
    draw.polygon(
        [
            (cx - 24 * s, shoulder_y),
            (cx + 24 * s, shoulder_y),
            (cx + 38 * s, shoulder_y + 85 * s),
            (cx - 38 * s, shoulder_y + 85 * s),
        ],
        fill=_DRESS,
    )
    draw.ellipse([cx - head_r + tilt, head_y - head_r, cx + head_r + tilt, head_y + head_r], fill=_SKIN)
    # Fringe and eyes: the same character in every picture.
    draw.chord([cx - head_r + tilt, head_y - head_r, cx + head_r + tilt, head_y + 4 * s], 180, 360, fill=HAIR)
    for side in (-1, 1):
        ex = cx + tilt + side * 11 * s
        draw.ellipse([ex - 4 * s, head_y + 4 * s, ex + 4 * s, head_y + 12 * s], fill=_EYES)
    draw.arc(
        [cx + tilt - 8 * s, head_y + 12 * s, cx + tilt + 8 * s, head_y + 22 * s],
        20,
        160,
        fill=_DRESS,
        width=2,
    )
    return image


def write_pictures(folder: Path, count: int, *, size: int = 256, seed: int = 0) -> list[Path]:
    """Write ``count`` pictures of the character as ``pose_NN.png`` (atomically).

    Args:
        folder: where to write them (created).
        count: how many poses.
        size: side of each square picture in pixels.
        seed: the first pose's seed; pose ``i`` uses ``seed + i``.

    Returns:
        The written paths, in pose order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"pose_{i:02d}.png"
        with atomic_writer(path, "wb") as handle:
            draw_figure(size, seed + i).save(handle, format="PNG")
        paths.append(path)
    return paths
