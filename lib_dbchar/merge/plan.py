"""Which output tensors a merge writes, how each is made, and its dtype and shape -- before any data.

The rules are the webui 1.10.1 merger's (``run_modelmerger``):

* A key of A is *merged* when its name contains ``"model"`` and B has it; otherwise A's tensor
  passes through unchanged (not even halved). B's keys that A lacks are dropped.
* ``cond_stage_model.transformer.text_model.embeddings.position_ids`` is never merged.
* Add difference takes ``B - C``, or zeros where C lacks the key.
* A 9-channel (inpainting) or 8-channel (instruct-pix2pix) A with a 4-channel B merges the
  first 4 input channels; the reverse is refused.
* "Save as fp16" halves float32 results of merged keys only.
* A baked-in VAE replaces ``first_stage_model.<k>`` where A has it (its ``loss*`` and EMA
  counters are not used), halved like merged keys.
* Keys matching the discard regex (``re.search``) are left out of the file.

Where the webui would crash half-way or silently broadcast mismatched tensors into garbage, the
plan refuses up front, naming the file and the key: different architectures, a shape mismatch,
a 4-channel A with an inpainting B.

Each entry's dtype comes from running the real per-tensor function (:func:`tensor_for`) on
one-element stand-ins of the inputs' dtypes, so the header written first matches the data (the
writer checks every tensor against it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lib_dbchar.checkpoint.detect import ARCH_LABELS, CONV_IN, describe_checkpoint, detect_variant
from lib_dbchar.checkpoint.errors import CheckpointError
from lib_dbchar.checkpoint.reader import POSITION_IDS_KEY, CheckpointReader, repaired_position_ids
from lib_dbchar.checkpoint.stformat import dtype_name, itemsize, torch_dtype
from lib_dbchar.merge.methods import ADD_DIFFERENCE, merge_key, to_half

# The webui leaves this buffer out of the merge (averaging integer positions breaks them).
SKIP_ON_MERGE = frozenset({POSITION_IDS_KEY})
VAE_PREFIX = "first_stage_model."
# Parts of a VAE file that are not the VAE: its training loss and EMA counters.
_VAE_IGNORED = frozenset({"model_ema.decay", "model_ema.num_updates"})

COPY = "copy"  # A's tensor as it is
REPAIR_POSITION_IDS = "position_ids"  # A's float position_ids as int64 0..n-1
MERGE = "merge"
MERGE_CHANNELS = "merge_channels"  # inpainting / pix2pix A with a 4-channel B
BAKE_VAE = "vae"
RESULT_SUFFIX = {"inpainting": ".inpainting", "instruct-pix2pix": ".instruct-pix2pix"}


class IncompatibleModels(CheckpointError):
    """The inputs cannot be merged into a working model (architecture or shape mismatch)."""


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor.

    Attributes:
        key: its name in the output (A's normalised key).
        op: how it is made: ``"copy"``, ``"position_ids"``, ``"merge"``, ``"merge_channels"``, ``"vae"``.
        dtype: torch dtype name of the result.
        shape: the result's shape.
        tertiary: C has the key (add difference); False means B - C is taken as zero.
        source_key: the VAE file's key for ``"vae"``.
    """

    key: str
    op: str
    dtype: str
    shape: tuple[int, ...]
    tertiary: bool = False
    source_key: str | None = None

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count * itemsize(self.dtype)


@dataclass
class MergePlan:
    """Everything the merge will write, in file order, and what it noticed on the way.

    Attributes:
        tensors: the output tensors, ordered for alignment (wider dtypes first) then A's order.
        arch: the inputs' common architecture (``"sd1"``, ...).
        result_variant: ``"inpainting"`` / ``"instruct-pix2pix"`` when A's extra input channels
            were kept, else None.
        missing_in_secondary: A's ``model`` keys that B lacks (passed through unchanged).
        missing_in_tertiary: merged keys C lacks (merged with a zero difference).
        dropped_from_secondary: B's keys A lacks (not in the output).
        discarded: keys left out by the discard regex.
        vae_keys: output keys the baked-in VAE replaced.
    """

    tensors: list[TensorPlan]
    arch: str
    result_variant: str | None = None
    missing_in_secondary: list[str] = field(default_factory=list)
    missing_in_tertiary: list[str] = field(default_factory=list)
    dropped_from_secondary: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    vae_keys: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def count(self, *ops: str) -> int:
        return sum(1 for t in self.tensors if t.op in ops)


@dataclass(frozen=True)
class MergeInputs:
    """The open checkpoints of one merge: A, B, optional C and an optional VAE to bake in."""

    primary: CheckpointReader
    secondary: CheckpointReader
    tertiary: CheckpointReader | None = None
    vae: CheckpointReader | None = None


def tensor_for(
    entry: TensorPlan,
    a: Any,
    b: Any = None,
    c: Any = None,
    *,
    method: str,
    multiplier: float,
    fp16: bool,
) -> Any:
    """Make one output tensor from its inputs (real or ``meta`` tensors).

    Args:
        entry: what to make.
        a: A's tensor, or the VAE's tensor for ``"vae"``.
        b: B's tensor (merges).
        c: C's tensor, or None when C lacks the key or the method is weighted sum.
        method, multiplier, fp16: from the merge settings.

    Returns:
        The output tensor (may be ``a`` itself for ``"copy"``).
    """
    if entry.op == COPY:
        return a
    if entry.op == REPAIR_POSITION_IDS:
        return repaired_position_ids(a)
    if entry.op == BAKE_VAE:
        return to_half(a, fp16)
    merged = merge_key(method, a, b, c, multiplier, channels=entry.op == MERGE_CHANNELS)
    return to_half(merged, fp16)


def plan_merge(
    inputs: MergeInputs,
    *,
    method: str,
    multiplier: float,
    fp16: bool,
    discard: str = "",
    fix_position_ids: bool = True,
) -> MergePlan:
    """Decide every output tensor of a merge, checking the inputs fit together.

    Args:
        inputs: the open checkpoints.
        method: ``"weighted_sum"`` or ``"add_difference"`` (needs ``inputs.tertiary``).
        multiplier: M.
        fp16: halve float32 results of merged (and baked) keys.
        discard: a regex; output keys it finds (``re.search``) are left out. Empty: none.
        fix_position_ids: A's float ``position_ids`` are written as int64 ``0..n-1`` (the webui
            copies them as they are; the values only differ for files damaged by old merges).

    Returns:
        The :class:`MergePlan`.

    Raises:
        IncompatibleModels: different architectures, unknown files, mismatched shapes or an
            inpainting B with a normal A; the message names the files and the key.
        ValueError: add difference without C.
    """
    if method == ADD_DIFFERENCE and inputs.tertiary is None:
        msg = "Add difference needs a tertiary model (C): the model A was trained from."
        raise ValueError(msg)
    arch = _common_arch(inputs)
    plan = MergePlan(tensors=[], arch=arch)
    a, b = inputs.primary, inputs.secondary
    c = inputs.tertiary if method == ADD_DIFFERENCE else None
    entries: list[TensorPlan] = []
    for key in a:
        op = _op_for(key, a, b, fix_position_ids=fix_position_ids)
        if op in (MERGE, MERGE_CHANNELS):
            _check_merge_shapes(key, a, b, c, op)
            if op == MERGE_CHANNELS:
                plan.result_variant = detect_variant({CONV_IN: a.shape(CONV_IN)})[0]
            if c is not None and key not in c:
                plan.missing_in_tertiary.append(key)
        elif "model" in key and key not in SKIP_ON_MERGE:
            plan.missing_in_secondary.append(key)
        entries.append(TensorPlan(key, op, "", (), tertiary=c is not None and key in c))
    plan.dropped_from_secondary = [k for k in b if k not in a]
    if inputs.vae is not None:
        entries = _bake_vae(entries, inputs.vae, a, plan)
    if discard:
        pattern = re.compile(discard)
        plan.discarded = [e.key for e in entries if pattern.search(e.key)]
        entries = [e for e in entries if not pattern.search(e.key)]
    cache: dict[tuple, str] = {}
    typed = [_typed(e, inputs, cache, method=method, multiplier=multiplier, fp16=fp16) for e in entries]
    order = {key: i for i, key in enumerate(a)}
    # Wider dtypes first keeps every tensor aligned to its element size after the 8-aligned header.
    typed.sort(key=lambda e: (-itemsize(e.dtype), order[e.key]))
    plan.tensors = typed
    return plan


def _op_for(key: str, a: CheckpointReader, b: CheckpointReader, *, fix_position_ids: bool) -> str:
    if "model" in key and key in b and key not in SKIP_ON_MERGE:
        return MERGE_CHANNELS if a.shape(key) != b.shape(key) and key == CONV_IN else MERGE
    if key == POSITION_IDS_KEY and fix_position_ids and _is_float(a.dtype(key)):
        return REPAIR_POSITION_IDS
    return COPY


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _common_arch(inputs: MergeInputs) -> str:
    named = [("A (primary)", inputs.primary), ("B (secondary)", inputs.secondary)]
    if inputs.tertiary is not None:
        named.append(("C (tertiary)", inputs.tertiary))
    archs = []
    for role, reader in named:
        info = describe_checkpoint(reader.shapes())
        if info.arch == "unknown":
            raise IncompatibleModels(
                f"{role} {reader.path} is not a Stable Diffusion checkpoint dbchar recognises (no SD1, SD2 "
                "or SDXL UNet/text encoder keys); pick a full model, not a LoRA, VAE or embedding."
            )
        archs.append((role, reader, info.arch))
    first_role, first_reader, first_arch = archs[0]
    for role, reader, arch in archs[1:]:
        if arch != first_arch:
            raise IncompatibleModels(
                f"{first_role} {first_reader.path} is {ARCH_LABELS[first_arch]} but {role} {reader.path} is "
                f"{ARCH_LABELS[arch]}; merging them would give a broken model. Pick models of one family."
            )
    return first_arch


def _check_merge_shapes(
    key: str, a: CheckpointReader, b: CheckpointReader, c: CheckpointReader | None, op: str
) -> None:
    a_shape, b_shape = a.shape(key), b.shape(key)
    if op == MERGE_CHANNELS:
        _check_channels(key, a, b)
    elif a_shape != b_shape:
        raise IncompatibleModels(
            f"{key} is {list(a_shape)} in A ({a.path}) but {list(b_shape)} in B ({b.path}): the models "
            "have different architectures and cannot be merged."
        )
    if c is not None and key in c and c.shape(key) != b_shape:
        raise IncompatibleModels(
            f"{key} is {list(b_shape)} in B ({b.path}) but {list(c.shape(key))} in C ({c.path}): B - C "
            "needs models of one architecture (and C must be the kind of model B is, e.g. both inpainting)."
        )


def _check_channels(key: str, a: CheckpointReader, b: CheckpointReader) -> None:
    a_shape, b_shape = a.shape(key), b.shape(key)
    same_elsewhere = len(a_shape) == len(b_shape) == 4 and (a_shape[0], *a_shape[2:]) == (
        b_shape[0],
        *b_shape[2:],
    )
    a_kind = detect_variant({CONV_IN: a_shape})[0]
    b_kind = detect_variant({CONV_IN: b_shape})[0]
    if same_elsewhere and b_kind == "standard" and a_kind in RESULT_SUFFIX:
        return
    if same_elsewhere and a_kind == "standard" and b_kind in RESULT_SUFFIX:
        raise IncompatibleModels(
            f"B ({b.path}) is an {b_kind} model and A ({a.path}) is not: when merging an {b_kind} model "
            f"with a normal one, A must be the {b_kind} model. Swap A and B (and pick a matching C)."
        )
    raise IncompatibleModels(
        f"{key} is {list(a_shape)} in A ({a.path}) but {list(b_shape)} in B ({b.path}); only an inpainting "
        "(9-channel) or instruct-pix2pix (8-channel) A merges with a 4-channel B."
    )


def _bake_vae(
    entries: list[TensorPlan], vae: CheckpointReader, a: CheckpointReader, plan: MergePlan
) -> list[TensorPlan]:
    replacements: dict[str, str] = {}
    for vae_key in vae:
        if vae_key.startswith("loss") or vae_key in _VAE_IGNORED:
            continue
        key = VAE_PREFIX + vae_key
        if key not in a:
            continue
        if vae.shape(vae_key) != a.shape(key):
            raise IncompatibleModels(
                f"The VAE {vae.path} does not fit A ({a.path}): {vae_key} is {list(vae.shape(vae_key))} "
                f"there but {key} is {list(a.shape(key))} in A. Pick a VAE made for this model family."
            )
        replacements[key] = vae_key
    if not replacements:
        raise IncompatibleModels(
            f"No tensor of the VAE {vae.path} matches a first_stage_model key of A ({a.path}); it is not a "
            "VAE file for this model (VAE files hold encoder.*/decoder.* keys)."
        )
    plan.vae_keys = [e.key for e in entries if e.key in replacements]
    return [
        TensorPlan(e.key, BAKE_VAE, "", (), source_key=replacements[e.key]) if e.key in replacements else e
        for e in entries
    ]


def _typed(
    entry: TensorPlan,
    inputs: MergeInputs,
    cache: dict[tuple, str],
    *,
    method: str,
    multiplier: float,
    fp16: bool,
) -> TensorPlan:
    """Fill in the entry's dtype and shape without reading data.

    Every op keeps A's shape (merged shapes were checked equal; a channel merge writes into a copy
    of A), so the shape is A's. The dtype comes from running :func:`tensor_for` itself on stand-ins:
    one-element tensors of the inputs' dtypes (element-wise ops on equal shapes promote the same
    whatever the size). Stand-ins are real, tiny CPU tensors -- torch's ``meta`` device runs
    Python decompositions at ~1 ms per op, too slow for a thousand keys -- and results are
    cached per dtype signature. The writer checks dtype and shape of every tensor it gets.
    """
    sources = _sources(entry, inputs, _signature)
    signature = (entry.op, *sources)
    dtype = cache.get(signature)
    if dtype is None:
        stand_ins = [_stand_in(s) if s is not None else None for s in sources]
        result = tensor_for(entry, *stand_ins, method=method, multiplier=multiplier, fp16=fp16)
        dtype = cache[signature] = dtype_name(result.dtype)
    return TensorPlan(entry.key, entry.op, dtype, sources[0][1], entry.tertiary, entry.source_key)


def _signature(reader: CheckpointReader, key: str) -> tuple[str, tuple[int, ...]]:
    return reader.dtype(key), reader.shape(key)


def _stand_in(signature: tuple[str, tuple[int, ...]]) -> Any:
    """A one-element tensor of the dtype; 4-D inputs keep their channel count (channel merges)."""
    import torch

    dtype, shape = signature
    size = (1, shape[1], 1, 1) if len(shape) == 4 else (1,)
    return torch.ones(size, dtype=torch_dtype(dtype))


def _sources(entry: TensorPlan, inputs: MergeInputs, get: Any) -> tuple[Any, Any, Any]:
    """(a, b, c) for :func:`tensor_for`, fetched with ``get(reader, key)``."""
    if entry.op == BAKE_VAE:
        if inputs.vae is None or entry.source_key is None:
            raise ValueError(f"{entry.key}: a VAE entry needs the VAE checkpoint and its key")
        return get(inputs.vae, entry.source_key), None, None
    a = get(inputs.primary, entry.key)
    if entry.op not in (MERGE, MERGE_CHANNELS):
        return a, None, None
    b = get(inputs.secondary, entry.key)
    c = get(inputs.tertiary, entry.key) if entry.tertiary and inputs.tertiary is not None else None
    return a, b, c
