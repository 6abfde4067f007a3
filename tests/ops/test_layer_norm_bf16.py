"""codegen/cpu/norm.py: LayerNorm with bf16 storage and fp32 arithmetic against F.layer_norm in
fp32 rounded to bf16 once. The two differ only in the order of fp32 operations, so their bf16
outputs agree to one bf16 step (2^-8 relative); NaN/Inf rows must match exactly in kind."""

import pytest
import torch

from zq_compile.codegen.cpu.norm import layer_norm_bf16, layer_norm_ref


def _close(got, want):
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7, equal_nan=True)


@pytest.mark.parametrize("m", [1, 13, 67])
@pytest.mark.parametrize("k", [7, 64, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference(m, k, dtype, affine):
    g = torch.Generator().manual_seed(m * 1000 + k)
    x = (torch.randn(m, k, generator=g) * 3 + 1).to(dtype)
    w, b = (torch.randn(k, generator=g), torch.randn(k, generator=g)) if affine else (None, None)
    _close(layer_norm_bf16(x, (k,), w, b, 1e-5), layer_norm_ref(x, (k,), w, b, 1e-5))


def test_zero_rows_nan_and_inf_stay_in_their_row():
    x = torch.randn(5, 33)
    x[1] = 0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    w, b = torch.randn(33), torch.randn(33)
    got, want = layer_norm_bf16(x, (33,), w, b), layer_norm_ref(x, (33,), w, b)
    _close(got, want)
    assert torch.isnan(got[2]).all() and torch.isnan(got[3]).all()
    assert torch.isfinite(got[[0, 1, 4]]).all()
    assert torch.equal(got[1], b.to(torch.bfloat16))  # a zero row normalises to the bias


def test_leading_dims_and_compiled_match_eager():
    x = torch.randn(2, 9, 48).to(torch.bfloat16)
    w, b = torch.randn(48), torch.randn(48)
    eager = layer_norm_bf16(x, (48,), w, b)
    compiled = torch.compile(layer_norm_bf16)(x, (48,), w, b)
    _close(eager, layer_norm_ref(x, (48,), w, b))
    _close(compiled, eager)
