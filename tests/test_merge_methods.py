"""The per-tensor merge maths: literal expected values, and invariants checked with hypothesis."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib_dbchar.merge.methods import (
    add_difference,
    difference,
    merge_key,
    merge_key_in_place,
    merge_shared_channels,
    scaled,
    to_half,
    weighted_sum,
)
from lib_dbchar.merge.plan import MERGE, MERGE_CHANNELS, TensorPlan, _stand_in, tensor_for

FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPES = [*FLOATS, torch.int32, torch.int64]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so NaN payloads and signed zeros count too."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def test_literal_values():
    a = torch.tensor([1.0, 2.0, -4.0])
    b = torch.tensor([3.0, 0.0, 4.0])
    c = torch.tensor([1.0, 1.0, 1.0])
    assert torch.equal(weighted_sum(a, b, 0.25), torch.tensor([1.5, 1.5, -2.0]))
    assert torch.equal(add_difference(a, difference(b, c), 0.5), torch.tensor([2.0, 1.5, -2.5]))
    assert torch.equal(merge_key("add_difference", a, b, None, 1.0), a)  # C lacks the key: zero difference
    assert torch.equal(to_half(torch.tensor([0.1]), True), torch.tensor([0.1]).half())
    for dtype in (torch.bfloat16, torch.float64, torch.int64):
        assert to_half(torch.ones(1, dtype=dtype), True).dtype == dtype  # only float32 is halved
    with pytest.raises(ValueError, match="method must be one of"):
        merge_key("average", a, b, c, 0.5)


def test_dtypes_follow_torch_promotion():
    half, single = torch.ones(2, dtype=torch.float16), torch.ones(2)
    assert weighted_sum(half, single, 0.5).dtype == torch.float32
    assert add_difference(half, half, 0.5).dtype == torch.float16
    # The webui's multiplier is a Python float: times an int tensor that is float32.
    count = torch.tensor([4000], dtype=torch.int32)
    assert merge_key("add_difference", count, count, count, 1.0).dtype == torch.float32
    assert weighted_sum(count, count, 0.5).dtype == torch.float32


def test_channel_merge_keeps_a_extra_channels_and_dtype():
    a = torch.arange(2 * 9 * 1 * 1, dtype=torch.float16).reshape(2, 9, 1, 1)
    b = torch.full((2, 4, 1, 1), 100.0)
    out = merge_shared_channels(a, b, lambda x, y: weighted_sum(x, y, 1.0))
    assert (
        out.dtype == torch.float16 and torch.equal(out[:, :4], b.half()) and torch.equal(out[:, 4:], a[:, 4:])
    )
    assert not torch.equal(a[:, :4], out[:, :4])  # a itself untouched


values = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False, width=16),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 65504.0, 1e-7]),
)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(FLOATS),
    method=st.sampled_from(["weighted_sum", "add_difference"]),
    multiplier=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1)),
    with_c=st.booleans(),
    data=st.lists(st.tuples(values, values, values), min_size=1, max_size=40),
)
def test_in_place_merge_has_the_same_bits(dtype, method, multiplier, with_c, data):
    a, b, c = (torch.tensor([row[i] for row in data], dtype=torch.float32).to(dtype) for i in range(3))
    expected = merge_key(method, a, b, c if with_c else None, multiplier)
    got = merge_key_in_place(method, a.clone(), b.clone(), c if with_c else None, multiplier)
    assert got.dtype == expected.dtype
    assert torch.equal(bits(got), bits(expected))


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(FLOATS), data=st.lists(values, min_size=1, max_size=20))
def test_times_one_shortcut_keeps_the_bits(dtype, data):
    x = torch.tensor(data, dtype=torch.float32).to(dtype)
    assert torch.equal(bits(scaled(x, 1.0)), bits(1.0 * x))


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(FLOATS), data=st.lists(st.floats(-1e3, 1e3, width=16), min_size=1, max_size=20))
def test_weighted_sum_at_zero_returns_a_at_one_returns_b(dtype, data):
    a = torch.tensor(data, dtype=torch.float32).to(dtype)
    b = torch.flip(a, [0]) * 2
    assert torch.equal(weighted_sum(a, b, 0.0), a + 0.0)  # + 0.0: -0 becomes +0, as in torch
    assert torch.equal(weighted_sum(a, b, 1.0), b)


@settings(max_examples=100, deadline=None)
@given(
    a=st.sampled_from(DTYPES),
    b=st.sampled_from(DTYPES),
    c=st.sampled_from([*DTYPES, None]),
    method=st.sampled_from(["weighted_sum", "add_difference"]),
    fp16=st.booleans(),
    channels=st.booleans(),
)
def test_planned_dtype_is_the_real_dtype(a, b, c, method, fp16, channels):
    """The plan types entries from one-element stand-ins; a full-size tensor must come out the same."""
    shape_a, shape_b = ((8, 9, 3, 3), (8, 4, 3, 3)) if channels else ((5, 6), (5, 6))
    op = MERGE_CHANNELS if channels else MERGE
    entry = TensorPlan("k", op, "", shape_a, tertiary=c is not None)
    real = [torch.ones(shape_a, dtype=a), torch.ones(shape_b, dtype=b)]
    real.append(torch.ones(shape_b, dtype=c) if c is not None else None)
    stand = [
        _stand_in((str(t.dtype).removeprefix("torch."), tuple(t.shape))) if t is not None else None
        for t in real
    ]
    full = tensor_for(entry, *real, method=method, multiplier=0.5, fp16=fp16)
    small = tensor_for(entry, *stand, method=method, multiplier=0.5, fp16=fp16)
    assert full.dtype == small.dtype and tuple(full.shape) == shape_a
