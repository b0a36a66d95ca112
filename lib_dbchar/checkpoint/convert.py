"""Whole-model conversions between diffusers components and one ldm (A1111) state dict.

Pure dict -> dict functions: no files, no models, no copies of tensors that only change name
(outputs share memory with inputs; only the fused/split OpenCLIP q/k/v tensors are new).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from lib_dbchar.checkpoint.errors import UnsupportedCheckpoint
from lib_dbchar.checkpoint.io import unwrap_state_dict
from lib_dbchar.checkpoint.kinds import KindSpec, detect_kind, kind_spec
from lib_dbchar.checkpoint.text import split_ldm_text_keys, text_to_diffusers, text_to_ldm
from lib_dbchar.checkpoint.unet import LDM_UNET_PREFIX, unet_keymap
from lib_dbchar.checkpoint.vae import LDM_VAE_PREFIX, vae_keymap

# Under first_stage_model, the training loss (a discriminator and LPIPS) of some VAE releases.
_VAE_LOSS = LDM_VAE_PREFIX + "loss."
# All text encoder layouts live under this; other flavours' keys there are unexpected.
_COND_STAGE = "cond_stage_model."


class DiffusersComponents(NamedTuple):
    """The diffusers state dicts of one model (unpacks as ``unet, vae, text_encoder``)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]


def diffusers_to_ldm(
    unet: Mapping[str, Any], vae: Mapping[str, Any], text_encoder: Mapping[str, Any], *, kind: str
) -> dict[str, Any]:
    """Build one ldm (A1111 single-file) state dict from diffusers component state dicts.

    Args:
        unet: ``UNet2DConditionModel.state_dict()``.
        vae: ``AutoencoderKL.state_dict()``.
        text_encoder: ``CLIPTextModel.state_dict()`` from transformers 4.x or 5.x (with or
            without ``text_model.``).
        kind: ``"sd1"`` (CLIP text encoder) or ``"sd2"`` (written in the OpenCLIP layout).

    Returns:
        ``model.diffusion_model.*``, ``first_stage_model.*`` and ``cond_stage_model.*`` keys with
        the input tensors (VAE attention weights reshaped to 1x1 convs, SD2 q/k/v concatenated).

    Raises:
        ValueError: unknown ``kind``.
        MissingKeyError: a required tensor is missing (the message names it).
        UnsupportedCheckpoint: a key the SD layout does not have (another architecture).
    """
    spec = kind_spec(kind)
    out = unet_keymap(spec.unet).to_ldm(unet)
    out.update(vae_keymap().to_ldm(vae))
    out.update(text_to_ldm(text_encoder, spec.text))
    return out


def ldm_to_diffusers(
    state_dict: Mapping[str, Any], *, kind: str | None = None, text_model_prefix: bool = True
) -> DiffusersComponents:
    """Split an ldm (A1111 single-file) state dict into diffusers component state dicts.

    Keys that are not part of the three components (EMA copies, noise schedule buffers, VAE
    training loss, SD2's unused last text layer, ...) are left out; :func:`unconverted_keys` lists
    them.

    Args:
        state_dict: the ldm state dict; a ``{"state_dict": ...}`` wrapper is unwrapped.
        kind: ``"sd1"`` or ``"sd2"``; ``None`` detects it (:func:`detect_kind`).
        text_model_prefix: text encoder keys with ``text_model.`` (transformers 4.x and files on
            disk) or without (a transformers 5.x ``CLIPTextModel.state_dict()``).

    Returns:
        ``DiffusersComponents(unet, vae, text_encoder)``.

    Raises:
        MissingKeyError: a required tensor is missing (the message names the ldm key).
        UnsupportedCheckpoint: SDXL, no SD sentinel key, or keys of another architecture.
    """
    sd = unwrap_state_dict(state_dict)
    spec = kind_spec(kind) if kind is not None else kind_spec(detect_kind(sd))
    unet, vae, text, _ = _split(sd, spec)
    return DiffusersComponents(
        unet=unet_keymap(spec.unet).to_diffusers(unet),
        vae=vae_keymap().to_diffusers(vae),
        text_encoder=text_to_diffusers(text, spec.text, text_model_prefix=text_model_prefix),
    )


def unconverted_keys(state_dict: Mapping[str, Any], *, kind: str | None = None) -> list[str]:
    """The keys :func:`ldm_to_diffusers` leaves out, in file order.

    Useful to log what a conversion drops, or to carry such tensors over when writing a trained
    model back into the layout of the file it came from.

    Args:
        state_dict: the ldm state dict (a ``{"state_dict": ...}`` wrapper is unwrapped).
        kind: as for :func:`ldm_to_diffusers`.

    Returns:
        Full ldm keys, e.g. ``["alphas_cumprod", "model_ema.decay", ...]``.
    """
    sd = unwrap_state_dict(state_dict)
    spec = kind_spec(kind) if kind is not None else kind_spec(detect_kind(sd))
    return _split(sd, spec)[3]


def _split(sd: Mapping[str, Any], spec: KindSpec) -> tuple[dict, dict, dict, list[str]]:
    """(UNet tensors, VAE tensors, text tensors, unconverted keys); component prefixes stripped."""
    unet: dict[str, Any] = {}
    vae: dict[str, Any] = {}
    text, unconverted = split_ldm_text_keys(sd, spec.text, spec.max_text_layers)
    for key, value in sd.items():
        if key.startswith(LDM_UNET_PREFIX):
            unet[key[len(LDM_UNET_PREFIX) :]] = value
        elif key.startswith(_VAE_LOSS):
            unconverted.append(key)
        elif key.startswith(LDM_VAE_PREFIX):
            vae[key[len(LDM_VAE_PREFIX) :]] = value
        elif key.startswith(_COND_STAGE):
            if not key.startswith(spec.text.ldm_prefix):
                raise UnsupportedCheckpoint(
                    f"text encoder: unexpected key {key!r} in a {spec.label} checkpoint (expected keys under "
                    f"{spec.text.ldm_prefix!r}); pass the right kind or check the file."
                )
        else:
            unconverted.append(key)
    order = {key: i for i, key in enumerate(sd)}
    unconverted.sort(key=order.__getitem__)
    return unet, vae, text, unconverted
