"""Text encoder key maps: diffusers/transformers ``CLIPTextModel`` <-> ldm ``cond_stage_model.*``.

Two flavours:

* ``clip`` (SD1): ldm keeps the Hugging Face model as it is under ``cond_stage_model.transformer.``,
  so the keys only gain that prefix. Old files (NAI, AnythingV3) lack the ``text_model.`` level
  (``cond_stage_model.transformer.encoder...``); they are read as if it were there.
* ``openclip`` (SD2): ldm holds an OpenCLIP text tower under ``cond_stage_model.model.``:
  ``token_embedding``, ``positional_embedding`` (a bare tensor, no ``.weight``), layers as
  ``transformer.resblocks.{n}`` with ``ln_1``/``ln_2``, ``mlp.c_fc``/``mlp.c_proj``,
  ``attn.out_proj``, and q/k/v concatenated (in that order, dim 0) into
  ``attn.in_proj_weight``/``in_proj_bias``; ``ln_final``; ``text_projection`` is a matmul matrix,
  the transpose of a ``Linear`` weight. SD2 conditions on OpenCLIP's penultimate layer, so
  diffusers' SD2 text encoder stops at 23 of the 24 layers: layers past the limit (and
  ``logit_scale``) are left out of the conversion and reported as unconverted.

transformers 5.x ``CLIPTextModel`` state dicts lack the ``text_model.`` prefix that 4.30 has, and
4.30 also stores the ``position_ids`` buffer. The converters accept either form on input; use
:func:`match_text_encoder_keys` to shape a result like a given model's own state dict.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lib_dbchar.checkpoint.tables import LEAF, Fuse, Inner, KeyMap, Part, wb

TEXT_MODEL = "text_model."
POSITION_IDS = "text_model.embeddings.position_ids"
_POSITION_EMBEDDING = "text_model.embeddings.position_embedding.weight"
# Top-level names of a CLIPTextModel's text_model; transformers 5.x drops the "text_model." before them.
_TEXT_MODEL_CHILDREN = ("embeddings.", "encoder.", "final_layer_norm.")
_DIFFUSERS_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")

_LAYER_PARAMS = wb(
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm1",
    "mlp.fc1",
    "mlp.fc2",
    "layer_norm2",
)
CLIP_LAYER = Inner("CLIP text layer", params=_LAYER_PARAMS)
OPENCLIP_LAYER = Inner(
    "OpenCLIP text layer",
    params=_LAYER_PARAMS,
    renames=(
        ("self_attn.out_proj", "attn.out_proj"),
        ("layer_norm1", "ln_1"),
        ("layer_norm2", "ln_2"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ),
    fuses=(
        Fuse(
            "attn.in_proj_weight",
            ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
        ),
        Fuse(
            "attn.in_proj_bias", ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
        ),
    ),
)
EMBEDDING = Inner("embedding", params=("weight",))
BUFFER = Inner("buffer", params=("",))
# OpenCLIP stores these as bare parameters: the ldm key is the module prefix itself.
BARE_EMBEDDING = Inner("embedding", params=("weight",), renames=(("weight", ""),))
PROJECTION = Inner(
    "text projection", params=("weight",), renames=(("weight", ""),), transposed=frozenset({"weight"})
)


def _clip_parts(layers: int) -> list[Part]:
    parts = [
        Part("text_model.embeddings.token_embedding", "text_model.embeddings.token_embedding", EMBEDDING),
        Part(
            "text_model.embeddings.position_embedding", "text_model.embeddings.position_embedding", EMBEDDING
        ),
        # An int64 buffer (0..76); 4.30 saves it, 5.x does not, real SD1 files carry it.
        Part(POSITION_IDS, POSITION_IDS, BUFFER, optional=True),
        Part("text_model.final_layer_norm", "text_model.final_layer_norm", LEAF),
    ]
    parts += [
        Part(f"text_model.encoder.layers.{n}", f"text_model.encoder.layers.{n}", CLIP_LAYER)
        for n in range(layers)
    ]
    return parts


def _openclip_parts(layers: int) -> list[Part]:
    parts = [
        Part("text_model.embeddings.token_embedding", "token_embedding", EMBEDDING),
        Part("text_model.embeddings.position_embedding", "positional_embedding", BARE_EMBEDDING),
        Part("text_model.final_layer_norm", "ln_final", LEAF),
        # Only CLIPTextModelWithProjection has it; SD2's diffusers text encoder does not use it.
        Part("text_projection", "text_projection", PROJECTION, optional=True),
    ]
    parts += [
        Part(f"text_model.encoder.layers.{n}", f"transformer.resblocks.{n}", OPENCLIP_LAYER)
        for n in range(layers)
    ]
    return parts


@dataclass(frozen=True)
class TextFlavour:
    """One text encoder layout.

    Args:
        name: ``"clip"`` or ``"openclip"``.
        ldm_prefix: where the encoder lives in an ldm single file.
        ldm_layer: matches an ldm key (prefix stripped) of layer ``n``, capturing ``n``.
        parts: builds the modules for a given number of layers.
        derived: diffusers keys with no ldm counterpart, rebuilt on demand
            (:func:`match_text_encoder_keys`).
        ignorable: ldm keys (prefix stripped) that carry nothing diffusers keeps.
        fill_position_ids: write the ``position_ids`` buffer even when the input (a transformers
            5.x state dict) has none, so the file looks like every real SD1 file whatever
            transformers wrote it.
    """

    name: str
    ldm_prefix: str
    ldm_layer: re.Pattern[str]
    parts: Callable[[int], list[Part]]
    derived: frozenset[str] = frozenset()
    ignorable: frozenset[str] = frozenset()
    fill_position_ids: bool = False

    def keymap(self, layers: int) -> KeyMap:
        return KeyMap(f"text encoder ({self.name})", tuple(self.parts(layers)), self.ldm_prefix)


CLIP = TextFlavour(
    "clip",
    "cond_stage_model.transformer.",
    re.compile(r"^text_model\.encoder\.layers\.(\d+)\."),
    _clip_parts,
    fill_position_ids=True,
)
OPENCLIP = TextFlavour(
    "openclip",
    "cond_stage_model.model.",
    re.compile(r"^transformer\.resblocks\.(\d+)\."),
    _openclip_parts,
    derived=frozenset({POSITION_IDS}),
    # The CLIP loss temperature and open_clip's causal mask buffer: not part of a text encoder.
    ignorable=frozenset({"logit_scale", "attn_mask"}),
)


def _layer_count(keys: Iterable[str], pattern: re.Pattern[str]) -> int:
    """1 + the highest layer index among ``keys`` (at least 1, so an empty encoder reports layer 0)."""
    found = [int(m.group(1)) for m in map(pattern.match, keys) if m]
    return max(found) + 1 if found else 1


def normalize_diffusers_text_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Give transformers-5.x style keys (``encoder.layers...``) the 4.30 ``text_model.`` prefix.

    Args:
        state_dict: a ``CLIPTextModel``/``CLIPTextModelWithProjection`` state dict of either version.

    Returns:
        The same tensors, every text-model key starting with ``text_model.``.
    """
    return {
        (TEXT_MODEL + key if key.startswith(_TEXT_MODEL_CHILDREN) else key): value
        for key, value in state_dict.items()
    }


def text_to_ldm(state_dict: Mapping[str, Any], flavour: TextFlavour) -> dict[str, Any]:
    """Convert a diffusers text encoder state dict to ldm keys (prefix included).

    Raises:
        MissingKeyError, UnsupportedCheckpoint: see :class:`~lib_dbchar.checkpoint.tables.KeyMap`.
    """
    sd = {k: v for k, v in normalize_diffusers_text_keys(state_dict).items() if k not in flavour.derived}
    if flavour.fill_position_ids and POSITION_IDS not in sd and _POSITION_EMBEDDING in sd:
        sd[POSITION_IDS] = _position_ids(sd[_POSITION_EMBEDDING].shape[0])
    return flavour.keymap(_layer_count(sd, _DIFFUSERS_LAYER)).to_ldm(sd)


def split_ldm_text_keys(
    state_dict: Mapping[str, Any], flavour: TextFlavour, max_layers: int | None
) -> tuple[dict[str, Any], list[str]]:
    """Pick the text encoder tensors out of an ldm state dict.

    Args:
        state_dict: a whole ldm state dict (any prefixes).
        flavour: the encoder layout.
        max_layers: keep layers ``0..max_layers-1`` only (``None``: keep all).

    Returns:
        ``(tensors, unconverted)``: the encoder's tensors with :attr:`TextFlavour.ldm_prefix`
        stripped (old SD1 keys given their ``text_model.`` level), and the full keys under the
        prefix that the conversion leaves out on purpose (``logit_scale``, layers past the limit).
    """
    tensors: dict[str, Any] = {}
    unconverted: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(flavour.ldm_prefix):
            continue
        local = key[len(flavour.ldm_prefix) :]
        if flavour is CLIP and local.startswith(_TEXT_MODEL_CHILDREN):
            local = TEXT_MODEL + local  # the webui's merger does the same for old NAI-era files
        layer = flavour.ldm_layer.match(local)
        if local in flavour.ignorable or (
            layer and max_layers is not None and int(layer.group(1)) >= max_layers
        ):
            unconverted.append(key)
        else:
            tensors[local] = value
    return tensors, unconverted


def text_to_diffusers(
    tensors: Mapping[str, Any], flavour: TextFlavour, *, text_model_prefix: bool = True
) -> dict:
    """Convert ldm text encoder tensors (from :func:`split_ldm_text_keys`) to diffusers keys.

    Args:
        tensors: ldm keys with the flavour's prefix stripped.
        flavour: the encoder layout.
        text_model_prefix: keep the ``text_model.`` prefix (transformers 4.x and saved files);
            False gives the keys of a transformers 5.x ``CLIPTextModel``.

    Returns:
        The diffusers state dict. Float ``position_ids`` (left by old merges that averaged the
        buffer) come back as the exact int64 ``0..n-1`` they must be.
    """
    out = flavour.keymap(_layer_count(tensors, flavour.ldm_layer)).to_diffusers(tensors)
    if POSITION_IDS in out and out[POSITION_IDS].is_floating_point():
        out[POSITION_IDS] = _position_ids(out[POSITION_IDS].shape[-1])
    return out if text_model_prefix else _strip_text_model(out)


def _strip_text_model(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {(k[len(TEXT_MODEL) :] if k.startswith(TEXT_MODEL) else k): v for k, v in state_dict.items()}


def _position_ids(count: int) -> Any:
    import torch

    return torch.arange(count, dtype=torch.int64).unsqueeze(0)


def match_text_encoder_keys(state_dict: Mapping[str, Any], like: Iterable[str]) -> dict[str, Any]:
    """Shape a text encoder state dict like a given model's own state dict.

    Use it before ``model.load_state_dict(..., strict=True)``: transformers 4.30 wants
    ``text_model.`` prefixes and the ``position_ids`` buffer, 5.x wants neither (except in
    ``CLIPTextModelWithProjection``, which keeps the prefix).

    Args:
        state_dict: a text encoder state dict in either style.
        like: the target's keys, e.g. ``model.state_dict().keys()``.

    Returns:
        The tensors keyed like ``like``: prefix added or removed; ``position_ids`` dropped when
        the target has none, rebuilt as int64 ``0..n-1`` (n = position embedding rows) when the
        target has it and ``state_dict`` does not.
    """
    like = list(like)
    sd = normalize_diffusers_text_keys(state_dict)
    target = set(normalize_diffusers_text_keys(dict.fromkeys(like)))
    if POSITION_IDS in target and POSITION_IDS not in sd and _POSITION_EMBEDDING in sd:
        sd[POSITION_IDS] = _position_ids(sd[_POSITION_EMBEDDING].shape[0])
    elif POSITION_IDS not in target:
        sd.pop(POSITION_IDS, None)
    prefixed = any(key.startswith(TEXT_MODEL) for key in like)
    return sd if prefixed else _strip_text_model(sd)
