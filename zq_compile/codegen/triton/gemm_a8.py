"""int8-activation GEMM with a fused epilogue: W8A8 and W4A8.

    acc[m, n] = sum_k x_q[m, k] * w_q[n, k]        int8 x int8, accumulated exactly in int32
    y[m, n]   = epilogue(acc)                       scales, zero point, bias, activation,
                                                    residual, output (see ``epilogue.py``)

Shapes: x_q int8 [M, K] with x_scale fp32 [M, 1] (one scale per token); the weight is W[N, K]
with groups along the output rows (G groups of N / G rows): int8 [N, K] (W_BITS=8) or int4
packed two per byte along K, uint8 [N, ceil(K / 2)], low nibble first (W_BITS=4, the layout of
``zq_compile.quant.pack_int4``), with w_scale fp32 [G] and optional w_zero int32 [G].

int4 weights are unpacked in registers: each K row of the tile loads byte k // 2 and shifts it
by 4 * (k % 2), then sign-extends the nibble; memory traffic for the weight is halved, the dot
is the same int8 tensor-core instruction. Program order, tile pointers and the unpacking are
shared with the weight-only GEMM (``tiles.py``).

INT4 weights with groups along K as well (W4A8's layout, ``quant/kgroups.py``: w_scale fp32
[G_rows, K / group_size], K_GROUP > 0) change scale along K: each K step's exact int32 dot is
converted to fp32, scaled by that block's [BLOCK_N] scales (minus the block's zero point times the
step's row sums) and summed in an fp32 accumulator; the epilogue then applies no weight scale. A
step must hold one block, so BLOCK_K is cut to divide the group size (``configs.kgroup_config``).
With GATE_GEMM the gate's accumulator is built the same way from its own block scales.

With GATE_GEMM (SwiGLU, ``passes/fuse_gate_up.py``) the kernel also takes the gate's weight
(same layout as W): every K step feeds the one x tile to two dots, and the epilogue multiplies
y by SiLU of the gate accumulator's dequantized tile, rounded to the float dtype as the gate
GEMM's own launch would store it. Its tiles come from a table of their own (two accumulators).

Reference: the exact int32 CPU reference kernel (``codegen/cpu/kernels.py``) followed by
``epilogue.finish_ref``; requantized outputs by ``quantize_per_token_ref`` of the float output.
A requantizing call is two launches, by one of two plans (``epilogue.py``, ``runtime.requant_plan``):
"store" writes the float rows and quantizes them in a second kernel; "recompute" runs this
kernel twice, first for the row absmax only, then to quantize in the epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.codegen.triton.configs import bucket_pruner, gemm_configs, kgroup_config
from zq_compile.codegen.triton.common import abs_bits, bits_to_float, quantize_values, reciprocal, scale_from_absmax
from zq_compile.codegen.triton.epilogue import FLOAT_NAMES, QMAX, activation, check_epilogue_args, dequantize, \
    finish_ref, gemm_epilogue, round_to
from zq_compile.codegen.triton.quantize import quantize_per_token
from zq_compile.codegen.triton.runtime import REQUANT_PLANS, identity_launcher, m_bucket, requant_plan
from zq_compile.codegen.triton.tiles import load_weight_tile, tile_offsets, weight_tile_ptrs
from zq_compile.quant import quantize_per_token_ref, unpack_int4


@triton.jit
def _block_dot(a, b, scale_ptr, zero_ptr, blk, HAS_ZERO: tl.constexpr):
    """One K step of an INT4 K-group weight, in real units: s * sum_k x q (- s * z * sum_k x),
    with the block's [BLOCK_N] scales and zero points at ``blk``; the int32 dot is exact."""
    s = tl.load(scale_ptr + blk)
    part = tl.dot(a, b).to(tl.float32) * s[None, :]
    if HAS_ZERO:
        zs = tl.load(zero_ptr + blk).to(tl.float32) * s
        part = part - tl.sum(a.to(tl.int32), axis=1).to(tl.float32)[:, None] * zs[None, :]
    return part


@triton.autotune(configs=gemm_configs("a8"), key=["M_BUCKET", "GATE_GEMM", "K_GROUP"],
                 prune_configs_by={"early_config_prune": bucket_pruner("a8")})
@triton.jit(do_not_specialize=["M"])  # a new token count must not compile a new binary
def gemm_a8_kernel(
    x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, w_zero_ptr, bias_ptr, res_ptr, out_ptr, absmax_ptr, c_ptr, gate_ptr,
    q_scale_ptr, gw_ptr, gw_scale_ptr, gw_zero_ptr, gate_bias_ptr, M, N, K, group_n,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_rm, stride_rn, stride_om, stride_on, stride_gm, stride_gn,
    stride_sg,
    M_BUCKET: tl.constexpr,  # the autotune key (runtime.m_bucket(M)); not read by the body
    W_BITS: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr, REQUANT: tl.constexpr, HAS_OUT_SCALE: tl.constexpr, HAS_GATE: tl.constexpr,
    REQUANT_PASS: tl.constexpr, FLOAT: tl.constexpr, QUANTIZE_X: tl.constexpr,
    GATE_GEMM: tl.constexpr, GATE_HAS_BIAS: tl.constexpr,
    K_GROUP: tl.constexpr,  # 0: one scale per output row group; else INT4 blocks of K_GROUP inputs (W4A8)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    offs_m, offs_n, offs_k, rows, cols = tile_offsets(M, N, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs, shifts = weight_tile_ptrs(w_ptr, cols, offs_k, stride_wn, stride_wk, W_BITS)
    if GATE_GEMM:  # the gate weight has the up weight's layout (checked by the wrapper)
        gw_ptrs, _ = weight_tile_ptrs(gw_ptr, cols, offs_k, stride_wn, stride_wk, W_BITS)
        if K_GROUP > 0:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)

    if QUANTIZE_X:
        # x is float: each row's absmax first (a pass over K), then the main loop quantizes
        # each tile as it loads it, with quantize.py's numerics (bit for bit)
        bits = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            xf = tl.load(x_ptrs + k0 * stride_xk, mask=(offs_k < K - k0)[None, :], other=0.0)
            bits = tl.maximum(bits, abs_bits(xf.to(tl.float32)))
        x_scale = scale_from_absmax(bits_to_float(tl.max(bits, axis=1)), QMAX)
        inv_scale = reciprocal(x_scale)
    # K groups: each K step's exact int32 dot times its block's scales, summed in fp32 (the gate's
    # too); a step never straddles two blocks (K_GROUP % BLOCK_K == 0, configs.kgroup_config)
    tl.static_assert(K_GROUP % BLOCK_K == 0)
    s_rows = (cols // group_n) * stride_sg
    if K_GROUP > 0:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    x_sum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        if QUANTIZE_X:
            xf = tl.load(x_ptrs, mask=k_ok[None, :], other=0.0)
            a = quantize_values(xf.to(tl.float32), inv_scale[:, None], QMAX)
        else:
            a = tl.load(x_ptrs, mask=k_ok[None, :], other=0)
        b = load_weight_tile(w_ptrs, shifts, k_ok, W_BITS)
        if K_GROUP > 0:
            blk = s_rows + k0 // K_GROUP
            acc += _block_dot(a, b, w_scale_ptr, w_zero_ptr, blk, HAS_ZERO)
        else:
            acc = tl.dot(a, b, acc)
        if GATE_GEMM:  # the same activation tile, a second weight: x is read once for both
            bg = load_weight_tile(gw_ptrs, shifts, k_ok, W_BITS)
            if K_GROUP > 0:
                acc_g += _block_dot(a, bg, gw_scale_ptr, gw_zero_ptr, blk, HAS_ZERO)
            else:
                acc_g = tl.dot(a, bg, acc_g)
            gw_ptrs += (BLOCK_K * W_BITS // 8) * stride_wk
        if HAS_ZERO and K_GROUP == 0:
            x_sum += tl.sum(a.to(tl.int32), axis=1)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += (BLOCK_K * W_BITS // 8) * stride_wk

    if not QUANTIZE_X:  # loaded after the loop: live through it, it made two tiles spill
        x_scale = tl.load(x_scale_ptr + offs_m, mask=offs_m < M, other=0.0)
    gate = 0.0
    if GATE_GEMM:
        # SiLU(gate) as the gate GEMM's own launch would store it (rounded to the float dtype),
        # so the product equals the two-launch fold's bit for bit
        gate = dequantize(acc_g, x_sum, offs_n, offs_n < N, x_scale, gw_scale_ptr, gw_zero_ptr, gate_bias_ptr,
                          group_n, True, HAS_ZERO and K_GROUP == 0, GATE_HAS_BIAS, K_GROUP == 0)
        gate = round_to(activation(gate, "silu"), FLOAT).to(tl.float32)
    gemm_epilogue(
        acc, x_sum, offs_m, offs_n,
        x_scale, w_scale_ptr, w_zero_ptr, bias_ptr, res_ptr, out_ptr, absmax_ptr, c_ptr, gate_ptr, gate, q_scale_ptr,
        M, N, group_n, stride_rm, stride_rn, stride_om, stride_on, stride_gm, stride_gn,
        True, HAS_ZERO and K_GROUP == 0, HAS_BIAS, ACTIVATION, HAS_RESIDUAL, REQUANT, HAS_OUT_SCALE, HAS_GATE,
        REQUANT_PASS, FLOAT, GATE_GEMM, K_GROUP == 0,
    )


def check_weight(w_q: torch.Tensor, w_scale: torch.Tensor, w_zero, w_bits: int, k: int) -> int:
    """Validate a quantized weight for K input features; returns N."""
    if w_bits == 8:
        if w_q.dtype != torch.int8 or w_q.dim() != 2 or w_q.shape[1] != k:
            raise ValueError(f"int8 weight must be int8 [N, {k}], got {w_q.dtype} {tuple(w_q.shape)}")
    elif w_bits == 4:
        if w_q.dtype != torch.uint8 or w_q.dim() != 2 or w_q.shape[1] != (k + 1) // 2:
            raise ValueError(f"int4 weight must be uint8 [N, {(k + 1) // 2}], got {w_q.dtype} {tuple(w_q.shape)}")
    else:
        raise ValueError(f"w_bits={w_bits} is not valid; allowed: 8, 4")
    n = w_q.shape[0]
    if w_scale.dtype != torch.float32 or w_scale.dim() != 1 or n % w_scale.numel():
        raise ValueError(f"w_scale must be fp32 [G] with G dividing {n}, got {w_scale.dtype} {tuple(w_scale.shape)}")
    if w_zero is not None and (w_zero.shape != w_scale.shape or w_zero.dtype != torch.int32):
        raise ValueError("w_zero must be int32 with one entry per weight group")
    return n


def check_kgroup_weight(w_q, w_scale, w_zero, w_bits: int, k: int, step: int) -> tuple[int, int]:
    """(N, K_GROUP) of a weight: w_scale fp32 [G] (groups of output rows, K_GROUP 0) or
    [G_rows, K / group_size] (INT4 blocks along K as well, ``quant/kgroups.py``), whose group
    size must be a multiple of ``step`` (the smallest BLOCK_K of the kernel's dot)."""
    if w_scale.dim() != 2:
        return check_weight(w_q, w_scale, w_zero, w_bits, k), 0
    check_weight(w_q, w_scale.new_ones(1), None, w_bits, k)  # the weight's own dtype and shape
    n = w_q.shape[0]
    rows, blocks = w_scale.shape
    if w_scale.dtype != torch.float32 or not rows or n % rows or not blocks or k % blocks:
        raise ValueError(f"K-group scales must be fp32 [G | {n}, K / group_size] with the group size "
                         f"dividing K={k}, got {w_scale.dtype} {tuple(w_scale.shape)}")
    if w_zero is not None and (w_zero.shape != w_scale.shape or w_zero.dtype != torch.int32):
        raise ValueError("w_zero must be int32 with one entry per weight block, like w_scale")
    if (k // blocks) % step:
        raise ValueError(f"K-group size {k // blocks} must be a multiple of {step} (a K step of the dot "
                         "holds one block); the INT4 presets use 32, 64 or 128")
    return n, k // blocks


def launch_kwargs(config) -> dict:
    """Meta-parameters of one explicit config (tests run chosen tiles without the autotuner)."""
    if config is None:
        return {}
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def check_gate_weight(gate_weight, w_q, w_scale, w_zero, n: int) -> None:
    """The gate GEMM's (w_q, w_scale, w_zero, bias) must share the up weight's layout: the
    kernel walks both with one set of strides, groups and zero-point handling."""
    if not (isinstance(gate_weight, tuple) and len(gate_weight) == 4):
        raise ValueError("gate_weight must be (w_q, w_scale, w_zero, bias)")
    g_q, g_s, g_z, g_b = gate_weight
    if g_q.dtype != w_q.dtype or g_q.shape != w_q.shape or g_q.stride() != w_q.stride():
        raise ValueError(f"gate weight {g_q.dtype} {tuple(g_q.shape)} strides {g_q.stride()} must match the up "
                         f"weight's {w_q.dtype} {tuple(w_q.shape)} strides {w_q.stride()}")
    if g_s.dtype != torch.float32 or g_s.shape != w_scale.shape:
        raise ValueError(f"gate w_scale must be fp32 {tuple(w_scale.shape)} (the up weight's groups), "
                         f"got {g_s.dtype} {tuple(g_s.shape)}")
    if (g_z is None) != (w_zero is None) or (g_z is not None and (g_z.shape != w_zero.shape or g_z.dtype != torch.int32)):
        raise ValueError("gate and up weights must both have int32 zero points per group, or neither")
    if g_b is not None and g_b.shape != (n,):
        raise ValueError(f"gate bias {tuple(g_b.shape)} must be ({n},)")


def gemm_a8(x_q, x_scale, w_q, w_scale, w_zero=None, bias=None, residual=None, *, out_dtype,
            w_bits: int = 8, activation: str = "none", requant: bool = False, out_scale=None, gate=None,
            gate_weight=None, plan: str = "auto", config=None, launch=identity_launcher):
    """x_q int8 [M, K] -> y [M, N] in out_dtype, or (q int8 [M, N], scale fp32 [M, 1]) if requant
    (of y * out_scale, when given: the next linear's smoothing 1/s per feature), by the plan
    ``plan`` ("store", "recompute", or "auto": ``runtime.requant_plan``'s choice for the shape).

    With ``x_scale=None``, x_q is the float activation (fp32/fp16/bf16 [M, K]) and the kernel
    quantizes it per token itself (``QUANTIZE_X``), as ``quantize.py`` would, bit for bit.

    ``gate_weight=(w_q, w_scale, w_zero, bias)`` (SwiGLU's gate, with the up weight's layout):
    the kernel also computes SiLU(x W_gate^T + b) per tile and multiplies by it (``GATE_GEMM``),
    as ``gate=`` would with that tensor stored first, bit for bit."""
    quantize_x = x_scale is None
    if x_q.dim() != 2 or (x_q.dtype not in FLOAT_NAMES if quantize_x else x_q.dtype != torch.int8):
        want = "fp32/fp16/bf16 (x_scale=None: quantized in the kernel)" if quantize_x else "int8"
        raise ValueError(f"x_q must be {want} [M, K], got {x_q.dtype} {tuple(x_q.shape)}")
    m, k = x_q.shape
    if not quantize_x and (x_scale.dtype != torch.float32 or x_scale.numel() != m):
        raise ValueError(f"x_scale must be fp32 with one value per row ({m}), got {tuple(x_scale.shape)}")
    n, k_group = check_kgroup_weight(w_q, w_scale, w_zero, w_bits, k, step=32)
    check_epilogue_args(m, n, bias, residual, activation, out_dtype)
    if k_group:
        w_scale = w_scale.contiguous()
        w_zero = w_zero.contiguous() if w_zero is not None else None
        config = None if config is None else kgroup_config(config, k_group)
    if out_scale is not None and (not requant or out_scale.shape != (n,)):
        raise ValueError(f"out_scale must be ({n},) and comes with requant=True (the scaled rows are only quantized)")
    if gate is not None and gate.shape != (m, n):
        raise ValueError(f"gate {tuple(gate.shape)} must be ({m}, {n})")
    if gate_weight is not None:
        if gate is not None:
            raise ValueError("gate and gate_weight exclude each other (the gate is read, or computed here)")
        check_gate_weight(gate_weight, w_q, w_scale, w_zero, n)
    if plan not in ("auto", *REQUANT_PLANS):
        raise ValueError(f"plan={plan!r} is not valid; allowed: auto, {', '.join(REQUANT_PLANS)}")
    if requant and plan == "auto":  # a plan only means something for a requantizing call
        plan = requant_plan(m, n, k, out_dtype.itemsize, 0 if gate is None else gate.element_size(),
                            gemms=1 if gate_weight is None else 2)
    recompute = requant and plan == "recompute" and m > 0 and n > 0
    out = torch.empty((m, n), dtype=torch.int8 if recompute else out_dtype, device=x_q.device)
    absmax = torch.zeros((m,), dtype=torch.int32, device=x_q.device) if requant else None
    q_scale = torch.empty((m, 1), dtype=torch.float32, device=x_q.device) if recompute else None
    if m and n:
        x_scale = w_scale if quantize_x else x_scale.reshape(m).contiguous()
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        kernel = gemm_a8_kernel if config is None else gemm_a8_kernel.fn
        args = (x_q, w_q, x_scale, w_scale, w_zero if w_zero is not None else w_scale,
                bias if bias is not None else w_scale, residual if residual is not None else out, out,
                absmax if absmax is not None else x_scale,
                out_scale.contiguous() if out_scale is not None else w_scale, gate if gate is not None else out,
                q_scale if q_scale is not None else x_scale,
                *(gate_weight[i] if gate_weight is not None and gate_weight[i] is not None else w_scale
                  for i in range(4)),
                m, n, k, n // w_scale.shape[0],
                x_q.stride(0), x_q.stride(1), w_q.stride(0), w_q.stride(1),
                *(residual.stride() if residual is not None else (0, 0)), out.stride(0), out.stride(1),
                *(gate.stride() if gate is not None else (0, 0)), w_scale.stride(0) if k_group else 0)
        meta = dict(M_BUCKET=m_bucket(m), W_BITS=w_bits, HAS_ZERO=w_zero is not None, HAS_BIAS=bias is not None,
                    ACTIVATION=activation, HAS_RESIDUAL=residual is not None, REQUANT=requant,
                    HAS_OUT_SCALE=out_scale is not None, HAS_GATE=gate is not None,
                    FLOAT=FLOAT_NAMES[out_dtype], QUANTIZE_X=quantize_x, GATE_GEMM=gate_weight is not None,
                    GATE_HAS_BIAS=gate_weight is not None and gate_weight[3] is not None, K_GROUP=k_group,
                    **launch_kwargs(config))
        for requant_pass in ((1, 2) if recompute else (0,)):  # pass 2 reads the absmax pass 1 finished
            launch(kernel)[grid](*args, REQUANT_PASS=requant_pass, **meta)
    if not requant:
        return out
    if recompute:
        return out, q_scale
    return quantize_per_token(out, absmax_bits=absmax, launch=launch)


def reference(x_q, x_scale, w_q, w_scale, w_zero=None, bias=None, residual=None, *, out_dtype,
              w_bits: int = 8, activation: str = "none", requant: bool = False, out_scale=None, gate=None,
              gate_weight=None):
    """The same computation in PyTorch: exact int32 GEMM, then the epilogue in fp32 (with
    ``gate_weight``, the gate GEMM first, stored in out_dtype as its own launch would)."""
    if x_scale is None:
        x_q, x_scale = quantize_per_token_ref(x_q)
    if gate_weight is not None:
        gate = reference(x_q, x_scale, *gate_weight, out_dtype=out_dtype, w_bits=w_bits, activation="silu")
    if w_scale.dim() == 2:  # INT4 K groups: the W4A8 reference (dequantized weight, fp32 matmul)
        from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS

        k = x_q.shape[1]
        y = W4A8_KERNELS["reference"].linear(x_q, x_scale.reshape(-1, 1), w_q, w_scale, w_zero, bias,
                                             k // w_scale.shape[1], k, torch.float32)
    else:
        w_int = unpack_int4(w_q, x_q.shape[1]) if w_bits == 4 else w_q
        y = KERNELS["reference"].linear(x_q, x_scale.reshape(-1, 1), w_int, w_scale, w_zero, bias, torch.float32)
    out = finish_ref(y, activation, residual, out_dtype, out_scale, gate)
    return quantize_per_token_ref(out) if requant else out
