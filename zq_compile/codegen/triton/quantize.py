"""Per-token int8 quantize: x[M, K] (fp32/fp16/bf16) -> q int8 [M, K], scale fp32 [M, 1].

    scale[m] = max_k |x[m, k]| / 127        (1 if the row is all zero; NaN if it holds a NaN)
    q[m, k]  = clamp(round_half_even(x[m, k] * (1 / scale[m])), -127, 127), NaN products -> 0

Reference: ``zq_compile.quant.quantize_per_token_ref``; this kernel matches it bit for bit.

Each program owns BLOCK_M rows and walks K in BLOCK_K chunks twice: once for the row absmax,
once to quantize (the second read hits L2 for the row lengths of transformer layers). Rows of any
length work, which matters for FFN inputs (11008 in Llama-7B, 28672 in Llama-70B).

With ``absmax_bits`` given (int32 [M], the IEEE bits of each row's absmax, as the GEMM epilogue
accumulates them with atomics when it requantizes its output) the first pass is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from zq_compile.codegen.triton.common import abs_bits, bits_to_float, quantize_values, reciprocal, scale_from_absmax
from zq_compile.codegen.triton.configs import row_launch
from zq_compile.codegen.triton.runtime import identity_launcher
from zq_compile.quant.activation import qmax_for, quantize_per_token_ref

#: The pure-PyTorch twin every test compares this kernel with (bit for bit).
reference = quantize_per_token_ref


@triton.jit
def quantize_per_token_kernel(
    x_ptr, q_ptr, scale_ptr, absmax_ptr,
    M, K,
    stride_xm, stride_xk, stride_qm, stride_qk,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, HAS_ABSMAX: tl.constexpr, QMAX: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    rows64 = rows.to(tl.int64)  # M * K can pass 2^31 for long prompts times wide FFNs
    cols = tl.arange(0, BLOCK_K)
    if HAS_ABSMAX:
        amax = bits_to_float(tl.load(absmax_ptr + rows, mask=row_ok, other=0))
    else:
        bits = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + cols
            mask = row_ok[:, None] & (ks[None, :] < K)
            x = tl.load(x_ptr + rows64[:, None] * stride_xm + ks[None, :] * stride_xk, mask=mask, other=0.0)
            bits = tl.maximum(bits, abs_bits(x.to(tl.float32)))
        amax = bits_to_float(tl.max(bits, axis=1))
    scale = scale_from_absmax(amax, QMAX)
    inv = reciprocal(scale)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + cols
        mask = row_ok[:, None] & (ks[None, :] < K)
        x = tl.load(x_ptr + rows64[:, None] * stride_xm + ks[None, :] * stride_xk, mask=mask, other=0.0)
        q = quantize_values(x.to(tl.float32), inv[:, None], QMAX)
        tl.store(q_ptr + rows64[:, None] * stride_qm + ks[None, :] * stride_qk, q, mask=mask)
    tl.store(scale_ptr + rows, scale, mask=row_ok)


def quantize_per_token(x: torch.Tensor, absmax_bits: torch.Tensor | None = None, bits: int = 8,
                       launch=identity_launcher) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] floating (any strides) -> (q int8 [M, K] contiguous, scale fp32 [M, 1])."""
    if x.dim() != 2 or not x.is_floating_point() or x.dtype == torch.float64:
        raise ValueError(f"quantize_per_token: want a 2-D fp32/fp16/bf16 tensor, got {tuple(x.shape)} {x.dtype}")
    if bits != 8:
        raise ValueError(f"quantize_per_token: bits={bits} is not valid; allowed: 8")
    m, k = x.shape
    if absmax_bits is not None and (absmax_bits.dtype != torch.int32 or absmax_bits.shape != (m,)):
        raise ValueError(f"quantize_per_token: absmax_bits must be int32 [{m}], got {absmax_bits.dtype} "
                         f"{tuple(absmax_bits.shape)}")
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    if m == 0:
        return q, scale
    block_m, block_k, warps = row_launch(k)
    launch(quantize_per_token_kernel)[(triton.cdiv(m, block_m),)](
        x, q, scale, absmax_bits if absmax_bits is not None else scale,
        m, k,
        x.stride(0), x.stride(1), q.stride(0), q.stride(1),
        BLOCK_M=block_m, BLOCK_K=block_k, HAS_ABSMAX=absmax_bits is not None, QMAX=qmax_for(bits),
        num_warps=warps,
    )
    return q, scale
