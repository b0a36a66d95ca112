"""The model registry, the cache/download/local-folder paths, sessions and the tagger config."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lib_dbchar.config import from_dict
from lib_dbchar.tagger.errors import ModelUnavailable, TaggerModelError
from lib_dbchar.tagger.models import (
    DEFAULT_MODEL,
    MODELS,
    fetch_model_files,
    get_model,
    local_model_files,
    resolve_model_files,
)
from lib_dbchar.tagger.runner import TaggerConfig, load_tagger
from lib_dbchar.tagger.session import CPU, CUDA, Tagger, TaggerHolder, choose_providers
from tests.kit.tagger import TAGGER_V2_DIR, TAGGER_V3_DIR, bgr_batch, bgr_mean_of, expected_probs

# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_covers_the_smilingwolf_family_at_pinned_commits():
    keys = {m.key for m in MODELS}
    assert keys == {
        "wd-v1-4-moat-tagger-v2", "wd-v1-4-convnextv2-tagger-v2", "wd-v1-4-swinv2-tagger-v2",
        "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3", "wd-vit-tagger-v3", "wd-vit-large-tagger-v3",
        "wd-eva02-large-tagger-v3",
    }  # fmt: skip
    for model in MODELS:
        assert re.fullmatch(r"[0-9a-f]{40}", model.revision), model.key
        assert model.repo_id == f"SmilingWolf/{model.key}"
    assert get_model("SmilingWolf/wd-vit-tagger-v3").key == "wd-vit-tagger-v3"
    assert DEFAULT_MODEL == "wd-swinv2-tagger-v3"
    with pytest.raises(ValueError, match="unknown tagger model 'wd-nope'"):
        get_model("wd-nope")


# --------------------------------------------------------------------------------------------------
# Cache and download


def test_cached_model_resolves_offline_at_the_pinned_revision(fake_hf_cache):
    model = get_model("wd-swinv2-tagger-v3")
    fake_hf_cache.add_repo(model.repo_id, TAGGER_V3_DIR, revision=model.revision)
    files = fetch_model_files(model)
    assert files.source == "cache" and files.revision == model.revision
    assert files.model_path.parent.name == model.revision
    assert files.model_path.read_bytes() == (TAGGER_V3_DIR / "model.onnx").read_bytes()
    assert files.tags_path.name == "selected_tags.csv"


def test_other_revision_in_cache_is_not_used(fake_hf_cache):
    # The fixture caches the v3 double under a made-up commit: the pinned one is missing.
    with pytest.raises(ModelUnavailable) as info:
        fetch_model_files(get_model("wd-swinv2-tagger-v3"))
    message = str(info.value)
    assert "wd-swinv2-tagger-v3 is not in the Hugging Face cache" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "--model-dir" in message and "huggingface.co/SmilingWolf/wd-swinv2-tagger-v3" in message


def test_cache_dir_setting_and_no_download(tmp_path, fake_hf_cache, monkeypatch):
    model = get_model("wd-v1-4-moat-tagger-v2")
    own_cache = tmp_path / "tagger-cache"
    from tests.kit.tagger import lay_out_hf_repo

    files = {n: TAGGER_V2_DIR / n for n in ("model.onnx", "selected_tags.csv")}
    lay_out_hf_repo(own_cache, model.repo_id, files, revision=model.revision)
    files = fetch_model_files(model, cache_dir=own_cache)
    assert own_cache in files.model_path.parents
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelUnavailable, match="downloads are switched off"):
        fetch_model_files(get_model("wd-vit-tagger-v3"), cache_dir=own_cache, allow_download=False)


def test_download_failure_is_a_clear_message_not_a_hang(fake_hf_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append(kwargs)
        raise LocalEntryNotFoundError("connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(
        ModelUnavailable, match=r"could not be downloaded \(LocalEntryNotFoundError: connection"
    ):
        fetch_model_files(get_model("wd-vit-tagger-v3"))
    assert [c["local_files_only"] for c in calls] == [True, False]
    assert all(
        c["etag_timeout"] == 10.0 and c["revision"] == get_model("wd-vit-tagger-v3").revision for c in calls
    )


def test_local_folder(tmp_path):
    files = local_model_files(TAGGER_V3_DIR)
    assert (files.source, files.name, files.revision) == ("folder", "v3", "")
    with pytest.raises(TaggerModelError, match="does not exist"):
        local_model_files(tmp_path / "nowhere")
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(TAGGER_V3_DIR / "model.onnx", half)
    with pytest.raises(TaggerModelError, match=r"has no selected_tags\.csv"):
        local_model_files(half)
    assert resolve_model_files("ignored", str(TAGGER_V2_DIR)).model_path == TAGGER_V2_DIR / "model.onnx"


# --------------------------------------------------------------------------------------------------
# Providers and sessions


def test_provider_choice():
    assert choose_providers("auto", [CUDA, CPU]) == ([(CUDA, {"device_id": 0}), CPU], [])
    assert choose_providers("cuda:1", [CUDA, CPU])[0][0] == (CUDA, {"device_id": 1})
    assert choose_providers("cpu", [CUDA, CPU]) == ([CPU], [])
    assert choose_providers("mps", [CPU]) == ([CPU], [])
    providers, warnings = choose_providers("cuda", [CPU])
    assert providers == [CPU] and "no CUDA provider" in warnings[0] and "onnxruntime-gpu" in warnings[0]


@dataclass
class Node:
    name: str
    shape: list


class FakeSession:
    """A stand-in with onnxruntime's session interface; records every batch it runs."""

    def __init__(self, inp=("input", ["batch", 448, 448, 3]), out=("output", ["batch", 21]),
                 providers=(CPU,), transform=None):  # fmt: skip
        self.inp, self.out, self.providers, self.transform = (
            Node(*inp),
            Node(*out),
            list(providers),
            transform,
        )
        self.batches: list[int] = []

    def get_inputs(self):
        return [self.inp]

    def get_outputs(self):
        return [self.out]

    def get_providers(self):
        return self.providers

    def run(self, names, feed):
        batch = feed[self.inp.name]
        self.batches.append(len(batch))
        probs = expected_probs(bgr_mean_of(batch)).astype(np.float32)
        return [self.transform(probs) if self.transform else probs]


def factory(session):
    seen = {}

    def make(path, providers, threads):
        seen.update(path=path, providers=providers, threads=threads)
        return session

    make.seen = seen
    return make


def test_tagger_reads_the_signature_and_splits_fixed_batches():
    session = FakeSession(inp=("input_1:0", [1, 448, 448, 3]), out=("predictions_sigmoid", [1, 21]))
    make = factory(session)
    tagger = Tagger.load(local_model_files(TAGGER_V2_DIR), device="cpu", session_factory=make)
    assert (tagger.info.input_name, tagger.info.fixed_batch, tagger.info.image_size) == ("input_1:0", 1, 448)
    assert make.seen["providers"] == [CPU] and make.seen["threads"] >= 1
    probs = tagger.predict(bgr_batch(["red", "blue", "cyan"]))
    assert session.batches == [1, 1, 1] and probs.shape == (3, 21)
    tagger.close()
    with pytest.raises(TaggerModelError, match="closed"):
        tagger.predict(bgr_batch(["red"]))


def test_cuda_silently_falling_back_is_reported(monkeypatch):
    monkeypatch.setattr("lib_dbchar.tagger.session.available_providers", lambda: [CUDA, CPU])
    tagger = Tagger.load(
        local_model_files(TAGGER_V3_DIR), device="auto", session_factory=factory(FakeSession())
    )
    assert tagger.info.requested == (CUDA, CPU) and tagger.info.provider == CPU
    assert any("could not start CUDA" in w for w in tagger.warnings)


@pytest.mark.parametrize(
    ("session", "message"),
    [
        (FakeSession(inp=("x", ["b", 3, 448, 448])), r"shape \['b', 3, 448, 448\].*channels last"),
        (FakeSession(out=("output", ["b", 20])), "outputs 20 scores but .* lists 21 tags"),
    ],
)
def test_models_that_are_not_wd14_are_refused(session, message):
    with pytest.raises(TaggerModelError, match=message):
        Tagger.load(local_model_files(TAGGER_V3_DIR), session_factory=factory(session))


def test_logit_outputs_are_refused_not_sigmoided():
    logits = FakeSession(transform=lambda p: np.log(p / (1 - p)))
    tagger = Tagger.load(local_model_files(TAGGER_V3_DIR), session_factory=factory(logits))
    with pytest.raises(TaggerModelError, match=r"outside 0\.\.1: not probabilities"):
        tagger.predict(bgr_batch(["black"]))


def test_real_onnxruntime_session_on_both_doubles():
    for folder, fixed, name in ((TAGGER_V3_DIR, None, "input"), (TAGGER_V2_DIR, 1, "input_1:0")):
        with Tagger.load(local_model_files(folder), device="cpu") as tagger:
            assert (tagger.info.fixed_batch, tagger.info.input_name, tagger.info.provider) == (
                fixed,
                name,
                CPU,
            )
            batch = bgr_batch(["red", "cyan"])
            np.testing.assert_allclose(tagger.predict(batch), expected_probs(bgr_mean_of(batch)), atol=1e-6)


def test_broken_model_file_is_a_clear_error(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x00garbage")
    shutil.copy(TAGGER_V3_DIR / "selected_tags.csv", folder)
    with pytest.raises(TaggerModelError, match=r"onnxruntime cannot load .*model\.onnx"):
        Tagger.load(local_model_files(folder), device="cpu")


def test_both_onnxruntime_builds_installed_is_reported(monkeypatch):
    monkeypatch.setattr("lib_dbchar.tagger.session._installed", lambda dist: True)
    tagger = Tagger.load(local_model_files(TAGGER_V3_DIR), session_factory=factory(FakeSession()))
    assert any("onnxruntime and onnxruntime-gpu are both installed" in w for w in tagger.warnings)


def test_load_tagger_through_a_holder_keeps_the_session_between_runs():
    holder = TaggerHolder()
    config = TaggerConfig(model_dir=str(TAGGER_V3_DIR))
    first = load_tagger(config, device="cpu", holder=holder)
    assert load_tagger(config, device="cpu", holder=holder) is first
    assert load_tagger(TaggerConfig(model_dir=str(TAGGER_V2_DIR)), device="cpu", holder=holder) is not first
    assert first.session is None  # switching models released the first session
    holder.release()


def test_holder_reuses_one_session_and_releases_it():
    made = []

    def make(path, providers, threads):
        made.append(path)
        return FakeSession()

    holder = TaggerHolder()
    first = holder.get(local_model_files(TAGGER_V3_DIR), session_factory=make)
    assert holder.get(local_model_files(TAGGER_V3_DIR), session_factory=make) is first
    assert len(made) == 1
    holder.release()
    assert first.session is None and holder.tagger is None
    holder.get(local_model_files(TAGGER_V3_DIR), session_factory=make)
    assert len(made) == 2


# --------------------------------------------------------------------------------------------------
# Config


def test_config_defaults_and_validation():
    config = TaggerConfig()
    assert (config.model, config.general_threshold, config.character_threshold) == (DEFAULT_MODEL, 0.35, 0.85)
    assert config.write_mode == "skip" and not config.escape
    cfg = from_dict(TaggerConfig, {"general_threshold": "0.3", "general_mcut": "yes", "exclude": "a, b"})
    assert cfg.thresholds().general == 0.3 and cfg.thresholds().general_mcut
    assert cfg.caption_style().exclude == ("a", "b")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"general_threshold": 1.5}, r"general_threshold.*above the maximum"),
        ({"write_mode": "merge"}, r"write_mode.*not one of skip"),
        ({"model": "wd-nope"}, r"model.*not one of"),
        ({"replacements": "red hair"}, r"TaggerConfig.replacements: replacement 'red hair'"),
        ({"caption_extension": ".png"}, r"caption_extension.*must not be a picture"),
        ({"caption_extension": "txt"}, r"caption_extension.*look like '.txt'"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        from_dict(TaggerConfig, data)


def test_config_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match=r"TaggerConfig.character_threshold: -0.1"):
        TaggerConfig(character_threshold=-0.1)
    assert TaggerConfig(model="anything", model_dir=str(Path("/models/wd"))).model_dir
