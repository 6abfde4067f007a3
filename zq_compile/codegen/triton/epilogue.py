"""The GEMM epilogue both GEMMs share, chosen by constexprs, and its pure-PyTorch reference.

For an output tile y[m, n] of an accumulator acc (int32 for int8 activations, fp32 for float
ones), with g(n) = n // GROUP_N the weight group of output row n:

    y = acc * s_w[g(n)]                                   weight group scale
    y = y - rowsum_x[m] * (s_w[g(n)] * z_w[g(n)])         HAS_ZERO: asymmetric weights, since
                                                          sum_k x (w - z) = acc - z * sum_k x
    y = y * s_x[m]                                        HAS_X_SCALE: per-token activation scale
    y = y + bias[n]                                       HAS_BIAS
    y = act(y)                                            ACTIVATION: none, gelu_erf, gelu_tanh, silu,
                                                          tanh (BERT's pooler)
    y = y * gate[m, n]                                    HAS_GATE: SwiGLU's SiLU(gate), written by
                                                          the gate GEMM (passes/fuse_swiglu.py) or
                                                          computed beside y by the same kernel
                                                          (gemm_a8's GATE_GEMM, passes/fuse_gate_up.py)
    y = y + residual[m, n]                                HAS_RESIDUAL
    out[m, n] = y in out's dtype                          fp32 / fp16 / bf16
    out[m, n] = out[m, n] * c[n] in out's dtype           HAS_OUT_SCALE: outlier smoothing's 1/s of the
                                                          linear that reads out (only with REQUANT:
                                                          nothing else reads the stored rows)
    REQUANT: the rows are quantized per token for the next linear, in one of two plans
             (``runtime.requant_plan``), each a pair of launches:
             "store"     pass 0 stores out[m, n] (float) and atomic-maxes |out[m, :]| (as IEEE
                         bits) into absmax[m]; ``quantize.py`` then turns the float rows into
                         int8 + per-token scales in one read.
             "recompute" pass 1 only atomic-maxes; pass 2 runs the GEMM again, quantizes its
                         rows with the finished absmax and stores int8 + scale[m]. No float row
                         is written or read back; the int8 GEMM is done twice (exact in int32,
                         so both passes see the same values).
             In passes 1 and 2 FLOAT names the float dtype the rows are rounded to first (in
             pass 0, and without REQUANT, it is out's dtype and FLOAT is not read).

All arithmetic is fp32, in the order of ``zq_compile.ops.linear.epilogue`` (the reference the CPU
kernels use), so on the interpreter the kernels match it bit for bit; on a GPU, FMA contraction
may change the last bit of y.
A requantizing GEMM needs the absmax of a whole output row, which no single tile sees: the tiles
publish theirs with an atomic max (order-free, so deterministic), and a second launch quantizes,
either from the stored float rows or by computing the tile again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from zq_compile.codegen.triton.common import abs_bits, bits_to_float, quantize_values, reciprocal, scale_from_absmax

ACTIVATIONS = ("none", "gelu_erf", "gelu_tanh", "silu", "tanh")
#: The requantized rows are int8 (quant/activation.qmax_for(8)).
QMAX = tl.constexpr(127)
#: Names of the float dtypes for the FLOAT constexpr.
FLOAT_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@triton.jit
def _tanh(u):
    # from exp (tl.math has no tanh that the interpreter also runs):
    # tanh(|u|) = (1 - e) / (1 + e) with e = exp(-2|u|) in (0, 1], which cannot overflow.
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u < 0.0, -t, t)


@triton.jit
def activation(y, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu_erf":
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACTIVATION == "gelu_tanh":
        y = 0.5 * y * (1.0 + _tanh(0.7978845608028654 * (y + 0.044715 * y * y * y)))
    elif ACTIVATION == "tanh":
        y = _tanh(y)
    elif ACTIVATION == "silu":
        y = y * tl.sigmoid(y)
    return y


@triton.jit
def round_to(y, FLOAT: tl.constexpr):
    """fp32 y rounded to the FLOAT dtype ("fp32", "fp16", "bf16")."""
    if FLOAT == "fp16":
        return y.to(tl.float16)
    elif FLOAT == "bf16":
        return y.to(tl.bfloat16)
    return y


@triton.jit
def dequantize(acc, x_sum, offs_n, n_ok, x_scale, w_scale_ptr, w_zero_ptr, bias_ptr, GROUP_N,
               HAS_X_SCALE: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
               HAS_W_SCALE: tl.constexpr):
    """The accumulator tile as fp32 values: scales, zero point, bias (the first lines above).
    Without HAS_W_SCALE the block scales were applied in the K loop (INT4 K groups, whose scale
    changes along K; both GEMMs) and the accumulator is already in real units."""
    groups = offs_n // GROUP_N
    y = acc.to(tl.float32)
    if HAS_W_SCALE:
        w_scale = tl.load(w_scale_ptr + groups, mask=n_ok, other=0.0)
        y = y * w_scale[None, :]
    if HAS_ZERO:
        zero_corr = w_scale * tl.load(w_zero_ptr + groups, mask=n_ok, other=0).to(tl.float32)
        y = y - x_sum.to(tl.float32)[:, None] * zero_corr[None, :]
    if HAS_X_SCALE:  # x_scale: this tile's [BLOCK_M] token scales (loaded, or made by the prologue)
        y = y * x_scale[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    return y


@triton.jit
def load_tile(ptr, offs_m, offs_n, stride_m, stride_n, M, N):
    """A [BLOCK_M, BLOCK_N] tile of a [M, N] tensor as fp32 (0 outside)."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    t = tl.load(ptr + offs_m.to(tl.int64)[:, None] * stride_m + offs_n[None, :] * stride_n, mask=mask, other=0.0)
    return t.to(tl.float32)


@triton.jit
def gemm_epilogue(
    acc, x_sum, offs_m, offs_n,
    x_scale, w_scale_ptr, w_zero_ptr, bias_ptr, res_ptr, out_ptr, absmax_ptr, c_ptr, gate_ptr, gate, q_scale_ptr,
    M, N, GROUP_N,
    stride_rm, stride_rn, stride_om, stride_on, stride_gm, stride_gn,
    HAS_X_SCALE: tl.constexpr, HAS_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr, HAS_RESIDUAL: tl.constexpr, REQUANT: tl.constexpr, HAS_OUT_SCALE: tl.constexpr,
    HAS_GATE: tl.constexpr, REQUANT_PASS: tl.constexpr, FLOAT: tl.constexpr, GATE_GEMM: tl.constexpr,
    HAS_W_SCALE: tl.constexpr,
):
    """The SiLU(gate) tile: with HAS_GATE loaded from ``gate_ptr`` here, after the activation
    (loaded earlier, it stayed live through the dequantize and made a tile spill); with
    GATE_GEMM the fp32 tile ``gate`` the caller's second GEMM computed. Neither: not read."""
    m_ok = offs_m < M
    n_ok = offs_n < N
    mask = m_ok[:, None] & n_ok[None, :]
    y = dequantize(acc, x_sum, offs_n, n_ok, x_scale, w_scale_ptr, w_zero_ptr, bias_ptr, GROUP_N,
                   HAS_X_SCALE, HAS_ZERO, HAS_BIAS, HAS_W_SCALE)
    y = activation(y, ACTIVATION)
    m64 = offs_m.to(tl.int64)
    if GATE_GEMM:
        y = y * gate
    elif HAS_GATE:
        y = y * load_tile(gate_ptr, offs_m, offs_n, stride_gm, stride_gn, M, N)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + m64[:, None] * stride_rm + offs_n[None, :] * stride_rn, mask=mask, other=0.0)
        y = y + res.to(tl.float32)
    if REQUANT_PASS == 0:
        y_out = y.to(out_ptr.dtype.element_ty)
    else:  # out is int8 or unwritten: the rows are rounded to the float dtype they stand for
        y_out = round_to(y, FLOAT)
    if HAS_OUT_SCALE:
        # rounded twice, as the graph's multiply of the rounded output would be
        c = tl.load(c_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        y_out = (y_out.to(tl.float32) * c[None, :]).to(y_out.dtype)
    out_ptrs = out_ptr + m64[:, None] * stride_om + offs_n[None, :] * stride_on
    if REQUANT and REQUANT_PASS == 2:
        # absmax is final (pass 1 finished): the same quantize as quantize.py's, bit for bit
        scale = scale_from_absmax(bits_to_float(tl.load(absmax_ptr + offs_m, mask=m_ok, other=0)), QMAX)
        tl.store(out_ptrs, quantize_values(y_out.to(tl.float32), reciprocal(scale)[:, None], QMAX), mask=mask)
        # one column of tiles writes the scales (a [BLOCK_M] mask: a scalar & vector mask has
        # no dtype the interpreter stores with)
        first_n = (offs_m * 0 + tl.min(offs_n, axis=0)) == 0
        tl.store(q_scale_ptr + offs_m, scale, mask=m_ok & first_n)
    else:
        if not REQUANT or REQUANT_PASS == 0:
            tl.store(out_ptrs, y_out, mask=mask)
        if REQUANT:
            bits = tl.where(mask, abs_bits(y_out.to(tl.float32)), 0)
            tl.atomic_max(absmax_ptr + offs_m, tl.max(bits, axis=1), mask=m_ok)


# -- reference ------------------------------------------------------------------------------

def activation_ref(y: torch.Tensor, name: str) -> torch.Tensor:
    if name == "none":
        return y
    if name == "gelu_erf":
        return F.gelu(y)
    if name == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if name == "silu":
        return F.silu(y)
    if name == "tanh":
        return torch.tanh(y)
    raise ValueError(f"activation={name!r} is not valid; allowed: {', '.join(ACTIVATIONS)}")


def finish_ref(y: torch.Tensor, activation: str, residual: torch.Tensor | None, out_dtype,
               out_scale: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 y after scales and bias -> activation, gate, residual, output dtype (as the kernel does)."""
    y = activation_ref(y, activation)
    if gate is not None:
        y = y * gate.float()
    if residual is not None:
        y = y + residual.float()
    y = y.to(out_dtype)
    return y if out_scale is None else (y.float() * out_scale.float()).to(out_dtype)


def check_epilogue_args(m: int, n: int, bias, residual, activation: str, out_dtype) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not valid; allowed: {', '.join(ACTIVATIONS)}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"out_dtype={out_dtype} is not valid; allowed: float32, float16, bfloat16")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({n},)")
    if residual is not None and residual.shape != (m, n):
        raise ValueError(f"residual {tuple(residual.shape)} must be ({m}, {n})")
