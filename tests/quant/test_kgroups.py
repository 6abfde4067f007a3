import pytest
import torch

from zq_compile.quant.int4 import unpack_int4
from zq_compile.quant.kgroups import dequantize_kgroups, quantize_kgroups, to_int8_per_row


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size, row_groups", [(32, None), (64, 4), (128, None)])
def test_every_value_round_trips_within_half_a_step(symmetric, group_size, row_groups):
    w = torch.randn(24, 256, generator=torch.Generator().manual_seed(1))
    qw = quantize_kgroups(w, group_size, row_groups, symmetric)
    g = 24 if row_groups is None else row_groups
    assert qw.scale.shape == (g, 256 // group_size) and qw.qdata.shape == (24, 128)
    q = qw.int_values()
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    if symmetric:
        assert int(q.min()) >= -7
    step = qw.scale.repeat_interleave(24 // g, 0).repeat_interleave(group_size, 1)
    assert ((qw.dequantize() - w).abs() <= step / 2 + 1e-6).all()


def test_matches_a_plain_per_block_computation():
    w = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    qw = quantize_kgroups(w, 32)
    for r in range(4):
        for b in range(2):
            block = w[r, b * 32:(b + 1) * 32]
            s = block.abs().max() / 7
            assert torch.equal(qw.scale[r, b], s)
            assert torch.equal(unpack_int4(qw.qdata, 64)[r, b * 32:(b + 1) * 32],
                               torch.round(block / s).clamp(-7, 7).to(torch.int8))


def test_all_zero_block_gets_scale_one():
    w = torch.randn(2, 64)
    w[1, 32:] = 0
    qw = quantize_kgroups(w, 32)
    assert qw.scale[1, 1] == 1 and (qw.dequantize()[1, 32:] == 0).all()


@pytest.mark.parametrize("bad, match", [(dict(group_size=48), "group_size=48"), (dict(row_groups=5), "weight_groups=5")])
def test_bad_grouping_is_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        quantize_kgroups(torch.randn(8, 128), **{"group_size": 32, **bad})


def test_nan_weight_is_refused():
    w = torch.randn(8, 64)
    w[3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        quantize_kgroups(w, 32)


def test_int8_copy_is_within_a_fraction_of_an_int4_step():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    qw = quantize_kgroups(w, 32, symmetric=False)
    w8, s8 = to_int8_per_row(qw.qdata, qw.scale, qw.zero_point, 32, 128)
    deq4 = dequantize_kgroups(qw.qdata, qw.scale, qw.zero_point, 32, 128)
    assert w8.dtype == torch.int8 and s8.shape == (16,)
    assert ((w8.float() * s8[:, None] - deq4).abs() <= s8[:, None] / 2 + 1e-6).all()
