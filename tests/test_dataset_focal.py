"""Face detection (letterbox, YOLO decoding, NMS, the ONNX double, fetching) and the saliency fallback."""

import time

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lib_dbchar.dataset import focal
from lib_dbchar.dataset.crop import contains
from lib_dbchar.dataset.focal import (
    ANIME_FACE_DETECTOR,
    Detection,
    DetectorUnavailable,
    FaceDetector,
    decode_predictions,
    letterbox,
    load_face_detector,
    main_subject,
    nms,
    saliency_box,
    to_picture,
)
from tests.kit.face_double import FACE_DOUBLE_MODEL, FACE_DOUBLE_SCORE, lay_out_face_detector
from tests.kit.images import plant_face, textured


@pytest.fixture(scope="module")
def double():
    return FaceDetector.from_file(FACE_DOUBLE_MODEL, threads=1, name="double")


def test_letterbox_keeps_aspect_and_pads_with_grey():
    image = Image.new("RGB", (800, 400), (255, 0, 0))
    fit = letterbox(image, 640)
    assert fit.tensor.shape == (1, 3, 640, 640) and fit.tensor.dtype == np.float32
    assert fit.scale == pytest.approx(0.8)
    assert fit.pad == (0, 160)
    assert fit.tensor[0, :, 0, 0] == pytest.approx([114 / 255] * 3)  # padding
    assert fit.tensor[0, :, 320, 320] == pytest.approx([1.0, 0.0, 0.0])  # the picture, RGB, 0..1


def test_decode_predictions_thresholds_and_converts_centres_to_corners():
    output = np.array(
        [
            [100, 50, 10],  # cx
            [100, 50, 10],  # cy
            [20, 10, 4],  # w
            [40, 10, -4],  # h (a negative size is dropped)
            [0.9, 0.2, 0.95],  # score
        ],
        dtype=np.float32,
    )
    boxes, scores = decode_predictions(output, threshold=0.3)
    assert boxes.tolist() == [[90, 80, 110, 120]]
    assert scores.tolist() == pytest.approx([0.9])
    with pytest.raises(ValueError, match="4 \\+ classes"):
        decode_predictions(np.zeros((3, 4)), 0.3)


def test_nms_drops_overlaps_and_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], dtype=np.float64)
    scores = np.array([0.8, 0.9, 0.7])
    assert nms(boxes, scores, 0.5) == [1, 2]
    assert nms(boxes, scores, 0.95) == [1, 0, 2]


def test_to_picture_undoes_the_letterbox():
    fit = letterbox(Image.new("RGB", (800, 400)), 640)
    model_box = np.array([[80.0, 200.0, 160.0, 280.0]])
    assert to_picture(model_box, fit, (800, 400)).tolist() == [[100.0, 50.0, 200.0, 150.0]]


def test_double_has_the_real_signature(double):
    inp, out = double.session.get_inputs()[0], double.session.get_outputs()[0]
    assert (inp.name, inp.shape) == ("images", ["batch", 3, "height", "width"])
    assert out.name == "output0" and out.shape[:2] == ["batch", 5]
    assert double.input_size == 640
    assert double.labels == {0: "face"}


def test_double_finds_a_planted_face_in_picture_pixels(double):
    image = plant_face(textured((1200, 800), 3), (900, 100, 1000, 220))
    faces = double.detect(image, threshold=0.3)
    # The shifted duplicate is suppressed by NMS and the 0.05 decoy by the threshold.
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert faces[0].score == pytest.approx(FACE_DOUBLE_SCORE)
    assert (x0, y0, x1, y1) == pytest.approx((900, 100, 1000, 220), abs=3)


def test_double_without_a_face_finds_nothing(double):
    assert double.detect(textured((640, 480), 4), threshold=0.3) == []
    assert double.detect(textured((640, 480), 4), threshold=0.01)[0].score == pytest.approx(0.05)


def test_main_subject_is_the_largest_face():
    small = Detection((0, 0, 10, 10), 0.99)
    large = Detection((0, 0, 50, 50), 0.5)
    assert main_subject([small, large]) is large
    assert main_subject([]) is None


def test_load_face_detector_from_the_cache_offline(fake_hf_cache):
    spec = ANIME_FACE_DETECTOR
    lay_out_face_detector(fake_hf_cache.hub_cache, spec.repo_id, spec.filename, spec.revision)
    detector = load_face_detector(fake_hf_cache.hub_cache, allow_download=False, threads=1)
    assert spec.repo_id in detector.name
    image = plant_face(Image.new("RGB", (400, 300), "white"), (20, 30, 60, 70))
    assert detector.detect(image)[0].box == pytest.approx((20, 30, 60, 70), abs=2)


def test_missing_detector_without_download_says_what_to_do(fake_hf_cache):
    with pytest.raises(DetectorUnavailable) as info:
        load_face_detector(fake_hf_cache.hub_cache, allow_download=False)
    message = str(info.value)
    assert "deepghs/anime_face_detection" in message and "not cached" in message
    assert str(fake_hf_cache.hub_cache) in message and "center crop" in message


def test_missing_detector_with_no_network_fails_fast(fake_hf_cache, monkeypatch):
    # Offline mode is on in the fake cache: the download attempt must answer at once, not retry.
    started = time.monotonic()
    with pytest.raises(DetectorUnavailable, match=r"cannot be reached|could not be downloaded"):
        load_face_detector(fake_hf_cache.hub_cache, allow_download=True)
    assert time.monotonic() - started < 5


def test_unreachable_hub_is_detected_without_waiting(monkeypatch):
    import huggingface_hub.constants as hub_constants

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    started = time.monotonic()
    reason = focal._hub_unreachable(timeout=2)
    assert reason and "127.0.0.1:9" in reason
    assert time.monotonic() - started < 3


def test_a_file_that_is_not_a_model_is_reported(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not onnx")
    with pytest.raises(DetectorUnavailable, match="not a usable ONNX model"):
        FaceDetector.from_file(bogus)


def _figure(size, at, *, radius=60):
    """A plain background with one detailed object (a ring of shapes) centred at ``at``."""
    image = Image.new("RGB", size, (235, 235, 230))
    draw = ImageDraw.Draw(image)
    x, y = at
    for i, colour in enumerate(((200, 30, 30), (30, 30, 200), (20, 20, 20))):
        r = radius - 18 * i
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return image, (x - radius, y - radius, x + radius, y + radius)


@pytest.mark.parametrize(
    ("size", "at"),
    [
        ((1200, 600), (1080, 300)),
        ((1200, 600), (120, 200)),
        ((600, 1300), (300, 1150)),
        ((700, 1400), (350, 150)),
    ],
)
def test_saliency_crop_keeps_the_detailed_object(size, at):
    image, region = _figure(size, at)
    box = saliency_box(image, size)
    assert box[2] - box[0] == box[3] - box[1] == min(size)
    assert contains(box, region, slack=2)


def test_saliency_on_a_reduced_view_maps_to_full_pixels():
    image, region = _figure((2400, 1200), (2200, 600), radius=120)
    view = image.reduce(3)
    box = saliency_box(view, image.size)
    assert box[2] - box[0] == 1200
    assert contains(box, region, slack=4)


def test_portrait_saliency_prefers_the_top_when_the_figure_fills_it():
    # A tall figure (head on top, body below) filling the height: the square starts at the top.
    image = Image.new("RGB", (500, 1500), (240, 240, 240))
    ImageDraw.Draw(image).rectangle((150, 100, 350, 1400), fill=(40, 60, 160))
    assert saliency_box(image, image.size)[1] <= 100
