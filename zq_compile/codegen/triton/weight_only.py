"""The weight-only kernel target "triton" gives zq::linear_wo (W8A16, W4A16): ``gemm_a16``.

It joins the CPU weight-only kernels in ``codegen/cpu/weight_only.WO_KERNELS`` under the name
"triton", so ``zq::linear_wo`` and its decomposition reach it like any other; the scheme
handler (``schemes/weight_only.py``) names it for every weight-only linear on target "triton"
instead of racing the CPU kernels. The GEMM takes 16-bit activations: an fp32 model's run in
bf16 (the range of fp32; the CPU's ATen kernels do the same), the bias stays fp32 and is added
in the kernel's fp32 epilogue, the output is cast back. INT8 weights keep one scale per group of
output rows, INT4 weights their blocks along K (``gemm_a16``'s K_GROUP).
"""

from __future__ import annotations

import torch

from zq_compile.codegen.cpu.weight_only import WoKernel, _finish

HALF = (torch.float16, torch.bfloat16)


class TritonWo(WoKernel):
    name = "triton"
    description = "Triton weight-only GEMM (gemm_a16): INT8 or INT4 weights, fp16/bf16 activations (fp32 in bf16)"

    def unavailable_reason(self, bits: int, n: int, k: int, group_size: int) -> str | None:
        if bits == 4 and group_size % 16:
            return f"INT4 group size {group_size} is not a multiple of 16 (one block per K step of the dot)"
        return None

    def finalize_weight(self, w, w_scale, w_zero, bits, group_size, k) -> torch.Tensor:
        return w  # the plain int8 or packed INT4 the kernel reads (no CPU handle on this target)

    def linear(self, x, w, w_scale, w_zero, bias, bits, group_size, k, out_dtype, kernel_scales=None):
        import zq_compile.codegen.triton.ops  # noqa: F401  (registers zq::triton_*)

        xh = x if x.dtype in HALF else x.to(torch.bfloat16)
        y = torch.ops.zq.triton_linear_a16(xh, w, w_scale, w_zero, bias, None, bits, "none")
        return _finish(y, x, None, out_dtype)
