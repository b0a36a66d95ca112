""" "Transfer as LoRA": what training changed (trained - source), as a small LoRA file.

For each layer a LoRA can patch, the change ``D = W_trained - W_source`` is factored by SVD and
cut to rank r: ``D ~ up @ down`` with ``up = U_r sqrt(S_r)`` and ``down = sqrt(S_r) V_r^T``
(the singular values split evenly keeps both factors in fp16's range). ``alpha = r``, so the
webui applies ``up @ down`` at weight 1. Applied to another model of the family, the LoRA
approximates ``other + (trained - source)`` -- the add-difference merge, in tens of MB.

File layout (kohya's, which the webui's built-in Lora extension and diffusers read):
``lora_unet_<diffusers module path with _>`` and ``lora_te_text_model_encoder_layers_<n>_<...>``,
each with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``. Linear layers give 2-D
factors; convs give ``down [r, in, kh, kw]`` and ``up [out, r, 1, 1]``. SD2's fused q/k/v text
projection is split into ``self_attn_{q,k,v}_proj``, the names the webui maps back onto it.

Which layers: the UNet's attention blocks (``proj_in``/``proj_out``, q/k/v/out, feed-forward)
and the text encoder's attention and MLP Linears -- a plain LoRA. With ``conv_rank > 0`` also the
resnets, down- and upsamplers (3x3 convs at ``conv_rank``; a "LoCon"). Layers whose relative
change ``|D| / |W_source|`` is below ``min_change`` are left out: a text encoder that was not
trained differs only by save rounding.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lib_dbchar.checkpoint.detect import ARCH_LABELS, describe_checkpoint
from lib_dbchar.checkpoint.errors import UnsupportedCheckpoint
from lib_dbchar.checkpoint.io import save_single_file
from lib_dbchar.checkpoint.kinds import KINDS
from lib_dbchar.checkpoint.reader import CheckpointReader, open_checkpoint
from lib_dbchar.checkpoint.tables import DIFFUSERS, Inner, rename_local
from lib_dbchar.checkpoint.unet import (
    DOWNSAMPLER,
    LDM_UNET_PREFIX,
    RESNET,
    SD_UNET,
    TRANSFORMER,
    UPSAMPLER,
    unet_parts,
)
from lib_dbchar.config import setting
from lib_dbchar.jobs import JobContext
from lib_dbchar.merge.plan import IncompatibleModels
from lib_dbchar.version import __version__

SUPPORTED_ARCHS = ("sd1", "sd2")
_WEIGHT = ".weight"
_CLIP_LAYER = re.compile(
    r"^cond_stage_model\.transformer\.text_model\.encoder\.layers\.(\d+)\."
    r"(self_attn\.[qkv]_proj|self_attn\.out_proj|mlp\.fc1|mlp\.fc2)\.weight$"
)
_OPENCLIP_LAYER = re.compile(
    r"^cond_stage_model\.model\.transformer\.resblocks\.(\d+)\.(attn\.in_proj_weight|attn\.out_proj\.weight|"
    r"mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)
_OPENCLIP_NAMES = {
    "attn.out_proj.weight": "self_attn_out_proj",
    "mlp.c_fc.weight": "mlp_fc1",
    "mlp.c_proj.weight": "mlp_fc2",
}
_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class LoraConfig:
    """How to extract the LoRA."""

    rank: int = setting(
        32,
        label="Rank",
        help="Higher keeps more of the change (bigger file). 32-64 holds most of a Dreambooth character.",
        minimum=1,
        maximum=1024,
    )
    conv_rank: int = setting(
        0,
        label="Conv rank",
        help="0: attention and text layers only (a plain LoRA). Above 0: also the UNet's convolutions "
        "at this rank (LoCon), closer to the merge.",
        minimum=0,
        maximum=1024,
    )
    text_encoder: bool = setting(True, label="Include the text encoder", help="If it was trained.")
    min_change: float = setting(
        5e-4,
        label="Skip layers changed less than",
        help="Relative change |trained - source| / |source| below which a layer is left out "
        "(save rounding alone gives ~1e-4).",
        minimum=0.0,
        maximum=1.0,
    )
    fp16: bool = setting(True, label="Save as float16", help="Half the size; the webui loads either.")

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"LoraConfig.rank: {self.rank!r} must be at least 1")
        if int(self.conv_rank) < 0:
            raise ValueError(f"LoraConfig.conv_rank: {self.conv_rank!r} must be 0 or more")
        if not 0.0 <= float(self.min_change) <= 1.0:
            raise ValueError(f"LoraConfig.min_change: {self.min_change!r} is outside 0..1")


@dataclass(frozen=True)
class LoraTarget:
    """One layer to extract.

    Attributes:
        name: the LoRA module name (``lora_unet_...`` / ``lora_te_...``).
        key: the ldm key of the weight in the checkpoints.
        rows: ``(start, stop)`` rows of ``key`` for a split fused q/k/v weight, else None.
        conv: a spatial (kh, kw > 1) conv, extracted at ``conv_rank``.
    """

    name: str
    key: str
    rows: tuple[int, int] | None = None
    conv: bool = False


@dataclass(frozen=True)
class LoraResult:
    """What the extraction wrote.

    Attributes:
        output: the LoRA file.
        arch: ``"sd1"`` or ``"sd2"``.
        unet_modules, text_modules: layers in the file.
        unchanged: layers left out because training did not change them (below ``min_change``).
        retained: fraction of the total change's energy (squared Frobenius norm) the file keeps,
            0..1; 1 means the LoRA reproduces the change exactly.
        bytes_written, seconds: size and wall time.
        recipe: stored in the file as ``dbchar_lora_recipe``.
    """

    output: str
    arch: str
    unet_modules: int
    text_modules: int
    unchanged: int
    retained: float
    bytes_written: int
    seconds: float
    recipe: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lora_targets(reader: CheckpointReader, arch: str, *, conv: bool, text_encoder: bool) -> list[LoraTarget]:
    """Every layer of a SD1/SD2 checkpoint a LoRA of this config patches, in file order.

    Args:
        reader: the source (or trained) checkpoint.
        arch: ``"sd1"`` or ``"sd2"``.
        conv: include resnets and samplers (LoCon).
        text_encoder: include the text encoder.
    """
    targets = _unet_targets(reader, conv=conv)
    if text_encoder:
        targets += _text_targets(reader, arch)
    return targets


def _unet_targets(reader: CheckpointReader, *, conv: bool) -> list[LoraTarget]:
    wanted: tuple[Inner, ...] = (TRANSFORMER, RESNET, DOWNSAMPLER, UPSAMPLER) if conv else (TRANSFORMER,)
    parts = {part.ldm: part for part in unet_parts(SD_UNET) if part.inner in wanted}
    targets = []
    for key in reader:
        if not key.startswith(LDM_UNET_PREFIX) or not key.endswith(_WEIGHT) or len(reader.shape(key)) < 2:
            continue  # norms and biases are 1-D: a LoRA does not patch them
        local = key[len(LDM_UNET_PREFIX) :]
        part = _part_of(local, parts)
        if part is None:
            continue
        inside = local[len(part.ldm) + 1 :]
        module = f"{part.diffusers}.{rename_local(part.inner, inside, to=DIFFUSERS)}".removesuffix(_WEIGHT)
        shape = reader.shape(key)
        spatial = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
        targets.append(LoraTarget("lora_unet_" + module.replace(".", "_"), key, conv=spatial))
    return targets


def _part_of(local: str, parts: dict[str, Any]) -> Any:
    pieces = local.split(".")
    for cut in range(len(pieces) - 1, 0, -1):
        part = parts.get(".".join(pieces[:cut]))
        if part is not None:
            return part
    return None


def _text_targets(reader: CheckpointReader, arch: str) -> list[LoraTarget]:
    limit = KINDS[arch].max_text_layers
    targets = []
    for key in reader:
        if arch == "sd1" and (match := _CLIP_LAYER.match(key)):
            layer, inner = match.groups()
            targets.append(
                LoraTarget(f"lora_te_text_model_encoder_layers_{layer}_{inner.replace('.', '_')}", key)
            )
        elif arch == "sd2" and (match := _OPENCLIP_LAYER.match(key)):
            layer, inner = int(match.group(1)), match.group(2)
            if limit is not None and layer >= limit:
                continue  # SD2 conditions on the penultimate layer: the last one is never used
            prefix = f"lora_te_text_model_encoder_layers_{layer}_"
            if inner == "attn.in_proj_weight":
                width = reader.shape(key)[0] // 3
                targets += [
                    LoraTarget(f"{prefix}self_attn_{p}_proj", key, rows=(i * width, (i + 1) * width))
                    for i, p in enumerate(_QKV)
                ]
            else:
                targets.append(LoraTarget(prefix + _OPENCLIP_NAMES[inner], key))
    return targets


def low_rank(delta: Any, rank: int) -> tuple[Any, Any, float]:
    """Best rank-``rank`` factors of a weight change (truncated SVD).

    Args:
        delta: float32 ``[out, in]`` or ``[out, in, kh, kw]``.
        rank: wanted rank; capped at what the shape allows.

    Returns:
        ``(up, down, kept)``: ``up [out, r]`` (``[out, r, 1, 1]`` for convs), ``down [r, in]``
        (``[r, in, kh, kw]``), float32, with ``up @ down`` the best rank-r approximation of
        ``delta``; ``kept`` is the squared norm that approximation keeps.
    """
    import torch

    matrix = delta.reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = (u[:, :r] * root).contiguous()
    down = (root[:, None] * vh[:r]).contiguous()
    kept = float((s[:r].double() ** 2).sum())
    if delta.ndim == 4:
        up = up.reshape(up.shape[0], r, 1, 1)
        down = down.reshape(r, *delta.shape[1:])
    return up, down, kept


def run_extract_lora(
    config: LoraConfig,
    trained: Path | str,
    source: Path | str,
    out: Path | str,
    *,
    overwrite: bool = False,
    ctx: JobContext | None = None,
) -> LoraResult:
    """Write (trained - source) as a LoRA file.

    Args:
        config: ranks and options.
        trained: the Dreambooth checkpoint.
        source: the checkpoint it was trained from.
        out: the LoRA file (``.safetensors``), e.g. in the webui's ``models/Lora``.
        overwrite: replace an existing ``out`` atomically.
        ctx: progress per layer; stop requests between layers (nothing is written then).

    Returns:
        The :class:`LoraResult`.

    Raises:
        UnsupportedCheckpoint: not SD1/SD2 (SDXL LoRA extraction is not supported yet).
        IncompatibleModels: the two files are of different architectures or shapes.
        TargetExists, ValueError: from saving (existing file, wrong suffix).
        JobStopped: the user stopped it.
    """
    started = time.perf_counter()
    ctx = ctx or JobContext()
    with open_checkpoint(trained) as new, open_checkpoint(source) as old:
        arch = _common_arch(new, old)
        targets = lora_targets(old, arch, conv=config.conv_rank > 0, text_encoder=config.text_encoder)
        tensors, stats = _extract(config, targets, new, old, ctx)
    recipe = {
        "tool": "dbchar",
        "version": __version__,
        "trained": Path(trained).name,
        "source": Path(source).name,
        "rank": config.rank,
        "conv_rank": config.conv_rank,
        "min_change": config.min_change,
    }
    path = save_single_file(
        tensors, out, _lora_metadata(config, arch, recipe), fp16=config.fp16, overwrite=overwrite
    )
    return LoraResult(
        output=str(path),
        arch=arch,
        unet_modules=stats["unet"],
        text_modules=stats["text"],
        unchanged=stats["unchanged"],
        retained=stats["kept"] / stats["total"] if stats["total"] > 0 else 1.0,
        bytes_written=path.stat().st_size,
        seconds=round(time.perf_counter() - started, 3),
        recipe=recipe,
    )


def _common_arch(new: CheckpointReader, old: CheckpointReader) -> str:
    arch_new = describe_checkpoint(new.shapes()).arch
    arch_old = describe_checkpoint(old.shapes()).arch
    if arch_new != arch_old:
        raise IncompatibleModels(
            f"The trained model {new.path} is {ARCH_LABELS[arch_new]} but the source {old.path} is "
            f"{ARCH_LABELS[arch_old]}; pick the model the training started from."
        )
    if arch_new not in SUPPORTED_ARCHS:
        raise UnsupportedCheckpoint(
            f"{new.path} is {ARCH_LABELS[arch_new]}; LoRA transfer supports SD1.x and SD2.x. "
            "Use a merge instead."
        )
    return arch_new


def _extract(
    config: LoraConfig,
    targets: list[LoraTarget],
    new: CheckpointReader,
    old: CheckpointReader,
    ctx: JobContext,
) -> tuple[dict[str, Any], dict[str, float]]:
    import torch

    tensors: dict[str, Any] = {}
    stats = {"unet": 0, "text": 0, "unchanged": 0, "kept": 0.0, "total": 0.0}
    for done, target in enumerate(targets):
        ctx.check_stop("LoRA extraction")
        delta, base_norm = _delta(target, new, old)
        total = float((delta.double() ** 2).sum())
        stats["total"] += total
        if total == 0.0 or total**0.5 < config.min_change * base_norm:
            stats["unchanged"] += 1
        else:
            rank = config.conv_rank if target.conv else config.rank
            up, down, kept = low_rank(delta, rank)
            stats["kept"] += kept
            tensors[f"{target.name}.lora_down.weight"] = down
            tensors[f"{target.name}.lora_up.weight"] = up
            tensors[f"{target.name}.alpha"] = torch.tensor(float(down.shape[0]))
            stats["unet" if target.name.startswith("lora_unet_") else "text"] += 1
        ctx.report(done + 1, len(targets), f"LoRA {done + 1}/{len(targets)}: {target.name}")
    return tensors, stats


def _delta(target: LoraTarget, new: CheckpointReader, old: CheckpointReader) -> tuple[Any, float]:
    """(trained - source) of one target in float32, and the source weight's norm."""
    if target.key not in new or new.shape(target.key) != old.shape(target.key):
        found = list(new.shape(target.key)) if target.key in new else "missing"
        raise IncompatibleModels(
            f"{target.key} is {list(old.shape(target.key))} in the source {old.path} but {found} in the "
            f"trained model {new.path}; they are not the same architecture."
        )
    a = new.load(target.key).float()
    b = old.load(target.key).float()
    if target.rows is not None:
        a, b = a[target.rows[0] : target.rows[1]], b[target.rows[0] : target.rows[1]]
    return a - b, float(b.double().norm())


def _lora_metadata(config: LoraConfig, arch: str, recipe: dict[str, Any]) -> dict[str, str]:
    """kohya-style ``ss_*`` fields: the webui reads ``ss_v2``/``ss_base_model_version`` to file the
    LoRA under SD1 or SD2 and shows the dims."""
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(config.rank),
        "ss_v2": str(arch == "sd2"),
        "ss_base_model_version": "sd_v2" if arch == "sd2" else "sd_v1",
        "dbchar_lora_recipe": json.dumps(recipe),
    }
    if config.conv_rank > 0:
        metadata["ss_network_args"] = json.dumps(
            {"conv_dim": str(config.conv_rank), "conv_alpha": str(config.conv_rank)}
        )
    return metadata
