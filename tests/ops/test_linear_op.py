"""zq::linear_w8a8 and every CPU kernel behind it, against the exact int32 reference.

The int8 x int8 -> int32 accumulation is exact, so kernels differ from the reference only by the
fp32 rounding of the epilogue (scales, bias): compared with a tight relative tolerance. The whole
quantized linear is judged against the fp32 F.linear by SQNR.
"""

import pytest
import torch
import torch.nn.functional as F

from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.codegen.cpu import select
from zq_compile.codegen.cpu.select import int8_weight_qmax, select_cpu_kernel
from zq_compile.metrics import sqnr_db
from zq_compile.quant import quantize_per_token_ref, quantize_weight

FAST = [name for name in ("onednn", "int_mm") if KERNELS[name].unavailable_reason() is None]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _problem(m, k, n, groups, symmetric, dtype, bias):
    g = torch.Generator().manual_seed(m * 7 + k * 3 + n)
    x = (torch.randn(m, k, generator=g) * 2).to(dtype)
    w = torch.randn(n, k, generator=g) / k**0.5
    b = torch.randn(n, generator=g).to(dtype) if bias else None
    # the grid the backend quantizes to on this CPU (narrower where the int8 GEMMs saturate)
    qmax = int8_weight_qmax() if int8_weight_qmax() < 127 else None
    qw = quantize_weight(w, bits=8, groups=groups, symmetric=symmetric, qmax=qmax)
    x_q, x_s = quantize_per_token_ref(x)
    return x, w, b, qw, x_q, x_s


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 13, 67])
@pytest.mark.parametrize("k,n,groups", [(16, 24, None), (67, 48, 3), (96, 40, 5)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_matches_reference(kernel, dtype, m, k, n, groups, symmetric, bias):
    x, w, b, qw, x_q, x_s = _problem(m, k, n, groups, symmetric, dtype, bias)
    args = (x_q, x_s, qw.qdata, qw.scale, qw.zero_point, b, dtype)
    got = KERNELS[kernel].linear(*args)
    want = KERNELS["reference"].linear(*args)
    assert got.dtype == dtype and got.shape == (m, n)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]  # output rounding
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_linear_close_to_fp32(dtype, symmetric):
    x, w, b, qw, x_q, x_s = _problem(67, 96, 40, None, symmetric, dtype, True)
    y = torch.ops.zq.linear_w8a8(x_q, x_s, qw.qdata, qw.scale, qw.zero_point, b, dtype)
    ref = F.linear(x.float(), w, b.float())
    assert sqnr_db(ref, y.float()) > 30  # 8-bit weights and activations: ~35-40 dB here


@pytest.mark.parametrize("kernel", FAST + ["reference"])
def test_zero_rows_and_nan_rows(kernel):
    x = torch.randn(5, 32)
    x[1] = 0
    x[3, 7] = float("nan")
    w = torch.randn(16, 32)
    qw = quantize_weight(w)
    x_q, x_s = quantize_per_token_ref(x)
    y = KERNELS[kernel].linear(x_q, x_s, qw.qdata, qw.scale, None, None, torch.float32)
    assert (y[1] == 0).all()
    assert torch.isnan(y[3]).all()
    assert torch.isfinite(y[[0, 2, 4]]).all()


def test_three_d_input_keeps_leading_dims():
    x = torch.randn(2, 5, 32)
    qw = quantize_weight(torch.randn(16, 32))
    x_q, x_s = torch.ops.zq.quantize_per_token(x)
    y = torch.ops.zq.linear_w8a8(x_q, x_s, qw.qdata, qw.scale, None, None, torch.float32)
    assert y.shape == (2, 5, 16)
    assert sqnr_db(x @ qw.dequantize().t(), y) > 35


def test_opcheck_fake_and_schema():
    x_q, x_s = quantize_per_token_ref(torch.randn(2, 3, 32))
    qw = quantize_weight(torch.randn(16, 32), groups=4)
    torch.library.opcheck(
        torch.ops.zq.linear_w8a8.default,
        (x_q, x_s, qw.qdata, qw.scale, None, torch.randn(16), torch.float32),
    )


@pytest.mark.parametrize(
    "change, match",
    [
        ({"x_q": torch.zeros(2, 32)}, "int8"),
        ({"x_s": torch.ones(2)}, "x_scale"),
        ({"w_s": torch.ones(3)}, "do not divide"),
        ({"bias": torch.ones(5)}, "bias"),
    ],
)
def test_bad_arguments_raise(change, match):
    x_q, x_s = quantize_per_token_ref(torch.randn(2, 32))
    qw = quantize_weight(torch.randn(16, 32))
    args = {"x_q": x_q, "x_s": x_s, "w_q": qw.qdata, "w_s": qw.scale, "w_z": None, "bias": None}
    args.update(change)
    with pytest.raises((TypeError, ValueError), match=match):
        torch.ops.zq.linear_w8a8(*args.values(), torch.float32)


def test_auto_choice_is_recorded_and_fast_when_available():
    choice = select_cpu_kernel("auto")
    assert choice.reason
    if FAST:
        assert choice.kernel.name in FAST
    else:
        assert choice.kernel.name == "reference" and choice.rejected


@pytest.mark.parametrize("regime", ["small", "large"])
def test_auto_races_the_fast_kernels_per_regime(regime):
    if len(FAST) < 2:
        pytest.skip("fewer than two fast int8 GEMMs here: nothing to race")
    from zq_compile.codegen.cpu.select import has_vnni

    choice = select_cpu_kernel("auto", regime)
    if not has_vnni():
        assert choice.kernel.name == "onednn"
        return
    assert choice.kernel.name in FAST and f"raced for {regime} M" in choice.reason
    losers = [name for name, why in choice.rejected if f"for {regime} M" in why]
    assert losers == [n for n in FAST if n != choice.kernel.name]
    for name in FAST:  # both measured times are shown, so the user can see the margin
        assert f"{name} " in choice.reason and " us" in choice.reason


def test_onednn_weight_is_packed_once():
    if "onednn" not in FAST:
        pytest.skip("oneDNN missing from this torch build")
    from zq_compile.codegen.cpu.kernels import onednn_packed

    qw = quantize_weight(torch.randn(16, 32))
    first = onednn_packed(qw.qdata, qw.scale)
    assert onednn_packed(qw.qdata, qw.scale) is first
    qw.qdata.add_(0)  # an in-place edit bumps the version: the cache must repack
    assert onednn_packed(qw.qdata, qw.scale) is not first


def test_onednn_graph_holds_a_handle_not_a_second_int8_copy():
    if "onednn" not in FAST:
        pytest.skip("oneDNN missing from this torch build")
    from zq_compile.codegen.cpu.kernels import is_weight_handle, release_plain

    qw = quantize_weight(torch.randn(16, 32))
    x_q, x_s = quantize_per_token_ref(torch.randn(3, 32))
    want = KERNELS["onednn"].linear(x_q, x_s, qw.qdata, qw.scale, None, None, torch.float32)
    handle = release_plain(qw.qdata, qw.scale)
    assert is_weight_handle(handle) and handle.shape == qw.qdata.shape
    assert handle.untyped_storage().nbytes() == 1
    got = KERNELS["onednn"].linear(x_q, x_s, handle, qw.scale, None, None, torch.float32)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="released int8 weight handle"):
        KERNELS["onednn"].linear(x_q, x_s, handle, qw.scale.clone(), None, None, torch.float32)


@pytest.mark.parametrize("default", ["int_mm", "reference"])
def test_eager_op_follows_a_handle_whatever_the_process_default(default, monkeypatch):
    """A graph raced to oneDNN holds handles; the eager op (explain's per-layer figures run it)
    used the process default, which under load could be int_mm, and read the handle's zeros:
    the toy's linears came out as their bias alone (0.06 dB), only on loaded machines."""
    if "onednn" not in FAST:
        pytest.skip("oneDNN missing from this torch build")
    from zq_compile.codegen.cpu import select
    from zq_compile.codegen.cpu.kernels import release_plain

    monkeypatch.setattr(select, "default_cpu_kernel", lambda: KERNELS[default])
    qw = quantize_weight(torch.randn(16, 32))
    x_q, x_s = quantize_per_token_ref(torch.randn(13, 32))
    bias = torch.randn(16)
    want = torch.ops.zq.linear_w8a8(x_q, x_s, qw.qdata, qw.scale, None, bias, torch.float32)
    handle = release_plain(qw.qdata, qw.scale)
    got = torch.ops.zq.linear_w8a8(x_q, x_s, handle, qw.scale, None, bias, torch.float32)
    assert sqnr_db(want, got) > 60
    with pytest.raises(RuntimeError, match=f"{default!r} was given a released int8 weight handle"):
        KERNELS[default].linear(x_q, x_s, handle, qw.scale, None, bias, torch.float32)


@pytest.mark.parametrize("kernel", FAST)
@pytest.mark.parametrize("sign", [1, -1])
def test_kernel_is_exact_at_the_weight_limit_of_this_cpu(kernel, sign):
    """The worst case for an int16 pair sum (vpmaddubsw, CPUs without VNNI): every activation at
    +127 (uint8 255) and every weight at +-qmax. Exact here means equal to the int32 reference;
    one more step of weight would saturate oneDNN on such a CPU (3e4 off on an AVX2 EPYC)."""
    qmax = int8_weight_qmax()
    x_q = torch.full((13, 96), 127, dtype=torch.int8)
    x_s = torch.ones(13, 1)
    w_q = torch.full((24, 96), sign * qmax, dtype=torch.int8)
    w_s = torch.ones(24)
    args = (x_q, x_s, w_q, w_s, None, None, torch.float32)
    torch.testing.assert_close(KERNELS[kernel].linear(*args), KERNELS["reference"].linear(*args), rtol=0, atol=0)


@pytest.mark.parametrize("wide", [64, 65, 127])
def test_onednn_multiplies_wider_weights_exactly_on_a_cpu_without_vnni(wide, monkeypatch, recwarn):
    """Weights made elsewhere (a hand-made one, another CPU class) may reach 127 where oneDNN
    saturates past 64: the kernel says so once and multiplies them exactly in float64."""
    if "onednn" not in FAST:
        pytest.skip("no oneDNN int8 GEMM in this torch build")
    monkeypatch.setattr(select, "has_vnni", lambda: False)
    assert int8_weight_qmax() == select.NO_VNNI_WEIGHT_QMAX == 64
    g = torch.Generator().manual_seed(wide)
    x_q = torch.randint(100, 128, (5, 96), generator=g, dtype=torch.int8)
    w_q = torch.randint(wide - 3, wide + 1, (8, 96), generator=g, dtype=torch.int8)
    args = (x_q, torch.ones(5, 1), w_q, torch.full((8,), 1e-6), None, None, torch.float32)
    got = KERNELS["onednn"].linear(*args)
    torch.testing.assert_close(got, KERNELS["reference"].linear(*args), rtol=1e-6, atol=0)
    said = [str(w.message) for w in recwarn if "no VNNI" in str(w.message)]
    assert said == ([] if wide <= 64 else [said[0]])
    if wide > 64:
        assert f"reaching {wide}" in said[0] and "float64" in said[0]
