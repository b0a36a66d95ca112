"""Transfer as LoRA: names the real module trees have, factors that rebuild the change, file metadata.

The check of the names does not use lib_dbchar's key maps: every ``lora_unet_*`` / ``lora_te_*`` name
must be a Linear/Conv2d of diffusers' own ``UNet2DConditionModel`` / transformers' ``CLIPTextModel``
(module path with ``.`` -> ``_``, the kohya convention the webui's Lora extension converts back),
and ``source + up @ down * alpha / rank`` must give the trained weight of *that* module.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import ldm_to_diffusers, load_single_file
from lib_dbchar.checkpoint.errors import UnsupportedCheckpoint
from lib_dbchar.merge import IncompatibleModels, LoraConfig, run_extract_lora
from lib_dbchar.merge.lora import low_rank
from tests.kit.sdfiles import nudged

UNET = "model.diffusion_model."


def trained_from(source: dict, *, text: bool, seed: int = 0) -> dict:
    """The source with every float tensor nudged (the text encoder only if ``text``)."""
    return nudged(source, 0.01, seed, relative=False, skip=() if text else ("cond_stage_model.",))


def modules_by_lora_name(tiny) -> dict[str, str]:
    """lora name -> "unet.<path>" / "text.<path>" for every Linear/Conv2d of the real diffusers models."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny.diffusers_dir, subfolder="unet")
    text = CLIPTextModel.from_pretrained(tiny.diffusers_dir, subfolder="text_encoder")
    names = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            names["lora_unet_" + name.replace(".", "_")] = "unet." + name
    for name, module in text.named_modules():
        if isinstance(module, torch.nn.Linear):
            path = name if name.startswith("text_model.") else "text_model." + name  # transformers 5.x
            names["lora_te_" + path.replace(".", "_")] = "text." + path
    return names


def diffusers_weights(ldm: dict) -> dict[str, torch.Tensor]:
    unet, _, text = ldm_to_diffusers(ldm)
    return {**{"unet." + k: v for k, v in unet.items()}, **{"text." + k: v for k, v in text.items()}}


def loras_in(path) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in safetensors.torch.load_file(str(path)).items():
        name, part = key.split(".", 1)
        out.setdefault(name, {})[part] = value
    return out


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def pair(request, tmp_path_factory):
    tiny = request.getfixturevalue(f"tiny_{request.param}")
    folder = tmp_path_factory.mktemp(f"lora-{request.param}")
    source = load_single_file(tiny.single_file)
    trained = trained_from(source, text=True)
    safetensors.torch.save_file(trained, str(folder / "trained.safetensors"))
    return tiny, source, trained, folder


def test_full_rank_lora_rebuilds_the_change_on_the_real_modules(pair):
    tiny, source, trained, folder = pair
    out = folder / "full.safetensors"
    config = LoraConfig(rank=1024, conv_rank=1024, fp16=False, min_change=0.0)
    result = run_extract_lora(config, folder / "trained.safetensors", tiny.single_file, out, overwrite=True)
    assert result.retained == pytest.approx(1.0, abs=1e-6)
    modules = modules_by_lora_name(tiny)
    before, after = diffusers_weights(source), diffusers_weights(trained)
    loras = loras_in(out)
    assert result.unet_modules + result.text_modules == len(loras) > 0
    for name, parts in loras.items():
        assert name in modules, f"{name} is no Linear/Conv2d of the diffusers models"
        weight = modules[name] + ".weight"
        up, down = parts["lora_up.weight"], parts["lora_down.weight"]
        rank = down.shape[0]
        assert parts["alpha"].item() == rank
        delta = (up.reshape(up.shape[0], rank) @ down.reshape(rank, -1)).reshape(after[weight].shape)
        torch.testing.assert_close(
            before[weight] + delta * parts["alpha"] / rank, after[weight], atol=2e-6, rtol=0
        )
    # Every attention-block and text-encoder Linear changed, so every one is in the file.
    wanted = {
        n
        for n, path in modules.items()
        if ".attentions." in path or path.startswith("text.text_model.encoder.layers.")
    }
    assert wanted <= set(loras)
    if tiny.kind == "sd2":
        assert {
            "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te_text_model_encoder_layers_0_self_attn_v_proj",
        } <= set(loras)


def test_plain_lora_skips_convs_and_an_untrained_text_encoder(tiny_sd1, tmp_path):
    source = load_single_file(tiny_sd1.single_file)
    safetensors.torch.save_file(trained_from(source, text=False), str(tmp_path / "t.safetensors"))
    result = run_extract_lora(
        LoraConfig(rank=2), tmp_path / "t.safetensors", tiny_sd1.single_file, tmp_path / "plain.safetensors"
    )
    loras = loras_in(tmp_path / "plain.safetensors")
    assert result.text_modules == 0 and result.unchanged > 0
    assert not [n for n in loras if n.startswith("lora_te_")]
    assert not [n for n in loras if "_resnets_" in n or "samplers" in n]
    assert all(
        p["lora_down.weight"].shape[0] <= 2 and p["lora_up.weight"].dtype == torch.float16
        for p in loras.values()
    )
    assert 0 < result.retained < 1
    with safetensors.safe_open(str(tmp_path / "plain.safetensors"), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_network_dim"] == "2" and metadata["ss_v2"] == "False"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert json.loads(metadata["dbchar_lora_recipe"])["source"] == tiny_sd1.single_file.name


def test_low_rank_is_the_best_approximation():
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 3, generator=gen) @ torch.randn(3, 20, generator=gen)  # rank 3
    up, down, kept = low_rank(delta, 3)
    torch.testing.assert_close(up @ down, delta, atol=1e-5, rtol=0)
    assert kept == pytest.approx(float(delta.double().norm() ** 2), rel=1e-5)
    conv = torch.randn(6, 4, 3, 3, generator=gen)
    up, down, _ = low_rank(conv, 2)
    assert up.shape == (6, 2, 1, 1) and down.shape == (2, 4, 3, 3)


def test_other_architectures_are_refused(tiny_sd1, tiny_sd2, tmp_path):
    with pytest.raises(IncompatibleModels, match="pick the model the training started from"):
        run_extract_lora(LoraConfig(), tiny_sd1.single_file, tiny_sd2.single_file, tmp_path / "x.safetensors")
    sdxl = {"conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(3, 1)}
    safetensors.torch.save_file(sdxl, str(tmp_path / "xl.safetensors"))
    with pytest.raises(UnsupportedCheckpoint, match=r"SD1\.x and SD2\.x"):
        run_extract_lora(
            LoraConfig(), tmp_path / "xl.safetensors", tmp_path / "xl.safetensors", tmp_path / "y.safetensors"
        )
    assert not (tmp_path / "x.safetensors").exists()


def test_lora_settings_are_checked():
    from lib_dbchar.config import from_dict

    with pytest.raises(ValueError, match=r"LoraConfig\.rank"):
        from_dict(LoraConfig, {"rank": 0})
    with pytest.raises(ValueError, match=r"LoraConfig\.min_change"):
        LoraConfig(min_change=2.0)
