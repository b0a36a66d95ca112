"""The tiny SD1/SD2 test models, and the independent check of our single files: diffusers' own
single-file loader reads them (offline, with the tiny diffusers folder as config) into tensors
equal to the originals, which proves our key map is the one the ecosystem uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib_dbchar.checkpoint import load_single_file, read_metadata, save_single_file
from tests.kit.models import TINY_PROMPT, build_tiny_sd


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def tiny(request):
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="module")
def reference(tiny):
    """The pipeline loaded from the diffusers folder."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny.diffusers_dir, local_files_only=True)


def assert_same_module(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    want, got = expected.state_dict(), actual.state_dict()
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype, key
        assert torch.equal(got[key], value), key


# --- diffusers' loaders read our files -----------------------------------------------------------


def test_pipeline_from_single_file_equals_diffusers_folder(tiny, reference):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_single_file(
        str(tiny.single_file), config=str(tiny.diffusers_dir), local_files_only=True
    )
    for name in ("unet", "vae", "text_encoder"):
        assert_same_module(getattr(reference, name), getattr(pipe, name))
    assert pipe.scheduler.config.prediction_type == tiny.prediction_type


def test_model_from_single_file_equals_diffusers_folder(tiny, reference):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    kwargs = {"config": str(tiny.diffusers_dir), "local_files_only": True}
    assert_same_module(
        reference.unet,
        UNet2DConditionModel.from_single_file(str(tiny.single_file), subfolder="unet", **kwargs),
    )
    assert_same_module(
        reference.vae, AutoencoderKL.from_single_file(str(tiny.single_file), subfolder="vae", **kwargs)
    )


def test_from_single_file_reads_the_file_not_the_folder(tiny, tmp_path):
    """Negative control: change one tensor per component in the file; the loaded models change."""
    from diffusers import StableDiffusionPipeline

    ldm = load_single_file(tiny.single_file)
    text_key = (
        "cond_stage_model.transformer.text_model.final_layer_norm.bias"
        if tiny.kind == "sd1"
        else "cond_stage_model.model.ln_final.bias"
    )
    changed = {
        "model.diffusion_model.out.2.weight": ("unet", "conv_out.weight"),
        "first_stage_model.decoder.mid.attn_1.q.weight": (
            "vae",
            "decoder.mid_block.attentions.0.to_q.weight",
        ),
        text_key: ("text_encoder", "text_model.final_layer_norm.bias"),
    }
    for key in changed:
        ldm[key] = ldm[key] + 1.0
    edited = save_single_file(ldm, tmp_path / "edited.safetensors")
    pipe = StableDiffusionPipeline.from_single_file(
        str(edited), config=str(tiny.diffusers_dir), local_files_only=True
    )
    for key, (component, name) in changed.items():
        module = getattr(pipe, component)
        tensor = dict(module.named_parameters())[
            name.removeprefix("text_model.")
            if component == "text_encoder" and not hasattr(module, "text_model")
            else name
        ]
        assert torch.equal(tensor.detach().reshape(ldm[key].shape), ldm[key]), key


# --- the diffusers folder ------------------------------------------------------------------------


@pytest.mark.slow  # ~1-2 s on an idle 2-core machine, over 5 s when the cores are shared
def test_pipeline_runs_one_step_at_64px(tiny, reference):
    generator = torch.Generator().manual_seed(0)
    result = reference(
        TINY_PROMPT, num_inference_steps=1, height=64, width=64, generator=generator, output_type="np"
    )
    image = result.images[0]
    assert image.shape == (64, 64, 3)
    assert np.isfinite(image).all()
    pil = reference.numpy_to_pil(result.images)[0]
    assert pil.size == (64, 64)


def test_configs_have_the_sd_topology(tiny, reference):
    unet, text = reference.unet.config, reference.text_encoder.config
    assert tuple(unet.block_out_channels) == (8, 8, 16, 16)
    assert unet.layers_per_block == 2
    assert unet.cross_attention_dim == text.hidden_size == 16
    assert reference.vae.config.block_out_channels == unet.block_out_channels
    assert reference.vae_scale_factor == 8
    if tiny.kind == "sd1":
        assert (text.num_hidden_layers, text.hidden_act, unet.use_linear_projection) == (
            4,
            "quick_gelu",
            False,
        )
        assert reference.scheduler.config.prediction_type == "epsilon"
    else:
        assert (text.num_hidden_layers, text.hidden_act, unet.use_linear_projection) == (23, "gelu", True)
        assert reference.scheduler.config.prediction_type == "v_prediction"
    params = sum(
        p.numel() for m in (reference.unet, reference.vae, reference.text_encoder) for p in m.parameters()
    )
    assert params < 400_000


def test_sd2_is_detectable_by_layers_22(tiny_sd2, tiny_sd1):
    from safetensors import safe_open

    def keys(tiny):
        with safe_open(
            str(tiny.diffusers_dir / "text_encoder" / "model.safetensors"), framework="pt"
        ) as handle:
            return set(handle.keys())

    assert any(".layers.22." in k for k in keys(tiny_sd2))
    assert not any(".layers.22." in k for k in keys(tiny_sd1))


def test_tokenizer_loads_offline_from_vocab_and_merges(tiny, reference):
    from transformers import CLIPTokenizer

    folder = tiny.diffusers_dir / "tokenizer"
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert tokenizer.model_max_length == 77
    ids = tokenizer(TINY_PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert (
        ids[0]
        == tokenizer.convert_tokens_to_ids("<|startoftext|>")
        == reference.text_encoder.config.bos_token_id
    )
    characters = len(TINY_PROMPT.replace(" ", ""))  # one token per character; spaces only end words
    assert ids[1 + characters] == tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids[2 + characters :] == [tokenizer.pad_token_id] * (75 - characters)
    assert max(ids) < reference.text_encoder.config.vocab_size
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == TINY_PROMPT
    pad = "<|endoftext|>" if tiny.kind == "sd1" else "!"
    assert tokenizer.pad_token == pad


def test_single_file_metadata(tiny):
    metadata = read_metadata(tiny.single_file)
    assert metadata["modelspec.prediction_type"] == ("v" if tiny.kind == "sd2" else "epsilon")
    assert metadata["dbchar.tiny_model"] == tiny.kind
    index = json.loads((tiny.diffusers_dir / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]


# --- the builder ---------------------------------------------------------------------------------


def test_build_is_deterministic(tmp_path):
    first = load_single_file(build_tiny_sd("sd1", tmp_path / "a", seed=5).single_file)
    again = load_single_file(build_tiny_sd("sd1", tmp_path / "b", seed=5).single_file)
    other = load_single_file(build_tiny_sd("sd1", tmp_path / "c", seed=6).single_file)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(
        first["model.diffusion_model.out.2.weight"], other["model.diffusion_model.out.2.weight"]
    )


def test_every_tensor_is_distinct(tiny):
    """Key-map swaps between same-shaped tensors (norm1/norm2) must be detectable."""
    floats = [v for v in load_single_file(tiny.single_file).values() if v.is_floating_point()]
    groups: dict[tuple, list[torch.Tensor]] = {}
    for value in floats:
        groups.setdefault(tuple(value.shape), []).append(value)
    for same_shape in groups.values():
        for i, a in enumerate(same_shape):
            assert not any(torch.equal(a, b) for b in same_shape[i + 1 :])


def test_build_does_not_disturb_the_callers_random_stream(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_sd("sd1", tmp_path, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_build_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of sd1, sd2"):
        build_tiny_sd("sdxl", tmp_path)
    with pytest.raises(ValueError, match="prediction_type"):
        build_tiny_sd("sd2", tmp_path, prediction_type="sample")
    eps = build_tiny_sd("sd2", tmp_path, prediction_type="epsilon")
    config = json.loads((eps.diffusers_dir / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "epsilon"
