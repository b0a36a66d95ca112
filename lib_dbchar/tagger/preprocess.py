"""Turn a picture into WD14 model input, exactly as the model author's demo does.

The reference (SmilingWolf's wd-tagger demo) receives every picture as RGBA, then:

1. composites it on an opaque white canvas and drops alpha (transparent areas become white);
2. pads it, centred, to a white square of side ``m = max(w, h)``: the picture's top-left corner
   goes to ``((m - w) // 2, (m - h) // 2)``;
3. resizes the square to the model's side ``S`` with PIL's bicubic filter (enlarging too; a square
   already of side ``S`` is left alone);
4. converts to float32, keeps the 0..255 range (no normalisation) and reverses RGB to **BGR**.

:func:`prepare_image` gives bit-identical arrays for every picture the reference reads correctly.
It is faster where that cannot change a pixel: an opaque picture skips the RGBA composite (with
alpha 255 the composite returns the source unchanged), a square one skips the padding copy, and a
wide one is never padded at all (see :func:`resize_wide_padded`).

Where dbchar deliberately differs (corrections of what every reference gets wrong):

* **16-bit greyscale** (PNG/TIFF, PIL modes ``I;16*`` / ``I``): the reference's RGBA conversion
  clips every value above 255 to white, so such pictures reach the model as a white square.
  dbchar scales them to 8 bits first (``v / 257``, rounded).
* **EXIF orientation**: the references ignore it, so a phone photo stored sideways is tagged
  sideways. dbchar rotates it upright first when ``exif_transpose`` is on (the default); turn it
  off to match the reference on such files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_dbchar.tagger.errors import ImageProblem

WHITE = (255, 255, 255)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
_EXIF_ORIENTATION = 0x0112
# PIL modes holding more than 8 bits per sample in one grey channel.
_WIDE_GREY = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def open_image(path: Path, *, exif_transpose: bool = True) -> Image.Image:
    """Read a picture fully into memory.

    Args:
        path: the file.
        exif_transpose: rotate/flip as the EXIF orientation tag says (the references do not).

    Returns:
        The decoded PIL image (any mode).

    Raises:
        ImageProblem: the file is missing, not a picture, truncated or too large; the message
            names the file and what to do.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now, inside the try: PIL decodes lazily otherwise
    except FileNotFoundError:
        raise ImageProblem(f"{path}: file not found (moved or deleted while tagging?)") from None
    except UnidentifiedImageError:
        raise ImageProblem(f"{path}: not a picture PIL can read; convert it to PNG or JPEG") from None
    except Image.DecompressionBombError as exc:
        raise ImageProblem(f"{path}: {exc}; scale it down before tagging") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # PIL raises these for truncated or corrupt data ("image file is truncated", bad headers).
        raise ImageProblem(f"{path}: the picture is damaged ({exc}); re-export or replace it") from None
    return upright(image) if exif_transpose else image


def upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any; other pictures are returned as they are (no copy)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError, struct.error):
        return image  # unreadable EXIF: treat as upright, as the references do
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16-bit (or 32-bit / float) greyscale picture to 8-bit ``L``; others unchanged.

    Integer modes are taken as 16-bit data (0..65535, what PNG and TIFF store; Pillow < 10 reads
    16-bit PNGs as mode ``I``): ``round(v / 257)``. Float pictures in 0..1 are scaled by 255,
    others clipped to 0..255.

    Returns:
        An ``L`` image, or ``image`` itself when it is not wide greyscale.
    """
    if image.mode not in _WIDE_GREY:
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
    else:
        scaled = values / 257.0
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8), mode="L")


def has_transparency(image: Image.Image) -> bool:
    """True when the picture carries alpha or a transparent palette/colour key."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGB with transparent areas composited on white, as the reference's first step.

    Opaque pictures skip the RGBA round trip (bit-identical: compositing alpha 255 on white
    returns the source). Wide greyscale is scaled to 8 bits first (see :func:`to_8bit`).

    Returns:
        An ``RGB`` image (``image`` itself when it is RGB already).
    """
    image = to_8bit(image)
    if image.mode == "RGB":
        return image
    if not has_transparency(image):
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    if rgba.getextrema()[3] == (255, 255):
        return rgba.convert("RGB")
    canvas = Image.new("RGBA", rgba.size, (*WHITE, 255))
    canvas.alpha_composite(rgba)
    return canvas.convert("RGB")


def pad_to_square(image: Image.Image) -> Image.Image:
    """Centre an RGB picture on a white square of side ``max(w, h)`` (offsets floor-halved)."""
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), WHITE)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def bgr_float(image: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
    """Pixels of an RGB picture as float32 BGR, 0..255.

    Args:
        image: an ``RGB`` image of size ``(S, S)``.
        out: optional float32 ``[S, S, 3]`` array to fill (e.g. a slot of a batch).

    Returns:
        float32 ``[S, S, 3]``, channels B, G, R.
    """
    rgb = np.asarray(image)
    if out is None:
        out = np.empty(rgb.shape, dtype=np.float32)
    out[...] = rgb[:, :, ::-1]
    return out


def resize_wide_padded(image: Image.Image, size: int) -> Image.Image:
    """``pad_to_square(image).resize((size, size), BICUBIC)`` for a picture wider than tall, bit for bit.

    Pillow resizes in two passes through an 8-bit intermediate: horizontal (every row to ``size``
    columns), then vertical. Padding a wide picture adds whole white rows above and below; the
    horizontal pass turns each of them into the same row. So the horizontal pass runs on the
    picture's own rows only (``resize((size, h))`` does no vertical pass), the white rows are
    filled in, and the vertical pass runs on that intermediate (``resize`` of an image already
    ``size`` wide does no horizontal pass). The arithmetic is Pillow's own in both passes; what is
    skipped is building the ``m x m`` square and resampling its padding.

    Args:
        image: an RGB picture with ``width > height`` and ``width != size``.
        size: the model's side.

    Returns:
        The ``size x size`` RGB picture the reference would get.
    """
    width, height = image.size
    top = (width - height) // 2
    rows = np.asarray(image.resize((size, height), Image.Resampling.BICUBIC))
    white = np.asarray(Image.new("RGB", (width, 1), WHITE).resize((size, 1), Image.Resampling.BICUBIC))
    middle = np.empty((width, size, 3), dtype=np.uint8)
    middle[:] = white
    middle[top : top + height] = rows
    return Image.fromarray(middle, "RGB").resize((size, size), Image.Resampling.BICUBIC)


def prepare_image(image: Image.Image, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """One picture as model input (see the module docstring for the exact steps).

    Args:
        image: any PIL image (already upright, if EXIF orientation is to be honoured).
        size: the model's input side ``S`` (448 for every SmilingWolf model today).
        out: optional float32 ``[S, S, 3]`` to write into.

    Returns:
        float32 ``[S, S, 3]``: BGR, 0..255, white-padded and bicubic-resized.
    """
    rgb = flatten_on_white(image)
    width, height = rgb.size
    if width > height and width != size:
        return bgr_float(resize_wide_padded(rgb, size), out)
    square = pad_to_square(rgb)
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return bgr_float(square, out)


def load_and_prepare(path: Path, size: int, *, exif_transpose: bool = True) -> np.ndarray:
    """Read a file and prepare it (the unit of work the tagging pipeline runs in worker threads).

    Raises:
        ImageProblem: see :func:`open_image`.
    """
    return prepare_image(open_image(path, exif_transpose=exif_transpose), size)


def is_image_file(path: Path) -> bool:
    """True for a visible file whose suffix is a picture format the tagger reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
