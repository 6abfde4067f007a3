"""CPU kernels behind zq::linear_w4a8 (packed INT4 weights with K groups, int8 activations).

- ``reference``: dequantize both sides to fp32 and multiply (the oracle).
- ``int8:<gemm>``: the W4A8 path for large M. Once per weight, the INT4 values times their
  block scales are re-rounded to int8 with one scale per output row (``quant/kgroups.py``
  ``to_int8_per_row``), handed to the int8 GEMM the w8a8 path uses (``kernels.py``: oneDNN u8s8
  or torch._int_mm) and kept in that kernel's form; the graph then holds a one-byte handle in
  place of the INT4 copy. The kernel holds int8 bytes (N * K), not INT4 ones: the price of an
  int8 GEMM on a CPU, recorded in the report.
- ``unpack:<gemm>``: large M when memory comes first (``release_float_weights``). The graph
  holds only the packed INT4 weight and a row-scale table; every call unpacks it to the same
  int8 values ``int8:<gemm>`` keeps (one Inductor kernel, a transient N * K bytes), then runs the
  int8 GEMM (oneDNN reorders that copy in the call). Slower per call than a kept copy
  (``bench/w4a8_large_m_options.py``); a third of the bytes held: N * K / 2, against 1.5 * N * K
  for the INT4 weight plus the int8 copy ``int8:<gemm>`` keeps beside it.
- ``int4pack``: for small M. The int8 activations times their scales (exact in bf16 for the
  int8 values; the scale rounds to bf16) go through ATen's INT4 GEMM (``weight_only.py``),
  which reads the INT4 weight itself: the graph holds it in ATen's layout, N * K / 2 bytes.
Which one runs is raced per M regime (``select_w4a8_kernel``); with memory first, only the
kernels that hold INT4 bytes alone (``unpack:<gemm>``, ``int4pack``) take part.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch.utils.weak import WeakIdKeyDictionary

from zq_compile.codegen.cpu.weight_only import WO_KERNELS, _finish, _is_handle, dequant_weight
from zq_compile.codegen.cpu.select import int8_weight_qmax
from zq_compile.quant.kgroups import int8_row_scale, round_to_rows, to_int8_per_row
from zq_compile.store import version as tensor_version


@dataclass
class _AsInt8:
    version: int
    w8: torch.Tensor  # what the int8 GEMM takes (oneDNN: its handle)
    s8: torch.Tensor  # fp32 [N]


_AS_INT8: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _int8_kernel(inner: str):
    from zq_compile.codegen.cpu.kernels import KERNELS

    return KERNELS[inner]


def _qmax(inner: str) -> int:
    # oneDNN saturates on full-range int8 weights where the CPU lacks VNNI (select.py)
    return int8_weight_qmax() if inner == "onednn" else 127


def _make_int8(w, w_scale, w_zero, group_size, k, inner) -> _AsInt8:
    w8, s8 = to_int8_per_row(w, w_scale, w_zero, group_size, k, _qmax(inner))
    return _AsInt8(tensor_version(w), _int8_kernel(inner).finalize_weight(w8, s8), s8)


def as_int8(w, w_scale, w_zero, group_size, k, inner) -> _AsInt8:
    hit = _AS_INT8.get(w)
    if hit is not None and hit.version == tensor_version(w):
        return hit
    if _is_handle(w):
        raise RuntimeError("zq::w4a8_int8_mm got a released INT4 weight handle it has no int8 copy for")
    entry = _make_int8(w, w_scale, w_zero, group_size, k, inner)
    _AS_INT8[w] = entry
    return entry


@torch.library.custom_op("zq::w4a8_int8_mm", mutates_args=())
def w4a8_int8_mm(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor | None,
                 group_size: int, in_features: int, inner: str) -> torch.Tensor:
    """x [M, K] (uint8 with zero point 128 for oneDNN, else int8) x INT4 w -> fp32 [M, N]
    = int32 accumulator times the per-row scale of the int8 copy of w."""
    e = as_int8(w, w_scale, w_zero, group_size, in_features, inner)
    if inner == "onednn":
        return torch.ops.zq.onednn_u8s8_mm(x, e.w8, e.s8)
    return _plain_int8_mm(inner, x, e.w8, e.s8)


def _plain_int8_mm(inner: str, x: torch.Tensor, w8: torch.Tensor, s8: torch.Tensor) -> torch.Tensor:
    """int8 x [M, K] times a plain int8 w8 [N, K] -> fp32 times the row scales s8 (not oneDNN)."""
    if inner == "int_mm":
        from zq_compile.codegen.cpu.kernels import _rows_strided  # ATen's stride-0 row bug, see there

        return torch._int_mm(_rows_strided(x), w8.t()).float() * s8
    return torch.ops.zq.int8_mm_ref(x, w8).float() * s8


@w4a8_int8_mm.register_fake
def _(x, w, w_scale, w_zero, group_size, in_features, inner):
    return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)


class W4A8Kernel:
    name = ""
    description = ""

    def unavailable_reason(self, n: int, k: int) -> str | None:
        return None

    def finalize_weight(self, w, w_scale, w_zero, group_size, k) -> torch.Tensor:
        return w

    def kernel_scales(self, w_scale, w_zero, n, k, w=None) -> torch.Tensor | None:
        """A table made once per weight and held beside it (None: none); ``w``: the packed INT4."""
        return None

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        raise NotImplementedError


class ReferenceW4A8(W4A8Kernel):
    name = "reference"
    description = "dequantize activations and INT4 weights to fp32 and multiply (the oracle)"

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        wf = dequant_weight(w, w_scale, w_zero, 4, group_size, k, torch.float32)
        x = x_q.float() * x_scale
        return _finish(x.reshape(-1, k) @ wf.t(), x_q, bias, out_dtype)


class Int8W4A8(W4A8Kernel):
    def __init__(self, inner: str):
        self.inner = inner
        self.name = f"int8:{inner}"
        self.description = f"INT4 re-rounded to int8 per row once, then the {inner} int8 GEMM"

    def unavailable_reason(self, n, k):
        return _int8_kernel(self.inner).unavailable_reason()

    def finalize_weight(self, w, w_scale, w_zero, group_size, k):
        handle = torch.zeros(1, dtype=torch.uint8).expand(w.shape)
        entry = _make_int8(w, w_scale, w_zero, group_size, k, self.inner)
        entry.version = tensor_version(handle)
        _AS_INT8[handle] = entry
        return handle

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        from zq_compile.codegen.cpu.kernels import shifted_uint8

        x2 = shifted_uint8(x_q) if self.inner == "onednn" else x_q.reshape(-1, k)
        acc = torch.ops.zq.w4a8_int8_mm(x2, w, w_scale, w_zero, group_size, k, self.inner)
        return _scaled(acc, x_q, x_scale, bias, out_dtype)


def _scaled(acc, x_q, x_scale, bias, out_dtype):
    """fp32 acc [M, N] (already times the weight's row scales) -> y: per-token scale and bias."""
    y = acc.reshape(*x_q.shape[:-1], acc.shape[-1]) * x_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


class UnpackW4A8(W4A8Kernel):
    """Memory first: nothing but the INT4 weight is held; its int8 form is made in every call."""

    def __init__(self, inner: str):
        self.inner = inner
        self.name = f"unpack:{inner}"
        self.description = (f"INT4 unpacked to int8 in the graph on every call, then the {inner} int8 GEMM "
                            "(holds the INT4 bytes only)")

    def unavailable_reason(self, n, k):
        return _int8_kernel(self.inner).unavailable_reason()

    def kernel_scales(self, w_scale, w_zero, n, k, w=None):
        if w is None:
            raise ValueError(f"the {self.name} W4A8 kernel makes its row scales from the weight; none was given")
        return int8_row_scale(w, w_scale, w_zero, k // w_scale.shape[1], k, _qmax(self.inner))

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        if _is_handle(w):
            raise RuntimeError(f"the {self.name} W4A8 kernel was given another kernel's weight handle, "
                               "not the packed INT4 weight")
        row = kernel_scales if kernel_scales is not None else self.kernel_scales(w_scale, w_zero, w.shape[0], k, w=w)
        w8 = round_to_rows(w, w_scale, w_zero, group_size, k, row)
        if self.inner == "onednn":
            from zq_compile.codegen.cpu.kernels import shifted_uint8

            acc = torch.ops.zq.onednn_u8s8_mm_once(shifted_uint8(x_q), w8, row)
        else:
            acc = _plain_int8_mm(self.inner, x_q.reshape(-1, k), w8, row)
        return _scaled(acc, x_q, x_scale, bias, out_dtype)


class Int4PackW4A8(W4A8Kernel):
    name = "int4pack"
    description = "int8 activations times their scales in bf16 through ATen's INT4 GEMM"

    def unavailable_reason(self, n, k):
        return WO_KERNELS["aten"].unavailable_reason(4, n, k, 32)

    def finalize_weight(self, w, w_scale, w_zero, group_size, k):
        return WO_KERNELS["aten"].finalize_weight(w, w_scale, w_zero, 4, group_size, k)

    def kernel_scales(self, w_scale, w_zero, n, k, w=None):
        return WO_KERNELS["aten"].kernel_scales(w_scale, w_zero, 4, n, k)

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        x = (x_q.float() * x_scale).to(torch.bfloat16)
        return WO_KERNELS["aten"].linear(x, w, w_scale, w_zero, bias, 4, group_size, k, out_dtype, kernel_scales)


def _triton_w4a8() -> W4A8Kernel:
    from zq_compile.codegen.triton.w4a8 import TritonW4A8

    return TritonW4A8()


#: "triton" is named by target "triton" only, never raced here.
W4A8_KERNELS: dict[str, W4A8Kernel] = {
    k.name: k for k in (Int8W4A8("onednn"), Int8W4A8("int_mm"), Int8W4A8("reference"), UnpackW4A8("onednn"),
                        UnpackW4A8("int_mm"), UnpackW4A8("reference"), Int4PackW4A8(), ReferenceW4A8(),
                        _triton_w4a8())
}
RACE_MARGIN = 0.9
#: With memory first, ATen's INT4 GEMM must beat ``unpack:<gemm>`` by this factor: the race runs
#: the unpack unfused (eager: ~2.1 ms at its 1024 x 1024 weight against ~0.8 for the one Inductor
#: kernel of a graph) and its large temporaries make it noisy; with 0.9 one fresh process in four
#: picked int4pack on the AVX2 EPYC (unpack 9.5 ms against 7.6 there, 6.5 in the others), whose
#: large-M GEMM is 2.5x slower in a graph (bench/w4a8_large_m_options.py).
MEMORY_FIRST_MARGIN = 0.6


@dataclass(frozen=True)
class W4A8Choice:
    kernel: str
    reason: str


def _problem(m, k, n, group_size, seed=0):
    from zq_compile.quant.activation import quantize_per_token_ref
    from zq_compile.quant.kgroups import quantize_kgroups

    g = torch.Generator().manual_seed(seed)
    x_q, x_s = quantize_per_token_ref(torch.randn(m, k, generator=g))
    qw = quantize_kgroups(torch.randn(n, k, generator=g) * 0.05, group_size=group_size)
    return x_q, x_s, qw.qdata, qw.scale


def self_test(name: str) -> str | None:
    kernel = W4A8_KERNELS[name]
    why = kernel.unavailable_reason(32, 96)
    if why:
        return why
    x_q, x_s, w, s = _problem(13, 96, 32, 32)
    try:
        got = kernel.linear(x_q, x_s, kernel.finalize_weight(w, s, None, 32, 96), s, None, None, 32, 96, torch.float32)
    except Exception as e:  # reported verbatim
        return f"self-test raised {type(e).__name__}: {e}"
    want = W4A8_KERNELS["reference"].linear(x_q, x_s, w, s, None, None, 32, 96, torch.float32)
    err = ((got - want).norm() / want.norm()).item()
    if not err < 2e-2:  # int8 re-rounding of INT4 / bf16 activations: well under 1%
        return f"self-test mismatch vs reference (relative error {err:.3g})"
    return None


def race(names, regime: str, rounds: int = 15) -> dict[str, float]:
    """Fastest microseconds of each kernel on one problem of this regime (turns, minimum)."""
    from zq_compile.codegen.cpu.select import RACE_SHAPES

    m, k = RACE_SHAPES[regime]
    x_q, x_s, w, s = _problem(m, k, k, 128)
    weights = {n: W4A8_KERNELS[n].finalize_weight(w, s, None, 128, k) for n in names}
    # made once per weight, as the graph holds them; the per-call unpack runs unfused here (one
    # Inductor kernel in a graph), so unpack kernels' times are upper bounds
    tables = {n: W4A8_KERNELS[n].kernel_scales(s, None, k, k, w=w) for n in names}
    times = {n: float("inf") for n in names}
    for i in range(rounds + 2):
        for n in names:
            start = time.perf_counter()
            W4A8_KERNELS[n].linear(x_q, x_s, weights[n], s, None, None, 128, k, torch.float32, tables[n])
            if i >= 2:
                times[n] = min(times[n], (time.perf_counter() - start) * 1e6)
    return times


@functools.cache
def select_w4a8_kernel(regime: str, int8_gemm: str, memory_first: bool = False) -> W4A8Choice:
    """``int8_gemm``: the int8 GEMM the w8a8 path chose for this regime (``select.py``);
    it and ATen's INT4 GEMM are raced for this M regime. ``memory_first`` (the config's
    release_float_weights): the int8 GEMM on an int8 copy made per call instead of one kept."""
    if int8_gemm == "reference":
        return W4A8Choice("reference", "requested: target 'reference'")
    ready, rejected = [], []
    for name in (f"{'unpack' if memory_first else 'int8'}:{int8_gemm}", "int4pack"):
        why = self_test(name)
        (rejected.append(f"{name}: {why}") if why else ready.append(name))
    if not ready:
        return W4A8Choice("reference", "no W4A8 kernel passed its self-test: " + "; ".join(rejected))
    times = race(ready, regime) if len(ready) > 1 else {ready[0]: float("nan")}
    best = ready[0]
    margin = MEMORY_FIRST_MARGIN if memory_first else RACE_MARGIN
    for name in ready[1:]:
        if times[name] < margin * times[best]:
            best = name
    from zq_compile.codegen.cpu.select import RACE_SHAPES

    m, k = RACE_SHAPES[regime]
    reason = f"raced W4A8 for {regime} M at {m}x{k}x{k}: " + ", ".join(f"{n} {times[n]:.0f} us" for n in ready)
    if memory_first:
        reason = ("release_float_weights: memory first, no kernel that keeps an int8 copy of the INT4 "
                  "weight (N x K bytes beside N x K / 2); " + reason)
    if rejected:
        reason += "; not run: " + "; ".join(rejected)
    return W4A8Choice(best, reason)
