"""The WD14 tagger doubles and the fake Hugging Face cache behave like the real thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.kit.tagger import (
    TAGGER_DOUBLE_DIR,
    TAGGER_IMAGE_SIZE,
    TAGGER_PALETTE,
    TAGGER_V2,
    TAGGER_V2_DIR,
    TAGGER_V2_REPO,
    TAGGER_V3,
    TAGGER_V3_DIR,
    TAGGER_V3_REPO,
    _redirect_hf_hub,
    bgr_batch,
    bgr_mean_of,
    colour_for_tags,
    double_tags,
    expected_probs,
    expected_tag_probs,
    hf_commit_hash,
    image_for_tags,
    solid_image,
)
from tests.kit.tagger_double import build

DOUBLES = pytest.mark.parametrize(
    ("model_dir", "signature"), [(TAGGER_V3_DIR, TAGGER_V3), (TAGGER_V2_DIR, TAGGER_V2)], ids=["v3", "v2"]
)
N_TAGS = 21


def _session(model_dir: Path):
    return ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _run(session, batch: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def _tags_above(
    probs: np.ndarray, model_dir: Path, general: float = 0.35, character: float = 0.85
) -> set[str]:
    return {
        name
        for (name, cat), p in zip(double_tags(model_dir), probs, strict=True)
        if cat != 9 and p > (character if cat == 4 else general)
    }


# --------------------------------------------------------------------------------------------------
# Signature


@DOUBLES
def test_session_reports_the_real_signature(model_dir, signature):
    session = _session(model_dir)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert session.get_providers() == ["CPUExecutionProvider"]
    assert (inp.name, inp.type, tuple(inp.shape)) == (
        signature.input_name,
        "tensor(float)",
        signature.input_shape,
    )
    batch = signature.batch if signature.batch is not None else "batch_size"
    assert (out.name, out.type, out.shape) == (signature.output_name, "tensor(float)", [batch, N_TAGS])
    assert session.get_modelmeta().custom_metadata_map == {"dbchar_double": model_dir.name}


def test_v3_batch_is_symbolic_and_v2_batch_is_fixed():
    assert isinstance(_session(TAGGER_V3_DIR).get_inputs()[0].shape[0], str)
    assert _session(TAGGER_V2_DIR).get_inputs()[0].shape[0] == 1


@DOUBLES
def test_model_files_are_small_and_ir_version_8(model_dir, signature):
    data = (model_dir / "model.onnx").read_bytes()
    assert len(data) < 4096
    # ModelProto field 1 (ir_version) is serialised first: tag 0x08, then the varint 8.
    assert data[:2] == b"\x08\x08"


# --------------------------------------------------------------------------------------------------
# Outputs against the numpy recomputation


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    solid = list(bgr_batch(TAGGER_PALETTE.values()))
    noise = [
        rng.uniform(0, 255, (TAGGER_IMAGE_SIZE, TAGGER_IMAGE_SIZE, 3)).astype(np.float32) for _ in range(3)
    ]
    ramp = np.linspace(0, 255, TAGGER_IMAGE_SIZE, dtype=np.float32)
    gradient = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], np.float32(40)), axis=-1)
    return [*solid, *noise, gradient.astype(np.float32)]


@DOUBLES
def test_outputs_equal_expected_probs(model_dir, signature):
    session = _session(model_dir)
    for image in _images():
        batch = image[None]
        got = _run(session, batch)
        assert got.shape == (1, N_TAGS) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected_probs(bgr_mean_of(batch), model_dir), rtol=0, atol=1e-6)


def test_v3_runs_a_batch_of_three_row_by_row():
    batch = bgr_batch(["red", "cyan", "black"])
    got = _run(_session(TAGGER_V3_DIR), batch)
    assert got.shape == (3, N_TAGS)
    np.testing.assert_allclose(got, expected_probs(bgr_mean_of(batch)), rtol=0, atol=1e-6)
    assert not np.allclose(got[0], got[1])


def test_v2_refuses_a_batch_of_two():
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    with pytest.raises(InvalidArgument, match=r"input_1:0(.|\n)*Got: 2 Expected: 1"):
        _run(_session(TAGGER_V2_DIR), bgr_batch(["red", "blue"]))


def test_expected_probs_rejects_a_wrong_channel_count():
    with pytest.raises(ValueError, match=r"3 channels.*\(4,\)"):
        expected_probs(np.zeros(4))


# --------------------------------------------------------------------------------------------------
# Planted tags (the table in tagger_double/README.md)

_ALWAYS = {"1girl", "solo", "long_hair", "upper_body"}
PALETTE_TAGS = {
    "red": _ALWAYS | {"red_hair", "from_side"},
    "green": _ALWAYS | {"green_hair", "0_0"},
    "blue": _ALWAYS | {"blue_eyes", "from_behind"},
    "cyan": _ALWAYS | {"green_hair", "blue_eyes", "from_behind", "0_0", "hatsune_miku"},
    "white": _ALWAYS | {"white_background", "^_^"},
    "black": _ALWAYS | {">_<"},
    "grey": _ALWAYS,
}


@pytest.mark.parametrize("colour", sorted(PALETTE_TAGS))
def test_palette_colours_plant_the_documented_tags(colour):
    probs = _run(_session(TAGGER_V3_DIR), bgr_batch([colour]))[0]
    assert _tags_above(probs, TAGGER_V3_DIR) == PALETTE_TAGS[colour]


def test_tags_sit_just_either_side_of_the_default_thresholds():
    red, cyan = (expected_tag_probs(c) for c in ("red", "cyan"))
    assert red["long_hair"] == pytest.approx(0.36, abs=1e-6)
    assert red["smile"] == pytest.approx(0.34, abs=1e-6)
    assert red["solo"] == pytest.approx(0.86, abs=1e-6)
    assert red["hakurei_reimu"] == pytest.approx(0.84, abs=1e-6)
    assert cyan["hatsune_miku"] == pytest.approx(0.87, abs=1e-6)


def test_readme_colour_table_is_current():
    readme = (TAGGER_DOUBLE_DIR / "README.md").read_text(encoding="utf-8")
    assert build.palette_table() in readme


@pytest.mark.parametrize("colour", sorted(TAGGER_PALETTE))
def test_palette_probabilities_are_tie_free(colour):
    probs = np.sort(np.array(list(expected_tag_probs(colour).values())))
    assert np.diff(probs).min() > 1e-4


def test_mean_colour_is_all_that_matters():
    """A noisy image tags like the solid image of its mean colour."""
    rng = np.random.default_rng(7)
    noisy = np.clip(
        rng.normal(0, 40, (1, TAGGER_IMAGE_SIZE, TAGGER_IMAGE_SIZE, 3)) + np.array([0, 0, 200]), 0, 255
    )
    probs = _run(_session(TAGGER_V3_DIR), noisy.astype(np.float32))[0]
    assert "red_hair" in _tags_above(probs, TAGGER_V3_DIR)


# --------------------------------------------------------------------------------------------------
# The CSVs


def test_v3_csv_has_integer_categories_ratings_general_character():
    text = (TAGGER_V3_DIR / "selected_tags.csv").read_text(encoding="utf-8")
    assert text.splitlines()[0] == "tag_id,name,category,count"
    assert "9999999,general,9," in text and ".0," not in text
    cats = [cat for _, cat in double_tags(TAGGER_V3_DIR)]
    assert cats == [9] * 4 + [0] * 15 + [4] * 2
    names = [name for name, _ in double_tags(TAGGER_V3_DIR)]
    assert names[:4] == ["general", "sensitive", "questionable", "explicit"]
    assert {
        "long_hair",
        "from_side",
        "from_behind",
        "full_body",
        "upper_body",
        "1girl",
        "^_^",
        "0_0",
        ">_<",
    } <= set(names)
    assert names[-2:] == ["hatsune_miku", "hakurei_reimu"]


def test_v2_csv_writes_categories_as_floats_with_the_same_rows():
    rows = (TAGGER_V2_DIR / "selected_tags.csv").read_text(encoding="utf-8").splitlines()
    assert rows[1] == "9999999,general,9.0,7910000"
    assert rows[5].split(",")[2] == "0.0" and rows[-1].split(",")[2] == "4.0"
    assert double_tags(TAGGER_V2_DIR) == double_tags(TAGGER_V3_DIR)


@pytest.mark.parametrize("variant", build.VARIANTS, ids=lambda v: v.folder)
def test_committed_files_match_build_py(variant):
    folder = TAGGER_DOUBLE_DIR / variant.folder
    assert (folder / "selected_tags.csv").read_text(encoding="utf-8") == build.csv_text(variant)
    committed = json.loads((folder / "weights.json").read_text(encoding="utf-8"))
    assert committed == build.weights_document(variant)
    assert committed["input_name"] == variant.input_name and committed["output_name"] == variant.output_name


# --------------------------------------------------------------------------------------------------
# Image helpers


def test_solid_image_modes():
    assert solid_image((10, 20, 30), size=(5, 3)).getpixel((4, 2)) == (10, 20, 30)
    assert solid_image((10, 20, 30), size=(5, 3)).size == (5, 3)
    assert solid_image((10, 20, 30, 40), mode="RGBA").getpixel((0, 0)) == (10, 20, 30, 40)
    assert solid_image("red", mode="RGBA").getpixel((0, 0)) == (255, 0, 0, 255)
    assert solid_image((200, 200, 200), mode="L").getpixel((0, 0)) == 200
    sixteen = solid_image((200, 200, 200), mode="I;16")
    assert (sixteen.mode, sixteen.getpixel((0, 0))) == ("I;16", 200 * 257)
    assert solid_image("blue", mode="P").convert("RGB").getpixel((0, 0)) == (0, 0, 255)


def test_solid_image_rejects_bad_colours():
    with pytest.raises(ValueError, match="unknown colour name 'mauve'"):
        solid_image("mauve")
    with pytest.raises(ValueError, match=r"0\.\.255"):
        solid_image((0, 0, 256))


def test_bgr_batch_reverses_channels():
    batch = bgr_batch([(1, 2, 3)], size=4)
    assert batch.shape == (1, 4, 4, 3) and batch.dtype == np.float32
    assert batch[0, 3, 3].tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize(
    ("present", "absent"),
    [
        (["red_hair"], ["blue_eyes"]),
        (["blue_eyes", "from_behind"], ["red_hair"]),
        (["hatsune_miku"], ["smile"]),
    ],
)
def test_image_for_tags_plants_tags_through_the_real_model(present, absent):
    image = image_for_tags(present, absent, size=(TAGGER_IMAGE_SIZE, TAGGER_IMAGE_SIZE))
    batch = np.asarray(image, dtype=np.float32)[None, :, :, ::-1].copy()
    tags = _tags_above(_run(_session(TAGGER_V3_DIR), batch)[0], TAGGER_V3_DIR)
    assert set(present) <= tags
    assert not set(absent) & tags


def test_colour_for_tags_refuses_what_no_colour_can_do():
    with pytest.raises(ValueError, match="no solid colour"):
        colour_for_tags(["hatsune_miku", "hakurei_reimu"])
    with pytest.raises(ValueError, match=r"\['cat_ears'\] are not in"):
        colour_for_tags(["cat_ears"])


# --------------------------------------------------------------------------------------------------
# The fake Hugging Face cache


def test_hf_hub_download_resolves_offline_from_the_fake_cache(fake_hf_cache):
    from huggingface_hub import hf_hub_download

    path = Path(hf_hub_download(TAGGER_V3_REPO, "model.onnx"))
    assert path == fake_hf_cache.snapshot_dir(TAGGER_V3_REPO) / "model.onnx"
    assert path.read_bytes() == (TAGGER_V3_DIR / "model.onnx").read_bytes()
    assert path.is_relative_to(fake_hf_cache.hub_cache)
    csv_path = Path(hf_hub_download(TAGGER_V2_REPO, "selected_tags.csv"))
    assert csv_path.read_bytes() == (TAGGER_V2_DIR / "selected_tags.csv").read_bytes()
    assert _session(path.parent).get_inputs()[0].name == "input"


def test_fake_cache_layout_is_the_hubs(fake_hf_cache):
    repo = fake_hf_cache.hub_cache / "models--SmilingWolf--wd-swinv2-tagger-v3"
    revision = (repo / "refs" / "main").read_text(encoding="utf-8")
    assert revision == hf_commit_hash(TAGGER_V3_REPO) and len(revision) == 40
    int(revision, 16)
    link = repo / "snapshots" / revision / "model.onnx"
    assert link.is_symlink()
    assert os.readlink(link) == os.path.join("..", "..", "blobs", link.resolve().name)
    assert len(link.resolve().name) == 64  # LFS files are stored under their sha256
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_HUB_CACHE"] == str(fake_hf_cache.hub_cache)


def test_fake_cache_serves_snapshot_download_and_cache_lookups(fake_hf_cache):
    from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache

    snapshot = Path(snapshot_download(TAGGER_V2_REPO))
    assert snapshot == fake_hf_cache.snapshot_dir(TAGGER_V2_REPO)
    assert sorted(p.name for p in snapshot.iterdir()) == ["model.onnx", "selected_tags.csv"]
    assert Path(try_to_load_from_cache(TAGGER_V3_REPO, "selected_tags.csv")).is_file()
    assert {r.repo_id for r in scan_cache_dir().repos} == {TAGGER_V3_REPO, TAGGER_V2_REPO}


def test_fake_cache_misses_fail_fast_without_network(fake_hf_cache):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(TAGGER_V3_REPO, "model.safetensors")
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download("SmilingWolf/wd-eva02-large-tagger-v3", "model.onnx")


def test_fake_cache_add_repo_and_pinned_revision(fake_hf_cache):
    from huggingface_hub import hf_hub_download

    revision = "f" * 40
    fake_hf_cache.add_repo("SmilingWolf/wd-convnext-tagger-v3", TAGGER_V3_DIR, revision=revision)
    path = hf_hub_download("SmilingWolf/wd-convnext-tagger-v3", "selected_tags.csv", revision=revision)
    assert Path(path).parent.name == revision


def test_fake_cache_reaches_a_fresh_interpreter(fake_hf_cache):
    """The environment alone redirects huggingface_hub when it is imported after the fixture."""
    code = f"from huggingface_hub import hf_hub_download as d; print(d({TAGGER_V3_REPO!r}, 'model.onnx'))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == fake_hf_cache.snapshot_dir(TAGGER_V3_REPO) / "model.onnx"


def test_redirect_is_undone_after_the_test(tmp_path):
    import huggingface_hub.constants as hf_constants

    before = (hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_CACHE"))
    with pytest.MonkeyPatch.context() as mp:
        _redirect_hf_hub(mp, tmp_path, tmp_path / "hub")
        redirected = (hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE)
        assert redirected == (str(tmp_path / "hub"), True)
    assert (hf_constants.HF_HUB_CACHE, hf_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_CACHE")) == before
