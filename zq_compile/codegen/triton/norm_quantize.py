"""LayerNorm or RMSNorm fused with per-token int8 quantize: one read of each row.

    LayerNorm: y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias     (biased variance)
    RMSNorm:   y = x / sqrt(mean(x^2) + eps) * weight
    y is rounded to x's dtype (what the unfused model hands its next op), then
    (q, scale) = per-token quantize of y, exactly as ``quantize.py`` / the reference computes it;
    with a quant_scale c [N] (outlier smoothing's 1/s), of (y * c) rounded to x's dtype instead,
    while the float output stays y.

Shapes: x [M, N] fp32/fp16/bf16 (N <= 16384: the row is held in registers), weight and bias [N]
(either may be absent). Returns q int8 [M, N], scale fp32 [M, 1] and, when asked (a residual
branch needs the normalised activations in float), y [M, N] in x's dtype.

Statistics are fp32 with correctly rounded division and square root. Reference: ``reference``
below (``F.layer_norm`` / ``F.rms_norm`` in fp32, then ``quantize_per_token_ref``). The norm
itself matches it to fp32 rounding (summation order); the quantize step is exact: q and scale
equal ``quantize_per_token_ref`` of the kernel's own y bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from zq_compile.codegen.triton.common import abs_bits, bits_to_float, quantize_values, reciprocal, scale_from_absmax
from zq_compile.codegen.triton.configs import norm_launch
from zq_compile.codegen.triton.runtime import identity_launcher
from zq_compile.quant.activation import qmax_for, quantize_per_token_ref


@triton.jit
def norm_quantize_kernel(
    x_ptr, w_ptr, b_ptr, c_ptr, y_ptr, q_ptr, scale_ptr,
    M, N, eps,
    stride_xm, stride_ym, stride_qm,
    RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_QSCALE: tl.constexpr,
    EMIT_Y: tl.constexpr, QMAX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    n = tl.full((BLOCK_M,), N, tl.float32)
    if RMS:
        xc = x
    else:
        mean = tl.math.div_rn(tl.sum(x, axis=1), n)
        xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.math.div_rn(tl.sum(xc * xc, axis=1), n)
    rstd = reciprocal(tl.math.sqrt_rn(var + eps))
    y = xc * rstd[:, None]
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    y = y.to(x_ptr.dtype.element_ty)
    if EMIT_Y:
        tl.store(y_ptr + rows64[:, None] * stride_ym + cols[None, :], y, mask=mask)
    if HAS_QSCALE:
        # rounded to x's dtype as the graph's own multiply would be, so q matches it exactly
        y = (y.to(tl.float32) * tl.load(c_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]) \
            .to(x_ptr.dtype.element_ty)
    yf = y.to(tl.float32)
    amax = bits_to_float(tl.max(tl.where(mask, abs_bits(yf), 0), axis=1))
    scale = scale_from_absmax(amax, QMAX)
    q = quantize_values(yf, reciprocal(scale)[:, None], QMAX)
    tl.store(q_ptr + rows64[:, None] * stride_qm + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows, scale, mask=row_ok)


def norm_quantize(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float,
                  *, rms: bool, emit_float: bool, quant_scale: torch.Tensor | None = None,
                  launch=identity_launcher):
    """x [M, N] -> (q int8 [M, N], scale fp32 [M, 1], y [M, N] in x.dtype or None)."""
    if x.dim() != 2 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"norm_quantize: want fp32/fp16/bf16 [M, N], got {x.dtype} {tuple(x.shape)}")
    m, n = x.shape
    for name, t in (("weight", weight), ("bias", bias), ("quant_scale", quant_scale)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"norm_quantize: {name} {tuple(t.shape)} must be ({n},)")
    if rms and bias is not None:
        raise ValueError("norm_quantize: RMSNorm has no bias")
    block_m, block_n, warps = norm_launch(n, rms, emit_float)
    if x.stride(1) != 1:
        x = x.contiguous()  # rows are read as contiguous vectors
    weight = weight.contiguous() if weight is not None else None
    bias = bias.contiguous() if bias is not None else None
    quant_scale = quant_scale.contiguous() if quant_scale is not None else None
    q = torch.empty((m, n), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    y = torch.empty((m, n), dtype=x.dtype, device=x.device) if emit_float else None
    if m:
        launch(norm_quantize_kernel)[(triton.cdiv(m, block_m),)](
            x, weight if weight is not None else scale, bias if bias is not None else scale,
            quant_scale if quant_scale is not None else scale, y if y is not None else q, q, scale,
            m, n, eps,
            x.stride(0), y.stride(0) if y is not None else 0, q.stride(0),
            RMS=rms, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            HAS_QSCALE=quant_scale is not None, EMIT_Y=emit_float,
            QMAX=qmax_for(8), BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps,
        )
    return q, scale, y


def reference(x, weight, bias, eps, *, rms: bool, quant_scale=None):
    """(q, scale, y): the norm in fp32 via torch, rounded to x's dtype, then the quantize reference
    (of y * quant_scale in x's dtype, when given)."""
    n = x.shape[-1]
    w = None if weight is None else weight.float()
    if rms:
        y = F.rms_norm(x.float(), (n,), w, eps)
    else:
        y = F.layer_norm(x.float(), (n,), w, None if bias is None else bias.float(), eps)
    y = y.to(x.dtype)
    q, scale = quantize_per_token_ref(y if quant_scale is None else (y.float() * quant_scale.float()).to(x.dtype))
    return q, scale, y
