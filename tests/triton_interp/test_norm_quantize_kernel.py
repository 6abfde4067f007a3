"""LayerNorm / RMSNorm + per-token quantize kernel (codegen/triton/norm_quantize.py).

The norm is compared with torch's to fp32 rounding (the kernel sums in another order), then
rounded to x's dtype (a one-ulp difference in bf16 is within that); the quantize step must be
exact: q and scale equal the quantize reference of the kernel's own float output.
"""

import pytest
import torch

from tests.triton_interp.helpers import DTYPES, MS, generator, special_rows
from zq_compile.codegen.triton import norm_quantize as nq
from zq_compile.quant import quantize_per_token_ref

#: the normalised values are O(1): fp32 summation order, or one ulp of the output dtype
NORM_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=2e-3),
            torch.bfloat16: dict(rtol=8e-3, atol=1.6e-2)}


def _inputs(m, n, dtype, rms, affine=True):
    g = generator(m, n, str(dtype), rms)
    x = (torch.randn(m, n, generator=g) * 2 + 0.5).to(dtype)
    w = (torch.rand(n, generator=g) + 0.5).to(dtype) if affine else None
    b = None if rms or not affine else torch.randn(n, generator=g).to(dtype)
    return x, w, b


def _check(x, w, b, rms, emit=True):
    q, s, y = nq.norm_quantize(x, w, b, 1e-5, rms=rms, emit_float=emit)
    rq, rs, ry = nq.reference(x, w, b, 1e-5, rms=rms)
    assert y.dtype == x.dtype and q.dtype == torch.int8 and s.shape == (x.shape[0], 1)
    torch.testing.assert_close(y.float(), ry.float(), equal_nan=True, **NORM_TOL[x.dtype])
    own_q, own_s = quantize_per_token_ref(y)
    assert torch.equal(q, own_q)
    torch.testing.assert_close(s, own_s, rtol=0, atol=0, equal_nan=True)
    return q, s, y


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n", [64, 67, 1000])
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_matches_reference(m, n, dtype, rms):
    _check(*_inputs(m, n, dtype, rms), rms)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_without_float_output_quantizes_the_same(rms):
    x, w, b = _inputs(13, 67, torch.bfloat16, rms)
    q, s, _ = _check(x, w, b, rms)
    q2, s2, y2 = nq.norm_quantize(x, w, b, 1e-5, rms=rms, emit_float=False)
    assert y2 is None and torch.equal(q, q2) and torch.equal(s, s2)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_no_affine_parameters(rms):
    _check(*_inputs(13, 67, torch.float32, rms, affine=False), rms)


@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_zero_and_nan_rows(rms):
    x, w, b = _inputs(5, 67, torch.float16, rms)
    x = special_rows(x)
    q, s, y = _check(x, w, b, rms)
    assert torch.isnan(s[2]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(s[[0, 1, 3, 4]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm"])
def test_quant_scale_scales_what_is_quantized_not_the_float_output(dtype, rms):
    """Outlier smoothing's 1/s per feature (passes/fuse_norm_quantize.py): q and scale are those
    of y * c rounded to x's dtype, exactly; y is the plain norm output."""
    x, w, b = _inputs(13, 67, dtype, rms)
    c = (torch.rand(67, generator=generator("c", str(dtype))) * 4 + 0.1).to(dtype)
    q, s, y = nq.norm_quantize(x, w, b, 1e-5, rms=rms, emit_float=True, quant_scale=c)
    _, _, plain_y = nq.norm_quantize(x, w, b, 1e-5, rms=rms, emit_float=True)
    assert torch.equal(y, plain_y)
    own_q, own_s = quantize_per_token_ref((y.float() * c.float()).to(dtype))
    if dtype == torch.bfloat16:
        # the interpreter's fp32 -> bf16 conversion of y * c need not round as torch's does: a
        # value may land one bf16 step (1/128 relative: up to one int8 step) away, and the row's
        # absmax, hence every q of the row, with it
        assert (q.int() - own_q.int()).abs().max() <= 2
        torch.testing.assert_close(s, own_s, rtol=8e-3, atol=0)
    else:
        assert torch.equal(q, own_q)
        torch.testing.assert_close(s, own_s, rtol=0, atol=0)
    rq, _, _ = nq.reference(x, w, b, 1e-5, rms=rms, quant_scale=c)
    # the reference's norm differs from the kernel's in summation order: a value on a rounding
    # boundary may move by one step (in bf16 by up to two, as above)
    assert (q.int() - rq.int()).abs().max() <= (2 if dtype == torch.bfloat16 else 1)


def test_row_too_long_raises():
    with pytest.raises(ValueError, match="16384"):
        nq.norm_quantize(torch.zeros(2, 20000), None, None, 1e-5, rms=True, emit_float=False)
