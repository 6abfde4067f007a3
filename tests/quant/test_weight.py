"""Property tests of group-wise weight quantization (the reference every kernel is held to)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zq_compile.quant import quantize_weight

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def weights(draw):
    groups = draw(st.integers(1, 6))
    rows_per_group = draw(st.integers(1, 5))
    k = draw(st.integers(1, 33))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(groups * rows_per_group, k, generator=g) * scale
    if draw(st.booleans()):  # an all-zero group
        w[:rows_per_group] = 0
    return w, groups


@SETTINGS
@given(weights(), st.sampled_from([8, 4]), st.booleans())
def test_values_in_range_and_round_trip_within_half_step(wg, bits, symmetric):
    w, groups = wg
    qw = quantize_weight(w, bits=bits, groups=groups, symmetric=symmetric)
    q = qw.int_values()
    if symmetric:
        lo, hi = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    else:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    assert int(q.min()) >= lo and int(q.max()) <= hi
    step = qw.row_scale()[:, None]
    err = (qw.dequantize() - w).abs()
    # half a step, plus fp32 rounding of the scale arithmetic
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(weights(), st.sampled_from([8, 4]), st.booleans())
def test_all_zero_group_gets_scale_one_and_zero_values(wg, bits, symmetric):
    w, groups = wg
    w[: w.shape[0] // groups] = 0
    qw = quantize_weight(w, bits=bits, groups=groups, symmetric=symmetric)
    assert qw.scale[0].item() == 1.0
    assert torch.isfinite(qw.scale).all()
    assert (qw.dequantize()[: w.shape[0] // groups] == 0).all()


def test_per_channel_is_one_group_per_row():
    w = torch.randn(12, 7)
    qw = quantize_weight(w, groups=None)
    assert qw.groups == 12 and qw.group_size == 1
    torch.testing.assert_close(qw.scale, w.abs().amax(1) / 127)


def test_groups_share_a_scale_across_their_rows():
    w = torch.randn(12, 7)
    qw = quantize_weight(w, groups=3)
    assert qw.scale.shape == (3,)
    torch.testing.assert_close(qw.scale, w.reshape(3, -1).abs().amax(1) / 127)
    assert qw.row_scale().tolist() == qw.scale.repeat_interleave(4).tolist()


@SETTINGS
@given(weights(), st.booleans())
def test_narrow_grid_stays_within_qmax_and_half_a_step(wg, symmetric):
    """qmax=64: the grid of CPUs whose int8 GEMMs saturate (codegen/cpu/select.py)."""
    w, groups = wg
    qw = quantize_weight(w, bits=8, groups=groups, symmetric=symmetric, qmax=64)
    q = qw.int_values()
    assert int(q.min()) >= -64 and int(q.max()) <= 64
    err = (qw.dequantize() - w).abs()
    assert (err <= qw.row_scale()[:, None] / 2 * (1 + 1e-5) + 1e-7).all()
    if symmetric and w.abs().max() > 0:  # the grid is the narrow one, not a clamped wide one
        assert int(q.abs().max()) == 64


def test_int4_is_stored_packed_two_per_byte():
    w = torch.randn(8, 9)
    qw = quantize_weight(w, bits=4)
    assert qw.qdata.dtype == torch.uint8 and qw.qdata.shape == (8, 5)
    assert qw.nbytes == 8 * 5 + 8 * 4


@pytest.mark.parametrize(
    "w, kwargs, match",
    [
        (torch.randn(6, 4), {"groups": 4}, "weight_groups=4 must divide the 6 output rows"),
        (torch.randn(6, 4), {"bits": 3}, "bits=3"),
        (torch.randn(6), {}, "2-D floating"),
        (torch.tensor([[1.0, float("nan")]]), {}, "NaN or Inf"),
        (torch.randn(6, 4), {"qmax": 200}, r"qmax=200 is not valid; allowed: None, or an int in 1..127"),
        (torch.randn(6, 4), {"bits": 4, "qmax": 5}, r"qmax=5 is not valid; allowed: None, or an int in 1..7"),
    ],
)
def test_bad_input_raises(w, kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_weight(w, **kwargs)
