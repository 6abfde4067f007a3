"""W4A8: packed INT4 weights with groups along K, int8 activations with one scale per token.

    x ──► zq.quantize_per_token ──► (x_q, x_s) ──► zq.linear_w4a8(·, W4, W_s, W_z, b, gs, K, kernel) ──► y

The quantize node is shared with W8A8 consumers of the same activation (the memo is the same),
so a mixed preset quantizes a LayerNorm output once whatever its readers' weight widths.
``kernel`` is raced per M regime (``codegen/cpu/w4a8.py``): the int8 GEMM on an int8 copy made
once per weight (made per call instead under release_float_weights: memory first), or ATen's
INT4 GEMM on the dequantized int8 activations. On target "triton" it is always ``gemm_a8`` on
the INT4 weight as stored (``codegen/triton/w4a8.py``).
"""

from __future__ import annotations

import torch

from zq_compile.passes.graph_utils import annotate, fake_value
from zq_compile.schemes.base import inference_only, register
from zq_compile.schemes.w8a8 import W8A8
from zq_compile.schemes.weight_only import note_kernel, quantize_int4, regime_of


class W4A8(W8A8):
    name = "w4a8"
    int8_gemm = False  # INT4 here; the W4A8 kernel makes its own int8 copy (codegen/cpu/w4a8.py)

    def quantize(self, w_nk, scheme, groups, qmax=None):
        return quantize_int4(w_nk, scheme, groups)

    def constant_tensors(self, qw):
        return {"w": qw.qdata, "ws": qw.scale, "wz": qw.zero_point}

    def emit(self, ctx, x, weight, bias, out_dtype):
        from zq_compile.codegen.cpu.select import select_cpu_kernel
        from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS, select_w4a8_kernel

        w, w_s, w_z = weight
        x_val = fake_value(x)
        # K from the weight constant (static), never the activation's (symbolic in dynamic graphs)
        n, k = fake_value(w).shape[0], fake_value(w).shape[1] * 2  # INT4 widths: multiples of 32
        group_size = k // fake_value(w_s).shape[1]
        regime = regime_of(x_val)
        if ctx.target == "triton":  # one GPU kernel for every M (its autotuner picks tiles per M)
            kernel, reason = "triton", "target 'triton'"
        else:
            gemm = "reference" if ctx.target == "reference" else select_cpu_kernel(ctx.config.cpu_kernel,
                                                                                    regime).kernel.name
            choice = select_w4a8_kernel(regime, gemm, ctx.config.release_float_weights)
            kernel, reason = choice.kernel, choice.reason
            why = W4A8_KERNELS[kernel].unavailable_reason(n, k)
            if why:
                kernel, reason = f"int8:{gemm}", f"{choice.kernel} cannot take {n}x{k}: {why}"
        note_kernel(ctx, "w4a8", regime, kernel, reason)
        x_q, x_s = self.quantized_activation(ctx, x)
        y = ctx.gm.graph.call_function(
            torch.ops.zq.linear_w4a8.default,
            (x_q, x_s, w, w_s, w_z, inference_only(ctx, bias), group_size, k, kernel, out_dtype),
        )
        annotate(y, ctx.fake_mode)
        return y


register(W4A8())
