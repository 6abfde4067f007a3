"""CPU kernels behind zq::linear_wo (INT8 or INT4 weights, floating activations).

Each ``linear`` is torch-op code: the op's eager body and the decomposition Inductor traces.
- ``reference``: dequantize the weight to fp32 and run an fp32 matmul (the oracle).
- ``dequant``: dequantize in the activation's dtype and ``F.linear``; inside Inductor the unpack
  and scaling fuse into one pass that writes the float weight, then the float GEMM. An INT4
  weight is written with each K group's even inputs before its odd ones (``dequantize_kgroups``,
  ``split=True``) and the
  activation's columns are permuted to match, so the unpack is a contiguous, vectorized loop.
- ``dequant_bf16``: the same with the activation and weight in bf16 (for fp32 models on CPUs
  with native bf16 dot products), output cast back.
- ``aten``: ATen's weight-only GEMMs, ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``,
  run on bf16 activations (their fp32 path was 100x+ slower in our probe: bench/schemes_kernels.py).
  INT4 needs ATen's own blocked layout and a bf16 table of block scales: both are made once per
  weight and held by the graph (the layout in place of our packed copy), which calls ATen's op
  itself (Inductor lowers it to a direct call, no Python in between).
Which one runs is raced per M regime (``select_wo_kernel``), like the int8 GEMMs, each kernel
compiled by Inductor as a graph runs it (``compiled_linear``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zq_compile.quant.kgroups import block_view, dequantize_kgroups, split_inputs


def group_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat_interleave(n // t.numel())


def dequant_weight(w, w_scale, w_zero, bits: int, group_size: int, k: int, dtype) -> torch.Tensor:
    """W[N, K] in ``dtype`` from its quantized form (torch ops only: Inductor fuses it)."""
    n = w.shape[0]
    if bits == 4:
        return dequantize_kgroups(w, w_scale, w_zero, group_size, k, dtype)
    q = w.float()
    if w_zero is not None:
        q = q - group_rows(w_zero.float(), n)[:, None]
    return (q * group_rows(w_scale.float(), n)[:, None]).to(dtype)


def _float_linear(x2, w, w_scale, w_zero, bits: int, group_size: int, k: int, dtype) -> torch.Tensor:
    """x2 [M, K] in ``dtype`` times the dequantized weight (INT4 in the split column order)."""
    if bits == 4:
        wf = dequantize_kgroups(w, w_scale, w_zero, group_size, k, dtype, split=True)
        return F.linear(split_inputs(x2, group_size), wf)
    return F.linear(x2, dequant_weight(w, w_scale, w_zero, bits, group_size, k, dtype))


def _finish(y2, x, bias, out_dtype):
    y = y2.reshape(*x.shape[:-1], y2.shape[-1])
    if bias is not None:
        y = y.float() + bias.float()
    return y.to(out_dtype)


class WoKernel:
    name = ""
    description = ""

    def unavailable_reason(self, bits: int, n: int, k: int, group_size: int) -> str | None:
        return None

    def finalize_weight(self, w, w_scale, w_zero, bits, group_size, k) -> torch.Tensor:
        """What the compiled graph holds for the weight: the plain int8 values by default. An
        int8 weight shared with a graph that runs oneDNN may arrive as its one-byte handle
        (``kernels.release_plain``; ``passes/decode_weight_only.py`` reads w8a8 weights)."""
        from zq_compile.codegen.cpu.kernels import plain_weight

        return plain_weight(w) if bits == 8 else w

    def kernel_scales(self, w_scale, w_zero, bits, n, k, w=None) -> torch.Tensor | None:
        """A table the kernel wants beside the weight, made once per weight (None: no table);
        ``w`` is the plain packed weight."""
        return None

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        raise NotImplementedError


class ReferenceWo(WoKernel):
    name = "reference"
    description = "dequantize to fp32, fp32 matmul (the oracle)"

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        wf = dequant_weight(w, w_scale, w_zero, bits, group_size, k, torch.float32)
        return _finish(F.linear(x.reshape(-1, k).float(), wf), x, bias, out_dtype)


class DequantWo(WoKernel):
    name = "dequant"
    description = "dequantize in the activation dtype (fused by Inductor), then F.linear"

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        y = _float_linear(x.reshape(-1, k), w, w_scale, w_zero, bits, group_size, k, x.dtype)
        return _finish(y, x, bias, out_dtype)


class DequantBf16Wo(WoKernel):
    name = "dequant_bf16"
    description = "dequantize to bf16 (fused by Inductor), then a bf16 F.linear"

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        y = _float_linear(x.reshape(-1, k).to(torch.bfloat16), w, w_scale, w_zero, bits, group_size, k,
                          torch.bfloat16)
        return _finish(y, x, bias, out_dtype)


# -- ATen's weight-only GEMMs ------------------------------------------------------------------


def aten_int4_layout(w: torch.Tensor, k: int) -> torch.Tensor:
    """Our packed INT4 [N, K/2] in ATen's blocked INT4 layout for this CPU (uint8 [N, K/2] too,
    but not interchangeable with ours): ATen takes unsigned nibbles, w = (q - 8) * s + z."""
    from zq_compile.quant.int4 import unpack_int4

    q = unpack_int4(w, k).to(torch.int32) + 8
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)


def aten_int4_scales(w_scale, w_zero, n: int, k: int) -> torch.Tensor:
    """bf16 [K / group_size, N, 2]: each block's scale and zero as ATen's INT4 GEMM reads them.
    The backend makes it once per weight and the graph holds it (``ops/linear_wo.py``
    ``kernel_scales``): built in the graph on every call, its 210 small kernels cost SmolLM2's
    decode step what a custom op per call did."""
    scale = block_view(w_scale.float(), n, k)
    zero = torch.zeros_like(scale) if w_zero is None else -block_view(w_zero.float(), n, k) * scale
    return torch.stack((scale.t(), zero.t()), dim=-1).to(torch.bfloat16).contiguous()


def int4_mm(x2: torch.Tensor, w_aten: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """bf16 x [M, K] x INT4 weight in ATen's layout -> bf16 [M, N]. Called in the graph, not
    through a custom op of ours: Inductor lowers ATen's op to a direct call, where our Python
    custom op cost ~16 us a call (SmolLM2 w4a16 decode: 210 calls, ~3.4 ms of a 23 ms step)."""
    if x2.shape[0] == 0:  # an empty batch: ATen's kernel is not safe with M = 0
        return x2.new_zeros((0, w_aten.shape[0]), dtype=torch.bfloat16)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), w_aten, group_size, scales)


def int8_mm(x2: torch.Tensor, w: torch.Tensor, row_scales: torch.Tensor) -> torch.Tensor:
    """bf16 x [M, K] x int8 w [N, K] * bf16 row scales [N] -> bf16 [M, N], via ATen. Called in
    the graph directly when the scales are a graph constant (Inductor's lowering of the op needs
    them realized): our Python custom op around it cost ~13 us a call (SmolLM2 w8a16 decode: 211
    calls, ~3 ms of a ~28 ms step)."""
    if x2.shape[0] == 0:  # an empty batch: ATen's kernel segfaults with M = 0 (seen on torch 2.13)
        return x2.new_zeros((0, w.shape[0]), dtype=torch.bfloat16)
    return torch.ops.aten._weight_int8pack_mm(x2.contiguous(), w, row_scales.contiguous())


def _is_handle(t: torch.Tensor) -> bool:
    return t.dim() == 2 and t.numel() > 1 and t.stride() == (0, 0)


@torch.library.custom_op("zq::int8pack_mm", mutates_args=())
def int8pack_mm(x: torch.Tensor, w: torch.Tensor, w_scale_rows: torch.Tensor) -> torch.Tensor:
    """``int8_mm`` for scales computed in the graph. Opaque to Inductor: its own lowering of
    _weight_int8pack_mm rejects unrealized (fused) inputs."""
    return int8_mm(x, w, w_scale_rows)


@int8pack_mm.register_fake
def _(x, w, w_scale_rows):
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.bfloat16)


class AtenWo(WoKernel):
    name = "aten"
    description = "ATen _weight_int8pack_mm / _weight_int4pack_mm_for_cpu on bf16 activations"

    def unavailable_reason(self, bits, n, k, group_size):
        op = "_weight_int4pack_mm_for_cpu" if bits == 4 else "_weight_int8pack_mm"
        if not hasattr(torch.ops.aten, op):
            return f"torch.ops.aten.{op} is missing from this torch build"
        if bits == 4 and n % 16:
            return f"ATen's INT4 layout needs N divisible by 16 (N={n})"
        if bits == 8 and k % 16:
            # measured on torch 2.13: K = 2, 3, 5, 8, 24, 40 crash the process; 16, 32, 48, 64 run
            return f"ATen's _weight_int8pack_mm crashes unless K is divisible by 16 (K={k})"
        return None

    def finalize_weight(self, w, w_scale, w_zero, bits, group_size, k):
        """INT4: the weight in ATen's layout, which ``linear`` then requires (the graph holds it
        in place of our packed copy: same shape and dtype, another order of the nibbles)."""
        if bits != 4:
            return super().finalize_weight(w, w_scale, w_zero, bits, group_size, k)
        return aten_int4_layout(w, k)

    def kernel_scales(self, w_scale, w_zero, bits, n, k, w=None) -> torch.Tensor | None:
        """INT4: ATen's block scales and zeros. INT8: the bf16 row scales, made once, so the
        graph can call ATen's op directly (see ``linear``)."""
        if bits == 4:
            return aten_int4_scales(w_scale, w_zero, n, k)
        return group_rows(w_scale.float(), n).to(torch.bfloat16).contiguous()

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        x2 = x.reshape(-1, k).to(torch.bfloat16)
        n = w.shape[0]
        if bits == 4:
            if kernel_scales is None:  # eager calls; the backend hands the graph its own
                kernel_scales = aten_int4_scales(w_scale, w_zero, n, k)
            return _finish(int4_mm(x2, w, kernel_scales, group_size), x, bias, out_dtype)
        if kernel_scales is not None:  # the graph's table: a direct call
            y = int8_mm(x2, w, kernel_scales)
        else:  # eager calls, and graphs that hold no kernel table
            y = torch.ops.zq.int8pack_mm(x2, w, group_rows(w_scale.float(), n).to(torch.bfloat16))
        if w_zero is not None:  # sum_k x (q - z) s = [x q s] - rowsum(x) * (z s)
            y = y.float() - x2.float().sum(-1, keepdim=True) * group_rows(w_scale.float() * w_zero.float(), n)
        return _finish(y, x, bias, out_dtype)


def _triton_wo() -> WoKernel:
    from zq_compile.codegen.triton.weight_only import TritonWo

    return TritonWo()


#: "triton" is named by target "triton" only, never raced here (not in AUTO_ORDER).
WO_KERNELS: dict[str, WoKernel] = {k.name: k for k in (AtenWo(), DequantWo(), DequantBf16Wo(), ReferenceWo(),
                                                         _triton_wo())}
AUTO_ORDER = ("aten", "dequant", "dequant_bf16")
#: A later kernel must beat the ones before it by this factor (noise on a shared machine).
RACE_MARGIN = 0.9


@dataclass(frozen=True)
class WoChoice:
    kernel: str
    reason: str


def _problem(m: int, k: int, n: int, bits: int, dtype, group_size: int = 32, seed=0):
    from zq_compile.quant.kgroups import quantize_kgroups
    from zq_compile.quant.weight import quantize_weight

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(dtype)
    wf = torch.randn(n, k, generator=g) * 0.05
    if bits == 4:
        qw = quantize_kgroups(wf, group_size=group_size)
        return x, qw.qdata, qw.scale, None, group_size
    qw = quantize_weight(wf, bits=8)
    return x, qw.qdata, qw.scale, None, 0


def self_test(name: str, bits: int) -> str | None:
    """None if the kernel matches the fp32 reference on a small awkward problem."""
    kernel = WO_KERNELS[name]
    x, w, s, z, gs = _problem(13, 96, 32, bits, torch.float32)
    why = kernel.unavailable_reason(bits, 32, 96, gs)
    if why:
        return why
    try:
        got = kernel.linear(x, kernel.finalize_weight(w, s, z, bits, gs, 96), s, z, None, bits, gs, 96, torch.float32)
    except Exception as e:  # a broken build raises all sorts; reported verbatim
        return f"self-test raised {type(e).__name__}: {e}"
    want = WO_KERNELS["reference"].linear(x, w, s, z, None, bits, gs, 96, torch.float32)
    err = ((got - want).norm() / want.norm()).item()
    if not err < 2e-2:  # bf16 activations and scales: ~3 significant digits
        return f"self-test mismatch vs reference (relative error {err:.3g})"
    return None


def compiled_linear(name: str, x, w, w_scale, bits: int, group_size: int, k: int, dtype):
    """Kernel ``name``'s ``linear`` as a graph runs it: traced and compiled by Inductor (the
    dequant kernels' unpack and scaling fused, as in the model's graph), with the weight in the
    kernel's form and its table. Returns a callable of no arguments."""
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    kernel = WO_KERNELS[name]
    held = kernel.finalize_weight(w, w_scale, None, bits, group_size, k)
    table = kernel.kernel_scales(w_scale, None, bits, w.shape[0], k, w=w)
    args = [x, held, w_scale] + ([table] if table is not None else [])

    def run(x, held, w_scale, *table):
        return kernel.linear(x, held, w_scale, None, None, bits, group_size, k, dtype, table[0] if table else None)

    with torch.no_grad():
        fn = compile_fx(make_fx(run, tracing_mode="real")(*args), args)
    return lambda: fn(*args)


def race(names, regime: str, bits: int, dtype=torch.float32, rounds: int = 15) -> tuple[dict[str, float], str]:
    """Fastest microseconds of each kernel on one problem of this regime, each compiled as a graph
    runs it (``compiled_linear``: timing the dequant kernels eagerly measured their unfused unpack,
    and ATen's INT4 GEMM with its table rebuilt on every call), kernels taking turns (a burst of
    load hits all alike). A kernel Inductor fails to compile is timed eagerly, and said so."""
    from zq_compile.codegen.cpu.select import RACE_SHAPES

    m, k = RACE_SHAPES[regime]
    x, w, s, z, gs = _problem(m, k, k, bits, dtype, group_size=128)
    calls, eager = {}, []
    for n in names:
        try:
            calls[n] = compiled_linear(n, x, w, s, bits, gs, k, dtype)
        except Exception as e:  # Inductor's failure is reported, the kernel still raced
            eager.append(f"{n} timed eagerly (Inductor: {type(e).__name__}: {str(e)[:120]})")
            held = WO_KERNELS[n].finalize_weight(w, s, z, bits, gs, k)
            calls[n] = functools.partial(WO_KERNELS[n].linear, x, held, s, z, None, bits, gs, k, dtype)
    times = {n: float("inf") for n in names}
    for i in range(rounds + 2):
        for n in names:
            start = time.perf_counter()
            calls[n]()
            if i >= 2:
                times[n] = min(times[n], (time.perf_counter() - start) * 1e6)
    return times, "; ".join(eager)


@functools.cache
def select_wo_kernel(regime: str, bits: int, requested: str = "auto") -> WoChoice:
    """The weight-only kernel for graphs of this M regime ("small" or "large")."""
    if requested == "reference":
        return WoChoice("reference", "requested: target 'reference'")
    ready, rejected = [], []
    for name in AUTO_ORDER:
        why = self_test(name, bits)
        (rejected.append(f"{name}: {why}") if why else ready.append(name))
    if not ready:
        return WoChoice("reference", "no fast weight-only kernel passed its self-test: " + "; ".join(rejected))
    times, eager = race(ready, regime, bits) if len(ready) > 1 else ({ready[0]: float("nan")}, "")
    best = ready[0]
    for name in ready[1:]:
        if times[name] < RACE_MARGIN * times[best]:
            best = name
    from zq_compile.codegen.cpu.select import RACE_SHAPES

    m, k = RACE_SHAPES[regime]
    raced = ", ".join(f"{n} {times[n]:.0f} us" for n in ready)
    reason = f"raced INT{bits} weight-only for {regime} M at {m}x{k}x{k}, compiled: {raced}"
    if eager:
        reason += f" ({eager})"
    if rejected:
        reason += "; not run: " + "; ".join(rejected)
    return WoChoice(best, reason)
