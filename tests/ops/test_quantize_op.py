"""zq::quantize_per_token: the op, its fake implementation and its Inductor decomposition all
match the reference bit for bit."""

import pytest
import torch

from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.quant import quantize_per_token_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _x(m, k, dtype):
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m * 1000 + k)) * 3
    x[0] = 0  # an all-zero row
    if m > 2:
        x[2, k // 2] = float("nan")
    return x.to(dtype)


def _assert_same_bits(a, b):
    # NaN scales (the NaN row) compare equal here; everything else must be identical.
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k", [(1, 16), (13, 67), (67, 384)])
def test_op_matches_reference_exactly(m, k, dtype):
    x = _x(m, k, dtype)
    q, s = torch.ops.zq.quantize_per_token(x)
    rq, rs = quantize_per_token_ref(x)
    assert torch.equal(q, rq)
    _assert_same_bits(s, rs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_inductor_decomposition_matches_reference_exactly(dtype):
    x = _x(13, 67, dtype).reshape(1, 13, 67)
    compiled = torch.compile(KERNELS["onednn"].quantize_per_token, backend="inductor", fullgraph=True)
    q, s = compiled(x)
    rq, rs = quantize_per_token_ref(x)
    assert torch.equal(q, rq)
    _assert_same_bits(s, rs)


def test_opcheck_fake_and_schema():
    torch.library.opcheck(torch.ops.zq.quantize_per_token.default, (torch.randn(3, 5, 8),))


def test_only_8_bits():
    with pytest.raises(ValueError, match="bits=4"):
        torch.ops.zq.quantize_per_token(torch.randn(2, 4), 4)
