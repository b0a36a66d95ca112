"""VAE key map: diffusers ``AutoencoderKL`` <-> ldm ``first_stage_model.*``.

* Levels: ldm ``encoder.down.{i}.block.{j}`` / ``.downsample`` are diffusers
  ``encoder.down_blocks.{i}.resnets.{j}`` / ``.downsamplers.0``, same order.
* The decoder's levels are numbered in *reverse*: ldm counts ``decoder.up.{i}`` from the
  highest resolution (it builds them in reverse and prepends), diffusers counts
  ``decoder.up_blocks.{i}`` in execution order, deepest first. So ``up_blocks.0 == up.3``.
* The middle is ``mid.block_1``, ``mid.attn_1``, ``mid.block_2`` in ldm.
* The attention's q/k/v/out projections are 1x1 convs (4-D weights) in ldm and ``Linear`` layers
  (2-D) in diffusers; its GroupNorm is ``norm`` vs ``group_norm``.
* Resnet shortcuts are ``nin_shortcut`` vs ``conv_shortcut``; final norms ``norm_out`` vs
  ``conv_norm_out``.
"""

from __future__ import annotations

from lib_dbchar.checkpoint.tables import LEAF, Inner, KeyMap, Part, wb

LDM_VAE_PREFIX = "first_stage_model."

RESNET = Inner(
    "VAE resnet",
    params=wb("norm1", "conv1", "norm2", "conv2"),
    optional=wb("conv_shortcut"),
    renames=(("conv_shortcut", "nin_shortcut"),),
)

ATTENTION = Inner(
    "VAE attention",
    params=wb("group_norm", "to_q", "to_k", "to_v", "to_out.0"),
    renames=(("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")),
    linear_as_conv=frozenset({"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"}),
)

# Down- and upsamplers hold one conv, named "conv" in both layouts (the UNet's downsampler differs).
SAMPLER = Inner("VAE resampler", params=wb("conv"))

# SD1/SD2 VAEs: 4 levels, 2 resnets per encoder level, 3 per decoder level.
SD_VAE_LEVELS = 4
SD_VAE_LAYERS = 2


def vae_parts(levels: int = SD_VAE_LEVELS, layers_per_block: int = SD_VAE_LAYERS) -> list[Part]:
    """Every module of an SD VAE with ``levels`` resolution levels, as :class:`Part` entries."""
    parts = [
        Part("quant_conv", "quant_conv", LEAF),
        Part("post_quant_conv", "post_quant_conv", LEAF),
    ]
    for coder in ("encoder", "decoder"):
        parts += [
            Part(f"{coder}.conv_in", f"{coder}.conv_in", LEAF),
            Part(f"{coder}.conv_norm_out", f"{coder}.norm_out", LEAF),
            Part(f"{coder}.conv_out", f"{coder}.conv_out", LEAF),
            Part(f"{coder}.mid_block.resnets.0", f"{coder}.mid.block_1", RESNET),
            Part(f"{coder}.mid_block.attentions.0", f"{coder}.mid.attn_1", ATTENTION),
            Part(f"{coder}.mid_block.resnets.1", f"{coder}.mid.block_2", RESNET),
        ]
    for i in range(levels):
        for j in range(layers_per_block):
            parts.append(Part(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", RESNET))
        if i < levels - 1:
            parts.append(
                Part(f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample", SAMPLER)
            )
    for i in range(levels):
        ldm_level = levels - 1 - i  # the reversal described in the module docstring
        for j in range(layers_per_block + 1):
            parts.append(
                Part(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{ldm_level}.block.{j}", RESNET)
            )
        if i < levels - 1:
            parts.append(
                Part(f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{ldm_level}.upsample", SAMPLER)
            )
    return parts


def vae_keymap() -> KeyMap:
    """The SD1/SD2 VAE :class:`KeyMap` (ldm prefix ``first_stage_model.``)."""
    return KeyMap("VAE", tuple(vae_parts()), LDM_VAE_PREFIX)
