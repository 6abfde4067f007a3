"""Weight-only GEMM for small M (decode): W8A16 and W4A16.

    y[m, n] = epilogue( sum_k x[m, k] * q[n, k] )          x float, q int8 / int4 weights
            = s_w[g(n)] * (sum_k x q - z_w[g(n)] * sum_k x) (+ bias, activation, residual)

Activations stay in their 16-bit float dtype (fp16 / bf16: the "A16" of the scheme) and are not
quantized; the weight is read as int8 [N, K] or packed int4 uint8 [N, ceil(K / 2)] (low nibble
first) and converted to the activation dtype in registers (exact: |q| <= 127). Because weight
groups run along the output rows, the group scale is constant along K and is applied once per
output in the epilogue rather than to every weight element; an asymmetric weight's zero point
likewise becomes ``- z * rowsum(x)``. The dot accumulates in fp32 on fp16/bf16 tensor cores.
fp32 activations are refused: in a first sweep for sm_80 / sm_90, an IEEE fp32 dot spilled registers
in all 16 candidate tiles of the static sweep (STACK 216 to 21280 bytes), and 3xTF32 in 4 of the
6 tiles tried; quantize such activations (W8A8) or run the model in 16 bits.

INT4 weights with groups along K as well (W4A16's default, ``quant/kgroups.py``: scale table
[G_rows, K / group_size]) have a scale that changes along K: with K_GROUP > 0 each K step is its
own dot of the exact integers, scaled by that block's [BLOCK_N] scales (and zero point) and added
to the fp32 accumulator, so no weight is ever rounded; the epilogue then applies no weight
scale. A step must not straddle two blocks, so BLOCK_K is cut to divide the group size
(``configs.kgroup_config``; the autotuner sees the cut tiles, the static checks build them).
Gathering a [BLOCK_K, BLOCK_N] scale tile instead (any BLOCK_K) was tried first: Triton's
pipeliner staged those tiles in shared memory, past sm_80's limit in 4 of 10 tiles.

At small M the GEMM is bound by reading the weight, so int8 halves and int4 quarters the bytes
moved compared with fp16. Reference: x @ dequantize(W)^T (``QuantizedWeight.dequantize``), then
``epilogue.finish_ref``; the two differ by fp32 summation order only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from zq_compile.codegen.triton.configs import bucket_pruner, gemm_configs, kgroup_config
from zq_compile.codegen.triton.epilogue import check_epilogue_args, finish_ref, gemm_epilogue
from zq_compile.codegen.triton.gemm_a8 import check_kgroup_weight, launch_kwargs
from zq_compile.codegen.triton.runtime import identity_launcher, interpreting, m_bucket
from zq_compile.codegen.triton.tiles import load_weight_tile, tile_offsets, weight_tile_ptrs
from zq_compile.quant import QuantizedWeight
from zq_compile.quant.kgroups import dequantize_kgroups


@triton.jit
def _dot(a, b, DOT_FP32: tl.constexpr):
    """A fresh fp32 product of the x tile and the weight tile (fp32 values of int4 / int8)."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), b, input_precision="ieee")
    return tl.dot(a, b.to(a.dtype))


@triton.autotune(configs=gemm_configs("a16"), key=["M_BUCKET", "K_GROUP"],
                 prune_configs_by={"early_config_prune": bucket_pruner("a16")})
@triton.jit(do_not_specialize=["M"])
def gemm_a16_kernel(
    x_ptr, w_ptr, w_scale_ptr, w_zero_ptr, bias_ptr, res_ptr, out_ptr,
    M, N, K, group_n,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_rm, stride_rn, stride_om, stride_on, stride_sg,
    M_BUCKET: tl.constexpr,  # the autotune key (runtime.m_bucket(M)); not read by the body
    W_BITS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, DOT_FP32: tl.constexpr,  # interpreter only, see dot_in_fp32
    K_GROUP: tl.constexpr,  # 0: one scale per output row group; else INT4 blocks of K_GROUP inputs
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    offs_m, offs_n, offs_k, rows, cols = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs, shifts = weight_tile_ptrs(w_ptr, cols, offs_k, stride_wn, stride_wk, W_BITS)
    # K groups: row (col // group_n) of the [G_rows, K / K_GROUP] scale table; a K step never
    # straddles two blocks (K_GROUP % BLOCK_K == 0, configs.kgroup_config)
    tl.static_assert(K_GROUP % BLOCK_K == 0)
    s_rows = (cols // group_n) * stride_sg

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    x_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
        # to fp32 first (exact): the interpreter cannot convert integers to bf16 directly
        b = load_weight_tile(w_ptrs, shifts, k_ok, W_BITS).to(tl.float32)
        if K_GROUP > 0:
            # this step's block scale on its own dot of the exact integers, as an N-group
            # scale is applied after the whole loop: s * sum x q - s * z * sum x
            blk = s_rows + k0 // K_GROUP
            s = tl.load(w_scale_ptr + blk)
            part = _dot(a, b, DOT_FP32) * s[None, :]
            if HAS_ZERO:
                zs = tl.load(w_zero_ptr + blk).to(tl.float32) * s
                part = part - tl.sum(a.to(tl.float32), axis=1)[:, None] * zs[None, :]
            acc += part
        elif DOT_FP32:
            acc = tl.dot(a.to(tl.float32), b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b.to(a.dtype), acc)
        if HAS_ZERO and K_GROUP == 0:
            x_sum += tl.sum(a.to(tl.float32), axis=1)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += (BLOCK_K * W_BITS // 8) * stride_wk

    gemm_epilogue(
        acc, x_sum, offs_m, offs_n,
        w_scale_ptr, w_scale_ptr, w_zero_ptr, bias_ptr, res_ptr, out_ptr, w_scale_ptr, w_scale_ptr, w_scale_ptr, 0.0,
        w_scale_ptr, M, N, group_n, stride_rm, stride_rn, stride_om, stride_on, 0, 0,
        False, HAS_ZERO and K_GROUP == 0, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, False, False, False, 0, "out", False,
        K_GROUP == 0,
    )


def dot_in_fp32(dtype: torch.dtype) -> bool:
    """bf16 dots run in fp32 under the interpreter only: its dot multiplies numpy arrays, which
    hold bf16 as raw uint16 bits (the result is garbage). On a GPU they use bf16 tensor cores.
    The products are exact either way (bf16 x int8 fits fp32), the sums fp32."""
    return dtype == torch.bfloat16 and interpreting()


def gemm_a16(x, w_q, w_scale, w_zero=None, bias=None, residual=None, *, w_bits: int = 8,
             activation: str = "none", config=None, launch=identity_launcher):
    """x [M, K] fp16/bf16 -> y [M, N] in x's dtype (weight scales: ``gemm_a8.check_kgroup_weight``)."""
    if x.dim() != 2 or x.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"x must be fp16/bf16 [M, K] (16-bit activations), got {x.dtype} {tuple(x.shape)}")
    m, k = x.shape
    n, k_group = check_kgroup_weight(w_q, w_scale, w_zero, w_bits, k, step=16)
    check_epilogue_args(m, n, bias, residual, activation, x.dtype)
    if k_group:  # the kernel indexes the table as row * stride(0) + block
        w_scale = w_scale.contiguous()
        w_zero = w_zero.contiguous() if w_zero is not None else None
        config = None if config is None else kgroup_config(config, k_group)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m and n:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        kernel = gemm_a16_kernel if config is None else gemm_a16_kernel.fn
        launch(kernel)[grid](
            x, w_q, w_scale, w_zero if w_zero is not None else w_scale,
            bias if bias is not None else w_scale, residual if residual is not None else out, out,
            m, n, k, n // w_scale.shape[0],
            x.stride(0), x.stride(1), w_q.stride(0), w_q.stride(1),
            *(residual.stride() if residual is not None else (0, 0)), out.stride(0), out.stride(1),
            w_scale.stride(0) if k_group else 0,
            M_BUCKET=m_bucket(m), W_BITS=w_bits, HAS_ZERO=w_zero is not None, HAS_BIAS=bias is not None,
            ACTIVATION=activation, HAS_RESIDUAL=residual is not None, DOT_FP32=dot_in_fp32(x.dtype),
            K_GROUP=k_group, **launch_kwargs(config),
        )
    return out


def reference(x, w_q, w_scale, w_zero=None, bias=None, residual=None, *, w_bits: int = 8,
              activation: str = "none"):
    """x @ dequantize(W)^T + bias in fp32, then activation, residual, x's dtype."""
    k = x.shape[1]
    if w_scale.dim() == 2:
        w = dequantize_kgroups(w_q, w_scale, w_zero, k // w_scale.shape[1], k, torch.float32)
    else:
        w = QuantizedWeight(qdata=w_q, scale=w_scale, zero_point=w_zero, bits=w_bits,
                            shape=(w_q.shape[0], k)).dequantize(torch.float32)
    y = F.linear(x.float(), w, None if bias is None else bias.float())
    return finish_ref(y, activation, residual, x.dtype)
