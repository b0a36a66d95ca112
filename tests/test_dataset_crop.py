"""Square crop geometry: every box is a square inside the picture; focal boxes keep the subject."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_dbchar.dataset.crop import (
    best_window,
    center_box,
    contains,
    focal_box,
    largest_square,
    move_box,
    place_square,
    resize_box,
    validate_box,
)

sizes = st.tuples(st.integers(1, 5000), st.integers(1, 5000))


def _is_square_inside(box, width, height):
    left, top, right, bottom = box
    return right - left == bottom - top and left >= 0 and top >= 0 and right <= width and bottom <= height


def test_center_box_of_landscape_and_portrait():
    assert center_box(960, 640) == (160, 0, 800, 640)
    assert center_box(600, 1000) == (0, 200, 600, 800)
    assert center_box(512, 512) == (0, 0, 512, 512)
    # Odd leftovers round to the nearer pixel, never producing a non-square.
    assert center_box(101, 100) == (0, 0, 100, 100) or center_box(101, 100) == (1, 0, 101, 100)


@settings(max_examples=300, deadline=None)
@given(sizes)
def test_center_box_is_the_largest_square_inside(size):
    width, height = size
    box = center_box(width, height)
    assert _is_square_inside(box, width, height)
    assert box[2] - box[0] == largest_square(width, height)


@settings(max_examples=400, deadline=None)
@given(sizes, st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1), st.floats(0.01, 1))
def test_focal_box_is_largest_square_and_keeps_a_subject_that_fits(size, fx, fy, fw, fh):
    width, height = size
    side = min(width, height)
    # A subject inside the picture, at most the square's side on each axis.
    w, h = fw * side, fh * side
    x0, y0 = fx * (width - w), fy * (height - h)
    subject = (x0, y0, x0 + w, y0 + h)
    box = focal_box(width, height, subject)
    assert _is_square_inside(box, width, height)
    assert box[2] - box[0] == side
    assert contains(box, subject, slack=1.0)


def test_portrait_face_lands_on_the_upper_third_line():
    # 600 x 1000, face centred at y = 500: the square starts 200 above it.
    box = focal_box(600, 1000, (260, 460, 340, 540))
    assert box == (0, 300, 600, 900)
    face_centre_in_square = 500 - box[1]
    assert face_centre_in_square == pytest.approx(600 / 3, abs=1)


def test_landscape_face_is_centred_horizontally_and_clamped():
    assert focal_box(960, 640, (440, 100, 520, 180)) == (160, 0, 800, 640)
    # Near the right edge the square stops at the edge but still holds the face.
    box = focal_box(960, 640, (880, 100, 950, 180))
    assert box == (320, 0, 960, 640)


def test_subject_larger_than_the_square_is_centred():
    box = focal_box(1000, 400, (100, 0, 900, 400))
    assert box == (300, 0, 700, 400)


def test_place_square_rejects_a_square_that_cannot_fit():
    with pytest.raises(ValueError, match="does not fit"):
        place_square(0, 0, 700, 600, 800)
    assert place_square(-50, 900, 100, 600, 800) == (0, 700, 100, 800)


def test_best_window_prefers_weight_then_centre_or_start():
    profile = [0, 0, 5, 5, 0, 0, 0, 0]
    assert best_window(profile, 2) == 2
    flat = [1.0] * 10
    assert best_window(flat, 4) == 3  # nearest the middle
    assert best_window(flat, 4, prefer="start") == 0
    with pytest.raises(ValueError):
        best_window(flat, 11)


def test_validate_box_names_what_is_wrong():
    assert validate_box([10, 20, 110, 120], 200, 200) == (10, 20, 110, 120)
    assert validate_box((10.0, 20.0, 110.0, 120.0), 200, 200) == (10, 20, 110, 120)
    with pytest.raises(ValueError, match="not a square"):
        validate_box([0, 0, 100, 90], 200, 200)
    with pytest.raises(ValueError, match="outside"):
        validate_box([150, 0, 250, 100], 200, 200)
    with pytest.raises(ValueError, match="four numbers"):
        validate_box([0, 0, 100], 200, 200)
    with pytest.raises(ValueError, match="whole pixels"):
        validate_box([0.5, 0, 100.5, 100], 200, 200)
    with pytest.raises(ValueError, match="empty"):
        validate_box([5, 5, 5, 5], 200, 200)


def test_nudge_moves_and_resizes_within_the_picture():
    box = (100, 0, 600, 500)
    assert move_box(box, 50, 30, 800, 500) == (150, 0, 650, 500)
    assert move_box(box, 10_000, 0, 800, 500) == (300, 0, 800, 500)
    assert resize_box(box, 300, 800, 500) == (200, 100, 500, 400)
    with pytest.raises(ValueError):
        resize_box(box, 600, 800, 500)
