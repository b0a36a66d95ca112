"""Checkpoint I/O: the safetensors container, readers, restricted .ckpt loading, detection, metadata."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
import types
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import CheckpointError, UnsupportedCheckpoint
from lib_dbchar.checkpoint.detect import (
    describe_checkpoint,
    detect_arch,
    guess_prediction,
    inspect_checkpoint,
    prediction_from_yaml,
)
from lib_dbchar.checkpoint.metadata import (
    ModelIdentity,
    copied_metadata,
    file_sha256,
    identify,
    legacy_hash,
    webui_merge_fields,
)
from lib_dbchar.checkpoint.reader import (
    POSITION_IDS_KEY,
    apply_ema,
    ema_key,
    load_checkpoint,
    normalized_keys,
    open_checkpoint,
    repaired_position_ids,
)
from lib_dbchar.checkpoint.stformat import aligned_header, read_header
from lib_dbchar.errors import JobStopped
from lib_dbchar.jobs import JobContext

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."


def save(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    return path


# --- the safetensors container ------------------------------------------------------------------


def test_header_matches_what_safetensors_wrote(tmp_path):
    tensors = {
        "w": torch.randn(3, 4),
        "h": torch.randn(5).half(),
        "b": torch.randn(2).bfloat16(),
        "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = save(tmp_path / "x.safetensors", tensors, {"k": "v"})
    header = read_header(path)
    assert header.metadata == {"k": "v"}
    assert {k: (e.dtype, e.shape) for k, e in header.entries.items()} == {
        k: (str(t.dtype).removeprefix("torch."), tuple(t.shape)) for k, t in tensors.items()
    }
    with open_checkpoint(path) as reader:
        for key, tensor in tensors.items():
            loaded = reader.load(key)
            assert loaded.dtype == tensor.dtype and torch.equal(loaded, tensor), key
            buffer = torch.empty(64, dtype=torch.uint8)
            assert torch.equal(reader.load_into(key, buffer), tensor), key


def test_our_header_is_read_by_safetensors_and_aligned():
    header = aligned_header(
        [("a", "float32", (2, 3)), ("b", "float16", (3,)), ("c", "int64", ())], {"m": "1"}
    )
    (length,) = struct.unpack("<Q", header[:8])
    assert len(header) == 8 + length and len(header) % 8 == 0
    body = header + torch.zeros(6).numpy().tobytes() + torch.zeros(3).half().numpy().tobytes() + b"\0" * 8
    loaded = safetensors.torch.load(body)
    assert set(loaded) == {"a", "b", "c"} and loaded["c"].dtype == torch.int64


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:4], "shorter than a safetensors header"),
        (lambda raw: struct.pack("<Q", 10**12) + raw[8:], "header claims"),
        (lambda raw: raw[:8] + b"[" + raw[9:], "not JSON"),
        (lambda raw: raw[:-3], "truncated"),
        (lambda raw: raw + b"xx", "stray bytes"),
    ],
)
def test_damaged_files_are_named(tmp_path, damage, message):
    good = save(tmp_path / "good.safetensors", {"w": torch.ones(4)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        open_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_overlapping_offsets_are_refused(tmp_path):
    header = json.dumps(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
    ).encode()
    path = tmp_path / "overlap.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 12)
    with pytest.raises(CheckpointError, match="overlaps"):
        read_header(path)


def test_unknown_suffix_and_missing_file(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(UnsupportedCheckpoint, match=r"\.gguf"):
        open_checkpoint(tmp_path / "model.gguf")
    with pytest.raises(FileNotFoundError, match="nope"):
        open_checkpoint(tmp_path / "nope.safetensors")


# --- key normalisation (what the webui's loader does) -------------------------------------------


def test_nai_text_keys_gain_text_model(tmp_path):
    old = "cond_stage_model.transformer.encoder.layers.0.mlp.fc1.weight"
    path = save(
        tmp_path / "nai.safetensors",
        {old: torch.ones(2), "cond_stage_model.transformer.embeddings.x": torch.ones(1)},
    )
    with open_checkpoint(path) as reader:
        assert reader.keys() == [CLIP + "embeddings.x", CLIP + "encoder.layers.0.mlp.fc1.weight"]
        assert torch.equal(reader.load(CLIP + "encoder.layers.0.mlp.fc1.weight"), torch.ones(2))


def test_sd2_turbo_sgm_keys_become_cond_stage_model():
    shapes = {
        "conditioner.embedders.0.model.ln_final.weight": (1024,),
        "conditioner.embedders.0.model.x": (1,),
    }
    assert set(normalized_keys(shapes)) == {
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.x",
    }
    # SDXL's refiner has the same key at width 1280 and must keep its layout.
    shapes["conditioner.embedders.0.model.ln_final.weight"] = (1280,)
    assert set(normalized_keys(shapes)) == set(shapes)


# --- .ckpt: restricted loading only ---------------------------------------------------------------


@pytest.fixture
def fake_lightning(monkeypatch):
    """A class that pickles as pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint."""
    names = [
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
    ]
    modules = {name: types.ModuleType(name) for name in names}

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "/somewhere/last.ckpt"

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return ModelCheckpoint


def test_plain_ckpt_loads_with_weights_only(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {UNET + "out.2.weight": torch.ones(2, 2)}, "epoch": 3}, path)
    with open_checkpoint(path) as reader:
        assert reader.keys() == [UNET + "out.2.weight"]
        assert reader.dtype(UNET + "out.2.weight") == "float32"
        assert torch.equal(
            reader.load_into(UNET + "out.2.weight", torch.empty(16, dtype=torch.uint8)), torch.ones(2, 2)
        )


def test_legacy_lightning_ckpt_loads_through_the_allow_list(tmp_path, fake_lightning, monkeypatch):
    import numpy as np

    path = tmp_path / "lightning.ckpt"
    payload = {
        "state_dict": {UNET + "out.2.weight": torch.full((2,), 3.0)},
        "callbacks": {"ModelCheckpoint": fake_lightning()},
        "global_step": np.int64(4000),
    }
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    for name in list(sys.modules):
        if name.startswith("pytorch_lightning"):
            monkeypatch.delitem(sys.modules, name)  # as on a machine without Lightning
    with open_checkpoint(path) as reader:
        assert reader.keys() == [UNET + "out.2.weight"]
        assert torch.equal(reader.load(UNET + "out.2.weight"), torch.full((2,), 3.0))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_ckpt_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": _Evil(marker)}, path)
    with pytest.raises(UnsupportedCheckpoint, match=r"system") as info:
        open_checkpoint(path)
    assert not marker.exists()
    assert str(path) in str(info.value) and ".safetensors" in str(info.value)


def test_garbage_ckpt_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        open_checkpoint(path)


# --- position ids, EMA, whole-file loading --------------------------------------------------------


def test_float_position_ids_are_reset_to_arange():
    broken = torch.arange(77, dtype=torch.float32).unsqueeze(0) - 0.0001
    fixed = repaired_position_ids(broken)
    assert fixed.dtype == torch.int64 and torch.equal(fixed, torch.arange(77).unsqueeze(0))
    good = torch.arange(77).unsqueeze(0)
    assert repaired_position_ids(good) is good


def test_ema_keep_drop_use():
    key = UNET + "out.2.weight"
    assert ema_key(key) == "model_ema.diffusion_modelout2weight"
    assert ema_key("first_stage_model.x") is None
    state = {
        key: torch.zeros(1),
        "model_ema.diffusion_modelout2weight": torch.ones(1),
        "model_ema.decay": torch.tensor(0.9),
    }
    assert set(apply_ema(state, "keep")) == set(state)
    assert set(apply_ema(state, "drop")) == {key}
    used = apply_ema(state, "use")
    assert set(used) == {key} and torch.equal(used[key], torch.ones(1))
    with pytest.raises(ValueError, match="ema must be one of"):
        apply_ema(state, "average")


def test_load_checkpoint_normalises_everything(tmp_path):
    path = tmp_path / "old.ckpt"
    state = {
        "cond_stage_model.transformer.embeddings.position_ids": torch.arange(77.0).unsqueeze(0),
        UNET + "out.2.weight": torch.zeros(1),
        "model_ema.diffusion_modelout2weight": torch.ones(1),
    }
    torch.save({"state_dict": state}, path)
    loaded = load_checkpoint(path, ema="use")
    assert set(loaded) == {POSITION_IDS_KEY, UNET + "out.2.weight"}
    assert loaded[POSITION_IDS_KEY].dtype == torch.int64
    assert torch.equal(loaded[UNET + "out.2.weight"], torch.ones(1))
    kept = load_checkpoint(path, fix_position_ids=False)
    assert kept[POSITION_IDS_KEY].is_floating_point()


# --- detection ------------------------------------------------------------------------------------


def shapes_of(path):
    with open_checkpoint(path) as reader:
        return reader.shapes()


def test_detects_tiny_sd1_and_sd2(tiny_sd1, tiny_sd2):
    sd1 = inspect_checkpoint(tiny_sd1.single_file)
    assert (sd1.arch, sd1.variant, sd1.in_channels) == ("sd1", "standard", 4)
    assert sd1.has_unet and sd1.has_vae and sd1.has_text_encoder and not sd1.has_ema
    # The tiny models carry modelspec.prediction_type metadata.
    assert (sd1.prediction, sd1.prediction_source) == ("epsilon", "metadata")
    sd2 = inspect_checkpoint(tiny_sd2.single_file)
    assert (sd2.arch, sd2.prediction, sd2.prediction_source) == ("sd2", "v", "metadata")
    assert sd2.label == "Stable Diffusion 2.x (v-prediction)"


def test_detects_unet_only_files(tiny_sd1, tiny_sd2):
    for tiny, arch in ((tiny_sd1, "sd1"), (tiny_sd2, "sd2")):
        unet_only = {k: v for k, v in shapes_of(tiny.single_file).items() if k.startswith(UNET)}
        assert detect_arch(unet_only) == arch


def test_detects_sdxl_refiner_and_unknown():
    assert (
        detect_arch({"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3, 1)})
        == "sdxl"
    )
    assert (
        detect_arch({"conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight": (3, 1)})
        == "sdxl_refiner"
    )
    assert detect_arch({UNET + "label_emb.0.0.weight": (1280, 2816)}) == "sdxl"
    assert detect_arch({UNET + "label_emb.0.0.weight": (1536, 2560)}) == "sdxl_refiner"
    assert detect_arch({"lora_unet_x.lora_up.weight": (4, 4)}) == "unknown"


@pytest.mark.parametrize(
    ("channels", "variant"), [(4, "standard"), (9, "inpainting"), (8, "instruct-pix2pix"), (7, "other")]
)
def test_variant_from_input_channels(channels, variant):
    info = describe_checkpoint(
        {
            UNET + "input_blocks.0.0.weight": (320, channels, 3, 3),
            UNET + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        }
    )
    assert (info.variant, info.in_channels) == (variant, channels)


def test_prediction_from_yaml_beside_the_file(tmp_path):
    shapes = {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": (3072, 1024)}
    path = tmp_path / "v2-1_768.safetensors"
    (tmp_path / "v2-1_768.yaml").write_text(
        'model:\n  params:\n    parameterization: "v"\n', encoding="utf-8"
    )
    info = describe_checkpoint(shapes, path=path, metadata={"modelspec.prediction_type": "epsilon"})
    assert (info.prediction, info.prediction_source) == ("v", "yaml")  # the yaml wins, as in the webui
    assert info.config_path == str(tmp_path / "v2-1_768.yaml")
    (tmp_path / "eps.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n", encoding="utf-8")
    assert prediction_from_yaml(tmp_path / "eps.yaml") == "epsilon"


def test_prediction_marker_key_and_documented_guess():
    sdxl = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": (3, 1)}
    assert describe_checkpoint({**sdxl, "v_pred": ()}).prediction_source == "key"
    assert describe_checkpoint({**sdxl, "v_pred": ()}).prediction == "v"
    assert (describe_checkpoint(sdxl).prediction, describe_checkpoint(sdxl).prediction_source) == (
        "epsilon",
        "guess",
    )
    assert guess_prediction("sd2", "v2-1_768-ema-pruned.safetensors") == "v"
    assert guess_prediction("sd2", "v2-1_512-ema-pruned.safetensors") == "epsilon"
    assert guess_prediction("sd2", "sd21-base.ckpt") == "epsilon"
    assert guess_prediction("sd1", "anything.ckpt") == "epsilon"


# --- identity and merge metadata ------------------------------------------------------------------


def test_hashes_match_their_definitions(tmp_path):
    data = bytes(range(256)) * 9000  # > 1 MiB + 64 KiB
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert legacy_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    reports = []
    file_sha256(path, JobContext(progress=reports.append))
    assert reports[-1].done == reports[-1].total == len(data)
    with pytest.raises(JobStopped):
        file_sha256(path, JobContext(should_stop=lambda: True))


def test_webui_merge_fields_carry_ancestors(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"x" * 10)
    earlier = {
        "sd_merge_models": json.dumps({"f00d": {"name": "grandparent"}}),
        "sd_merge_recipe": '{"type": "webui"}',
    }
    a = identify(path, earlier, sha256="aaaa")
    b = ModelIdentity(
        str(path), "b.safetensors", "bbbb", "12345678", {"modelspec.thumbnail": "big", "x": "1"}
    )
    fields = webui_merge_fields({"interp_method": "Add difference"}, [a, b])
    models = json.loads(fields["sd_merge_models"])
    assert models["aaaa"] == {
        "name": "a.safetensors",
        "legacy_hash": a.legacy_hash,
        "sd_merge_recipe": {"type": "webui"},
    }
    assert models["bbbb"]["sd_merge_recipe"] is None and models["f00d"] == {"name": "grandparent"}
    assert json.loads(fields["sd_merge_recipe"]) == {"interp_method": "Add difference"}
    assert copied_metadata([a, b]) == {**earlier, "x": "1"}  # the thumbnail is not copied
