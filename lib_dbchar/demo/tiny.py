"""Tiny Stable Diffusion models with the real SD1/SD2 topology, built offline in about a second.

The UNet, VAE and text encoder have the block structure, layer names and layer counts of the
real models (so the real key maps apply and loaders recognise them) at widths of 8-16 channels.
Every tensor gets its own deterministic random values, so a key map that swapped two tensors of
the same shape (two norms, say) would be caught by an equality test.

Each model is saved twice: as a diffusers folder that ``StableDiffusionPipeline.from_pretrained``
loads offline, and as an ldm single file written through :mod:`lib_dbchar.checkpoint`.

Kinds:

* ``sd1``: CLIP text encoder (4 layers, ``quick_gelu``), conv ``proj_in``, epsilon prediction.
* ``sd2``: the SD2 text encoder shape (23 layers, ``gelu``; tools detect SD2 by ``layers.22``),
  ``use_linear_projection``, 2-wide attention heads whose count grows with the width (as SD2's
  64-wide heads do), and ``v_prediction`` like SD2.x-768 (``prediction_type`` can override).

Nothing heavy is imported at module level (torch, diffusers and transformers load inside the
builders): the demo and the tests' kit (tests/kit/models.py) import this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lib_dbchar.train.model import pipeline_index
from lib_dbchar.train.tokenizer import END, MAX_LENGTH, START, byte_characters, pad_token, write_vocab

__all__ = ["TINY_PROMPT", "TinyModel", "build_tiny_sd"]

TINY_PROMPT = "a photo of sks person"

_UNET = {
    "sample_size": 8,  # latents of a 64x64 image (the VAE downsamples 3 times)
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 16,
    "attention_head_dim": 2,
    "norm_num_groups": 4,
}
_UNET_SD2 = {
    **_UNET,
    "use_linear_projection": True,
    # diffusers' SD2 config names *head counts* "attention_head_dim" ([5, 10, 20, 20] = width / 64).
    # Here heads are 2 wide, so the count grows with the width the same way.
    "attention_head_dim": (4, 4, 8, 8),
}
_VAE = {
    "sample_size": 64,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "norm_num_groups": 4,
}
_TEXT = {
    "hidden_size": 16,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "max_position_embeddings": MAX_LENGTH,
    # diffusers' single-file loader splits SD2's fused q/k/v by projection_dim, which real SD2
    # has equal to the width; keep that true here.
    "projection_dim": 16,
}
_TEXT_BY_KIND = {
    "sd1": {"num_hidden_layers": 4, "hidden_act": "quick_gelu"},
    "sd2": {"num_hidden_layers": 23, "hidden_act": "gelu"},
}
_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
_DEFAULT_PREDICTION = {"sd1": "epsilon", "sd2": "v_prediction"}
_MODELSPEC_PREDICTION = {"epsilon": "epsilon", "v_prediction": "v"}


@dataclass(frozen=True)
class TinyModel:
    """A built tiny model.

    Attributes:
        kind: ``"sd1"`` or ``"sd2"``.
        diffusers_dir: the diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ...).
        single_file: the ldm ``.safetensors`` with the same weights.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (in the scheduler config and, as
            ``modelspec.prediction_type``, in the single file's metadata).
        seed: what the weights were drawn with.
    """

    kind: str
    diffusers_dir: Path
    single_file: Path
    prediction_type: str
    seed: int


def build_tiny_sd(
    kind: str, out_dir: Path, seed: int = 0, *, prediction_type: str | None = None
) -> TinyModel:
    """Build a random tiny SD model and save it as a diffusers folder and an ldm single file.

    Args:
        kind: ``"sd1"`` or ``"sd2"``.
        out_dir: where to write ``diffusers/`` and ``tiny-<kind>.safetensors`` (created).
        seed: the same seed gives the same tensors, bit for bit.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``; default epsilon for sd1, v for sd2.

    Returns:
        The :class:`TinyModel` describing what was written.
    """
    if kind not in _TEXT_BY_KIND:
        raise ValueError(f"kind must be one of {', '.join(_TEXT_BY_KIND)}; got {kind!r}")
    prediction_type = prediction_type or _DEFAULT_PREDICTION[kind]
    if prediction_type not in _MODELSPEC_PREDICTION:
        raise ValueError(f"prediction_type must be epsilon or v_prediction; got {prediction_type!r}")
    out_dir = Path(out_dir)
    folder = out_dir / "diffusers"
    unet, vae, text_encoder = _build_modules(kind, seed)
    _save_diffusers(folder, unet, vae, text_encoder, kind=kind, prediction_type=prediction_type)
    single_file = _save_single_file(
        out_dir / f"tiny-{kind}.safetensors",
        unet,
        vae,
        text_encoder,
        kind=kind,
        prediction_type=prediction_type,
    )
    return TinyModel(kind, folder, single_file, prediction_type, seed)


def _build_modules(kind: str, seed: int) -> tuple:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = _vocab()
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        bos_token_id=vocab[START],
        eos_token_id=vocab[END],
        pad_token_id=vocab[pad_token(kind)],
        **_TEXT,
        **_TEXT_BY_KIND[kind],
    )
    # fork_rng: building a fixture must not change the random stream of the test that asked for it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = (
            UNet2DConditionModel(**(_UNET_SD2 if kind == "sd2" else _UNET)),
            AutoencoderKL(**_VAE),
            CLIPTextModel(text_config),
        )
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for module in modules:
                for param in module.parameters():
                    # Fresh norms are all ones/zeros; the noise makes every tensor unique.
                    param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return tuple(m.eval() for m in modules)


def _save_diffusers(folder: Path, unet, vae, text_encoder, *, kind: str, prediction_type: str) -> None:
    import diffusers
    from diffusers import DDIMScheduler

    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    DDIMScheduler(**_SCHEDULER, prediction_type=prediction_type).save_pretrained(folder / "scheduler")
    write_vocab(folder / "tokenizer", _vocab(), [], model_kind=kind)
    index = {**pipeline_index(), "_diffusers_version": diffusers.__version__}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _save_single_file(path: Path, unet, vae, text_encoder, *, kind: str, prediction_type: str) -> Path:
    from lib_dbchar.checkpoint import diffusers_to_ldm, save_single_file

    state_dict = diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), kind=kind)
    metadata = {
        "dbchar.tiny_model": kind,
        "modelspec.prediction_type": _MODELSPEC_PREDICTION[prediction_type],
    }
    return save_single_file(state_dict, path, metadata=metadata, overwrite=True)


# --- tokenizer -------------------------------------------------------------------------------
# CLIP's tokenizer is byte-level BPE: text bytes are mapped to printable characters, each word
# ends in "</w>", and merges join characters into longer tokens. With no merges at all, every
# character is a token, so 256 characters + 256 "</w>" forms + 2 specials make a complete vocab,
# written by the trainer's own tokenizer writer.


def _vocab() -> dict[str, int]:
    chars = byte_characters()
    tokens = chars + [c + "</w>" for c in chars] + [START, END]
    return {token: i for i, token in enumerate(tokens)}
