"""The W4A8 kernel target "triton" gives zq::linear_w4a8: ``gemm_a8`` on the packed INT4 weight.

It joins the CPU's ``codegen/cpu/w4a8.W4A8_KERNELS`` under the name "triton"; the scheme handler
(``schemes/w4a8.py``) names it for every W4A8 linear on target "triton" (``w4a8``, and the FFN
linears of ``w4/8a8``). The GEMM reads the INT4 weight as stored (no int8 copy, unlike the CPU's
large-M path) and applies its blocks' scales along K in the loop (``gemm_a8``'s K_GROUP); the
per-token quantize before it is the Triton quantize (or a norm + quantize kernel) as for W8A8.
"""

from __future__ import annotations

import torch

from zq_compile.codegen.cpu.w4a8 import W4A8Kernel


class TritonW4A8(W4A8Kernel):
    name = "triton"
    description = "Triton int8 GEMM (gemm_a8) on the packed INT4 weight, block scales applied along K"

    def unavailable_reason(self, n: int, k: int) -> str | None:
        return None  # group sizes are 32, 64 or 128 (multiples of the int8 dot's 32)

    def linear(self, x_q, x_scale, w, w_scale, w_zero, bias, group_size, k, out_dtype, kernel_scales=None):
        import zq_compile.codegen.triton.ops  # noqa: F401  (registers zq::triton_*)

        return torch.ops.zq.triton_linear_a8(x_q, x_scale, w, w_scale, w_zero, bias, None, out_dtype, 4, "none")
