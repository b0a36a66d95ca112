"""The merge maths, one tensor at a time, exactly as the webui's Checkpoint Merger computes it.

webui 1.10.1 (``modules/extras.py:run_modelmerger``) uses plain torch expressions on the tensors
as loaded, so the result's dtype follows torch's promotion rules (fp16 A + fp32 B gives fp32;
a Python-float multiplier times an integer tensor gives float32) and its values follow torch's
rounding. These functions use the same expressions in the same order, so they give the same
bits. They take and return tensors and know nothing about files; called on ``device="meta"``
tensors they tell the output dtype and shape without touching data (the streaming writer needs
both before the first byte is written).

The one shortcut: multiplying a floating-point tensor by exactly 1 is skipped. IEEE ``x * 1`` is
``x`` for every value (signed zeros, infinities and NaNs included), so the bits cannot change; an
integer tensor is still multiplied, because ``1.0 * int_tensor`` is float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

WEIGHTED_SUM = "weighted_sum"
ADD_DIFFERENCE = "add_difference"
METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE)
# The webui's names for them (its recipe metadata and file names use these).
WEBUI_METHOD_NAMES = {WEIGHTED_SUM: "Weighted sum", ADD_DIFFERENCE: "Add difference"}
# A 9-channel inpainting or 8-channel instruct-pix2pix UNet input merged with a 4-channel one:
# only the first 4 input channels (the noisy latent) exist in both.
SHARED_CHANNELS = 4

Tensor = Any  # torch.Tensor, without importing torch at module load


def scaled(tensor: Tensor, factor: float) -> Tensor:
    """``factor * tensor``; a floating tensor times exactly 1 is returned as it is (same bits)."""
    if factor == 1 and tensor.is_floating_point():
        return tensor
    return factor * tensor


def weighted_sum(a: Tensor, b: Tensor, multiplier: float) -> Tensor:
    """``(1 - M) * A + M * B``.

    Args:
        a, b: tensors of one shape (any dtypes; torch promotion decides the result's).
        multiplier: M; 0 keeps A, 1 gives B.

    Returns:
        A new tensor of the promoted dtype.
    """
    return scaled(a, 1 - multiplier) + scaled(b, multiplier)


def difference(b: Tensor, c: Tensor) -> Tensor:
    """``B - C``: what training (or fine-tuning) added to C to make B."""
    return b - c


def no_difference(b: Tensor) -> Tensor:
    """The difference used when C lacks a key of B: zeros of B's shape and dtype."""
    import torch

    return torch.zeros_like(b)


def add_difference(a: Tensor, diff: Tensor, multiplier: float) -> Tensor:
    """``A + M * (B - C)`` with ``diff = B - C`` computed first (:func:`difference`)."""
    return a + scaled(diff, multiplier)


def to_half(tensor: Tensor, enabled: bool) -> Tensor:
    """float32 -> float16 when ``enabled``; every other dtype (bf16, fp64, ints) is kept."""
    import torch

    if enabled and tensor.dtype == torch.float32:
        return tensor.half()
    return tensor


def merge_shared_channels(a: Tensor, b: Tensor, combine: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Merge the first 4 input channels of an inpainting/pix2pix weight with a 4-channel one.

    Args:
        a: ``[out, 9 or 8, kh, kw]``, the inpainting / instruct-pix2pix UNet's ``conv_in``.
        b: ``[out, 4, kh, kw]``.
        combine: ``(a_part, b) -> merged``, e.g. a bound :func:`weighted_sum`.

    Returns:
        A copy of ``a`` (its dtype) whose channels ``0:4`` are ``combine(a[:, :4], b)`` cast to
        ``a``'s dtype (the webui assigns into A's tensor); the extra channels are A's.
    """
    out = a.clone()
    out[:, 0:SHARED_CHANNELS] = combine(a[:, 0:SHARED_CHANNELS], b)
    return out


def merge_key(
    method: str, a: Tensor, b: Tensor, c: Tensor | None, multiplier: float, *, channels: bool = False
) -> Tensor:
    """One merged key before the fp16 step.

    Args:
        method: ``"weighted_sum"`` or ``"add_difference"``.
        a, b: A's and B's tensors.
        c: C's tensor for add difference; None when C lacks the key (the difference is then
            zero, as the webui does). Ignored for weighted sum.
        multiplier: M.
        channels: A has 9/8 input channels and B 4 (see :func:`merge_shared_channels`).

    Raises:
        ValueError: unknown method.
    """
    if method == WEIGHTED_SUM:

        def combine(x: Tensor, y: Tensor) -> Tensor:
            return weighted_sum(x, y, multiplier)

    elif method == ADD_DIFFERENCE:
        diff = difference(b, c) if c is not None else no_difference(b)

        def combine(x: Tensor, _y: Tensor) -> Tensor:
            return add_difference(x, diff, multiplier)

    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return merge_shared_channels(a, b, combine) if channels else combine(a, b)


def shares_float_dtype(a: Tensor, b: Tensor, c: Tensor | None) -> bool:
    """All given tensors share a float dtype (then :func:`merge_key_in_place` matches :func:`merge_key`)."""
    same = a.dtype == b.dtype and (c is None or c.dtype == a.dtype)
    return same and a.is_floating_point()


def merge_key_in_place(method: str, a: Tensor, b: Tensor, c: Tensor | None, multiplier: float) -> Tensor:
    """:func:`merge_key` for same-shape tensors of one floating dtype, computed in ``a``'s memory.

    With one dtype, torch's out-of-place and in-place kernels compute every element the same way
    (``b - c`` and ``b.sub_(c)`` round identically), so the result has the same bits as
    :func:`merge_key`; only the fresh allocations are saved (3 per key, each page-faulted in).

    Args:
        method, multiplier: as :func:`merge_key`.
        a, b: overwritten (``a`` holds the result, ``b`` the scaled difference or weight).
        c: C's tensor or None (zero difference); read only.

    Returns:
        ``a``, now holding the merged values.

    Raises:
        ValueError: unknown method, or tensors that do not share a floating dtype.
    """
    if not shares_float_dtype(a, b, c):
        msg = "in-place merging needs tensors of one floating dtype; use merge_key"
        raise ValueError(msg)
    if method == WEIGHTED_SUM:
        _scale_in_place(a, 1 - multiplier)
        return a.add_(_scale_in_place(b, multiplier))
    if method == ADD_DIFFERENCE:
        diff = b.sub_(c) if c is not None else b.zero_()
        return a.add_(_scale_in_place(diff, multiplier))
    raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def _scale_in_place(tensor: Tensor, factor: float) -> Tensor:
    # Same rule as scaled(): times exactly 1 leaves a floating tensor's bits as they are.
    return tensor if factor == 1 else tensor.mul_(factor)
