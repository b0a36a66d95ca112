"""The model kinds dbchar converts, and how to tell them apart from an ldm state dict.

A kind fixes the UNet block structure and the text encoder layout. Prediction type (epsilon or
v) is *not* part of the kind: SD2-v and SD2-base have identical keys and shapes, so it has to come
from a ``.yaml`` beside the file, ``modelspec.prediction_type`` metadata or the user.

To add SDXL: a :class:`~lib_dbchar.checkpoint.unet.UNetLayout` for its 3 levels (plus a
``label_emb`` part), two text flavours under ``conditioner.embedders.{0,1}``, a :class:`KindSpec`
here and its sentinel rows in :data:`SENTINELS` (today they raise "not supported yet").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lib_dbchar.checkpoint.errors import UnsupportedCheckpoint
from lib_dbchar.checkpoint.text import CLIP, OPENCLIP, TextFlavour
from lib_dbchar.checkpoint.unet import LDM_UNET_PREFIX, SD_UNET, UNetLayout


@dataclass(frozen=True)
class KindSpec:
    """What a model kind looks like.

    Args:
        name: the short name used everywhere (``"sd1"``).
        label: for messages ("Stable Diffusion 1.x").
        unet: the UNet block structure.
        text: the text encoder layout.
        max_text_layers: text encoder layers diffusers keeps (SD2: 23 of OpenCLIP's 24).
    """

    name: str
    label: str
    unet: UNetLayout
    text: TextFlavour
    max_text_layers: int | None = None


KINDS: Mapping[str, KindSpec] = MappingProxyType(
    {
        "sd1": KindSpec("sd1", "Stable Diffusion 1.x", SD_UNET, CLIP),
        "sd2": KindSpec("sd2", "Stable Diffusion 2.x", SD_UNET, OPENCLIP, max_text_layers=23),
    }
)

# (key, kind) checked in order; the first key present decides. A kind of None means "recognised
# but not supported", which raises. Text encoder keys come first: they are what differs.
SENTINELS: tuple[tuple[str, str | None], ...] = (
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", None),  # SDXL base
    ("conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight", None),  # SDXL refiner
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),  # OpenCLIP
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),  # HF CLIP
    ("cond_stage_model.transformer.embeddings.token_embedding.weight", "sd1"),  # old CLIP layout
)
# Without a text encoder (UNet-only files): SD2's transformers project with Linear layers (2-D
# weights), SD1's with 1x1 convs (4-D).
UNET_PROJ_IN = LDM_UNET_PREFIX + "input_blocks.1.1.proj_in.weight"


def kind_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` for ``kind``.

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}") from None


def detect_kind(state_dict: Mapping[str, Any]) -> str:
    """Tell which kind of model an ldm (single-file) state dict holds.

    Args:
        state_dict: the flat ldm state dict (see :func:`~lib_dbchar.checkpoint.io.unwrap_state_dict`).

    Returns:
        ``"sd1"`` or ``"sd2"``.

    Raises:
        UnsupportedCheckpoint: for SDXL, or when no Stable Diffusion sentinel key is present.
    """
    for key, kind in SENTINELS:
        if key in state_dict:
            if kind is None:
                raise UnsupportedCheckpoint(
                    f"This is an SDXL checkpoint (it has {key!r}); dbchar converts SD1.x and SD2.x only."
                )
            return kind
    proj_in = state_dict.get(UNET_PROJ_IN)
    if proj_in is not None:
        return "sd2" if proj_in.ndim == 2 else "sd1"
    raise UnsupportedCheckpoint(
        "Not a Stable Diffusion 1.x/2.x checkpoint: none of "
        f"{', '.join(key for key, _ in SENTINELS[2:])} or {UNET_PROJ_IN} is in it."
    )
