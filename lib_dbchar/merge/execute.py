"""Carry out a :class:`~lib_dbchar.merge.plan.MergePlan`: read, compute and write, tensor by tensor.

Memory: each input is read into a buffer that is reused for every tensor (sized once to the
largest tensor the plan needs from that input), and keys whose inputs share a floating dtype are
merged in place in those buffers. So the job allocates a handful of tensor-sized buffers once
instead of three fresh tensors per key; on machines where fresh memory is expensive (page
faults in a VM) that is most of the difference in speed.

Overlap: writing a tensor (a copy into the OS page cache, often the slowest step) runs on a
second thread while the next tensor is read and computed. The tensor being written lives in one
of two alternating buffer sets, so the next read never overwrites it. And before each tensor,
the OS is asked to start reading the next one's bytes from disk (``posix_fadvise``), so cold
reads overlap the work without holding anything in this process's memory.

Result: every tensor is the one :func:`~lib_dbchar.merge.plan.tensor_for` would compute; the
in-place path is only taken where it gives the same bits (see
:func:`~lib_dbchar.merge.methods.merge_key_in_place`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lib_dbchar.checkpoint.reader import CheckpointReader
from lib_dbchar.checkpoint.stformat import itemsize, torch_dtype
from lib_dbchar.jobs import JobContext
from lib_dbchar.merge.methods import merge_key_in_place, shares_float_dtype
from lib_dbchar.merge.plan import (
    BAKE_VAE,
    MERGE,
    MERGE_CHANNELS,
    MergeInputs,
    MergePlan,
    TensorPlan,
    tensor_for,
)
from lib_dbchar.merge.stream import StreamWriter

# Buffer roles. The ones holding what is being written alternate between two sets.
_A, _B, _C, _OUT = "a", "b", "c", "out"
_DOUBLED = (_A, _OUT)
# Smaller tensors are written on the calling thread.
_THREADED_WRITE_BYTES = 1 << 20


@dataclass(frozen=True)
class MergeMath:
    """The settings the per-tensor maths needs."""

    method: str
    multiplier: float
    fp16: bool


class _Buffers:
    """Reusable uint8 buffers per role, allocated on first use at the plan's largest size."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self._sizes = sizes
        self._buffers: dict[tuple[str, int], Any] = {}

    def get(self, role: str, parity: int) -> Any:
        import torch

        slot = (role, parity if role in _DOUBLED else 0)
        buffer = self._buffers.get(slot)
        if buffer is None:
            buffer = torch.empty(max(self._sizes.get(role, 0), 1), dtype=torch.uint8)
            self._buffers[slot] = buffer
        return buffer


def buffer_sizes(plan: MergePlan, inputs: MergeInputs) -> dict[str, int]:
    """The largest number of bytes each role needs over the whole plan."""
    sizes = {_A: 0, _B: 0, _C: 0, _OUT: 0}
    for entry in plan.tensors:
        if entry.op == BAKE_VAE and inputs.vae is not None and entry.source_key is not None:
            sizes[_A] = max(sizes[_A], inputs.vae.nbytes(entry.source_key))
        else:
            sizes[_A] = max(sizes[_A], inputs.primary.nbytes(entry.key))
        if entry.op in (MERGE, MERGE_CHANNELS):
            sizes[_B] = max(sizes[_B], inputs.secondary.nbytes(entry.key))
            if entry.tertiary and inputs.tertiary is not None:
                sizes[_C] = max(sizes[_C], inputs.tertiary.nbytes(entry.key))
        sizes[_OUT] = max(sizes[_OUT], entry.nbytes)
    return sizes


def write_plan(
    plan: MergePlan, inputs: MergeInputs, math: MergeMath, writer: StreamWriter, ctx: JobContext
) -> None:
    """Compute every tensor of ``plan`` and hand it to ``writer``, in plan order.

    Args:
        plan: from :func:`~lib_dbchar.merge.plan.plan_merge` on the same ``inputs``.
        inputs: the open checkpoints.
        math: method, multiplier, fp16.
        writer: declared with the plan's tensors.
        ctx: progress per tensor; stop requests between tensors.

    Raises:
        JobStopped: the user asked to stop (the pending write is finished first).
    """
    buffers = _Buffers(buffer_sizes(plan, inputs))
    total = len(plan.tensors)
    pending: Future[None] | None = None
    with (
        _one_compute_thread(),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbchar-merge-write") as pool,
    ):
        try:
            for index, entry in enumerate(plan.tensors):
                ctx.check_stop("merge")
                if index + 1 < total:
                    _prefetch(plan.tensors[index + 1], inputs)
                tensor = _compute(entry, inputs, math, buffers, parity=index % 2)
                if pending is not None:
                    pending.result()  # the other buffer set is free again once its write is done
                    pending = None
                if entry.nbytes < _THREADED_WRITE_BYTES:
                    writer.write(entry.key, tensor)  # a thread hand-off costs more than this write
                else:
                    pending = pool.submit(writer.write, entry.key, tensor)
                ctx.report(index + 1, total, f"Merging {index + 1}/{total}: {entry.key}")
        finally:
            if pending is not None:
                # Never leave a write running into a file that is about to be closed or removed.
                pending.result()


@contextlib.contextmanager
def _one_compute_thread() -> Iterator[None]:
    """Run torch's element-wise maths on one thread for the duration, then restore the setting.

    The maths is memory-bound and cheap next to the reads and writes; split over all cores it
    competes with the writer thread, and each op then waits for its slowest (descheduled) half.
    Measured on 2 cores: 1.4x faster with one thread.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute(
    entry: TensorPlan, inputs: MergeInputs, math: MergeMath, buffers: _Buffers, *, parity: int
) -> Any:
    a, b, c = _read(entry, inputs, buffers, parity)
    if entry.op == MERGE and shares_float_dtype(a, b, c):
        merged = merge_key_in_place(math.method, a, b, c, math.multiplier)
        if math.fp16 and entry.dtype == "float16" and merged.dtype != torch_dtype("float16"):
            return _halved(merged, buffers.get(_OUT, parity), entry)
        return merged
    return tensor_for(entry, a, b, c, method=math.method, multiplier=math.multiplier, fp16=math.fp16)


def _read(entry: TensorPlan, inputs: MergeInputs, buffers: _Buffers, parity: int) -> tuple[Any, Any, Any]:
    if entry.op == BAKE_VAE:
        return _load(inputs.vae, entry.source_key, buffers.get(_A, parity)), None, None
    a = _load(inputs.primary, entry.key, buffers.get(_A, parity))
    if entry.op not in (MERGE, MERGE_CHANNELS):
        return a, None, None
    b = _load(inputs.secondary, entry.key, buffers.get(_B, parity))
    c = None
    if entry.tertiary and inputs.tertiary is not None:
        c = _load(inputs.tertiary, entry.key, buffers.get(_C, parity))
    return a, b, c


def _prefetch(entry: TensorPlan, inputs: MergeInputs) -> None:
    """Start the OS reading the next tensor's inputs while this one is computed and written."""
    if entry.op == BAKE_VAE:
        if inputs.vae is not None and entry.source_key is not None:
            inputs.vae.prefetch(entry.source_key)
        return
    inputs.primary.prefetch(entry.key)
    if entry.op in (MERGE, MERGE_CHANNELS):
        inputs.secondary.prefetch(entry.key)
        if entry.tertiary and inputs.tertiary is not None:
            inputs.tertiary.prefetch(entry.key)


def _load(reader: CheckpointReader | None, key: str | None, buffer: Any) -> Any:
    if reader is None or key is None:
        msg = "the plan names an input that is not open"
        raise ValueError(msg)
    return reader.load_into(key, buffer)


def _halved(tensor: Any, buffer: Any, entry: TensorPlan) -> Any:
    """float32 -> float16 into a reused buffer (``copy_`` rounds exactly as ``.half()`` does)."""
    nbytes = tensor.numel() * itemsize("float16")
    out = buffer[:nbytes].view(torch_dtype("float16")).reshape(entry.shape) if nbytes else tensor.half()
    return out.copy_(tensor)
