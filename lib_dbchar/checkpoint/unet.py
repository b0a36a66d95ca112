"""UNet key map: diffusers ``UNet2DConditionModel`` <-> ldm ``model.diffusion_model.*``.

ldm numbers its blocks in two flat lists; diffusers nests them. For SD1/SD2 (4 levels, 2 resnets
per level going down, 3 coming up):

* ``input_blocks.0.0`` is ``conv_in``. Then each down level ``i`` contributes one input block per
  resnet (``.0`` = the resnet, ``.1`` = its attention when the level has one) and, except the last
  level, one more block holding only the downsampler (``.0.op``).
* ``middle_block`` is resnet (``.0``), attention (``.1``), resnet (``.2``).
* ``output_blocks`` run through the up levels in diffusers order, one block per resnet (3 per
  level); the upsampler sits in the level's last block after the resnet (``.1``) or after the
  attention (``.2``).
* ``time_embed.0/.2`` are ``time_embedding.linear_1/2``; ``out.0``/``out.2`` are the final norm/conv.

Attention (transformer) blocks use the same tensor names in both layouts; only resnets rename
their insides. SDXL needs another :class:`UNetLayout` (3 levels, attention pattern, ``label_emb``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lib_dbchar.checkpoint.tables import LEAF, Inner, KeyMap, Part, wb

LDM_UNET_PREFIX = "model.diffusion_model."


RESNET = Inner(
    "UNet resnet",
    params=wb("norm1", "conv1", "time_emb_proj", "norm2", "conv2"),
    optional=wb("conv_shortcut"),
    # ldm wraps each step in an nn.Sequential: in_layers = (norm, SiLU, conv), emb_layers =
    # (SiLU, linear), out_layers = (norm, SiLU, dropout, conv); the numbers skip parameter-free steps.
    renames=(
        ("norm1", "in_layers.0"),
        ("conv1", "in_layers.2"),
        ("time_emb_proj", "emb_layers.1"),
        ("norm2", "out_layers.0"),
        ("conv2", "out_layers.3"),
        ("conv_shortcut", "skip_connection"),
    ),
)

_BLOCK = "transformer_blocks.{n}."
TRANSFORMER = Inner(
    "UNet attention block",
    params=wb("norm", "proj_in", "proj_out")
    + tuple(
        _BLOCK + name
        for name in (
            *wb("norm1", "norm2", "norm3", "attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"),
            # q/k/v projections have no bias in SD attention.
            "attn1.to_q.weight",
            "attn1.to_k.weight",
            "attn1.to_v.weight",
            "attn2.to_q.weight",
            "attn2.to_k.weight",
            "attn2.to_v.weight",
        )
    ),
)

DOWNSAMPLER = Inner("downsampler", params=wb("conv"), renames=(("conv", "op"),))
UPSAMPLER = Inner("upsampler", params=wb("conv"))
TIME_EMBEDDING = Inner(
    "time embedding", params=wb("linear_1", "linear_2"), renames=(("linear_1", "0"), ("linear_2", "2"))
)


@dataclass(frozen=True)
class UNetLayout:
    """The block structure a key map is generated from.

    Args:
        down_attention: one flag per down level: does it have attention blocks?
        up_attention: one flag per up level (diffusers order, deepest first).
        layers_per_block: resnets per down level (up levels have one more).
        mid_attention: does the middle block have an attention block between its resnets?
    """

    down_attention: tuple[bool, ...]
    up_attention: tuple[bool, ...]
    layers_per_block: int = 2
    mid_attention: bool = True


# SD1.x and SD2.x share the block structure; they differ in widths and in proj_in/proj_out
# being 1x1 convs (SD1) or Linear layers (SD2), which both layouts store the same way.
SD_UNET = UNetLayout(down_attention=(True, True, True, False), up_attention=(False, True, True, True))


def unet_parts(layout: UNetLayout) -> list[Part]:
    """Every module of a UNet with ``layout``, as :class:`Part` entries."""
    parts = [
        Part("conv_in", "input_blocks.0.0", LEAF),
        Part("time_embedding", "time_embed", TIME_EMBEDDING),
        Part("conv_norm_out", "out.0", LEAF),
        Part("conv_out", "out.2", LEAF),
    ]
    parts += _down_parts(layout) + _mid_parts(layout) + _up_parts(layout)
    return parts


def _down_parts(layout: UNetLayout) -> list[Part]:
    parts: list[Part] = []
    block = 0  # input_blocks.0 is conv_in
    last = len(layout.down_attention) - 1
    for level, has_attention in enumerate(layout.down_attention):
        for j in range(layout.layers_per_block):
            block += 1
            parts.append(Part(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{block}.0", RESNET))
            if has_attention:
                parts.append(
                    Part(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{block}.1", TRANSFORMER)
                )
        if level < last:
            block += 1
            parts.append(Part(f"down_blocks.{level}.downsamplers.0", f"input_blocks.{block}.0", DOWNSAMPLER))
    return parts


def _mid_parts(layout: UNetLayout) -> list[Part]:
    if layout.mid_attention:
        return [
            Part("mid_block.resnets.0", "middle_block.0", RESNET),
            Part("mid_block.attentions.0", "middle_block.1", TRANSFORMER),
            Part("mid_block.resnets.1", "middle_block.2", RESNET),
        ]
    return [
        Part("mid_block.resnets.0", "middle_block.0", RESNET),
        Part("mid_block.resnets.1", "middle_block.1", RESNET),
    ]


def _up_parts(layout: UNetLayout) -> list[Part]:
    parts: list[Part] = []
    per_level = layout.layers_per_block + 1
    last = len(layout.up_attention) - 1
    for level, has_attention in enumerate(layout.up_attention):
        for j in range(per_level):
            block = level * per_level + j
            parts.append(Part(f"up_blocks.{level}.resnets.{j}", f"output_blocks.{block}.0", RESNET))
            if has_attention:
                parts.append(
                    Part(f"up_blocks.{level}.attentions.{j}", f"output_blocks.{block}.1", TRANSFORMER)
                )
        if level < last:
            slot = 2 if has_attention else 1
            parts.append(Part(f"up_blocks.{level}.upsamplers.0", f"output_blocks.{block}.{slot}", UPSAMPLER))
    return parts


def unet_keymap(layout: UNetLayout = SD_UNET) -> KeyMap:
    """The UNet :class:`KeyMap` for ``layout`` (ldm prefix ``model.diffusion_model.``)."""
    return KeyMap("UNet", tuple(unet_parts(layout)), LDM_UNET_PREFIX)
