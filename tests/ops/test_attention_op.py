"""zq::attention_bf16 (bf16 matmuls, fp32 softmax) against PyTorch's fp32 attention.

bf16 keeps 8 bits of mantissa, so the output is judged by SQNR (it is about 45 dB on random
data, where int8 linears give about 40 dB), and the edge cases exactly: all-masked rows give 0 as
the fp32 CPU kernel does, NaN stays in its own row, a bool mask and its additive bias agree.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from zq_compile.codegen.cpu.attention import attention_bf16, attention_ref, causal_bias, mask_to_bias
from zq_compile.metrics import sqnr_db

SQNR_DB = 35.0


def _qkv(b, h, hk, length, s, d, seed=0):
    g = torch.Generator().manual_seed(seed + length * 31 + s)
    return (torch.randn(b, h, length, d, generator=g), torch.randn(b, hk, s, d, generator=g),
            torch.randn(b, hk, s, d, generator=g))


def _padding_mask(b, length, s, seed=0):
    """[b, 1, L, S] bool, True = attend; each batch row keeps a different number of keys."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.randint(1, s + 1, (b,), generator=g)
    cols = torch.arange(s)[None, :] < keep[:, None]
    return cols[:, None, None, :].expand(b, 1, length, s)


@pytest.mark.parametrize("length", [1, 13, 67])
@pytest.mark.parametrize("s,d", [(13, 32), (67, 16), (128, 64)])
@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_close_to_fp32_attention(length, s, d, mask):
    q, k, v = _qkv(2, 3, 3, length, s, d)
    scale = d**-0.5
    bias, causal = None, mask == "causal"
    if mask in ("bool", "float"):
        bias = mask_to_bias(_padding_mask(2, length, s))
        if mask == "float":  # a learned-looking additive bias, not only 0 / -inf
            bias = bias + torch.randn(2, 1, length, s, generator=torch.Generator().manual_seed(1))
    got = attention_bf16(q, k, v, bias, scale, causal, False)
    want = attention_ref(q, k, v, bias, scale, causal, False)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert sqnr_db(want, got) > SQNR_DB


def test_grouped_query_heads_are_repeated():
    q, k, v = _qkv(1, 6, 2, 13, 20, 16)
    got = attention_bf16(q, k, v, None, 0.25, True, True)
    want = attention_ref(q, k, v, None, 0.25, True, True)
    assert sqnr_db(want, got) > SQNR_DB


def test_bool_mask_bias_is_zero_or_minus_inf():
    mask = _padding_mask(3, 4, 9)
    bias = mask_to_bias(mask)
    assert bias.dtype == torch.float32
    assert torch.equal(bias == 0, mask) and torch.equal(bias == -math.inf, ~mask)
    fm = torch.randn(2, 3)
    assert torch.equal(mask_to_bias(fm), fm)


def test_causal_bias_is_top_left_aligned_like_sdpa():
    q, k, v = _qkv(1, 1, 1, 3, 5, 8)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    got = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_bias(3, 5, q.device))
    torch.testing.assert_close(got, want)


def test_fully_masked_rows_give_zero_like_the_fp32_kernel():
    q, k, v = _qkv(1, 2, 2, 4, 6, 8)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[..., 2, :] = False
    bias = mask_to_bias(mask)
    got = attention_bf16(q, k, v, bias, 0.3, False, False)
    want = attention_ref(q, k, v, bias, 0.3, False, False)
    assert torch.equal(got[..., 2, :], torch.zeros_like(got[..., 2, :]))
    assert torch.equal(want[..., 2, :], got[..., 2, :])
    assert torch.isfinite(got).all()


def test_nan_stays_in_its_query_row():
    q, k, v = _qkv(1, 1, 1, 5, 7, 8)
    q[0, 0, 3, 2] = float("nan")
    got = attention_bf16(q, k, v, None, 0.3, False, False)
    assert torch.isnan(got[0, 0, 3]).all()
    rows = [0, 1, 2, 4]
    assert torch.isfinite(got[0, 0, rows]).all()
    want = attention_ref(q, k, v, None, 0.3, False, False)
    assert sqnr_db(want[0, 0, rows], got[0, 0, rows]) > SQNR_DB


def test_inf_key_poisons_only_the_rows_that_see_it():
    q, k, v = _qkv(1, 1, 1, 4, 6, 8)
    k[0, 0, 5, 0] = float("inf")
    got = attention_bf16(q, k, v, None, 0.3, True, False)  # causal: only query 4+ would see key 5
    assert torch.isfinite(got[0, 0, :4]).all()


def test_op_matches_its_lowering_and_traces():
    q, k, v = _qkv(2, 2, 2, 13, 13, 16)
    bias = mask_to_bias(_padding_mask(2, 13, 13))
    op = torch.ops.zq.attention_bf16.default
    eager = op(q, k, v, bias, 0.25, False, False)
    assert torch.equal(eager, attention_bf16(q, k, v, bias, 0.25, False, False))
    compiled = torch.compile(lambda *a: op(*a), backend="inductor", fullgraph=True)(q, k, v, bias, 0.25, False, False)
    assert sqnr_db(eager, compiled) > 60  # the same bf16 arithmetic, fused differently
    with pytest.raises(ValueError, match="not both"):
        op(q, k, v, bias, 0.25, True, False)
