"""Per-token quantize kernel (codegen/triton/quantize.py) against its reference, bit for bit."""

import pytest
import torch

from tests.triton_interp.helpers import DTYPES, MS, generator, special_rows
from zq_compile.codegen.triton import quantize


def _assert_same(got, want):
    q, s = got
    rq, rs = want
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == rs.shape
    assert torch.equal(q, rq)
    torch.testing.assert_close(s, rs, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("k", [67, 1500])  # 1500: two 1024-wide chunks, the second masked
def test_matches_reference_bit_for_bit(m, k, dtype):
    x = (torch.randn(m, k, generator=generator(m, k)) * 3).to(dtype)
    _assert_same(quantize.quantize_per_token(x), quantize.reference(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_nan_and_inf_rows(dtype):
    x = special_rows(torch.randn(5, 67, generator=generator(5)).to(dtype))
    x[3, 1] = float("inf")
    q, s = quantize.quantize_per_token(x)
    _assert_same((q, s), quantize.reference(x))
    assert s[0].item() == 1 and (q[0] == 0).all()  # all-zero row: scale 1, no division by zero
    assert torch.isnan(s[2]).all() and (q[2] == 0).all()  # NaN row: NaN scale, q zeroed
    assert torch.isinf(s[3]).all()
    assert torch.isfinite(s[[1, 4]]).all()  # other rows untouched


def test_ties_round_half_to_even():
    # x / scale lands exactly on .5 for these values (scale = 127 / 127 = 1)
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5]])
    q, s = quantize.quantize_per_token(x)
    assert s.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126]]


def test_strided_input():
    x = torch.randn(67, 80, generator=generator("t"))[:, ::2]  # column stride 2
    _assert_same(quantize.quantize_per_token(x), quantize.reference(x))


def test_precomputed_absmax_skips_the_first_pass():
    x = special_rows(torch.randn(13, 67, generator=generator("a")))
    amax = x.abs().amax(dim=1).view(torch.int32).contiguous()
    _assert_same(quantize.quantize_per_token(x, absmax_bits=amax), quantize.reference(x))


def test_empty_rows():
    q, s = quantize.quantize_per_token(torch.empty(0, 16))
    assert q.shape == (0, 16) and s.shape == (0, 1)


@pytest.mark.parametrize("bad, match", [(torch.zeros(4, 4, dtype=torch.float64), "fp32/fp16/bf16"),
                                        (torch.zeros(2, 3, 4), "2-D")])
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        quantize.quantize_per_token(bad)
