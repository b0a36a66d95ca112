"""Checkpoint conversion (lib_dbchar.checkpoint) on the tiny SD1/SD2 models.

Originals come from the tiny models' diffusers folders loaded with the installed diffusers and
transformers, so the text encoder keys are in this venv's style (4.30: ``text_model.`` prefix and
``position_ids``; 5.x: neither).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import (
    CheckpointError,
    MissingKeyError,
    UnsupportedCheckpoint,
    detect_kind,
    diffusers_to_ldm,
    ldm_to_diffusers,
    load_single_file,
    match_text_encoder_keys,
    read_metadata,
    save_single_file,
    unconverted_keys,
    unwrap_state_dict,
)
from lib_dbchar.checkpoint.detect import detect_arch
from lib_dbchar.errors import TargetExists

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP = "cond_stage_model.transformer.text_model."
OPENCLIP = "cond_stage_model.model."


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny(request):
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def originals(tiny):
    """(unet, vae, text_encoder) state dicts as this venv's diffusers/transformers produce them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tiny.diffusers_dir
    return (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict(),
        AutoencoderKL.from_pretrained(folder, subfolder="vae").state_dict(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict(),
    )


@pytest.fixture(scope="module")
def ldm(tiny):
    return load_single_file(tiny.single_file)


def assert_same(expected: dict, actual: dict) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert actual[key].shape == value.shape, key
        assert torch.equal(actual[key], value), key


def has_text_model_prefix(state_dict: dict) -> bool:
    return any(key.startswith("text_model.") for key in state_dict)


# --- exactness ---------------------------------------------------------------------------------


def test_diffusers_to_ldm_to_diffusers_is_exact(tiny, originals):
    unet, vae, text = originals
    back = ldm_to_diffusers(diffusers_to_ldm(unet, vae, text, kind=tiny.kind), kind=tiny.kind)
    assert_same(unet, back.unet)
    assert_same(vae, back.vae)
    assert_same(text, match_text_encoder_keys(back.text_encoder, text))


def test_text_model_prefix_option_gives_this_venvs_keys_directly(tiny, originals):
    unet, vae, text = originals
    ldm = diffusers_to_ldm(unet, vae, text, kind=tiny.kind)
    back = ldm_to_diffusers(ldm, text_model_prefix=has_text_model_prefix(text)).text_encoder
    # position_ids may differ: SD2 files hold none (a 4.30 model's buffer comes back only via
    # match_text_encoder_keys), SD1 files always hold it (a 5.x model has none).
    assert set(back) ^ set(text) <= {"text_model.embeddings.position_ids", "embeddings.position_ids"}
    common = set(back) & set(text)
    assert len(common) > 60
    for key in common:
        assert torch.equal(back[key], text[key]), key


def test_ldm_to_diffusers_to_ldm_is_exact(tiny, ldm):
    components = ldm_to_diffusers(ldm)
    assert_same(ldm, diffusers_to_ldm(*components, kind=tiny.kind))


def test_single_file_equals_conversion_of_the_diffusers_folder(tiny, originals, ldm):
    assert_same(ldm, diffusers_to_ldm(*originals, kind=tiny.kind))


def test_conversion_does_not_copy_renamed_tensors(tiny, originals):
    unet, vae, text = originals
    out = diffusers_to_ldm(unet, vae, text, kind=tiny.kind)
    assert out[UNET + "out.2.weight"].data_ptr() == unet["conv_out.weight"].data_ptr()


# --- the real layouts --------------------------------------------------------------------------


def test_unet_layout_matches_ldm(tiny, ldm, originals):
    unet = originals[0]
    assert UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in ldm
    assert ldm[UNET + "out.2.weight"].shape == (4, 8, 3, 3)
    assert torch.equal(ldm[UNET + "time_embed.2.bias"], unet["time_embedding.linear_2.bias"])
    # resnet insides: norm1 = in_layers.0, conv2 = out_layers.3, conv_shortcut = skip_connection
    assert torch.equal(
        ldm[UNET + "input_blocks.4.0.in_layers.0.weight"], unet["down_blocks.1.resnets.0.norm1.weight"]
    )
    assert torch.equal(
        ldm[UNET + "output_blocks.3.0.out_layers.3.weight"], unet["up_blocks.1.resnets.0.conv2.weight"]
    )
    assert torch.equal(
        ldm[UNET + "output_blocks.0.0.skip_connection.weight"],
        unet["up_blocks.0.resnets.0.conv_shortcut.weight"],
    )
    # downsamplers get blocks of their own (op), upsamplers follow the resnet (.1) or attention (.2)
    for block in (3, 6, 9):
        assert UNET + f"input_blocks.{block}.0.op.weight" in ldm
    assert UNET + "output_blocks.2.1.conv.weight" in ldm
    assert UNET + "output_blocks.5.2.conv.weight" in ldm
    assert UNET + "output_blocks.8.2.conv.weight" in ldm
    assert not any(k.startswith((UNET + "input_blocks.12.", UNET + "output_blocks.12.")) for k in ldm)
    assert torch.equal(
        ldm[UNET + "middle_block.1.proj_out.bias"], unet["mid_block.attentions.0.proj_out.bias"]
    )
    # SD1 projects into the transformer with 1x1 convs, SD2 with Linear layers
    assert ldm[UNET + "input_blocks.1.1.proj_in.weight"].ndim == (4 if tiny.kind == "sd1" else 2)


def test_vae_layout_matches_ldm(ldm, originals):
    vae = originals[1]
    q = ldm[VAE + "encoder.mid.attn_1.q.weight"]
    assert q.shape == (16, 16, 1, 1)
    assert torch.equal(q[:, :, 0, 0], vae["encoder.mid_block.attentions.0.to_q.weight"])
    assert torch.equal(
        ldm[VAE + "decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0],
        vae["decoder.mid_block.attentions.0.to_out.0.weight"],
    )
    assert torch.equal(ldm[VAE + "encoder.norm_out.bias"], vae["encoder.conv_norm_out.bias"])
    # Decoder levels are numbered in reverse: diffusers up_blocks.0 (deepest) is ldm up.3.
    assert torch.equal(
        ldm[VAE + "decoder.up.3.block.2.conv1.weight"], vae["decoder.up_blocks.0.resnets.2.conv1.weight"]
    )
    assert VAE + "decoder.up.3.upsample.conv.weight" in ldm
    assert VAE + "decoder.up.0.upsample.conv.weight" not in ldm  # the full-resolution level
    # widths 16 -> 8 change in diffusers up_blocks.2 = ldm up.1: only there a shortcut conv
    assert torch.equal(
        ldm[VAE + "decoder.up.1.block.0.nin_shortcut.weight"],
        vae["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"],
    )
    assert not any(
        ".nin_shortcut." in k for k in ldm if k.startswith((VAE + "decoder.up.0.", VAE + "decoder.up.3."))
    )


def test_sd1_text_encoder_is_hf_clip_under_transformer(tiny_sd1):
    ldm = load_single_file(tiny_sd1.single_file)
    assert CLIP + "encoder.layers.0.self_attn.q_proj.weight" in ldm
    assert CLIP + "encoder.layers.3.mlp.fc2.bias" in ldm
    assert CLIP + "encoder.layers.4.mlp.fc2.bias" not in ldm
    # Real SD1 files carry the buffer as int64 0..76, whatever transformers wrote them.
    assert torch.equal(ldm[CLIP + "embeddings.position_ids"], torch.arange(77).unsqueeze(0))
    assert not any(k.startswith(OPENCLIP) for k in ldm)


def test_sd2_text_encoder_is_openclip(tiny_sd2):
    ldm = load_single_file(tiny_sd2.single_file)
    text = ldm_to_diffusers(ldm).text_encoder
    layer = "text_model.encoder.layers.5.self_attn."
    in_proj = ldm[OPENCLIP + "transformer.resblocks.5.attn.in_proj_weight"]
    assert in_proj.shape == (48, 16)
    assert torch.equal(in_proj, torch.cat([text[layer + f"{p}_proj.weight"] for p in "qkv"]))
    assert torch.equal(
        ldm[OPENCLIP + "transformer.resblocks.5.attn.in_proj_bias"][32:], text[layer + "v_proj.bias"]
    )
    assert ldm[OPENCLIP + "positional_embedding"].shape == (77, 16)
    assert OPENCLIP + "token_embedding.weight" in ldm
    assert OPENCLIP + "ln_final.weight" in ldm
    for name in ("ln_1.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_proj.bias", "attn.out_proj.weight"):
        assert OPENCLIP + f"transformer.resblocks.22.{name}" in ldm
    assert not any(".resblocks.23." in k for k in ldm)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in ldm)


# --- detection ---------------------------------------------------------------------------------


def test_detect_kind(tiny, ldm):
    assert detect_kind(ldm) == tiny.kind


def test_detect_kind_without_text_encoder_uses_proj_in(tiny, ldm):
    unet_only = {k: v for k, v in ldm.items() if k.startswith(UNET)}
    assert detect_kind(unet_only) == tiny.kind


def test_detect_kind_old_sd1_text_layout(tiny_sd1):
    ldm = load_single_file(tiny_sd1.single_file)
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in ldm.items()}
    assert detect_kind(old) == "sd1"


def test_detect_kind_refuses_sdxl_and_strangers():
    sdxl = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 1)}
    with pytest.raises(UnsupportedCheckpoint, match="SDXL"):
        detect_kind(sdxl)
    with pytest.raises(UnsupportedCheckpoint, match="Not a Stable Diffusion"):
        detect_kind({"encoder.weight": torch.zeros(1)})


def test_detect_kind_and_detect_arch_share_one_table(tiny_sd1):
    """A UNet-only SDXL file (its 2-D proj_in looks like SD2's) is refused by its label_emb, and
    inspect (detect_arch) knows the old CLIP layout that conversion (detect_kind) accepts."""
    unet_only_sdxl = {
        UNET + "label_emb.0.0.weight": torch.zeros(1280, 2816),
        UNET + "input_blocks.1.1.proj_in.weight": torch.zeros(320, 320),
    }
    with pytest.raises(UnsupportedCheckpoint, match=r"Stable Diffusion XL checkpoint \(SDXL: it has"):
        detect_kind(unet_only_sdxl)
    old = {
        k.replace("transformer.text_model.", "transformer."): v
        for k, v in load_single_file(tiny_sd1.single_file).items()
    }
    assert detect_arch({k: tuple(v.shape) for k, v in old.items()}) == detect_kind(old) == "sd1"


def test_unknown_kind_is_a_value_error(originals):
    with pytest.raises(ValueError, match="kind must be one of sd1, sd2"):
        diffusers_to_ldm(*originals, kind="sdxl")


# --- failures are loud -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        UNET + "input_blocks.4.0.in_layers.0.weight",
        UNET + "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight",
        UNET + "out.2.bias",
        VAE + "decoder.up.2.block.1.conv2.bias",
        VAE + "encoder.mid.attn_1.v.weight",
    ],
)
def test_missing_ldm_key_is_named(ldm, key):
    broken = {k: v for k, v in ldm.items() if k != key}
    with pytest.raises(MissingKeyError, match="required key") as info:
        ldm_to_diffusers(broken)
    assert info.value.key == key
    assert key in str(info.value)


def test_missing_text_layer_in_the_middle_is_named(tiny, ldm):
    layer = CLIP + "encoder.layers.2." if tiny.kind == "sd1" else OPENCLIP + "transformer.resblocks.2."
    broken = {k: v for k, v in ldm.items() if not k.startswith(layer)}
    with pytest.raises(MissingKeyError) as info:
        ldm_to_diffusers(broken)
    assert info.value.key.startswith(layer)


def test_missing_sd2_fused_qkv_is_named(tiny_sd2):
    ldm = load_single_file(tiny_sd2.single_file)
    key = OPENCLIP + "transformer.resblocks.7.attn.in_proj_bias"
    with pytest.raises(MissingKeyError) as info:
        ldm_to_diffusers({k: v for k, v in ldm.items() if k != key})
    assert info.value.key == key


def test_missing_diffusers_key_is_named(tiny, originals):
    unet, vae, text = originals
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with pytest.raises(MissingKeyError) as info:
        diffusers_to_ldm({k: v for k, v in unet.items() if k != key}, vae, text, kind=tiny.kind)
    assert info.value.key == key


def test_missing_whole_text_encoder_is_named(tiny, ldm):
    text_prefix = "cond_stage_model."
    with pytest.raises(MissingKeyError, match="token_embedding"):
        ldm_to_diffusers({k: v for k, v in ldm.items() if not k.startswith(text_prefix)}, kind=tiny.kind)


@pytest.mark.parametrize(
    "key",
    [
        UNET + "input_blocks.12.0.in_layers.0.weight",  # an extra block: another architecture
        UNET + "input_blocks.1.0.unknown.weight",  # a tensor a resnet does not have
        VAE + "encoder.mid.attn_1.rotary.weight",
    ],
)
def test_unexpected_ldm_key_is_named(ldm, key):
    with pytest.raises(UnsupportedCheckpoint) as info:
        ldm_to_diffusers({**ldm, key: torch.zeros(1)})
    assert key in str(info.value)


def test_text_keys_of_the_other_flavour_are_refused(tiny_sd2):
    ldm = load_single_file(tiny_sd2.single_file)
    stray = CLIP + "final_layer_norm.weight"
    with pytest.raises(UnsupportedCheckpoint, match=r"cond_stage_model\.transformer"):
        ldm_to_diffusers({**ldm, stray: torch.zeros(16)}, kind="sd2")


def test_bad_vae_attention_shape_is_named(ldm):
    key = VAE + "decoder.mid.attn_1.k.weight"
    with pytest.raises(UnsupportedCheckpoint, match="1x1 conv"):
        ldm_to_diffusers({**ldm, key: torch.zeros(16, 16, 3, 3)})


# --- real-world files --------------------------------------------------------------------------


def test_nested_state_dict_is_unwrapped(tiny, ldm):
    wrapped = {"state_dict": ldm, "global_step": 1234, "epoch": 3}
    assert detect_kind(unwrap_state_dict(wrapped)) == tiny.kind
    assert unwrap_state_dict({"state_dict": wrapped}).keys() == ldm.keys()
    assert_same(ldm_to_diffusers(ldm).unet, ldm_to_diffusers(wrapped).unet)


def test_extra_keys_are_reported_not_converted(tiny, ldm):
    extras = {
        "betas": torch.zeros(1000),
        "alphas_cumprod": torch.zeros(1000),
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modelout2weight": torch.zeros(1),
        VAE + "loss.logvar": torch.zeros(()),
    }
    full = {**ldm, **extras}
    assert unconverted_keys(full) == list(extras)
    assert_same(ldm_to_diffusers(ldm).unet, ldm_to_diffusers(full).unet)
    assert unconverted_keys(ldm) == []


def test_sd2_layer_23_logit_scale_and_projection(tiny_sd2):
    ldm = load_single_file(tiny_sd2.single_file)
    layer22 = {
        k.replace("resblocks.22.", "resblocks.23."): v for k, v in ldm.items() if ".resblocks.22." in k
    }
    projection = torch.randn(16, 16)
    full = {
        **ldm,
        **layer22,
        OPENCLIP + "logit_scale": torch.tensor(4.6),
        OPENCLIP + "text_projection": projection,
    }
    assert sorted(unconverted_keys(full)) == sorted([*layer22, OPENCLIP + "logit_scale"])
    text = ldm_to_diffusers(full).text_encoder
    assert not any(".layers.23." in k for k in text)
    # ldm multiplies by the matrix, a Linear layer stores it transposed
    assert torch.equal(text["text_projection.weight"], projection.T)
    assert torch.equal(
        diffusers_to_ldm(*ldm_to_diffusers(full), kind="sd2")[OPENCLIP + "text_projection"], projection
    )


def test_old_sd1_text_layout_converts_the_same(tiny_sd1):
    ldm = load_single_file(tiny_sd1.single_file)
    old = {k.replace("transformer.text_model.", "transformer."): v for k, v in ldm.items()}
    assert_same(ldm_to_diffusers(ldm).text_encoder, ldm_to_diffusers(old).text_encoder)


def test_float_position_ids_from_old_merges_are_repaired(tiny_sd1):
    ldm = load_single_file(tiny_sd1.single_file)
    ldm[CLIP + "embeddings.position_ids"] = torch.arange(77, dtype=torch.float32).unsqueeze(0) - 0.0001
    ids = ldm_to_diffusers(ldm).text_encoder["text_model.embeddings.position_ids"]
    assert ids.dtype == torch.int64
    assert torch.equal(ids, torch.arange(77).unsqueeze(0))


def test_2d_vae_attention_weights_are_accepted(ldm):
    key = VAE + "encoder.mid.attn_1.q.weight"
    flat = {**ldm, key: ldm[key][:, :, 0, 0]}
    assert torch.equal(
        ldm_to_diffusers(flat).vae["encoder.mid_block.attentions.0.to_q.weight"], ldm[key][:, :, 0, 0]
    )


# --- transformers 4.30 vs 5.x text encoder keys --------------------------------------------------


def test_match_text_encoder_keys_both_ways(ldm):
    text = ldm_to_diffusers(ldm).text_encoder
    v5_like = [k.removeprefix("text_model.") for k in text if not k.endswith("position_ids")]
    as_v5 = match_text_encoder_keys(text, v5_like)
    assert sorted(as_v5) == sorted(v5_like)
    v4_like = [*(f"text_model.{k}" for k in v5_like), "text_model.embeddings.position_ids"]
    as_v4 = match_text_encoder_keys(as_v5, v4_like)
    assert sorted(as_v4) == sorted(v4_like)
    assert torch.equal(as_v4["text_model.embeddings.position_ids"], torch.arange(77).unsqueeze(0))
    assert torch.equal(as_v4["text_model.final_layer_norm.weight"], as_v5["final_layer_norm.weight"])


def test_diffusers_to_ldm_accepts_both_text_key_styles(tiny, originals):
    unet, vae, text = originals
    stripped = {k.removeprefix("text_model."): v for k, v in text.items()}
    prefixed = {f"text_model.{k}" if not k.startswith("text_model.") else k: v for k, v in text.items()}
    assert_same(
        diffusers_to_ldm(unet, vae, prefixed, kind=tiny.kind),
        diffusers_to_ldm(unet, vae, stripped, kind=tiny.kind),
    )


def test_importing_the_package_imports_neither_torch_nor_safetensors():
    code = "import sys, lib_dbchar.checkpoint; print(sorted({'torch', 'safetensors'} & set(sys.modules)))"
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert result.stdout.strip() == "[]"


# --- single-file I/O -----------------------------------------------------------------------------


def _small() -> dict:
    return {
        "a.weight": torch.randn(4, 3),
        "a.ids": torch.arange(5),
        "b.half": torch.ones(2, dtype=torch.float16),
    }


def test_save_and_load_round_trip_with_metadata(tmp_path):
    tensors = _small()
    path = save_single_file(
        tensors, tmp_path / "sub" / "m.safetensors", metadata={"name": "neeko", "steps": 1200}
    )
    assert_same(tensors, load_single_file(path))
    meta = read_metadata(path)
    assert meta == {"format": "pt", "name": "neeko", "steps": "1200"}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]  # no temp file left


def test_save_fp16_halves_floats_only(tmp_path):
    tensors = _small()
    loaded = load_single_file(save_single_file(tensors, tmp_path / "m.safetensors", fp16=True))
    assert loaded["a.weight"].dtype == torch.float16
    assert torch.equal(loaded["a.weight"], tensors["a.weight"].half())
    assert loaded["a.ids"].dtype == torch.int64
    assert torch.equal(loaded["a.ids"], tensors["a.ids"])


def test_save_refuses_to_replace_unless_asked(tmp_path):
    path = save_single_file(_small(), tmp_path / "m.safetensors")
    with pytest.raises(TargetExists, match=r"m\.safetensors"):
        save_single_file({"x": torch.zeros(1)}, path)
    save_single_file({"x": torch.zeros(1)}, path, overwrite=True)
    assert list(load_single_file(path)) == ["x"]


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_single_file(_small(), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def half_write_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_single_file({"x": torch.zeros(1)}, path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_handles_views_of_one_storage(tmp_path):
    fused = torch.randn(6, 2)
    q, k, v = fused.chunk(3)
    path = save_single_file({"q": q, "k": k, "v": v, "t": fused.T}, tmp_path / "m.safetensors")
    loaded = load_single_file(path)
    assert torch.equal(loaded["k"], fused[2:4])
    assert torch.equal(loaded["t"], fused.T)


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="'step'"):
        save_single_file({"w": torch.zeros(1), "step": 5}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_single_file({"w": torch.zeros(1)}, tmp_path / "m.ckpt")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_single_file(tmp_path / "nope.safetensors")
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"not read")
    with pytest.raises(UnsupportedCheckpoint, match=r"old\.ckpt"):
        load_single_file(pickle)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        load_single_file(broken)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors"):
        read_metadata(broken)
