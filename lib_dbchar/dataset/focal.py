"""Where the subject is: an anime face detector (ONNX), and a saliency heuristic when there is none.

The detector is deepghs' ``face_detect_v1.4_n`` (``deepghs/anime_face_detection`` on the Hugging
Face hub, MIT licence, the model imgutils' ``detect_faces`` uses), an Ultralytics YOLOv8 export
without NMS. Its signature, which :class:`FaceDetector` relies on and the test double reproduces::

    input  "images"   float32 [batch, 3, height, width]   RGB, pixels / 255, dynamic height and width
    output "output0"  float32 [batch, 4 + classes, anchors]   per anchor: centre x, centre y, width,
                                                            height (input pixels), one score per class
    metadata          imgsz "[640, 640]" (training size), names "{0: 'face'}"

The pre- and post-processing here are our own: letterbox to the training size (aspect kept, grey
114 padding as in YOLOv8 training), scores thresholded, boxes decoded to corners, greedy NMS in
numpy, boxes mapped back to the picture's pixels.

The saliency heuristic scores every pixel by its edges and by how far its colour is from the
picture's border colour (character art sits on a plainer background), then slides the square along
the picture's long side to where that score is highest.
"""

from __future__ import annotations

import ast
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from lib_dbchar.dataset.crop import Box, Region, best_window, place_square
from lib_dbchar.errors import DbcharError

LETTERBOX_FILL = 114  # YOLOv8's padding grey
DEFAULT_INPUT_SIZE = 640
HUB_CONNECT_TIMEOUT = 5.0  # seconds to decide the hub is unreachable
SALIENCY_SIDE = 256  # saliency is computed on a picture this long; finer buys nothing for a crop


@dataclass(frozen=True)
class DetectorSpec:
    """Which ONNX detector to fetch from the Hugging Face hub.

    Attributes:
        repo_id / filename / revision: what ``hf_hub_download`` fetches; a pinned commit keeps
            every user on the same weights.
        sha256: of the file at that revision (for the record: the hub cache names blobs by it).
        approx_mb: download size, for messages.
        description: shown in messages and the report.
    """

    repo_id: str
    filename: str
    revision: str
    sha256: str
    approx_mb: int
    description: str


ANIME_FACE_DETECTOR = DetectorSpec(
    repo_id="deepghs/anime_face_detection",
    filename="face_detect_v1.4_n/model.onnx",
    revision="784dc4c0bb692351ddcdbe6131a050b17d3025d5",
    sha256="fd860b650a4377046842c3cd80d01b0b408bdfbdb4acee5759630f82c6ef04a9",
    approx_mb=12,
    description="deepghs anime face detector v1.4 (YOLOv8n)",
)


class DetectorUnavailable(DbcharError):
    """The face detector could not be had (not cached and no download); focal crops use saliency."""


@dataclass(frozen=True)
class Detection:
    """One detected face: ``box`` is ``(x0, y0, x1, y1)`` in the picture's pixels, ``score`` in 0..1."""

    box: Region
    score: float

    @property
    def area(self) -> float:
        """The box's area in square pixels (0 for a degenerate box)."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


# --------------------------------------------------------------------------------------------------
# Fetching


def fetch_detector(
    cache_dir: Path | None, *, allow_download: bool = True, spec: DetectorSpec = ANIME_FACE_DETECTOR
) -> Path:
    """The local path of the detector model, downloading it once into ``cache_dir`` if allowed.

    The cache is looked at first without any network access; a download happens only when the file
    is missing and ``allow_download`` is true. ``huggingface_hub``'s connect/read timeouts keep an
    unreachable hub from hanging the job.

    Args:
        cache_dir: the Hugging Face cache folder to use (``None``: huggingface_hub's default).
        allow_download: False never touches the network.
        spec: which model.

    Returns:
        Path of ``model.onnx``.

    Raises:
        DetectorUnavailable: with a message naming the model, the cache and what to do.
    """
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = {"repo_id": spec.repo_id, "filename": spec.filename, "revision": spec.revision}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    try:
        return Path(hf_hub_download(**kwargs, local_files_only=True))
    except (OSError, ValueError) as exc:  # LocalEntryNotFoundError is an OSError in every release
        missing = exc
    where = (
        f"{spec.repo_id} ({spec.filename} @ {spec.revision[:8]}) in {cache_dir or 'the Hugging Face cache'}"
    )
    if not allow_download:
        raise DetectorUnavailable(
            f"The face detector {where} is not cached and downloads are off; allow the download once "
            f"(about {spec.approx_mb} MB) or use the center crop. ({missing})"
        )
    unreachable = _hub_unreachable(timeout=HUB_CONNECT_TIMEOUT)
    if unreachable:
        raise DetectorUnavailable(
            f"The face detector {where} is not cached and the hub cannot be reached ({unreachable}). Connect "
            "to the internet once, or copy the file into that cache; until then focal crops use saliency."
        )
    try:
        return Path(hf_hub_download(**kwargs))
    except (OSError, ValueError) as exc:  # HTTP, timeout and offline-mode errors all derive from these
        raise DetectorUnavailable(
            f"The face detector {where} is not cached and could not be downloaded ({exc}). Connect to the "
            "internet once, or copy the file into that cache; until then focal crops use saliency."
        ) from None


def _hub_unreachable(timeout: float) -> str | None:
    """Why the hub cannot be reached, or None when a TCP connection to it opens within ``timeout``.

    huggingface_hub retries a refused connection five times with back-off (about 25 s) before it
    gives up; one quick connection attempt first turns "no network" into an immediate answer. With
    a proxy configured the direct attempt proves nothing, so it is skipped.
    """
    import huggingface_hub.constants as hub_constants

    if getattr(hub_constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE is set"
    if any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")
    ):
        return None
    url = urlsplit(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc}"


# --------------------------------------------------------------------------------------------------
# Pre- and post-processing (pure numpy)


@dataclass(frozen=True)
class Letterbox:
    """How a picture was fitted into the model's square input.

    Attributes:
        tensor: float32 ``[1, 3, size, size]``, RGB in 0..1.
        scale: model pixels per picture pixel.
        pad: ``(left, top)`` padding in model pixels.
    """

    tensor: np.ndarray
    scale: float
    pad: tuple[int, int]


def letterbox(image: Image.Image, size: int) -> Letterbox:
    """Fit an RGB picture into a ``size`` square without changing its aspect ratio.

    Args:
        image: RGB picture of any size.
        size: the model's input side (640 for deepghs' detectors).

    Returns:
        The :class:`Letterbox` (tensor ``[1, 3, size, size]`` float32, 0..1).
    """
    scale = size / max(image.size)
    w, h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    resized = (
        image.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=2.0) if (w, h) != image.size else image
    )
    left, top = (size - w) // 2, (size - h) // 2
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    canvas[top : top + h, left : left + w] = np.asarray(resized.convert("RGB"))
    tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / np.float32(255.0)
    return Letterbox(tensor=tensor, scale=scale, pad=(left, top))


def decode_predictions(output: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores above ``threshold`` from one image's YOLOv8 output.

    Args:
        output: float ``[4 + classes, anchors]`` (centre x, centre y, width, height, class scores).
        threshold: minimum score (the best class's).

    Returns:
        ``(boxes, scores)``: float64 ``[K, 4]`` corners ``(x0, y0, x1, y1)`` in model pixels and
        ``[K]`` scores. Degenerate or non-finite boxes are dropped.
    """
    if output.ndim != 2 or output.shape[0] < 5:
        raise ValueError(f"expected a [4 + classes, anchors] detector output, got shape {output.shape}")
    data = output.astype(np.float64)
    scores = data[4:].max(axis=0)
    keep = scores > threshold
    cx, cy, w, h = data[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    sane = np.isfinite(boxes).all(axis=1) & (w > 0) & (h > 0)
    return boxes[sane], scores[keep][sane]


def iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``[4]`` corner box with each of ``[K, 4]`` boxes."""
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.7) -> list[int]:
    """Greedy non-maximum suppression.

    Args:
        boxes: ``[K, 4]`` corners.
        scores: ``[K]``.
        iou_threshold: a box overlapping a better one by more than this is dropped.

    Returns:
        Indices of the kept boxes, best first.
    """
    order = list(np.argsort(-scores, kind="stable"))
    kept: list[int] = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        if order:
            overlaps = iou(boxes[best], boxes[order])
            order = [i for i, o in zip(order, overlaps, strict=True) if o <= iou_threshold]
    return kept


def to_picture(boxes: np.ndarray, fit: Letterbox, size: tuple[int, int]) -> np.ndarray:
    """Map ``[K, 4]`` model-pixel corners back to the picture's pixels, clipped to it."""
    left, top = fit.pad
    out = (boxes - np.array([left, top, left, top], dtype=np.float64)) / fit.scale
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, size[0])
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, size[1])
    return out


# --------------------------------------------------------------------------------------------------
# The detector


def _input_size(session: Any) -> int:
    """The square side to feed: the input's fixed size, else the export's ``imgsz``, else 640."""
    shape = session.get_inputs()[0].shape
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] == shape[3]:
        return int(shape[2])
    meta = session.get_modelmeta().custom_metadata_map or {}
    try:
        imgsz = json.loads(meta.get("imgsz", "null"))
    except json.JSONDecodeError:
        imgsz = None
    if isinstance(imgsz, list) and imgsz and all(isinstance(v, int) for v in imgsz):
        return int(max(imgsz))
    return DEFAULT_INPUT_SIZE


def _labels(session: Any) -> dict[int, str]:
    raw = (session.get_modelmeta().custom_metadata_map or {}).get("names", "{0: 'face'}")
    try:
        names = ast.literal_eval(raw)  # Ultralytics writes a Python dict literal
    except (ValueError, SyntaxError):
        return {0: "face"}
    return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {0: "face"}


def _ort_load_errors() -> tuple[type[BaseException], ...]:
    """What onnxruntime raises for a file it cannot load: its own classes derive from Exception."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument", "NoSuchFile", "Fail", "NotImplemented")
    own = tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))
    return (*own, RuntimeError, ValueError, OSError)


class FaceDetector:
    """An onnxruntime session of a YOLOv8 face detector, with its pre- and post-processing.

    ``detect`` is safe to call from several threads at once (onnxruntime sessions are).
    """

    def __init__(self, session: Any, *, name: str = "face detector", iou_threshold: float = 0.7) -> None:
        self.session = session
        self.name = name
        self.iou_threshold = iou_threshold
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_size = _input_size(session)
        self.labels = _labels(session)

    @classmethod
    def from_file(cls, path: Path, *, threads: int = 0, name: str = "face detector") -> FaceDetector:
        """Open a model file on the CPU.

        Args:
            path: the ``.onnx`` file.
            threads: onnxruntime intra-op threads (0 = its default, one per core).
            name: shown in the report.

        Raises:
            DetectorUnavailable: onnxruntime is missing or cannot load the file.
        """
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorUnavailable(
                f"onnxruntime is not installed ({exc}); focal crops use saliency"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, int(threads))
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except _ort_load_errors() as exc:
            raise DetectorUnavailable(
                f"{path} is not a usable ONNX model ({exc}); delete it to re-download"
            ) from None
        return cls(session, name=name)

    def detect(self, image: Image.Image, threshold: float = 0.3) -> list[Detection]:
        """Faces in an RGB picture, best first.

        Args:
            image: RGB picture (any size; it is letterboxed to the model's input).
            threshold: minimum face score.

        Returns:
            Detections with boxes in ``image``'s pixels, after NMS, sorted by score.
        """
        fit = letterbox(image, self.input_size)
        (output,) = self.session.run([self.output_name], {self.input_name: fit.tensor})
        boxes, scores = decode_predictions(np.asarray(output)[0], threshold)
        if not len(scores):
            return []
        kept = nms(boxes, scores, self.iou_threshold)
        mapped = to_picture(boxes[kept], fit, image.size)
        pairs = zip(mapped, scores[kept], strict=True)
        found = [Detection(tuple(float(v) for v in box), float(s)) for box, s in pairs]
        return [d for d in found if d.area > 0]


def load_face_detector(
    cache_dir: Path | None,
    *,
    allow_download: bool = True,
    threads: int = 0,
    spec: DetectorSpec = ANIME_FACE_DETECTOR,
) -> FaceDetector:
    """Fetch (once) and open the anime face detector.

    Raises:
        DetectorUnavailable: not cached and not downloadable, or not loadable; the message says why.
    """
    path = fetch_detector(cache_dir, allow_download=allow_download, spec=spec)
    return FaceDetector.from_file(path, threads=threads, name=f"{spec.description} ({spec.repo_id})")


def main_subject(detections: list[Detection]) -> Detection | None:
    """The face a crop should keep: the largest one (the character, not a face in the background)."""
    return max(detections, key=lambda d: (d.area, d.score), default=None)


def default_threads(workers: int) -> int:
    """onnxruntime threads per session when ``workers`` pictures are prepared at once."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# --------------------------------------------------------------------------------------------------
# Saliency


def saliency_map(image: Image.Image) -> np.ndarray:
    """Per-pixel interest of a (small) RGB picture: edge strength plus contrast to the border colour.

    Args:
        image: RGB, ideally at most a few hundred pixels a side.

    Returns:
        float32 ``[height, width]``, each half normalised to 0..1.
    """
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    edges = np.zeros_like(lum)
    edges[:, 1:] += np.abs(np.diff(lum, axis=1))
    edges[1:, :] += np.abs(np.diff(lum, axis=0))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    contrast = np.sqrt(((rgb - background) ** 2).sum(axis=2))

    def unit(a: np.ndarray) -> np.ndarray:
        top = float(a.max())
        return a / top if top > 0 else a

    return (0.5 * unit(edges) + 0.5 * unit(contrast)).astype(np.float32)


def saliency_box(image: Image.Image, size: tuple[int, int]) -> Box:
    """The largest square placed where the picture is most interesting.

    Landscape: the window nearest the centre among the best; portrait: the highest among the best
    (a figure's head is at the top).

    Args:
        image: the RGB picture (any scale of the full picture).
        size: the full picture's ``(width, height)``; the box is in these pixels.

    Returns:
        The square box.
    """
    width, height = size
    side = min(width, height)
    if width == height:
        return 0, 0, side, side
    ratio = SALIENCY_SIDE / max(image.size)
    small = image
    if ratio < 1:
        small = image.resize(
            (max(1, round(image.width * ratio)), max(1, round(image.height * ratio))),
            Image.Resampling.BILINEAR,
            reducing_gap=2.0,
        )
    weights = saliency_map(small)
    landscape = width > height
    profile = weights.sum(axis=0 if landscape else 1).tolist()
    cells = len(profile)
    window = max(1, min(cells, round(cells * side / (width if landscape else height))))
    start = best_window(profile, window, prefer="center" if landscape else "start")
    offset = start * (width if landscape else height) / cells
    return place_square(offset if landscape else 0, 0 if landscape else offset, side, width, height)
