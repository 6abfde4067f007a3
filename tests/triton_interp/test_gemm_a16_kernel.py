"""Weight-only GEMM (codegen/triton/gemm_a16.py): W8A16 and W4A16 against x @ dequantize(W)^T.

The kernel applies the group scale (and zero point) after the dot, the reference dequantizes the
weight first: the two differ by fp32 summation order, then by the output dtype's rounding.
"""

import pytest
import torch

from tests.triton_interp.helpers import EPILOGUE_TOL, MS, generator, special_rows
from zq_compile.codegen.triton import gemm_a16
from zq_compile.codegen.triton.configs import gemm_tiles, to_config
from zq_compile.quant import quantize_weight

SHAPES = [(67, 48, 3), (96, 40, 5), (160, 24, None)]
DTYPES = [torch.float16, torch.bfloat16]  # "A16": 16-bit activations (fp32 is refused, below)


def _problem(m, k, n, groups, w_bits, symmetric, dtype, bias=True, residual=False):
    g = generator(m, k, n, groups, w_bits, symmetric, str(dtype))
    x = (torch.randn(m, k, generator=g) * 2).to(dtype)
    qw = quantize_weight(torch.randn(n, k, generator=g) / k**0.5, bits=w_bits, groups=groups, symmetric=symmetric)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(m, n, generator=g).to(dtype) if residual else None
    return (x, qw.qdata, qw.scale, qw.zero_point, b, r)


def _compare(args, **kw):
    got = gemm_a16.gemm_a16(*args, **kw)
    kw.pop("config", None)
    want = gemm_a16.reference(*args, **kw)
    assert got.dtype == want.dtype == args[0].dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), equal_nan=True, **EPILOGUE_TOL[args[0].dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("w_bits", [8, 4])
@pytest.mark.parametrize("k,n,groups", SHAPES)
@pytest.mark.parametrize("m", MS)
def test_matches_reference(m, k, n, groups, w_bits, symmetric, dtype):
    _compare(_problem(m, k, n, groups, w_bits, symmetric, dtype), w_bits=w_bits)


@pytest.mark.parametrize("activation", ["none", "gelu_erf", "gelu_tanh", "silu", "tanh"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
def test_epilogue_features(activation, residual):
    _compare(_problem(13, 67, 48, 3, 4, False, torch.float16, residual=residual), w_bits=4, activation=activation)


def test_zero_and_nan_rows():
    x, w_q, w_s, w_z, b, _ = _problem(5, 67, 48, 3, 8, True, torch.float16, bias=False)
    y = gemm_a16.gemm_a16(special_rows(x), w_q, w_s)
    assert (y[0] == 0).all() and torch.isnan(y[2]).all() and torch.isfinite(y[[1, 3, 4]]).all()


@pytest.mark.parametrize("tile", gemm_tiles("a16"), ids=lambda t: "x".join(map(str, t)))
def test_every_autotune_config_computes_the_same(tile):
    m = 67 if tile[0] <= 64 else 131
    args = _problem(m, 67 + tile[2], 5 * (tile[1] // 5 + 3), 5, 4, False, torch.float16, residual=True)
    _compare(args, w_bits=4, activation="gelu_erf", config=to_config(tile))


def test_fp32_activations_are_refused():
    x, w_q, w_s, *_ = _problem(2, 32, 16, None, 8, True, torch.float16)
    with pytest.raises(ValueError, match="16-bit"):
        gemm_a16.gemm_a16(x.float(), w_q, w_s)
