"""The model kinds dbchar converts, and how to tell them apart from an ldm state dict.

A kind fixes the UNet block structure and the text encoder layout. Prediction type (epsilon or
v) is *not* part of the kind: SD2-v and SD2-base have identical keys and shapes, so it has to come
from a ``.yaml`` beside the file, ``modelspec.prediction_type`` metadata or the user.

To add SDXL: a :class:`~lib_dbchar.checkpoint.unet.UNetLayout` for its 3 levels (plus a
``label_emb`` part), two text flavours under ``conditioner.embedders.{0,1}``, a :class:`KindSpec`
here; the sentinel keys are already in :data:`lib_dbchar.checkpoint.detect.SENTINELS` (the one
table: today SDXL is recognised there and refused here as "not supported yet").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from lib_dbchar.checkpoint.detect import ARCH_LABELS, PROJ_IN, SENTINELS, detect_arch_by
from lib_dbchar.checkpoint.errors import UnsupportedCheckpoint
from lib_dbchar.checkpoint.text import CLIP, OPENCLIP, TextFlavour
from lib_dbchar.checkpoint.unet import SD_UNET, UNetLayout


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


class _ShapeView(Mapping):
    """A state dict seen as key -> shape, without copying it (what the sentinel rules read)."""

    def __init__(self, state_dict: Mapping[str, Any]) -> None:
        self._state_dict = state_dict

    def __getitem__(self, key: str) -> tuple[int, ...]:
        return tuple(self._state_dict[key].shape)

    def __contains__(self, key: object) -> bool:
        return key in self._state_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self._state_dict)

    def __len__(self) -> int:
        return len(self._state_dict)


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
    arch, key = detect_arch_by(_ShapeView(state_dict))
    if arch in KINDS:
        return arch
    if arch != "unknown":
        raise UnsupportedCheckpoint(
            f"This is a {ARCH_LABELS[arch]} checkpoint ({arch.upper()}: it has {key!r}); "
            "dbchar converts SD1.x and SD2.x only."
        )
    sd_keys = [k for k, a in SENTINELS if a in KINDS]
    raise UnsupportedCheckpoint(
        f"Not a Stable Diffusion 1.x/2.x checkpoint: none of {', '.join(sd_keys)} or {PROJ_IN} is in it."
    )
