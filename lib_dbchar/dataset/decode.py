"""Decode the pictures real collections hold into plain 8-bit RGB, or say why a file cannot be used.

What :func:`decode_image` copes with, each noted in :attr:`Decoded.notes` when it changed something:

* EXIF orientation (phone photos stored sideways) is applied;
* transparency (RGBA, LA, PA, palette or RGB with a transparent colour) is painted on a background;
* 16-bit and 32-bit grey (``I;16*``, ``I``, ``F``) is scaled to 8 bits, not clipped to white;
* CMYK, 1-bit, grey and palette pictures become RGB;
* animated GIF/WebP/PNG: the first frame;
* a decompression-bomb guard refuses pictures over a pixel budget *before* decoding them.

Empty, truncated, corrupt and non-image files raise :class:`BadImage` whose message says what is
wrong and what to do; the caller names the file. Large JPEGs are decoded at a reduced scale (libjpeg's
DCT scaling, "draft" mode) when the caller says how much resolution it needs, which is where most
of the time of preparing a dataset goes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lib_dbchar.errors import DbcharError

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the picture upright (EXIF 2.3, tag 274).
_ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_CONVERTIBLE_MODES = {"RGB", "L", "P", "1", "CMYK", "YCbCr"}
# Errors Pillow's decoders raise on damaged data (struct.error and EOFError from plugins' header
# parsing, SyntaxError from PNG chunk checks, OSError for truncation and broken streams).
EMPTY_FILE_REASON = "the file is empty (0 bytes); copy it again from where it came from"
_DECODER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)
# Formats people drop into a folder that Pillow cannot read without plugins.
_UNSUPPORTED_HINTS = {
    ".svg": "SVG is a vector format: export it as PNG first",
    ".heic": "HEIC needs a plugin: convert it to PNG or JPEG first",
    ".heif": "HEIF needs a plugin: convert it to PNG or JPEG first",
    ".avif": "AVIF is not supported by this Pillow: convert it to PNG or JPEG first",
    ".psd": "export the layers flattened as PNG first",
    ".txt": "a caption file without a picture of the same name",
}


class BadImage(DbcharError):
    """A file that cannot become a dataset picture. The message is the reason, without the path."""


@dataclass
class Decoded:
    """A picture ready for cropping.

    Attributes:
        image: 8-bit RGB, upright; possibly decoded at a reduced scale (see ``scale``).
        size: ``(width, height)`` of the upright picture at full resolution: the pixels crop boxes
            and the report speak about.
        format: Pillow's format name ("JPEG", "PNG", ...).
        mode: the file's colour mode before conversion ("RGBA", "I;16", ...).
        notes: what was done to it, one short sentence each ("EXIF orientation 6 applied").
    """

    image: Image.Image
    size: tuple[int, int]
    format: str
    mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sx, sy)`` from full-resolution pixels to ``image``'s pixels (1.0 unless reduced)."""
        return self.image.width / self.size[0], self.image.height / self.size[1]


def _orientation(image: Image.Image, notes: list[str]) -> int:
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except _DECODER_ERRORS:
        notes.append("EXIF data unreadable: orientation not applied")
        return 1
    return int(value) if value in _ORIENTATION_FIX else 1


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size as seen after applying an EXIF ``orientation`` (5-8 swap width and height)."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _high_depth_to_l(image: Image.Image, file_format: str) -> tuple[Image.Image, str]:
    """Scale 16/32-bit grey to 8 bits. Returns the L image and a note.

    Pillow's own ``convert("L")`` clips these modes (anything above 255 becomes white), which
    turns a 16-bit grey scan into a blank page.
    """
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "I": "=i4", "F": "=f4"}[
        image.mode
    ]
    values = np.frombuffer(image.tobytes(), dtype=dtype).reshape(image.height, image.width).astype(np.float64)
    if image.mode == "F":
        # Float images are either 0..1 (scientific exports) or 0..255.
        top = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
        note = "32-bit float grey scaled to 8 bits"
    elif image.mode.startswith("I;16") or file_format == "PNG":
        # Pillow < 10 opens 16-bit grey PNGs as "I": their range is still 0..65535.
        top = 65535.0
        note = "16-bit grey scaled to 8 bits"
    else:
        peak = values.max(initial=0.0)
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else float(peak)
        note = "32-bit grey scaled to 8 bits"
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L"), note


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_rgb(
    image: Image.Image, background: tuple[int, int, int], file_format: str = ""
) -> tuple[Image.Image, list[str]]:
    """Convert a loaded picture of any supported mode to 8-bit RGB.

    Args:
        image: a loaded Pillow image.
        background: RGB painted under transparent pixels.
        file_format: the file's format (decides how an ``I`` image's range is read).

    Returns:
        ``(rgb_image, notes)``.

    Raises:
        BadImage: for a colour mode we cannot convert (e.g. LAB without a colour profile).
    """
    mode, notes = image.mode, []
    if mode in _HIGH_DEPTH_MODES:
        grey, note = _high_depth_to_l(image, file_format)
        return grey.convert("RGB"), [note]
    if _has_transparency(image):
        rgba = image.convert("RGBA")
        low, _ = rgba.getchannel("A").getextrema()
        if low < 255:
            canvas = Image.new("RGBA", rgba.size, (*background, 255))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB"), [f"transparent pixels painted on {_colour_name(background)}"]
        return rgba.convert("RGB"), notes
    if mode == "RGB":
        return image, notes
    if mode not in _CONVERTIBLE_MODES:
        raise BadImage(f"colour mode {mode} is not supported; save it as an RGB PNG or JPEG")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB (no colour profile applied)")
    return image.convert("RGB"), notes


def _colour_name(rgb: tuple[int, int, int]) -> str:
    names = {(255, 255, 255): "white", (0, 0, 0): "black", (128, 128, 128): "grey"}
    return names.get(tuple(rgb), "#{:02x}{:02x}{:02x}".format(*rgb))


def _unreadable_reason(path: Path) -> str:
    hint = _UNSUPPORTED_HINTS.get(path.suffix.lower())
    if hint:
        return f"not a picture Pillow can read ({hint})"
    return "not a picture Pillow can read (damaged, or not an image at all); re-export it as PNG or JPEG"


def _draft(image: Image.Image, size: tuple[int, int], min_scale: float) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the caller needs no more than that.

    ``draft`` picks the smallest DCT scale whose result is at least the requested size, so asking
    for ``size * min_scale`` never goes below what the crop needs.
    """
    if image.format != "JPEG" or min_scale >= 0.5:
        return
    wanted = (max(1, math.ceil(size[0] * min_scale)), max(1, math.ceil(size[1] * min_scale)))
    image.draft(image.mode, wanted)


def decode_image(
    path: Path,
    *,
    max_pixels: int,
    background: tuple[int, int, int] = (255, 255, 255),
    min_scale: Callable[[tuple[int, int]], float] | None = None,
) -> Decoded:
    """Read one picture file into upright 8-bit RGB.

    Args:
        path: the file; it is only read.
        max_pixels: refuse pictures with more pixels than this, before decoding them.
        background: RGB under transparent pixels.
        min_scale: given the upright full size ``(width, height)``, the smallest decoded/full scale
            the caller can use (e.g. ``2 * 512 / crop_side``). ``None`` decodes at full size. Only
            JPEGs can be decoded reduced; other formats ignore it.

    Returns:
        The :class:`Decoded` picture.

    Raises:
        BadImage: empty, unreadable, truncated or corrupt file; too many pixels; unsupported mode.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImage(EMPTY_FILE_REASON)
    notes: list[str] = []
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadImage(
                    f"{width}x{height} is {width * height / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP "
                    "limit (a decompression-bomb guard); shrink it, or raise 'Largest picture' if you trust "
                    "it"
                )
            frames = int(getattr(image, "n_frames", 1) or 1)
            if image.format == "JPEG":
                # JPEG keeps EXIF in a header segment: orientation is known before decoding, so the
                # reduced-scale decode can be sized for the upright crop.
                orientation = _orientation(image, notes)
                if min_scale is not None:
                    _draft(
                        image,
                        image.size,
                        min(1.0, float(min_scale(upright_size((width, height), orientation)))),
                    )
                image.load()
            else:
                # Other formats may keep EXIF after the pixels (PNG eXIf), and getexif() would decode
                # them first, hiding a decoding error from us: decode explicitly, then read EXIF.
                image.load()
                orientation = _orientation(image, notes)
            size = upright_size((width, height), orientation)
            file_format, mode = image.format or path.suffix.lstrip(".").upper(), image.mode
            # Leaving the block closes the file only; the loaded pixels stay (no copy needed).
            rgb, mode_notes = to_rgb(image, background, file_format)
    except UnidentifiedImageError:
        raise BadImage(_unreadable_reason(path)) from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"refused as a decompression bomb by Pillow ({exc})") from None
    except _DECODER_ERRORS as exc:
        raise BadImage(
            f"cannot be decoded ({exc}): the file is truncated or damaged; re-download or re-export it"
        ) from None
    if frames > 1:
        notes.append(f"animated ({frames} frames): used the first frame")
    notes += mode_notes
    if orientation != 1:
        rgb = rgb.transpose(_ORIENTATION_FIX[orientation])
        notes.append(f"EXIF orientation {orientation} applied")
    return Decoded(image=rgb, size=size, format=file_format, mode=mode, notes=notes)


def decode_preview(
    path: Path, *, max_side: int = 1024, max_pixels: int, background: tuple[int, int, int] = (255, 255, 255)
) -> Decoded:
    """A picture decoded for display (the crop nudge): at most ``max_side`` pixels on its long side.

    ``Decoded.size`` still gives the full-resolution size, so boxes drawn on the preview map back
    with ``Decoded.scale``.
    """

    def scale_for(size: tuple[int, int]) -> float:
        return max_side / max(size)

    decoded = decode_image(path, max_pixels=max_pixels, background=background, min_scale=scale_for)
    if max(decoded.image.size) > max_side:
        ratio = max_side / max(decoded.size)
        target = (max(1, round(decoded.size[0] * ratio)), max(1, round(decoded.size[1] * ratio)))
        decoded.image = decoded.image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return decoded
