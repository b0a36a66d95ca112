"""The streamed merge against a literal in-memory reading of webui 1.10.1's merger rules.

``webui_merge`` below loads all inputs, runs the two passes of ``run_modelmerger`` (B - C over B's
keys, then A's keys), bakes the VAE and discards keys, written from the rules in
/work/shared/REFERENCE.md section 2 -- independent of lib_dbchar.merge. Every scenario compares the
file ``run_merge`` streamed with it, key set, dtypes and ``torch.equal`` per tensor.

The inputs are the tiny SD1 model (real SD1 key names and layout) turned into A, B, C with
noise, mixed dtypes, missing and extra keys, NAI-era text keys, EMA keys, schedule buffers and
integer tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch

from lib_dbchar.checkpoint import load_single_file
from lib_dbchar.config import from_dict
from lib_dbchar.errors import JobStopped, TargetExists
from lib_dbchar.jobs import JobContext
from lib_dbchar.merge import IncompatibleModels, MergeConfig, run_merge, webui_output_name
from tests.kit.sdfiles import nudged, write_models

UNET = "model.diffusion_model."
CONV_IN = UNET + "input_blocks.0.0.weight"
CLIP = "cond_stage_model.transformer.text_model."
POSITION_IDS = CLIP + "embeddings.position_ids"
NAI_RENAMES = {
    f"cond_stage_model.transformer.{c}.": f"cond_stage_model.transformer.text_model.{c}."
    for c in ("embeddings", "encoder", "final_layer_norm")
}


# --- the reference: all in memory, two passes, as the webui does it ------------------------------


def webui_read(path: Path) -> dict:
    sd = safetensors.torch.load_file(str(path))
    out = {}
    for key, value in sd.items():
        renamed = key
        for old, new in NAI_RENAMES.items():
            if key.startswith(old):
                renamed = new + key[len(old) :]
        out[renamed] = value
    return out


def webui_merge(a, b, c, *, method, m, fp16, discard="", vae=None):
    theta_0, theta_1 = webui_read(a), webui_read(b)
    if method == "add_difference":
        theta_2 = webui_read(c)
        for key in theta_1:
            if key == POSITION_IDS:
                continue
            if "model" in key:
                theta_1[key] = (
                    theta_1[key] - theta_2[key] if key in theta_2 else torch.zeros_like(theta_1[key])
                )

    def f(x, y):
        return (1 - m) * x + m * y if method == "weighted_sum" else x + m * y

    for key in theta_0:
        if "model" in key and key in theta_1:
            if key == POSITION_IDS:
                continue
            x, y = theta_0[key], theta_1[key]
            if x.shape != y.shape and x.shape[0:1] + x.shape[2:] == y.shape[0:1] + y.shape[2:]:
                theta_0[key][:, 0:4, :, :] = f(x[:, 0:4, :, :], y)
            else:
                theta_0[key] = f(x, y)
            if fp16 and theta_0[key].dtype == torch.float32:
                theta_0[key] = theta_0[key].half()
    if vae is not None:
        for key, value in webui_read(vae).items():
            if key.startswith("loss") or key in ("model_ema.decay", "model_ema.num_updates"):
                continue
            if "first_stage_model." + key in theta_0:
                theta_0["first_stage_model." + key] = (
                    value.half() if fp16 and value.dtype == torch.float32 else value
                )
    if discard:
        theta_0 = {k: v for k, v in theta_0.items() if not re.search(discard, k)}
    return theta_0


def assert_same(path: Path, expected: dict) -> None:
    got = safetensors.torch.load_file(str(path))
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype, key
        assert got[key].shape == tensor.shape, key
        assert torch.equal(got[key], tensor), key


# --- inputs ---------------------------------------------------------------------------------------


def noisy(sd: dict, seed: int) -> dict:
    """A relative of ``sd``: absolute noise of 0.01 on every float tensor (dtype kept)."""
    return nudged(sd, 0.01, seed, relative=False)


def to_nai(sd: dict) -> dict:
    """The NAI/AnythingV3 text key layout (no text_model. level)."""
    out = {}
    for key, value in sd.items():
        renamed = key
        for old, new in NAI_RENAMES.items():
            if key.startswith(new):
                renamed = old + key[len(new) :]
        out[renamed] = value
    return out


@pytest.fixture(scope="module")
def base(tiny_sd1) -> dict:
    sd = load_single_file(tiny_sd1.single_file)
    # What real files carry beside the weights.
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000, dtype=torch.float32)
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(4000, dtype=torch.int32)
    sd["model_ema.diffusion_modelout2weight"] = sd[UNET + "out.2.weight"].clone()
    return sd


@pytest.fixture(scope="module")
def files(base, tmp_path_factory) -> dict[str, Path]:
    """A: fp16/fp32/bf16; B: fp32, NAI keys, some keys missing, one extra; C: fp16, other keys missing."""
    folder = tmp_path_factory.mktemp("merge-inputs")
    keys = sorted(base)
    unet_keys = [k for k in keys if k.startswith(UNET)]

    a = {k: (v.half() if k.startswith(UNET) and v.is_floating_point() else v) for k, v in base.items()}
    a[UNET + "out.0.bias"] = a[UNET + "out.0.bias"].to(torch.bfloat16)
    a["cond_stage_model.only_in_a.weight"] = torch.ones(3)

    b = noisy(base, 2)
    for key in [*unet_keys[5:8], "model_ema.decay"]:
        del b[key]
    b[UNET + "only_in_b.weight"] = torch.ones(2)
    b = to_nai(b)

    c = {k: (v.half() if v.dtype == torch.float32 else v) for k, v in noisy(base, 3).items()}
    for key in [*unet_keys[20:24], CLIP + "final_layer_norm.weight", "model_ema.num_updates"]:
        del c[key]
    c["first_stage_model.only_in_c.weight"] = torch.ones(2)

    vae = {
        k[len("first_stage_model.") :]: v
        for k, v in noisy(base, 4).items()
        if k.startswith("first_stage_model.")
    }
    vae["loss.discriminator.weight"] = torch.ones(2)
    vae["model_ema.decay"] = torch.tensor(0.5)
    vae["encoder.not_in_a.weight"] = torch.ones(2)

    return write_models(folder, {"a": a, "b": b, "c": c, "vae": vae})


def merge(files, out, *, overwrite=False, **settings):
    vae = settings.pop("vae", None)
    config = from_dict(MergeConfig, {"fix_position_ids": False, **settings})
    tertiary = files["c"] if config.method == "add_difference" else None
    return run_merge(config, files["a"], files["b"], tertiary, out, vae=vae, overwrite=overwrite)


# --- exactness --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "add_difference", "multiplier": 1.0, "fp16": True},
        {"method": "add_difference", "multiplier": 0.7, "fp16": False},
        {"method": "weighted_sum", "multiplier": 0.3, "fp16": True},
        {"method": "weighted_sum", "multiplier": 0.0, "fp16": False},
        {"method": "weighted_sum", "multiplier": 1.0, "fp16": False},
        {
            "method": "add_difference",
            "multiplier": 1.0,
            "fp16": True,
            "discard_weights": r"^model_ema|\.only_in_",
        },
    ],
    ids=["adddiff-1-fp16", "adddiff-0.7", "wsum-0.3-fp16", "wsum-0", "wsum-1", "discard"],
)
def test_streamed_merge_equals_the_webui_merge(files, tmp_path, settings):
    out = tmp_path / "out.safetensors"
    result = merge(files, out, **settings)
    expected = webui_merge(
        files["a"],
        files["b"],
        files["c"],
        method=settings["method"],
        m=settings["multiplier"],
        fp16=settings["fp16"],
        discard=settings.get("discard_weights", ""),
    )
    assert_same(out, expected)
    assert result.output == str(out) and result.tensors == len(expected)


def test_every_write_on_the_writer_thread_is_still_exact(files, tmp_path, monkeypatch):
    """Large tensors are written on a second thread from alternating buffers; force that for all."""
    from lib_dbchar.merge import execute

    monkeypatch.setattr(execute, "_THREADED_WRITE_BYTES", 0)
    for method, m, fp16 in (("add_difference", 0.5, False), ("weighted_sum", 0.3, True)):
        out = tmp_path / f"{method}.safetensors"
        merge(files, out, method=method, multiplier=m, fp16=fp16)
        assert_same(out, webui_merge(files["a"], files["b"], files["c"], method=method, m=m, fp16=fp16))


def test_baked_vae_equals_the_webui_merge(files, tmp_path):
    out = tmp_path / "vae.safetensors"
    result = merge(files, out, method="add_difference", multiplier=1.0, fp16=True, vae=files["vae"])
    expected = webui_merge(
        files["a"], files["b"], files["c"], method="add_difference", m=1.0, fp16=True, vae=files["vae"]
    )
    assert_same(out, expected)
    vae_keys = [k for k in expected if k.startswith("first_stage_model.")]
    assert result.vae_baked == len(vae_keys) > 0


def test_merge_rules_are_visible_in_the_result(files, tmp_path, base):
    out = tmp_path / "rules.safetensors"
    result = merge(files, out, method="add_difference", multiplier=1.0, fp16=True)
    got = safetensors.torch.load_file(str(out))
    a = safetensors.torch.load_file(str(files["a"]))
    # Passed through unchanged (not halved): non-"model" keys, A-only keys, position ids.
    assert got["alphas_cumprod"].dtype == torch.float32 and torch.equal(
        got["alphas_cumprod"], a["alphas_cumprod"]
    )
    assert torch.equal(got["cond_stage_model.only_in_a.weight"], a["cond_stage_model.only_in_a.weight"])
    assert torch.equal(got[POSITION_IDS], a[POSITION_IDS])
    # B-only keys are dropped; the int EMA counter is merged: promoted to float32 by torch, then halved.
    assert UNET + "only_in_b.weight" not in got
    assert got["model_ema.num_updates"].dtype == torch.float16
    unet_keys = sorted(k for k in base if k.startswith(UNET))
    assert set(result.missing_in_secondary) == {
        *unet_keys[5:8],
        "model_ema.decay",
        "cond_stage_model.only_in_a.weight",
    }
    assert set(result.missing_in_tertiary) == set(unet_keys[20:24]) | {
        CLIP + "final_layer_norm.weight",
        "model_ema.num_updates",
    }
    assert result.dropped_from_secondary == [UNET + "only_in_b.weight"]
    # A key C lacks gets a zero difference: A's values, in the promoted dtype.
    key = unet_keys[21]
    assert torch.equal(got[key], (a[key] + torch.zeros_like(got[key])).to(got[key].dtype))


def test_sd2_merge_equals_the_webui_merge(tiny_sd2, tmp_path):
    sd = load_single_file(tiny_sd2.single_file)
    paths = write_models(
        tmp_path, {name: noisy(sd, seed) for name, seed in (("a", 10), ("b", 11), ("c", 12))}
    )
    out = tmp_path / "sd2.safetensors"
    result = merge(paths, out, method="add_difference", multiplier=0.5, fp16=True)
    assert result.arch == "sd2"
    assert_same(
        out, webui_merge(paths["a"], paths["b"], paths["c"], method="add_difference", m=0.5, fp16=True)
    )


# --- inpainting / instruct-pix2pix --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "suffix", "method"),
    [(9, ".inpainting", "add_difference"), (8, ".instruct-pix2pix", "weighted_sum")],
)
def test_inpainting_a_merges_its_first_four_channels(files, tmp_path, channels, suffix, method):
    a = safetensors.torch.load_file(str(files["a"]))
    a[CONV_IN] = torch.randn(
        a[CONV_IN].shape[0], channels, 3, 3, generator=torch.Generator().manual_seed(7)
    ).half()
    special = dict(files, a=tmp_path / "a-special.safetensors")
    safetensors.torch.save_file(a, str(special["a"]))
    result = merge(special, tmp_path / "x.safetensors", method=method, multiplier=0.6, fp16=True)
    out = tmp_path / f"x{suffix}.safetensors"
    assert result.output == str(out) and result.variant == suffix[1:]
    assert not (tmp_path / "x.safetensors").exists()
    expected = webui_merge(special["a"], files["b"], files["c"], method=method, m=0.6, fp16=True)
    assert_same(out, expected)
    got = safetensors.torch.load_file(str(out))[CONV_IN]
    assert got.shape[1] == channels and torch.equal(got[:, 4:], a[CONV_IN][:, 4:])


def test_inpainting_b_with_a_normal_a_is_refused(files, tmp_path):
    b = safetensors.torch.load_file(str(files["b"]))
    b[CONV_IN] = torch.zeros(b[CONV_IN].shape[0], 9, 3, 3)
    safetensors.torch.save_file(b, str(tmp_path / "b9.safetensors"))
    with pytest.raises(IncompatibleModels, match="A must be the inpainting model"):
        merge(dict(files, b=tmp_path / "b9.safetensors"), tmp_path / "x.safetensors", method="weighted_sum")
    assert not list(tmp_path.glob("x*"))


# --- refusals instead of garbage ---------------------------------------------------------------------


def test_different_architectures_are_refused(files, tiny_sd2, tmp_path):
    with pytest.raises(IncompatibleModels, match=r"Stable Diffusion 1\.x but B .* Stable Diffusion 2\.x"):
        run_merge(
            MergeConfig(method="weighted_sum"),
            files["a"],
            tiny_sd2.single_file,
            None,
            tmp_path / "x.safetensors",
        )
    with pytest.raises(IncompatibleModels, match=r"C \(tertiary\)"):
        run_merge(MergeConfig(), files["a"], files["b"], tiny_sd2.single_file, tmp_path / "x.safetensors")


def test_shape_mismatch_is_refused_with_the_key(files, tmp_path):
    c = safetensors.torch.load_file(str(files["c"]))
    key = UNET + "out.2.weight"
    c[key] = torch.zeros(4, 8, 1, 1)
    safetensors.torch.save_file(c, str(tmp_path / "c.safetensors"))
    with pytest.raises(IncompatibleModels, match=re.escape(key)):
        merge(dict(files, c=tmp_path / "c.safetensors"), tmp_path / "x.safetensors", method="add_difference")


def test_a_lora_or_vae_file_is_not_a_model(files, tmp_path):
    with pytest.raises(IncompatibleModels, match="not a Stable Diffusion checkpoint"):
        run_merge(
            MergeConfig(method="weighted_sum"), files["a"], files["vae"], None, tmp_path / "x.safetensors"
        )


def test_vae_that_does_not_fit_is_refused(files, tmp_path):
    with pytest.raises(IncompatibleModels, match="No tensor of the VAE"):
        merge(files, tmp_path / "x.safetensors", vae=files["c"])


# --- settings and arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"method": "average"}, "method"),
        ({"multiplier": 1.5}, "multiplier"),
        ({"discard_weights": "(unclosed"}, "discard_weights"),
        ({"config_source": "elsewhere"}, "config_source"),
    ],
)
def test_bad_settings_name_the_field(data, field):
    with pytest.raises(ValueError, match=f"MergeConfig.{field}"):
        from_dict(MergeConfig, data)


def test_bad_argument_combinations(files, tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="tertiary: Add difference needs C"):
        run_merge(MergeConfig(), files["a"], files["b"], None, out)
    with pytest.raises(ValueError, match="tertiary: Weighted sum uses only A and B"):
        run_merge(MergeConfig(method="weighted_sum"), files["a"], files["b"], files["c"], out)
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        run_merge(MergeConfig(), files["a"], files["b"], files["c"], tmp_path / "x.ckpt")
    with pytest.raises(FileNotFoundError, match="secondary"):
        run_merge(MergeConfig(), files["a"], tmp_path / "none.safetensors", files["c"], out)
    with pytest.raises(ValueError, match="is the secondary input"):
        run_merge(MergeConfig(), files["a"], files["b"], files["c"], files["b"], overwrite=True)
    assert not out.exists()


def test_existing_output_is_kept_unless_overwrite(files, tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(TargetExists):
        merge(files, out)
    assert out.read_bytes() == b"keep me"
    merge(files, out, overwrite=True)
    assert len(safetensors.torch.load_file(str(out))) > 900


def test_stop_leaves_nothing_behind(files, tmp_path):
    out = tmp_path / "stopped.safetensors"
    calls = {"n": 0}

    def stop_after_ten():
        calls["n"] += 1
        return calls["n"] > 10

    with pytest.raises(JobStopped):
        run_merge(
            MergeConfig(add_merge_recipe=False),
            files["a"],
            files["b"],
            files["c"],
            out,
            ctx=JobContext(should_stop=stop_after_ten),
        )
    assert list(tmp_path.iterdir()) == []


def test_progress_reports_every_tensor(files, tmp_path):
    seen = []
    result = run_merge(
        MergeConfig(add_merge_recipe=False),
        files["a"],
        files["b"],
        files["c"],
        tmp_path / "p.safetensors",
        ctx=JobContext(progress=seen.append),
    )
    merging = [p for p in seen if p.text.startswith("Merging")]
    assert [p.done for p in merging] == list(range(1, result.tensors + 1))
    assert all(p.total == result.tensors for p in merging)


# --- metadata, config copy, position ids ----------------------------------------------------------------


def test_metadata_recipe_and_copied_fields(files, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    a = safetensors.torch.load_file(str(files["a"]))
    safetensors.torch.save_file(
        a, str(src / "trained.safetensors"), metadata={"ss_tag": "from A", "shared": "A"}
    )
    b = safetensors.torch.load_file(str(files["b"]))
    safetensors.torch.save_file(b, str(src / "anything.safetensors"), metadata={"shared": "B"})
    out = tmp_path / "meta.safetensors"
    result = run_merge(
        MergeConfig(method="weighted_sum", multiplier=0.25),
        src / "trained.safetensors",
        src / "anything.safetensors",
        None,
        out,
        known_hashes={str(src / "trained.safetensors"): "ab" * 32},
    )
    with safetensors.safe_open(str(out), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and metadata["ss_tag"] == "from A" and metadata["shared"] == "B"
    recipe = json.loads(metadata["sd_merge_recipe"])
    assert (
        recipe["interp_method"] == "Weighted sum"
        and recipe["multiplier"] == 0.25
        and recipe["save_as_half"] is True
    )
    assert recipe["primary_model_hash"] == "ab" * 32  # given, not recomputed
    import hashlib

    b_hash = hashlib.sha256((src / "anything.safetensors").read_bytes()).hexdigest()
    assert recipe["secondary_model_hash"] == b_hash and recipe["tertiary_model_hash"] is None
    models = json.loads(metadata["sd_merge_models"])
    assert models[b_hash]["name"] == "anything.safetensors"
    assert json.loads(metadata["dbchar_merge_recipe"]) == result.recipe
    assert result.recipe["secondary"] == {"name": "anything.safetensors", "sha256": b_hash}
    assert json.loads(json.dumps(result.to_dict()))["output"] == str(out)


def test_no_metadata_when_asked(files, tmp_path):
    out = tmp_path / "bare.safetensors"
    merge(files, out, save_metadata=False)
    with safetensors.safe_open(str(out), "pt") as handle:
        assert not handle.metadata()


def test_yaml_beside_an_input_is_copied(files, tmp_path):
    (files["b"].with_suffix(".yaml")).write_text("parameterization: v\n", encoding="utf-8")
    try:
        result = merge(files, tmp_path / "cfg.safetensors", config_source="any")
        assert result.config_copied == str(tmp_path / "cfg.yaml")
        assert (tmp_path / "cfg.yaml").read_text(encoding="utf-8") == "parameterization: v\n"
        none = merge(files, tmp_path / "nocfg.safetensors", config_source="tertiary")
        assert none.config_copied is None and not (tmp_path / "nocfg.yaml").exists()
    finally:
        files["b"].with_suffix(".yaml").unlink()


def test_damaged_position_ids_are_repaired_by_default(files, tmp_path):
    a = safetensors.torch.load_file(str(files["a"]))
    a[POSITION_IDS] = torch.arange(77, dtype=torch.float32).unsqueeze(0) * 0.9999
    damaged = dict(files, a=tmp_path / "a-damaged.safetensors")
    safetensors.torch.save_file(a, str(damaged["a"]))
    run_merge(MergeConfig(), damaged["a"], files["b"], files["c"], tmp_path / "fixed.safetensors")
    fixed = safetensors.torch.load_file(str(tmp_path / "fixed.safetensors"))[POSITION_IDS]
    assert fixed.dtype == torch.int64 and torch.equal(fixed, torch.arange(77).unsqueeze(0))
    merge(damaged, tmp_path / "kept.safetensors")  # fix_position_ids=False: the webui's way
    expected = webui_merge(damaged["a"], files["b"], files["c"], method="add_difference", m=1.0, fp16=True)
    assert_same(tmp_path / "kept.safetensors", expected)


def test_ckpt_inputs_merge_like_safetensors(files, tmp_path):
    for name in ("a", "b", "c"):
        torch.save({"state_dict": safetensors.torch.load_file(str(files[name]))}, tmp_path / f"{name}.ckpt")
    ckpts = {n: tmp_path / f"{n}.ckpt" for n in "abc"}
    merge(ckpts, tmp_path / "from-ckpt.safetensors")
    merge(files, tmp_path / "from-st.safetensors")
    assert_same(
        tmp_path / "from-ckpt.safetensors", safetensors.torch.load_file(str(tmp_path / "from-st.safetensors"))
    )


def test_webui_output_name():
    assert (
        webui_output_name("add_difference", "trained", "anything", "sd15", 1.0)
        == "trained + 1.0(anything - sd15)"
    )
    assert webui_output_name("weighted_sum", "a", "b", None, 0.3) == "0.7(a) + 0.3(b)"
