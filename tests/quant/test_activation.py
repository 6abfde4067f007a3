"""Property tests of token-wise dynamic activation quantization."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zq_compile.quant import dequantize_per_token_ref, quantize_per_token_ref

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@st.composite
def activations(draw):
    shape = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@SETTINGS
@given(activations(), st.sampled_from(DTYPES))
def test_range_scale_shape_and_half_step_round_trip(x, dtype):
    x = x.to(dtype)
    q, scale = quantize_per_token_ref(x)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (*x.shape[:-1], 1)
    assert int(q.min()) >= -127 and int(q.max()) <= 127
    err = (dequantize_per_token_ref(q, scale) - x.float()).abs()
    assert (err <= scale / 2 * (1 + 1e-5) + 1e-7).all()


@SETTINGS
@given(activations())
def test_all_zero_rows_get_scale_one(x):
    x = x.reshape(-1, x.shape[-1]).clone()
    x[0] = 0
    q, scale = quantize_per_token_ref(x)
    assert scale[0].item() == 1.0
    assert (q[0] == 0).all()
    assert torch.isfinite(scale).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_values_stay_in_their_row(bad, dtype):
    x = torch.randn(5, 16).to(dtype)
    x[2, 3] = bad
    q, scale = quantize_per_token_ref(x)
    clean_q, clean_scale = quantize_per_token_ref(x[[0, 1, 3, 4]])
    assert torch.equal(q[[0, 1, 3, 4]], clean_q) and torch.equal(scale[[0, 1, 3, 4]], clean_scale)
    assert not torch.isfinite(scale[2]).any()
    deq = dequantize_per_token_ref(q, scale)
    assert not torch.isfinite(deq[2]).all()
    assert torch.isfinite(deq[[0, 1, 3, 4]]).all()


def test_rounding_is_half_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5]])  # scale 1
    q, scale = quantize_per_token_ref(x)
    assert scale.item() == 1.0
    assert q.tolist() == [[127, 0, 2, 2, 0]]


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="floating"):
        quantize_per_token_ref(torch.ones(2, 3, dtype=torch.int32))
