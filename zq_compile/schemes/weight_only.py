"""W8A16 and W4A16: INT8 or INT4 weights, activations left in floating point.

    x ──► zq.linear_wo(x, W, W_s, W_z, b, bits, group_size, K, kernel) ──► y

No activation quantization: the GEMM reads the narrow weight and the float activation. Memory-
bound decoding gains most (the weight's bytes are the cost). ``kernel`` is the weight-only GEMM
raced for the graph's M regime (``codegen/cpu/weight_only.py``); on target "triton" it is
always the Triton GEMM (``codegen/triton/weight_only.py``).
"""

from __future__ import annotations

import torch

from zq_compile.passes.graph_utils import annotate, fake_value
from zq_compile.quant.kgroups import quantize_kgroups
from zq_compile.quant.weight import quantize_weight
from zq_compile.schemes.base import SchemeHandler, inference_only, register


def row_groups(groups: int, n: int) -> int | None:
    return None if groups == n else groups


def quantize_int4(w_nk, scheme, groups):
    return quantize_kgroups(w_nk, group_size=scheme.group_size, row_groups=row_groups(groups, w_nk.shape[0]),
                            symmetric=scheme.symmetric)


def regime_of(x_val) -> str:
    """"small" when the linear sees a fixed number of rows no larger than select.SMALL_M."""
    import math

    from zq_compile.codegen.cpu.select import SMALL_M

    rows = math.prod(x_val.shape[:-1])
    return "small" if isinstance(rows, int) and rows <= SMALL_M else "large"


def note_kernel(ctx, what: str, regime: str, kernel: str, reason: str) -> None:
    seen = ctx.memo.setdefault("scheme_kernels", set())
    if (what, regime, kernel) not in seen:
        seen.add((what, regime, kernel))
        ctx.report.note(f"{what} kernel for {regime} M: {kernel} ({reason})")


class WeightOnly(SchemeHandler):
    bits = 8

    def quantize(self, w_nk, scheme, groups, qmax=None):
        if self.bits == 4:
            return quantize_int4(w_nk, scheme, groups)
        return quantize_weight(w_nk, bits=8, groups=groups, symmetric=scheme.symmetric)

    def constant_tensors(self, qw):
        # "w", not "wq": binding.py hands "wq" to the int8 GEMM's finalize_weight.
        return {"w": qw.qdata, "ws": qw.scale, "wz": qw.zero_point}

    def emit(self, ctx, x, weight, bias, out_dtype):
        from zq_compile.codegen.cpu.weight_only import WO_KERNELS, select_wo_kernel

        w, w_s, w_z = weight
        x_val = fake_value(x)
        # K from the weight constant (static), never the activation's (symbolic in dynamic graphs)
        n, width = fake_value(w).shape
        k = width * 2 if self.bits == 4 else width  # INT4 widths here are multiples of 32
        group_size = k // fake_value(w_s).shape[1] if self.bits == 4 else 0
        regime = regime_of(x_val)
        if ctx.target == "triton":  # one GPU kernel for every M (its autotuner picks tiles per M)
            kernel, reason = "triton", "target 'triton'"
        else:
            choice = select_wo_kernel(regime, self.bits, "reference" if ctx.target == "reference" else "auto")
            kernel, reason = choice.kernel, choice.reason
        choice_name = kernel
        why = WO_KERNELS[kernel].unavailable_reason(self.bits, n, k, group_size)
        if why:
            kernel, reason = "dequant", f"{choice_name} cannot take {n}x{k}: {why}"
        note_kernel(ctx, f"{self.name} (INT{self.bits} weight-only)", regime, kernel, reason)
        y = ctx.gm.graph.call_function(
            torch.ops.zq.linear_wo.default,
            (inference_only(ctx, x), w, w_s, w_z, inference_only(ctx, bias), self.bits, group_size, k, kernel,
             out_dtype),
        )
        annotate(y, ctx.fake_mode)
        return y


class W8A16(WeightOnly):
    name = "w8a16"
    bits = 8


class W4A16(WeightOnly):
    name = "w4a16"
    bits = 4


register(W8A16())
register(W4A16())
