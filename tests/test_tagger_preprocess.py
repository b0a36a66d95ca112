"""Preprocessing is bit-identical to the reference demo's, and its two documented corrections work."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lib_dbchar.tagger.errors import ImageProblem
from lib_dbchar.tagger.preprocess import (
    flatten_on_white,
    load_and_prepare,
    open_image,
    pad_to_square,
    prepare_image,
    to_8bit,
)
from tests.kit.tagger import solid_image
from tests.kit.tagger_double.reference import reference_input

SIZE = 448


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Random pixels: any misplaced pixel, wrong filter or channel order changes the array."""
    rng = np.random.default_rng(seed)
    channels = len(mode) if mode in ("RGB", "RGBA", "LA") else 1
    data = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(data.squeeze(-1) if channels == 1 else data, mode=mode)


def same_as_reference(image: Image.Image, size: int = SIZE) -> None:
    ours = prepare_image(image, size)
    ref = reference_input(image, size)[0]
    assert ours.dtype == np.float32 and ours.shape == (size, size, 3)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize(
    "size",
    [(640, 480), (480, 640), (101, 60), (60, 101), (300, 300), (448, 448), (448, 200), (1000, 999)],
    ids=str,
)
def test_rgb_matches_the_reference_bit_for_bit(size):
    same_as_reference(noise(size))


def test_random_sizes_match_the_reference():
    # Wide pictures take the unpadded two-pass route, tall ones the padded square: both must agree
    # with the reference to the last bit, shrinking and enlarging.
    rng = np.random.default_rng(21)
    for case in range(30):
        long_side, short_side = int(rng.integers(30, 800)), int(rng.integers(10, 800))
        size = (long_side, min(short_side, long_side - 1)) if case % 2 else (short_side, long_side)
        same_as_reference(noise(size, seed=case), size=int(rng.choice([448, 64, 600])))


def test_enlarging_and_odd_padding_match_the_reference():
    # 33 x 20: padding offsets floor-halved ((33-20)//2 = 6, not 7), then bicubic *enlarged* to 448.
    same_as_reference(noise((33, 20), seed=3))
    same_as_reference(noise((20, 33), seed=4), size=64)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "1"])
def test_other_modes_match_the_reference(mode):
    base = noise((120, 90), "RGBA", seed=5)
    if mode == "RGBA":
        image = base
    elif mode == "LA":
        image = base.convert("LA")
    else:
        image = base.convert("RGB").convert(mode)
    same_as_reference(image)


def test_palette_with_a_transparent_index_matches_the_reference():
    image = noise((70, 50), seed=6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 3
    same_as_reference(image)


def test_opaque_rgba_skips_the_composite_and_stays_identical():
    image = noise((90, 60), seed=7).convert("RGBA")
    assert flatten_on_white(image).mode == "RGB"
    same_as_reference(image)


def test_transparency_becomes_white_not_black():
    clear_blue = solid_image((0, 0, 255, 0), size=(8, 8), mode="RGBA")
    out = prepare_image(clear_blue, 8)
    assert np.all(out == 255.0)
    half = solid_image((0, 0, 255, 128), size=(8, 8), mode="RGBA")
    pixel = prepare_image(half, 8)[0, 0]
    # BGR: blue stays 255, green and red are half white.
    assert pixel[0] == 255.0 and 126 <= pixel[1] <= 128 and pixel[1] == pixel[2]


def test_channels_come_out_bgr_and_unnormalised():
    out = prepare_image(solid_image((10, 20, 30), size=(4, 4)), 4)
    assert out[0, 0].tolist() == [30.0, 20.0, 10.0]


def test_padding_is_white_and_centred():
    image = solid_image((0, 0, 0), size=(6, 3))
    square = pad_to_square(image)
    arr = np.asarray(square)
    assert square.size == (6, 6)
    # rows 0 (top pad: (6-3)//2 = 1 row) and 4..5 (bottom: 2 rows) are white; 1..3 black.
    assert arr[0].min() == 255 and arr[4:].min() == 255
    assert arr[1:4].max() == 0


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey16 = solid_image((128, 128, 128), size=(16, 16), mode="I;16")
    # The reference's RGBA conversion clips 32896 to 255: a white square.
    assert reference_input(grey16, 16)[0, 0, 0].tolist() == [255.0, 255.0, 255.0]
    assert prepare_image(grey16, 16)[0, 0].tolist() == [128.0, 128.0, 128.0]


def test_sixteen_bit_png_read_from_disk_is_scaled(tmp_path):
    path = tmp_path / "deep.png"
    solid_image((64, 64, 64), size=(10, 10), mode="I;16").save(path)
    # Pillow 9.5 opens it as "I", Pillow 10+ as "I;16": both must become 64.
    assert load_and_prepare(path, 10)[5, 5].tolist() == [64.0, 64.0, 64.0]


def test_to_8bit_float_and_passthrough():
    floats = Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32), mode="F")
    assert to_8bit(floats).getpixel((0, 0)) == 128
    rgb = solid_image("red")
    assert to_8bit(rgb) is rgb


def _jpeg_with_orientation(orientation: int) -> bytes:
    # Left half red, right half blue, 40 x 20 as stored.
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_by_default(tmp_path):
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_with_orientation(6))  # 6: stored rotated, display turns it 90 deg clockwise
    upright = open_image(path)
    assert upright.size == (20, 40)
    top, bottom = upright.getpixel((10, 2)), upright.getpixel((10, 37))
    assert top[0] > 200 and top[2] < 60  # red on top after the rotation
    assert bottom[2] > 200 and bottom[0] < 60
    as_stored = open_image(path, exif_transpose=False)
    assert as_stored.size == (40, 20)
    # With EXIF off the input equals the reference's (which ignores EXIF).
    np.testing.assert_array_equal(prepare_image(as_stored, 64), reference_input(as_stored, 64)[0])


def test_unreadable_files_raise_image_problem_naming_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    with pytest.raises(ImageProblem, match=r"notes\.png: not a picture"):
        open_image(bad)
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    noise((64, 64)).save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageProblem, match=r"cut\.png: the picture is damaged"):
        open_image(truncated)
    with pytest.raises(ImageProblem, match="file not found"):
        open_image(tmp_path / "gone.png")
