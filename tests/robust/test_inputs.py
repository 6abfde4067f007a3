"""Odd inputs get float semantics: NaN/Inf stay in their rows, zero rows and empty batches work,
magnitudes near the dtype's limits keep their accuracy, fp16 overflow gives Inf as eager does,
and a K that could overflow the int32 accumulator stays in float with the reason reported."""

from __future__ import annotations

import pytest
import torch

import zq_compile
from zq_compile.config import ZeroQuantConfig
from zq_compile.metrics import sqnr_db
from zq_compile.passes.rewrite_linear import max_k_for
from zq_compile.quant.activation import quantize_per_token_ref
from tests.robust.presets import PRESETS, TARGETS, sqnr_floor

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _mlp(dtype, d=24, hidden=40, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, d)).to(dtype).eval()


def _compiled(model, preset, target):
    # The first call of these tests carries NaN/Inf/huge rows; calibrating on it (smooth / keep_float
    # "auto") would judge the linears by those rows. Here only the kernels' row confinement is tested.
    return zq_compile.compile(model, {"preset": preset, "target": target, "smooth": False, "keep_float": 0})


#: every dtype on the cpu target, fp32 on the reference one (same quantize, exact GEMM):
#: compiles are the cost of these tests.
TARGET_DTYPES = [("cpu", d) for d in DTYPES] + [("reference", torch.float32)]


@pytest.mark.parametrize("target, dtype", TARGET_DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_nan_inf_rows_stay_in_their_rows_zero_rows_and_empty_batch(preset, target, dtype):
    m = _mlp(dtype)
    c = _compiled(m, preset, target)
    x = torch.randn(7, 24).to(dtype)
    x[1, 5] = float("nan")
    x[3, 0] = float("inf")
    x[4, 9] = -float("inf")
    x[5] = 0
    with torch.inference_mode():
        got, want = c(x), m.float()(x.float())
        m.to(dtype)
    assert len(c.zq_reports[0].quantized) == 2
    bad = ~torch.isfinite(want).all(-1)
    assert bad.tolist() == [False, True, False, True, True, False, False]
    assert (~torch.isfinite(got).all(-1)).tolist() == bad.tolist(), got
    # NaN where eager has NaN (an Inf input row becomes NaN in both after GeLU(-inf) * w ...)
    assert torch.equal(torch.isnan(got[bad]).any(-1), torch.isnan(want[bad]).any(-1))
    floor = sqnr_floor(preset, dtype)
    assert sqnr_db(want[~bad], got[~bad].float()) >= floor  # the finite rows are untouched
    assert sqnr_db(want[5], got[5].float()) >= floor  # all-zero row: the bias path, no 0/0
    with torch.inference_mode():
        empty = c(torch.randn(0, 24).to(dtype))
        empty3 = c(torch.randn(2, 0, 24).to(dtype))
    assert empty.shape == (0, 24) and empty.dtype == dtype
    assert empty3.shape == (2, 0, 24)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", PRESETS)
def test_empty_batch_as_the_first_call(preset, target):
    m = _mlp(torch.float32)
    with torch.inference_mode():
        out = _compiled(m, preset, target)(torch.randn(0, 24))
    assert out.shape == (0, 24)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_magnitudes_near_the_dtype_limits(preset, dtype):
    """Rows scaled towards the largest value that does not overflow the eager model, and down
    to the smallest normal numbers: quantization is scale-free, so the SQNR holds."""
    torch.manual_seed(1)
    m = torch.nn.Linear(32, 16, bias=False).to(dtype).eval()
    c = _compiled(m, preset, "cpu")
    info = torch.finfo(dtype)
    huge = info.max / 64  # |y| <= 32 * 0.18 * |x|: stays finite in eager
    small = 1e-35 if dtype != torch.float16 else 1e-3  # fp16: about 16 x its smallest normal
    g = torch.Generator().manual_seed(2)
    base = torch.rand(4, 32, generator=g) * 2 - 1
    for magnitude in (huge, small):
        x = (base * magnitude).to(dtype)
        with torch.inference_mode():
            got, want = c(x), m.float()(x.float())
            m.to(dtype)
        assert torch.isfinite(want).all()
        assert sqnr_db(want, got.float()) >= sqnr_floor(preset, dtype), magnitude


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_below_the_smallest_normal_scale_are_not_garbage(dtype):
    """Regression: a row with absmax under ~1.5e-36 had a subnormal scale whose reciprocal is
    Inf, so every value became +-127 (only signs survived: SQNR < 0 dB). Its scale is now at
    least FLT_MIN: coarse (a few levels), never garbage."""
    x = (torch.rand(3, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1) * torch.finfo(torch.float32).tiny
    q, scale = quantize_per_token_ref(x.to(dtype))
    assert (scale >= torch.finfo(torch.float32).tiny).all()
    assert q.abs().max() <= 2, q  # |x| <= FLT_MIN: at most 1 level (2 allows rounding)
    torch.manual_seed(0)
    m = torch.nn.Linear(64, 8, bias=False).to(dtype).eval()
    with torch.inference_mode():
        got = zq_compile.compile(m, {"target": "reference"})(x.to(dtype))
        want = m.float()(x.to(dtype).float())
    assert sqnr_db(want, got.float()) > 3  # was -1.6 to -5 dB


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("preset", PRESETS)
def test_fp16_overflow_gives_inf_with_eager_signs(preset, target):
    m = torch.nn.Linear(8, 4, bias=False).half().eval()
    with torch.no_grad():
        m.weight.fill_(1.0)
    x = torch.randn(3, 8).half()
    x[0] = 60000.0
    x[1] = -60000.0
    with torch.inference_mode():
        got, want = _compiled(m, preset, target)(x), m(x)
    assert torch.isinf(want[:2]).all()
    assert torch.equal(got[:2], want[:2])  # +inf and -inf, not NaN or a clamped value
    assert sqnr_db(want[2].float(), got[2].float()) >= sqnr_floor(preset, torch.float16)


def test_int32_accumulator_limit():
    assert max_k_for(ZeroQuantConfig().scheme) == 132104  # (2^31 - 1) // (127 * 128)
    assert 127 * 128 * 132104 <= 2**31 - 1 < 127 * 128 * 132105


@pytest.mark.parametrize("target", TARGETS)
def test_k_past_the_int32_limit_stays_float_with_the_reason(target):
    """127 * 127 * K > 2^31 - 1 for K > 133144: with every |q| at 127 the int32 sum wraps (a
    K = 140000 row of ones gave -126288 instead of 140000). Such a linear stays in float."""
    k = 140_000
    m = torch.nn.Linear(k, 2, bias=False).eval()
    with torch.no_grad():
        m.weight.fill_(1.0)
        m.weight[1].fill_(-1.0)
    x = torch.ones(3, k)
    x[1] = -1
    c = zq_compile.compile(m, {"target": target})
    with torch.inference_mode():
        got, want = c(x), m(x)
    torch.testing.assert_close(got, want)
    (decision,) = c.zq_reports[0].decisions
    assert not decision.quantized and "int32 accumulator" in decision.reason and "132104" in decision.reason


class _LastTokenHead(torch.nn.Module):
    """generate()'s logits_to_keep=1: the lm_head reads hidden[:, -1:], one static row."""

    def __init__(self):
        super().__init__()
        self.norm, self.head = torch.nn.LayerNorm(64), torch.nn.Linear(64, 200, bias=False)

    def forward(self, h):
        return self.head(self.norm(h)[:, -1:, :])


@pytest.mark.parametrize("kernel", ["int_mm", "onednn"])
def test_one_static_row_sliced_from_a_sequence(kernel):
    """Regression: Inductor gives the size-1 row dim of such an activation stride 0, and ATen's
    CPU _int_mm reads a [1, K] operand with row stride < K wrongly: the int_mm kernel returned
    noise (SQNR -93 dB), so greedy decoding of tiny Llama through int_mm diverged at token 0."""
    from zq_compile.codegen.cpu.kernels import KERNELS

    if KERNELS[kernel].unavailable_reason():
        pytest.skip(KERNELS[kernel].unavailable_reason())
    torch.manual_seed(0)
    m = _LastTokenHead().eval()
    x = torch.randn(1, 8, 64)
    with torch.inference_mode():
        got = zq_compile.compile(m, {"cpu_kernel": kernel})(x)
        assert sqnr_db(m(x), got) >= sqnr_floor("w8a8", torch.float32)
