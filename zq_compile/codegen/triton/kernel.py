"""The kernel object target "triton" lowers the zq ops to (the Triton twin of codegen/cpu/kernels.py).

The backend hands ``quantize_per_token`` and ``linear`` to AOT autograd as decompositions of
``zq::quantize_per_token`` and ``zq::linear_w8a8``: the graph then calls the Triton per-token
quantize kernel and the W8A8 GEMM whose epilogue applies both scales and the bias, so neither the
int32 accumulator nor a dequantized tensor is ever written to memory. That is the unfused
emission: on target "triton" the fusion passes (``passes/fuse_swiglu.py``, ``fuse_gate_up.py``,
``fuse_gemm_epilogue.py``, ``fuse_norm_quantize.py``, ``fuse_quantize_prologue.py``) first replace
what they can with the fused ``zq.triton_*`` ops directly (norm + quantize, activation / residual
/ requantize epilogues, gate + up in one kernel, quantizing prologues).

``select_triton_kernel`` runs a small self-test against the exact reference on the device it will
serve (once per device and process) and says why the kernel was chosen, or why it cannot run.
"""

from __future__ import annotations

import functools

import torch

from zq_compile.codegen.base import Kernel
from zq_compile.codegen.triton.runtime import device_problem, interpreting


class TritonKernel(Kernel):
    name = "triton"
    description = "Triton int8 kernels (per-token quantize; W8A8 GEMM with fused scale + bias epilogue)"

    def quantize_per_token(self, x, bits=8):
        if bits != 8:
            raise ValueError(f"quantize_per_token: bits={bits} is not valid; allowed: 8")
        return torch.ops.zq.triton_quantize_per_token(x)

    def linear(self, x_q, x_scale, w_q, w_scale, w_zero, bias, out_dtype):
        return torch.ops.zq.triton_linear_a8(x_q, x_scale, w_q, w_scale, w_zero, bias, None, out_dtype, 8, "none")


KERNEL = TritonKernel()


def _self_test(device: torch.device) -> str | None:
    """None if quantize + GEMM on ``device`` match the exact reference on an awkward problem."""
    from zq_compile.codegen.cpu.kernels import KERNELS
    from zq_compile.quant import quantize_per_token_ref, quantize_weight

    g = torch.Generator().manual_seed(0)
    x = torch.randn(13, 67, generator=g)
    qw = quantize_weight(torch.randn(24, 67, generator=g), groups=3)
    bias = torch.randn(24, generator=g)
    try:
        x_q, x_s = KERNEL.quantize_per_token(x.to(device))
        y = KERNEL.linear(x_q, x_s, qw.qdata.to(device), qw.scale.to(device), None, bias.to(device), torch.float32)
    except Exception as e:  # a broken driver or install raises anything; report it verbatim
        return f"self-test raised {type(e).__name__}: {e}"
    ref_q, ref_s = quantize_per_token_ref(x)
    if not (torch.equal(x_q.cpu(), ref_q) and torch.equal(x_s.cpu(), ref_s)):
        return "self-test: per-token quantize differs from the reference"
    want = KERNELS["reference"].linear(ref_q, ref_s, qw.qdata, qw.scale, None, bias, torch.float32)
    if not torch.allclose(y.cpu(), want, rtol=1e-5, atol=1e-5):
        return f"self-test: GEMM differs from the reference (max err {(y.cpu() - want).abs().max().item():.3g})"
    return None


@functools.cache
def select_triton_kernel():
    """The Triton kernel and why; raises if it cannot run in this process.

    It serves CUDA tensors, or CPU tensors under the interpreter (which one a given linear gets
    is checked per node by the rewrite pass, with the reason recorded when it stays float).
    """
    from zq_compile.codegen.cpu.select import KernelChoice

    if interpreting():
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise RuntimeError("target 'triton' cannot run here: no CUDA device, and TRITON_INTERPRET=1 (the "
                           "Triton CPU interpreter, for tests) is not set; use target 'cpu'")
    why = device_problem(device)
    if why is None:
        import zq_compile.codegen.triton.ops  # noqa: F401  (registers zq::triton_*)

        why = _self_test(device)
    if why:
        raise RuntimeError(f"target 'triton' cannot run here: {why}")
    if device.type == "cpu":
        where = ("Triton interpreter on CPU tensors (TRITON_INTERPRET=1): numpy runs every kernel "
                 "program; for correctness checks, not speed")
    else:
        cap = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]})"
    return KernelChoice(KERNEL, f"passed its self-test on {where}")
