"""zq::linear_w8a8: y = (x_q @ w_q^T) * x_scale * w_scale[group] + bias, in the given dtype.

x_q int8 [..., K] with x_scale fp32 [..., 1] (one scale per token); w_q int8 [N, K] with
w_scale fp32 [G] (G groups of N / G output rows) and optional w_zero int32 [G]; bias [N].
The product is an int8 x int8 GEMM accumulating in int32: never a float matmul on dequantized
weights. Which GEMM runs is chosen per machine (``codegen/cpu/select.py``); every kernel's
``linear`` function below is both this op's eager implementation and the decomposition the
backend hands Inductor, so the epilogue (scales, zero-point correction, bias, cast) is plain aten
code Inductor fuses into the neighbouring ops.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("zq::linear_w8a8", mutates_args=())
def linear_w8a8(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    from zq_compile.codegen.cpu.kernels import KERNELS, is_weight_handle
    from zq_compile.codegen.cpu.select import default_cpu_kernel

    check_linear_args(x_q, x_scale, w_q, w_scale, w_zero, bias)
    kernel = None
    if x_q.device.type == "cpu":
        # A graph whose race picked oneDNN holds its weights as handles whose only copy is
        # oneDNN's; the process default (raced on a proxy problem) may be another kernel, which
        # would read the handle's zeros: the op run eagerly (explain's per-layer errors) must
        # follow the weight, not the default.
        kernel = KERNELS["onednn"] if is_weight_handle(w_q) else default_cpu_kernel()
    if kernel is None:
        raise NotImplementedError(f"zq::linear_w8a8 has no kernel for device {x_q.device.type}")
    return kernel.linear(x_q, x_scale, w_q, w_scale, w_zero, bias, out_dtype)


@linear_w8a8.register_fake
def _(x_q, x_scale, w_q, w_scale, w_zero, bias, out_dtype):
    return x_q.new_empty((*x_q.shape[:-1], w_q.shape[0]), dtype=out_dtype)


def check_linear_args(x_q, x_scale, w_q, w_scale, w_zero, bias) -> None:
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8:
        raise TypeError(f"linear_w8a8 wants int8 x_q and w_q, got {x_q.dtype} and {w_q.dtype}")
    if w_q.dim() != 2 or x_q.shape[-1] != w_q.shape[1]:
        raise ValueError(f"linear_w8a8: x_q {tuple(x_q.shape)} does not match w_q {tuple(w_q.shape)}")
    if x_scale.shape != (*x_q.shape[:-1], 1):
        raise ValueError(f"linear_w8a8: x_scale {tuple(x_scale.shape)} must be {(*x_q.shape[:-1], 1)}")
    n = w_q.shape[0]
    if w_scale.dim() != 1 or n % w_scale.numel():
        raise ValueError(f"linear_w8a8: {w_scale.numel()} weight groups do not divide {n} rows")
    if w_zero is not None and w_zero.shape != w_scale.shape:
        raise ValueError("linear_w8a8: w_zero must have one entry per weight group")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"linear_w8a8: bias {tuple(bias.shape)} must be ({n},)")


def epilogue(
    acc: torch.Tensor,
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale_rows: torch.Tensor | None,
    zero_correction_rows: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """acc [M, N] (int32, or fp32 already multiplied by the weight scales) -> y [..., N].

    ``w_scale_rows`` is None when the kernel has applied the weight scales. With asymmetric
    weights, sum_k x[k] (w[k] - z) = acc - z * rowsum(x), so after scaling,
    ``zero_correction_rows`` = s_w * z (per output row) times the row sum of x_q is subtracted.
    """
    lead = x_q.shape[:-1]
    y = acc.reshape(*lead, acc.shape[-1]).float()
    if w_scale_rows is not None:
        y = y * w_scale_rows
    if zero_correction_rows is not None:
        y = y - x_q.sum(dim=-1, keepdim=True, dtype=torch.int32).float() * zero_correction_rows
    y = y * x_scale
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def group_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.repeat_interleave(n // t.numel())
