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


# -- INT4 with groups along K (W4A16's default layout, quant/kgroups.py) -----------------------

#: (K, N, group_size, row groups): K a multiple of the group but not of every BLOCK_K (96, 160);
#: groups smaller and larger than the interpreter tiles' BLOCK_K; row groups (2 of 24 rows).
KGROUP_SHAPES = [(96, 48, 32, None), (160, 40, 32, 5), (256, 24, 128, 2), (192, 16, 64, None)]

#: Each K step's dot of the exact integers is scaled by its block (the reference dequantizes
#: first): the same bound as the N-group path.
KGROUP_TOL = EPILOGUE_TOL


def _kgroup_problem(m, k, n, group_size, row_groups, symmetric, dtype, bias=True, residual=False):
    from zq_compile.quant.kgroups import quantize_kgroups

    g = generator("kgroup", m, k, n, group_size, row_groups, symmetric, str(dtype))
    x = (torch.randn(m, k, generator=g) * 2).to(dtype)
    # rows whose blocks differ in range, so a scale applied to the wrong block shows
    w = torch.randn(n, k, generator=g) * torch.linspace(0.2, 3.0, k // group_size).repeat_interleave(group_size)
    qw = quantize_kgroups(w / k**0.5, group_size=group_size, row_groups=row_groups, symmetric=symmetric)
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    r = torch.randn(m, n, generator=g).to(dtype) if residual else None
    return (x, qw.qdata, qw.scale, qw.zero_point, b, r)


def _compare_kgroup(args, **kw):
    got = gemm_a16.gemm_a16(*args, w_bits=4, **kw)
    kw.pop("config", None)
    want = gemm_a16.reference(*args, w_bits=4, **kw)
    assert got.dtype == want.dtype == args[0].dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), equal_nan=True, **KGROUP_TOL[args[0].dtype])
    return got, want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("k,n,group_size,row_groups", KGROUP_SHAPES)
@pytest.mark.parametrize("m", MS)
def test_kgroups_match_reference(m, k, n, group_size, row_groups, symmetric, dtype):
    _compare_kgroup(_kgroup_problem(m, k, n, group_size, row_groups, symmetric, dtype))


def test_kgroups_use_each_blocks_scale():
    """One block's scale set to 0 must zero exactly that block's contribution."""
    x, w_q, w_s, w_z, b, _ = _kgroup_problem(4, 96, 16, 32, None, True, torch.float16, bias=False)
    w_s = w_s.clone()
    w_s[:, 1] = 0
    got = gemm_a16.gemm_a16(x, w_q, w_s, w_z, w_bits=4)
    x_cut = x.clone()
    x_cut[:, 32:64] = 0
    torch.testing.assert_close(got.float(), gemm_a16.reference(x_cut, w_q, w_s, w_z, w_bits=4).float(),
                               **KGROUP_TOL[torch.float16])


@pytest.mark.parametrize("activation", ["gelu_erf", "silu"])
def test_kgroups_epilogue_features(activation):
    _compare_kgroup(_kgroup_problem(13, 96, 48, 32, None, False, torch.float16, residual=True), activation=activation)


def test_kgroups_zero_and_nan_rows():
    x, w_q, w_s, w_z, b, _ = _kgroup_problem(5, 96, 48, 32, None, False, torch.bfloat16, bias=False)
    y = gemm_a16.gemm_a16(special_rows(x), w_q, w_s, w_z, w_bits=4)
    assert (y[0] == 0).all() and torch.isnan(y[2]).all() and torch.isfinite(y[[1, 3, 4]]).all()


@pytest.mark.parametrize("tile", gemm_tiles("a16"), ids=lambda t: "x".join(map(str, t)))
def test_kgroups_every_autotune_config_computes_the_same(tile):
    m = 67 if tile[0] <= 64 else 131
    args = _kgroup_problem(m, 64 * 3 + 32 * (tile[2] == 32), 5 * (tile[1] // 5 + 3), 32, 5, False,
                           torch.float16, residual=True)
    _compare_kgroup(args, activation="silu", config=to_config(tile))


def test_kgroup_table_errors_name_the_shape():
    x, w_q, w_s, w_z, *_ = _kgroup_problem(2, 96, 16, 32, None, False, torch.float16)
    with pytest.raises(ValueError, match="K-group scales"):
        gemm_a16.gemm_a16(x, w_q, w_s.repeat(1, 2)[:, :5].contiguous(), None, w_bits=4)  # 5 does not divide 96
    with pytest.raises(ValueError, match="w_zero"):
        gemm_a16.gemm_a16(x, w_q, w_s, w_z[:, :1].contiguous(), w_bits=4)
    with pytest.raises(ValueError, match="multiple of 16"):  # 4 blocks of 24
        gemm_a16.gemm_a16(x, w_q, w_s.repeat(1, 2)[:, :4].contiguous(), None, w_bits=4)
