"""Test kit for the WD14 tagger: the ONNX doubles, images that plant tags, and a fake Hugging Face cache.

The doubles in ``tests/kit/tagger_double/`` (see its README.md) turn an image into tag probabilities
through its mean colour only, so a test picks a colour to get the tags it wants:

    image = image_for_tags(["red_hair"], absent=["blue_eyes"])
    probs = expected_probs(bgr_mean_of(batch))  # what the ONNX model must answer, computed in numpy

``fake_hf_cache`` lays the doubles out as the Hugging Face hub cache would after a download and puts
``huggingface_hub`` in offline mode, so ``hf_hub_download("SmilingWolf/wd-swinv2-tagger-v3",
"model.onnx")`` resolves without a network.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.kit.tagger_double.build import PALETTE

__all__ = [
    "TAGGER_DOUBLE_DIR",
    "TAGGER_DOUBLE_FILES",
    "TAGGER_IMAGE_SIZE",
    "TAGGER_PALETTE",
    "TAGGER_V2",
    "TAGGER_V2_DIR",
    "TAGGER_V2_REPO",
    "TAGGER_V3",
    "TAGGER_V3_DIR",
    "TAGGER_V3_REPO",
    "FakeHfCache",
    "TaggerSignature",
    "bgr_batch",
    "bgr_mean_of",
    "colour_for_tags",
    "double_tags",
    "double_weights",
    "expected_probs",
    "expected_tag_probs",
    "fake_hf_cache",
    "hf_commit_hash",
    "image_for_tags",
    "lay_out_hf_repo",
    "solid_image",
    "tagger_v2_dir",
    "tagger_v3_dir",
]

TAGGER_DOUBLE_DIR = Path(__file__).resolve().parent / "tagger_double"
TAGGER_V3_DIR = TAGGER_DOUBLE_DIR / "v3"
TAGGER_V2_DIR = TAGGER_DOUBLE_DIR / "v2"
# The files a WD14 repository holds that a tagger needs (weights.json is the doubles' own sidecar).
TAGGER_DOUBLE_FILES = ("model.onnx", "selected_tags.csv")
TAGGER_IMAGE_SIZE = 448
TAGGER_V3_REPO = "SmilingWolf/wd-swinv2-tagger-v3"
TAGGER_V2_REPO = "SmilingWolf/wd-v1-4-moat-tagger-v2"
# Named colours (RGB) the doubles are tuned against; README.md lists the tags each one yields.
TAGGER_PALETTE: Mapping[str, tuple[int, int, int]] = PALETTE

DEFAULT_THRESHOLD = 0.35
DEFAULT_CHARACTER_THRESHOLD = 0.85
_CHARACTER = 4


@dataclass(frozen=True)
class TaggerSignature:
    """What onnxruntime reports for a real export, which the doubles reproduce.

    Attributes:
        input_name / output_name: tensor names.
        input_shape: ``[batch, 448, 448, 3]``; ``batch`` is a ``str`` for a symbolic dimension.
        batch: the fixed batch size, or ``None`` when the batch is dynamic.
    """

    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]
    batch: int | None


# wd-*-tagger-v3 (and swinv2 v2.1) exports; wd-v1-4-moat/convnextv2-tagger-v2 (v2.0, tf2onnx, batch 1).
TAGGER_V3 = TaggerSignature("input", "output", ("batch_size", TAGGER_IMAGE_SIZE, TAGGER_IMAGE_SIZE, 3), None)
TAGGER_V2 = TaggerSignature(
    "input_1:0", "predictions_sigmoid", (1, TAGGER_IMAGE_SIZE, TAGGER_IMAGE_SIZE, 3), 1
)


# --------------------------------------------------------------------------------------------------
# The doubles' maths, recomputed in numpy


def double_weights(model_dir: Path = TAGGER_V3_DIR) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the weights a double was built with, from its ``weights.json``.

    Args:
        model_dir: ``TAGGER_V3_DIR``, ``TAGGER_V2_DIR`` or a copy of one.

    Returns:
        ``(W, b, tags)``: float64 ``W`` of shape ``[3, T]`` (rows B, G, R), float64 ``b`` of shape
        ``[T]`` and the tag names in output order.
    """
    doc = json.loads((Path(model_dir) / "weights.json").read_text(encoding="utf-8"))
    return np.array(doc["W"], dtype=np.float64), np.array(doc["b"], dtype=np.float64), list(doc["tags"])


def double_tags(model_dir: Path = TAGGER_V3_DIR) -> list[tuple[str, int]]:
    """``(name, category)`` for every row of a double's ``selected_tags.csv``, in output order.

    Categories are parsed through ``float`` because the v2 CSV writes ``9.0``.
    """
    with (Path(model_dir) / "selected_tags.csv").open(encoding="utf-8", newline="") as f:
        return [(row["name"], int(float(row["category"]))) for row in csv.DictReader(f)]


def expected_probs(bgr_mean: np.ndarray, model_dir: Path = TAGGER_V3_DIR) -> np.ndarray:
    """The probabilities a double must output for images of the given mean colour.

    Args:
        bgr_mean: mean pixel value(s) in the model's **BGR** order, raw 0..255; shape ``[3]`` or
            ``[N, 3]`` (see :func:`bgr_mean_of`).
        model_dir: which double's weights to use.

    Returns:
        float64 probabilities of shape ``[T]`` or ``[N, T]``, in ``selected_tags.csv`` row order.
    """
    mean = np.asarray(bgr_mean, dtype=np.float64)
    if mean.shape[-1:] != (3,):
        raise ValueError(f"bgr_mean must end in 3 channels (B, G, R), got shape {mean.shape}")
    w, b, _ = double_weights(model_dir)
    return 1.0 / (1.0 + np.exp(-((mean / 255.0) @ w + b)))


def expected_tag_probs(rgb: tuple[int, int, int] | str, model_dir: Path = TAGGER_V3_DIR) -> dict[str, float]:
    """``{tag: probability}`` the double gives a solid image of one colour.

    Args:
        rgb: an RGB triple (0..255) or a ``TAGGER_PALETTE`` name.
        model_dir: which double.

    Returns:
        Every tag of the double with its probability, in output order.
    """
    r, g, b = _rgb(rgb)[:3]
    probs = expected_probs(np.array([b, g, r], dtype=np.float64), model_dir)
    _, _, names = double_weights(model_dir)
    return dict(zip(names, (float(p) for p in probs), strict=True))


def bgr_mean_of(batch: np.ndarray) -> np.ndarray:
    """Mean colour of each image of an NHWC batch, in float64 as the doubles compute it.

    Args:
        batch: ``[N, H, W, 3]`` model input (BGR).

    Returns:
        ``[N, 3]`` float64 means.
    """
    return np.asarray(batch, dtype=np.float64).mean(axis=(1, 2))


def bgr_batch(colours: Iterable[tuple[int, int, int] | str], size: int = TAGGER_IMAGE_SIZE) -> np.ndarray:
    """Model input for solid images, skipping any preprocessing.

    Args:
        colours: RGB triples (0..255) or ``TAGGER_PALETTE`` names, one per image.
        size: side of the square input (the doubles want 448).

    Returns:
        float32 ``[N, size, size, 3]`` in BGR order, raw 0..255.
    """
    bgr = np.array([_rgb(c)[2::-1] for c in colours], dtype=np.float32)
    return np.ascontiguousarray(np.broadcast_to(bgr[:, None, None, :], (len(bgr), size, size, 3)))


# --------------------------------------------------------------------------------------------------
# Images


def _rgb(colour: tuple[int, ...] | str) -> tuple[int, ...]:
    if isinstance(colour, str):
        if colour not in TAGGER_PALETTE:
            raise ValueError(
                f"unknown colour name {colour!r}; use one of {sorted(TAGGER_PALETTE)} or an RGB tuple"
            )
        return TAGGER_PALETTE[colour]
    values = tuple(int(c) for c in colour)
    if len(values) not in (3, 4) or not all(0 <= c <= 255 for c in values):
        raise ValueError(f"colour must be 3 or 4 integers in 0..255 (RGB or RGBA), got {colour!r}")
    return values


def solid_image(
    rgb: tuple[int, ...] | str, size: tuple[int, int] = (64, 64), mode: str = "RGB"
) -> Image.Image:
    """A one-colour picture, in any mode the tagger must cope with.

    Args:
        rgb: RGB (or RGBA) values 0..255, or a ``TAGGER_PALETTE`` name.
        size: ``(width, height)``.
        mode: ``"RGB"``, ``"RGBA"`` (alpha from a 4th value, else 255), ``"L"``, ``"I;16"`` (16-bit
            grey: the 8-bit grey value times 257, the case that clips to white on a naive
            ``convert("RGBA")``), or any mode PIL converts RGB/RGBA to (``"P"``, ``"LA"``, ``"CMYK"``).

    Returns:
        A new PIL image.
    """
    values = _rgb(rgb)
    if mode == "I;16":
        grey = Image.new("RGB", (1, 1), values[:3]).convert("L").getpixel((0, 0))
        return Image.new("I;16", size, grey * 257)
    if mode == "RGBA" or len(values) == 4:
        rgba = values if len(values) == 4 else (*values, 255)
        image = Image.new("RGBA", size, rgba)
    else:
        image = Image.new("RGB", size, values)
    return image if image.mode == mode else image.convert(mode)


def colour_for_tags(
    present: Iterable[str],
    absent: Iterable[str] = (),
    *,
    model_dir: Path = TAGGER_V3_DIR,
    threshold: float = DEFAULT_THRESHOLD,
    character_threshold: float = DEFAULT_CHARACTER_THRESHOLD,
) -> tuple[int, int, int]:
    """Find a colour whose solid image gives ``present`` tags and not ``absent`` ones.

    Searches a 9-level RGB grid and returns the colour with the widest margin to the thresholds, so
    small preprocessing differences (resampling, rounding) cannot flip a tag.

    Args:
        present: tags that must score above their threshold.
        absent: tags that must score at or below it.
        model_dir: which double.
        threshold / character_threshold: general and character thresholds (strict ``>``).

    Returns:
        An RGB triple (0..255).

    Raises:
        ValueError: a tag is unknown, or no colour satisfies the request.
    """
    present, absent = list(present), list(absent)
    rows = double_tags(model_dir)
    names = [name for name, _ in rows]
    index = {name: i for i, name in enumerate(names)}
    unknown = [t for t in present + absent if t not in index]
    if unknown:
        raise ValueError(f"tags {unknown} are not in {model_dir}/selected_tags.csv")
    thresholds = np.array([character_threshold if cat == _CHARACTER else threshold for _, cat in rows])
    levels = np.linspace(0, 255, 9).round().astype(int)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)  # RGB
    margins = expected_probs(grid[:, ::-1].astype(np.float64), model_dir) - thresholds
    sign = np.zeros(len(names))
    sign[[index[t] for t in present]] = 1.0
    sign[[index[t] for t in absent]] = -1.0
    wanted = sign != 0
    if not wanted.any():
        raise ValueError("name at least one tag in present or absent")
    worst = (margins[:, wanted] * sign[wanted]).min(axis=1)
    best = int(np.argmax(worst))
    if worst[best] <= 0:
        raise ValueError(
            f"no solid colour gives tags {present} without {absent}; see tagger_double/README.md"
        )
    return tuple(int(c) for c in grid[best])


def image_for_tags(
    present: Iterable[str],
    absent: Iterable[str] = (),
    *,
    size: tuple[int, int] = (64, 64),
    mode: str = "RGB",
    model_dir: Path = TAGGER_V3_DIR,
) -> Image.Image:
    """A solid image the double tags with ``present`` and not ``absent`` (default thresholds).

    Square sizes keep the colour through the tagger's white padding; a non-square one mixes in white.
    """
    return solid_image(colour_for_tags(present, absent, model_dir=model_dir), size=size, mode=mode)


# --------------------------------------------------------------------------------------------------
# A fake Hugging Face hub cache


def hf_commit_hash(repo_id: str) -> str:
    """A stable 40-hex "commit" for a repo id, so paths are the same in every run."""
    return hashlib.sha1(f"dbchar-fake:{repo_id}".encode()).hexdigest()


def _blob_name(name: str, data: bytes) -> str:
    # The hub names LFS blobs (the .onnx) by sha256 and plain git files by their git blob sha1.
    if name.endswith(".onnx"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lay_out_hf_repo(
    hub_cache: Path,
    repo_id: str,
    files: Mapping[str, Path],
    *,
    revision: str | None = None,
    symlinks: bool = True,
) -> Path:
    """Write one model repo into a hub cache the way ``huggingface_hub`` leaves it after a download.

    Layout: ``models--Org--Name/blobs/<hash>``, ``snapshots/<revision>/<file>`` (a relative symlink
    to the blob, or a copy where symlinks are unavailable, as on Windows) and ``refs/main``.

    Args:
        hub_cache: the hub cache folder (``$HF_HUB_CACHE``).
        repo_id: ``"Org/Name"``.
        files: repo file name -> local file to store under it.
        revision: the 40-hex commit ``refs/main`` points at (default: :func:`hf_commit_hash`).
        symlinks: ``False`` copies into the snapshot instead of linking.

    Returns:
        The snapshot folder.
    """
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'Org/Name', got {repo_id!r}")
    revision = revision or hf_commit_hash(repo_id)
    repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        data = Path(source).read_bytes()
        blob = repo_dir / "blobs" / _blob_name(name, data)
        blob.write_bytes(data)
        target = snapshot / name
        target.unlink(missing_ok=True)
        if symlinks:
            try:
                target.symlink_to(Path("..", "..", "blobs", blob.name))
            except OSError:
                shutil.copyfile(blob, target)
        else:
            shutil.copyfile(blob, target)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision, encoding="utf-8")
    return snapshot


@dataclass(frozen=True)
class FakeHfCache:
    """A hub cache under ``tmp_path`` that ``huggingface_hub`` reads, offline, for one test.

    Attributes:
        hf_home: ``$HF_HOME``.
        hub_cache: ``$HF_HUB_CACHE`` (``hf_home / "hub"``).
    """

    hf_home: Path
    hub_cache: Path

    def add_repo(
        self,
        repo_id: str,
        source_dir: Path = TAGGER_V3_DIR,
        files: Iterable[str] = TAGGER_DOUBLE_FILES,
        *,
        revision: str | None = None,
    ) -> Path:
        """Lay out ``files`` from ``source_dir`` as the cached repo ``repo_id``; returns the snapshot."""
        return lay_out_hf_repo(
            self.hub_cache, repo_id, {f: Path(source_dir) / f for f in files}, revision=revision
        )

    def repo_dir(self, repo_id: str) -> Path:
        """``models--Org--Name`` folder of a repo."""
        return self.hub_cache / ("models--" + repo_id.replace("/", "--"))

    def revision(self, repo_id: str) -> str:
        """The commit ``refs/main`` of a cached repo points at."""
        return (self.repo_dir(repo_id) / "refs" / "main").read_text(encoding="utf-8").strip()

    def snapshot_dir(self, repo_id: str) -> Path:
        """The snapshot folder ``refs/main`` selects."""
        return self.repo_dir(repo_id) / "snapshots" / self.revision(repo_id)


def _redirect_hf_hub(monkeypatch: pytest.MonkeyPatch, hf_home: Path, hub_cache: Path) -> None:
    # huggingface_hub reads these variables once, at import, into module globals that
    # hf_hub_download & co. consult at call time: set the environment for anything imported later
    # (and for subprocesses), and patch the globals for what is already imported. Importing the
    # modules first means monkeypatch records their real values and restores them afterwards, rather
    # than a later import capturing this test's temporary folder for the rest of the session.
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.utils._cache_manager as hf_cache_manager

    env = {"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # Older names that would otherwise win over, or stand beside, the new ones.
    for name in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for module, name, value in (
        (hf_constants, "HF_HOME", str(hf_home)),
        (hf_constants, "HF_HUB_CACHE", str(hub_cache)),
        (hf_constants, "HUGGINGFACE_HUB_CACHE", str(hub_cache)),
        (hf_constants, "HF_HUB_OFFLINE", True),
        (hf_constants, "HF_HUB_DISABLE_TELEMETRY", True),
        (hf_cache_manager, "HF_HUB_CACHE", str(hub_cache)),
    ):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, value)


@pytest.fixture
def fake_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHfCache:
    """An offline Hugging Face cache holding the two tagger doubles.

    ``TAGGER_V3_REPO`` ("SmilingWolf/wd-swinv2-tagger-v3") holds the v3 double and ``TAGGER_V2_REPO``
    ("SmilingWolf/wd-v1-4-moat-tagger-v2") the v2 one (``model.onnx`` + ``selected_tags.csv`` each).
    ``HF_HOME``/``HF_HUB_CACHE`` point at it and ``HF_HUB_OFFLINE=1``, in the environment (for
    subprocesses and later imports) and in ``huggingface_hub``'s already-read globals. Add more repos
    with ``fake_hf_cache.add_repo(...)``. Libraries that copy these values at their own import
    (transformers, diffusers) are not redirected.
    """
    hf_home = tmp_path / "hf_home"
    cache = FakeHfCache(hf_home=hf_home, hub_cache=hf_home / "hub")
    cache.add_repo(TAGGER_V3_REPO, TAGGER_V3_DIR)
    cache.add_repo(TAGGER_V2_REPO, TAGGER_V2_DIR)
    _redirect_hf_hub(monkeypatch, cache.hf_home, cache.hub_cache)
    return cache


def _copy_double(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for name in (*TAGGER_DOUBLE_FILES, "weights.json"):
        shutil.copyfile(source / name, target / name)
    return target


@pytest.fixture
def tagger_v3_dir(tmp_path: Path) -> Path:
    """A private copy of the v3 double's folder (model.onnx, selected_tags.csv, weights.json)."""
    return _copy_double(TAGGER_V3_DIR, tmp_path / "wd-v3-double")


@pytest.fixture
def tagger_v2_dir(tmp_path: Path) -> Path:
    """A private copy of the v2 double's folder (model.onnx, selected_tags.csv, weights.json)."""
    return _copy_double(TAGGER_V2_DIR, tmp_path / "wd-v2-double")
