"""Decoding the pictures real collections hold, and refusing the files that are not usable."""

import numpy as np
import pytest
from PIL import Image

import tests.kit.images as kit_images
from lib_dbchar.dataset.decode import BadImage, decode_image, decode_preview, to_rgb
from tests.kit.images import png_header_only, textured

dataset_corpus = kit_images.dataset_corpus  # the session fixture (until conftest imports tests.kit.images)

LIMIT = 80_000_000


def _decode(path, **kwargs):
    return decode_image(path, max_pixels=kwargs.pop("max_pixels", LIMIT), **kwargs)


def test_every_good_corpus_picture_becomes_upright_rgb_with_its_notes(dataset_corpus):
    for spec in dataset_corpus.good:
        decoded = _decode(dataset_corpus.folder / spec.name)
        assert decoded.image.mode == "RGB", spec.name
        assert decoded.size == spec.size, spec.name
        assert decoded.image.size == spec.size, spec.name  # no reduction asked for
        for note in spec.notes:
            assert any(note in n for n in decoded.notes), (spec.name, decoded.notes)


def test_every_bad_corpus_file_is_refused_with_its_reason(dataset_corpus):
    for bad in dataset_corpus.bad:
        if bad.reason == "minimum":
            continue  # decodes fine; too small is prep's decision
        with pytest.raises(BadImage) as info:
            _decode(dataset_corpus.folder / bad.name)
        assert bad.reason in str(info.value), (bad.name, str(info.value))


def test_exif_orientation_is_applied(dataset_corpus):
    decoded = _decode(dataset_corpus.folder / "exif6.jpg")
    assert decoded.image.size == (720, 540)
    r, g, b = decoded.image.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60  # the red block is top-left once upright


def test_sixteen_bit_grey_is_scaled_not_clipped(dataset_corpus):
    pixels = np.asarray(_decode(dataset_corpus.folder / "grey16.png").image)
    assert pixels[:, 0].max() <= 1  # 0 stays black
    assert pixels[:, -1].min() == 255  # 65535 is white
    assert abs(int(pixels[320, 320, 0]) - 128) <= 1  # half level is mid-grey (a clip gives 255)


def test_transparency_is_painted_on_the_chosen_background(dataset_corpus):
    white = _decode(dataset_corpus.folder / "rgba.png").image
    black = _decode(dataset_corpus.folder / "rgba.png", background=(0, 0, 0)).image
    assert white.getpixel((5, 5)) == (255, 255, 255)
    assert black.getpixel((5, 5)) == (0, 0, 0)
    # The hidden green under alpha 0 never shows.
    assert white.getpixel((100, 100)) == (255, 255, 255)
    la = _decode(dataset_corpus.folder / "la.png").image
    assert la.getpixel((5, 5)) == (255, 255, 255) and la.getpixel((5, 400)) == (90, 90, 90)


def test_animated_pictures_use_the_first_frame(dataset_corpus):
    gif = _decode(dataset_corpus.folder / "animated.gif")
    webp = _decode(dataset_corpus.folder / "animated.webp")
    assert gif.image.getpixel((260, 260)) == (255, 0, 0)
    assert webp.image.getpixel((265, 265)) == (0, 0, 255)
    assert "animated (3 frames): used the first frame" in gif.notes


def test_opaque_rgba_gives_no_transparency_note():
    image, notes = to_rgb(Image.new("RGBA", (4, 4), (1, 2, 3, 255)), (255, 255, 255))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (1, 2, 3) and notes == []


def test_unsupported_mode_is_a_bad_image():
    with pytest.raises(BadImage, match="colour mode LAB"):
        to_rgb(Image.new("LAB", (4, 4)), (255, 255, 255))


def test_float_grey_in_unit_range_is_scaled():
    image = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    rgb, notes = to_rgb(image, (255, 255, 255))
    assert rgb.getpixel((0, 0)) == (128, 128, 128) and "float" in notes[0]


def test_pixel_budget_refuses_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png_header_only(5000, 4000))  # 20 MP declared, no pixel data at all
    with pytest.raises(BadImage, match=r"5000x4000 is 20 MP, over the 10 MP limit"):
        _decode(path, max_pixels=10_000_000)
    # Under the budget it gets as far as decoding, which fails on the missing data instead.
    with pytest.raises(BadImage, match="truncated or damaged"):
        _decode(path)


def test_large_jpeg_is_decoded_reduced_but_reports_full_size(dataset_corpus):
    path = dataset_corpus.folder / "big.jpg"
    reduced = _decode(path, min_scale=lambda size: 2 * 512 / min(size))
    assert reduced.size == (2800, 2100)
    assert reduced.image.size == (1400, 1050)  # libjpeg 1/2 scale: still >= 2 x 512 on the short side
    assert reduced.scale == (0.5, 0.5)
    # Not for PNG: the request is ignored.
    png = _decode(dataset_corpus.folder / "portrait.png", min_scale=lambda size: 0.1)
    assert png.image.size == png.size


def test_reduced_decoding_keeps_the_output_quality(tmp_path):
    # The same 512 px square from a full decode and from a draft decode differ by a fraction of a level.
    path = tmp_path / "photo.jpg"
    textured((3200, 2400), 42, shapes=60).save(path, quality=92)
    full = _decode(path)
    draft = _decode(path, min_scale=lambda size: 2 * 512 / min(size))
    assert draft.image.width < full.image.width
    squares = []
    for decoded in (full, draft):
        sx, sy = decoded.scale
        region = (400 * sx, 0, 2800 * sx, 2400 * sy)
        squares.append(
            np.asarray(decoded.image.resize((512, 512), Image.Resampling.LANCZOS, box=region), float)
        )
    assert np.abs(squares[0] - squares[1]).mean() < 1.0


def test_preview_is_small_but_knows_the_full_size(dataset_corpus):
    preview = decode_preview(dataset_corpus.folder / "big.jpg", max_side=600, max_pixels=LIMIT)
    assert max(preview.image.size) == 600
    assert preview.size == (2800, 2100)
    assert preview.scale == pytest.approx((600 / 2800, 450 / 2100))
