"""Weight-only and W4A8 CPU kernels against their pure-PyTorch references (SQNR, NaN rules)."""

import pytest
import torch

import zq_compile.ops  # noqa: F401  (registers the ops)
from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS
from zq_compile.codegen.cpu.weight_only import WO_KERNELS
from zq_compile.metrics import sqnr_db
from zq_compile.quant.activation import quantize_per_token_ref
from zq_compile.quant.kgroups import quantize_kgroups
from zq_compile.quant.weight import quantize_weight

N, K, GS = 48, 96, 32  # K a multiple of 32 but not of 64 or 128 (the other block sizes)
#: bf16 activations or bf16 outputs carry an 8-bit mantissa (~45-50 dB alone); 30 dB leaves room
#: for accumulation order and still fails for any wrong scale, group or nibble (those give < 10).
FLOOR_DB = 30


def _weight(bits, symmetric=True, seed=0):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.05
    if bits == 4:
        qw = quantize_kgroups(w, GS, symmetric=symmetric)
        return qw.qdata, qw.scale, qw.zero_point, GS
    qw = quantize_weight(w, bits=8, symmetric=symmetric)
    return qw.qdata, qw.scale, qw.zero_point, 0


def _x(m, dtype, seed=1):
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x[0] = 0  # an all-zero row
    return x


def _available(kernel, bits):
    why = kernel.unavailable_reason(bits, N, K, GS)
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 13, 67])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["aten", "dequant", "dequant_bf16"])
def test_weight_only_kernel_matches_reference(name, bits, m, dtype):
    kernel = WO_KERNELS[name]
    _available(kernel, bits)
    w, s, z, gs = _weight(bits)
    x = _x(m, dtype)
    bias = torch.randn(N).to(dtype)
    got = kernel.linear(x, kernel.finalize_weight(w, s, z, bits, gs, K), s, z, bias, bits, gs, K, dtype)
    want = WO_KERNELS["reference"].linear(x, w, s, z, bias, bits, gs, K, torch.float32)
    assert got.dtype == dtype and got.shape == (m, N)
    assert torch.equal(got[0].float(), bias.float().to(dtype).float())  # zero row -> bias exactly
    if m > 1:
        assert sqnr_db(want, got.float()) > FLOOR_DB


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["aten", "dequant"])
def test_asymmetric_weights(name, bits):
    _available(WO_KERNELS[name], bits)
    w, s, z, gs = _weight(bits, symmetric=False)
    x = _x(13, torch.float32)
    held = WO_KERNELS[name].finalize_weight(w, s, z, bits, gs, K)
    got = WO_KERNELS[name].linear(x, held, s, z, None, bits, gs, K, torch.float32)
    want = WO_KERNELS["reference"].linear(x, w, s, z, None, bits, gs, K, torch.float32)
    assert sqnr_db(want, got) > FLOOR_DB


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["aten", "dequant", "reference"])
def test_nan_and_inf_rows_stay_in_their_row(name, bits):
    _available(WO_KERNELS[name], bits)
    w, s, z, gs = _weight(bits)
    x = _x(5, torch.float32)
    x[2, 7] = float("nan")
    x[3, 1] = float("inf")
    y = WO_KERNELS[name].linear(x, WO_KERNELS[name].finalize_weight(w, s, z, bits, gs, K), s, z, None, bits, gs,
                                K, torch.float32)
    assert not torch.isfinite(y[2]).any() and not torch.isfinite(y[3]).all()
    assert torch.isfinite(y[[0, 1, 4]]).all()


def test_aten_int4_weight_is_held_in_atens_layout_and_called_without_a_custom_op():
    """The graph holds ATen's INT4 layout (the INT4 bytes, once) and its scale table, and the
    compiled code calls ATen's GEMM itself: no zq custom op per call (~16 us each at decode)."""
    kernel = WO_KERNELS["aten"]
    _available(kernel, 4)
    w, s, z, gs = _weight(4)
    held = kernel.finalize_weight(w, s, z, 4, gs, K)
    assert held.shape == w.shape and held.dtype == torch.uint8 and not torch.equal(held, w)
    table = kernel.kernel_scales(s, z, 4, N, K)
    x = _x(7, torch.bfloat16)
    want = WO_KERNELS["reference"].linear(x, w, s, z, None, 4, gs, K, torch.float32)
    eager = kernel.linear(x, held, s, z, None, 4, gs, K, torch.float32, table)
    assert sqnr_db(want, eager) > FLOOR_DB
    assert torch.equal(eager, kernel.linear(x, held, s, z, None, 4, gs, K, torch.float32))  # table made here
    fn = torch.compile(lambda x, held, s, table: kernel.linear(x, held, s, None, None, 4, gs, K, torch.float32, table))
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    y, code = run_and_get_code(fn, x, held, s, table)
    assert torch.equal(y, eager)
    assert "_weight_int4pack_mm_for_cpu" in code[0] and "torch.ops.zq" not in code[0]


@pytest.mark.parametrize("symmetric", [True, False])
def test_aten_int8_is_called_without_a_custom_op_given_its_row_scales(symmetric):
    """With the bf16 row scales made once (the graph's kernel table), the compiled code calls
    ATen's int8 GEMM itself (its lowering needs realized scales): no zq custom op per call, which
    cost ~13 us each, 211 calls per SmolLM2 decode step. Same numbers as without the table."""
    kernel = WO_KERNELS["aten"]
    _available(kernel, 8)
    w, s, z, _ = _weight(8, symmetric=symmetric)
    held = kernel.finalize_weight(w, s, z, 8, 0, K)
    table = kernel.kernel_scales(s, z, 8, N, K)
    assert table.dtype == torch.bfloat16 and table.shape == (N,)
    x = _x(7, torch.bfloat16)
    eager = kernel.linear(x, held, s, z, None, 8, 0, K, torch.float32, table)
    assert torch.equal(eager, kernel.linear(x, held, s, z, None, 8, 0, K, torch.float32))  # custom-op path
    assert kernel.linear(x[:0], held, s, z, None, 8, 0, K, torch.float32, table).shape == (0, N)
    fn = torch.compile(lambda x, held, s, z, table: kernel.linear(x, held, s, z, None, 8, 0, K, torch.float32, table))
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    y, code = run_and_get_code(fn, x, held, s, z, table)
    assert torch.equal(y, eager)
    assert "_weight_int8pack_mm" in code[0] and "torch.ops.zq" not in code[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 13, 67])
@pytest.mark.parametrize("name", ["int8:onednn", "int8:int_mm", "unpack:onednn", "unpack:int_mm", "int4pack"])
def test_w4a8_kernel_matches_reference(name, m, dtype):
    kernel = W4A8_KERNELS[name]
    why = kernel.unavailable_reason(N, K)
    if why:
        pytest.skip(why)
    w, s, z, gs = _weight(4)
    x_q, x_s = quantize_per_token_ref(_x(m, dtype))
    bias = torch.randn(N)
    try:
        got = kernel.linear(x_q, x_s, kernel.finalize_weight(w, s, z, gs, K), s, z, bias, gs, K, dtype)
    except RuntimeError as e:  # torch._int_mm has shape limits on some builds
        if name.endswith(":int_mm"):
            pytest.skip(f"torch._int_mm: {e}")
        raise
    want = W4A8_KERNELS["reference"].linear(x_q, x_s, w, s, z, bias, gs, K, torch.float32)
    assert got.dtype == dtype
    assert torch.equal(got[0].float(), bias.to(dtype).float())
    if m > 1:
        assert sqnr_db(want, got.float()) > FLOOR_DB


def test_w4a8_nan_row_stays_in_its_row():
    w, s, z, gs = _weight(4)
    x = _x(4, torch.float32)
    x[2, 0] = float("nan")
    x_q, x_s = quantize_per_token_ref(x)
    for name in ("int8:onednn", "unpack:onednn", "reference"):
        y = W4A8_KERNELS[name].linear(x_q, x_s, w, s, z, None, gs, K, torch.float32)
        assert not torch.isfinite(y[2]).any() and torch.isfinite(y[[0, 1, 3]]).all(), name


@pytest.mark.parametrize("symmetric", [True, False])
def test_per_call_unpack_multiplies_the_int8_values_the_kept_copy_holds(symmetric):
    """unpack:onednn (memory first) holds only the INT4 weight and its row scales; the int8 values
    it makes in each call are those int8:onednn keeps, so eagerly the two agree bit for bit,
    compiled (the unpack one Inductor kernel) to float rounding; an empty batch and all-zero
    weight rows pass through."""
    kept, per_call = W4A8_KERNELS["int8:onednn"], W4A8_KERNELS["unpack:onednn"]
    if per_call.unavailable_reason(N, K):
        pytest.skip(per_call.unavailable_reason(N, K))
    w, s, z, gs = _weight(4, symmetric=symmetric)
    w[:3] = 0  # three all-zero weight rows (nibbles 0; asymmetric: at a zero point of 0)
    if not symmetric:
        z[:3] = 0
    held = per_call.finalize_weight(w, s, z, gs, K)
    assert held is w  # nothing but the packed INT4 bytes
    rows = per_call.kernel_scales(s, z, N, K, w=w)
    assert rows.shape == (N,) and rows.dtype == torch.float32
    for m in (0, 1, 13):
        x_q, x_s = quantize_per_token_ref(_x(max(m, 1), torch.float32)[:m])
        want = kept.linear(x_q, x_s, kept.finalize_weight(w, s, z, gs, K), s, z, None, gs, K, torch.float32)
        got = per_call.linear(x_q, x_s, held, s, z, None, gs, K, torch.float32, rows)
        assert got.shape == (m, N) and torch.equal(got, want)
    from torch._inductor.utils import run_and_get_code

    fn = torch.compile(lambda x_q, x_s, w, s, z, rows: per_call.linear(x_q, x_s, w, s, z, None, gs, K, torch.float32, rows))
    torch._dynamo.reset()
    compiled, code = run_and_get_code(fn, x_q, x_s, held, s, z, rows)
    assert sqnr_db(want, compiled) > 60
    assert "torch.ops.zq.onednn_u8s8_mm_once" in code[0] and "zq.w4a8_int8_mm" not in code[0]


def test_ops_check_their_arguments():
    w, s, z, gs = _weight(4)
    x = torch.randn(3, K)
    with pytest.raises(ValueError, match="group_size=40"):
        torch.ops.zq.linear_wo(x, w, s, z, None, 4, 40, K, "reference", torch.float32)
    with pytest.raises(ValueError, match="packed uint8"):
        torch.ops.zq.linear_wo(x, w.view(torch.int8), s, z, None, 4, gs, K, "reference", torch.float32)
    with pytest.raises(ValueError, match="bits=3"):
        torch.ops.zq.linear_wo(x, w, s, z, None, 3, gs, K, "reference", torch.float32)
    with pytest.raises(TypeError, match="floating"):
        torch.ops.zq.linear_wo(x.to(torch.int8), w, s, z, None, 4, gs, K, "reference", torch.float32)
    y = torch.ops.zq.linear_wo(x, w, s, z, None, 4, gs, K, "dequant", torch.float32)
    assert y.shape == (3, N)


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_split_order_holds_the_dequantized_values_and_the_activation_follows_it(symmetric):
    """``dequantize_kgroups(split=True)`` reorders each K group's columns (low nibbles, then high ones) and
    ``split_inputs`` permutes x the same way: the product is the interleaved one's, and each
    column holds exactly the value ``dequantize_kgroups`` gives it."""
    from zq_compile.quant.kgroups import dequantize_kgroups, split_inputs

    w, s, z, gs = _weight(4, symmetric=symmetric)
    want = dequantize_kgroups(w, s, z, gs, K)
    order = split_inputs(torch.arange(K, dtype=torch.float32)[None], gs)[0].long()
    assert sorted(order.tolist()) == list(range(K)) and order[:3].tolist() == [0, 2, 4]
    assert torch.equal(dequantize_kgroups(w, s, z, gs, K, torch.float32, split=True), want[:, order])
    x = _x(5, torch.float32)
    assert torch.allclose(split_inputs(x, gs) @ want[:, order].t(), x @ want.t(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("name", ["aten", "dequant", "dequant_bf16"])
def test_the_race_runs_each_kernel_compiled_as_the_graph_runs_it(name, bits):
    from zq_compile.codegen.cpu.weight_only import compiled_linear

    kernel = WO_KERNELS[name]
    _available(kernel, bits)
    w, s, z, gs = _weight(bits)
    x = _x(13, torch.float32)
    got = compiled_linear(name, x, w, s, bits, gs, K, torch.float32)()
    want = kernel.linear(x, kernel.finalize_weight(w, s, None, bits, gs, K), s, None, None, bits, gs, K, torch.float32)
    assert got.shape == want.shape == (13, N)
    assert sqnr_db(want, got) > 40  # the same kernel, Inductor-compiled: summation order only


def test_a_kernel_inductor_cannot_compile_is_raced_eagerly_and_the_reason_says_so(monkeypatch):
    from zq_compile.codegen.cpu import weight_only

    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr("torch._inductor.compile_fx.compile_fx", refuse)
    times, eager = weight_only.race(["dequant", "dequant_bf16"], "small", 8, rounds=1)
    assert all(0 < t < float("inf") for t in times.values())
    assert eager.count("timed eagerly (Inductor: RuntimeError: no compiler here)") == 2
