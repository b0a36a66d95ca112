"""The working model (single file -> local diffusers folder), offline tokenizers, prompt encoding, export."""

import gzip
import json
import shutil
import sys

import pytest
import torch

from lib_dbchar.checkpoint import (
    CheckpointError,
    diffusers_to_ldm,
    ldm_to_diffusers,
    load_single_file,
    read_metadata,
    save_single_file,
)
from lib_dbchar.train import text
from lib_dbchar.train.model import (
    _expected_shapes,
    check_component,
    component_configs,
    detect_prediction_type,
    export_checkpoint,
    load_components,
    prepare_working_model,
)
from lib_dbchar.train.tokenizer import (
    TokenizerNotFound,
    byte_characters,
    find_tokenizer,
    vocab_from_bpe,
    write_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(params=["sd1", "sd2"])
def tiny(request):
    return request.getfixturevalue(f"tiny_{request.param}")


def _reference(tiny):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tiny.diffusers_dir
    return (
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet"),
        AutoencoderKL.from_pretrained(folder, subfolder="vae"),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder"),
    )


def _same(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_working_model_equals_the_diffusers_folder(tiny, tmp_path):
    model = prepare_working_model(tiny.single_file, tmp_path / "working", config_dir=tiny.diffusers_dir)
    assert model.kind == tiny.kind
    assert model.prediction_type == tiny.prediction_type  # sd2: v, from the file's modelspec metadata
    parts = load_components(model)
    unet, vae, text_encoder = _reference(tiny)
    assert _same(parts.unet, unet) and _same(parts.vae, vae) and _same(parts.text_encoder, text_encoder)
    assert parts.scheduler_config["prediction_type"] == tiny.prediction_type
    assert parts.tokenizer("a photo").input_ids[0] == parts.tokenizer.bos_token_id
    expected_pad = "!" if tiny.kind == "sd2" else "<|endoftext|>"
    assert parts.tokenizer.pad_token == expected_pad
    record = json.loads((model.folder / "source.json").read_text(encoding="utf-8"))
    assert record["source"] == str(tiny.single_file.resolve()) and record["kind"] == tiny.kind


def test_working_model_is_converted_once_and_bound_to_its_source(tiny_sd1, tiny_sd2, tmp_path):
    folder = tmp_path / "working"
    first = prepare_working_model(tiny_sd1.single_file, folder, config_dir=tiny_sd1.diffusers_dir)
    stamp = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    again = prepare_working_model(tiny_sd1.single_file, folder, config_dir=tiny_sd1.diffusers_dir)
    assert again == first
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"started from tiny-sd1\.safetensors .* Start a new run"):
        prepare_working_model(tiny_sd2.single_file, folder, config_dir=tiny_sd2.diffusers_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_shape_mismatch_is_named(tiny_sd1, tmp_path):
    # The tiny model is not a standard SD1 size: the shipped configs refuse it clearly.
    with pytest.raises(
        CheckpointError, match=r"its unet does not match the standard configuration \(.*other shape"
    ):
        prepare_working_model(tiny_sd1.single_file, tmp_path / "w", config_dir=None, tokenizer_dir=tmp_path)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kind", ["sd1", "sd2"])
def test_shipped_configs_fit_the_real_sd_layouts(kind):
    """Full-size SD1.5/SD2.x modules on the meta device go through the key maps and back."""
    configs = component_configs(kind, "epsilon")
    meta = {
        name: {
            k: torch.empty(shape, device="meta") for k, shape in _expected_shapes(name, configs[name]).items()
        }
        for name in ("unet", "vae", "text_encoder")
    }
    assert sum(t.numel() for t in meta["unet"].values()) == {"sd1": 859_520_964, "sd2": 865_910_724}[kind]
    ldm = diffusers_to_ldm(meta["unet"], meta["vae"], meta["text_encoder"], kind=kind)
    for name, tensors in ldm_to_diffusers(ldm, kind=kind)._asdict().items():
        check_component(name, tensors, configs[name], source=tmp_name())
    assert component_configs("sd2", "v_prediction")["unet"]["sample_size"] == 96


def tmp_name():
    from pathlib import Path

    return Path("model.safetensors")


def test_prediction_type_detection(tmp_path):
    path = tmp_path / "m.safetensors"
    assert detect_prediction_type(path, {}, "sd1") == "epsilon"
    assert detect_prediction_type(path, {"modelspec.prediction_type": "v"}, "sd2") == "v_prediction"
    assert detect_prediction_type(path, {}, "sd2", "epsilon") == "epsilon"
    with pytest.raises(ValueError, match=r"TrainConfig\.prediction_type: m\.safetensors is an SD 2\.x model"):
        detect_prediction_type(path, {}, "sd2")
    (tmp_path / "m.yaml").write_text('model:\n  params:\n    parameterization: "v"\n', encoding="utf-8")
    assert detect_prediction_type(path, {}, "sd2") == "v_prediction"
    (tmp_path / "m.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n", encoding="utf-8")
    assert detect_prediction_type(path, {"modelspec.prediction_type": "v"}, "sd2") == "epsilon"


def test_export_writes_fp16_single_file_with_recipe_extras_and_yaml(tiny_sd2, tmp_path):
    # A source with the extra tensors real files carry: a schedule buffer (kept) and EMA (dropped).
    sd = load_single_file(tiny_sd2.single_file)
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    sd["model_ema.decay"] = torch.tensor(0.999)
    source = save_single_file(sd, tmp_path / "src.safetensors", read_metadata(tiny_sd2.single_file))
    (tmp_path / "src.yaml").write_text("parameterization: v\n", encoding="utf-8")
    model = prepare_working_model(source, tmp_path / "working", config_dir=tiny_sd2.diffusers_dir)
    parts = load_components(model)
    with torch.no_grad():
        for p in parts.unet.parameters():
            p.add_(0.01)  # "trained"
    out = export_checkpoint(
        model,
        parts.unet.state_dict(),
        parts.vae.state_dict(),
        parts.text_encoder.state_dict(),
        tmp_path / "ckpt" / "run_6.safetensors",
        recipe={"step": 6, "config": {"learning_rate": 1e-6}},
    )
    saved = load_single_file(out)
    assert "alphas_cumprod" in saved and "model_ema.decay" not in saved
    back = ldm_to_diffusers(saved, kind="sd2")
    unet = parts.unet.state_dict()
    assert all(torch.equal(back.unet[k], unet[k].half()) for k in unet)
    assert all(v.dtype == torch.float16 for v in saved.values() if v.is_floating_point())
    meta = read_metadata(out)
    assert json.loads(meta["dbchar.recipe"])["step"] == 6
    assert meta["modelspec.prediction_type"] == "v"
    assert (tmp_path / "ckpt" / "run_6.yaml").read_text(encoding="utf-8") == "parameterization: v\n"


# --- tokenizer ----------------------------------------------------------------------------------


def _bpe_file(path, merges):
    lines = ["#version: test", *(" ".join(m) for m in merges)]
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    return path


def test_vocab_rebuilt_from_clip_bpe_file(tmp_path):
    from transformers import CLIPTokenizer

    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o</w>")]
    vocab, read = vocab_from_bpe(_bpe_file(tmp_path / "bpe_simple_vocab_16e6.txt.gz", merges))
    chars = byte_characters()
    assert len(chars) == 256 and chars[0] == "!" and chars[-1] == chr(256 + 67)
    assert read == merges
    assert len(vocab) == 512 + len(merges) + 2
    assert vocab["hello</w>"] == 512 + 3 and vocab["<|endoftext|>"] == len(vocab) - 1
    source = find_tokenizer(explicit=tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    folder = write_tokenizer(source, tmp_path / "tok", model_kind="sd1")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    assert tokenizer("hello").input_ids == [
        vocab["<|startoftext|>"],
        vocab["hello</w>"],
        vocab["<|endoftext|>"],
    ]


def test_tokenizer_search_order(tmp_path, tiny_sd1, fake_hf_cache, monkeypatch):
    kit_tokenizer = tiny_sd1.diffusers_dir / "tokenizer"
    # 1. a named folder; 2. the model-config folder.
    assert find_tokenizer(explicit=kit_tokenizer).path == kit_tokenizer
    assert find_tokenizer(config_dir=tiny_sd1.diffusers_dir).origin.startswith("model config folder")
    # Nothing in the cache, no package: a message with the fixes.
    with pytest.raises(TokenizerNotFound, match="pip install open_clip_torch"):
        find_tokenizer(packages=("dbchar_no_such_package",))
    # 4. a package that ships the BPE file (open_clip / clip).
    package = tmp_path / "site" / "fake_open_clip"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    _bpe_file(package / "bpe_simple_vocab_16e6.txt.gz", [("a", "b")])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    found = find_tokenizer(packages=("fake_open_clip",))
    assert (found.kind, found.origin) == ("bpe", "the fake_open_clip package")
    assert "fake_open_clip" not in sys.modules  # found without importing it
    # 3. the Hugging Face cache wins over packages.
    fake_hf_cache.add_repo("openai/clip-vit-large-patch14", kit_tokenizer, files=["vocab.json", "merges.txt"])
    found = find_tokenizer(packages=("fake_open_clip",))
    assert found.kind == "files" and found.origin == "Hugging Face cache: openai/clip-vit-large-patch14"
    assert (found.path / "vocab.json").read_bytes() == (kit_tokenizer / "vocab.json").read_bytes()
    shutil.rmtree(fake_hf_cache.repo_dir("openai/clip-vit-large-patch14"))


def test_named_folder_without_vocab_is_refused(tmp_path):
    with pytest.raises(TokenizerNotFound, match=r"holds no vocab\.json"):
        find_tokenizer(explicit=tmp_path)


# --- prompt encoding ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit_text(tiny_sd1):
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny_sd1.diffusers_dir
    return CLIPTokenizer.from_pretrained(str(folder / "tokenizer")), CLIPTextModel.from_pretrained(
        folder / "text_encoder"
    )


def test_long_prompts_are_encoded_in_75_token_chunks(kit_text):
    tokenizer, encoder = kit_text
    long_prompt = "x" * 100  # the kit's tokenizer has one token per character
    tokens = text.tokenize(tokenizer, [long_prompt, "ab"], max_chunks=3)
    assert tokens.ids.shape == (2, 154) and tokens.chunks == 2
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    row = tokens.ids[0].tolist()
    assert row[0] == bos and row[76] == eos and row[77] == bos
    assert row[78 + 25] == eos and row[78 + 26 :] == [pad] * 50
    assert tokens.ids[1, 77:].tolist() == [bos, eos] + [pad] * 75  # padded with an empty chunk
    cut = text.tokenize(tokenizer, [long_prompt], max_chunks=1)
    assert cut.truncated == (25,) and cut.chunks == 1
    padded = text.tokenize(tokenizer, ["ab"], max_chunks=3, min_chunks=3)
    assert padded.chunks == 3
    with torch.no_grad():
        hidden = text.encode(encoder, tokens)
        assert hidden.shape == (2, 154, 16)
        # Each chunk is encoded on its own: the second chunk alone gives the same states.
        alone = encoder(tokens.ids[:, 77:]).last_hidden_state
        assert torch.allclose(hidden[:, 77:], alone)


def test_clip_skip_and_emphasis(kit_text):
    tokenizer, encoder = kit_text
    tokens = text.tokenize(tokenizer, ["a cat"], max_chunks=1)
    with torch.no_grad():
        last = text.encode(encoder, tokens, clip_skip=1)
        skip2 = text.encode(encoder, tokens, clip_skip=2)
        out = encoder(tokens.ids, output_hidden_states=True)
        assert torch.allclose(skip2, text.final_layer_norm(encoder)(out.hidden_states[-2]))
        assert not torch.allclose(last, skip2)
        plain = text.encode(encoder, text.tokenize(tokenizer, ["a cat"], max_chunks=1, emphasis=True))
        weighted_tokens = text.tokenize(tokenizer, ["a (cat:1.5)"], max_chunks=1, emphasis=True)
        weighted = text.encode(encoder, weighted_tokens)
    assert torch.equal(weighted_tokens.ids, tokens.ids)  # same tokens, only weights differ
    assert weighted_tokens.weights[0, :6].tolist() == pytest.approx([1.0, 1.0, 1.5, 1.5, 1.5, 1.0])
    assert torch.allclose(plain, last)
    assert not torch.allclose(weighted, plain)
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-6)  # the mean is restored
