"""Triton helpers shared by every kernel that quantizes: the same numerics as
``zq_compile/quant/activation.py`` (the reference), written so that they stay bit-exact on a GPU.

- Row absmax as the max of |x|'s IEEE bit patterns read as int32: for non-negative floats that
  order equals the float order, and every NaN sorts above +Inf, so a NaN in the row gives a NaN
  scale as ``torch.amax`` does (``tl.max`` on floats would drop NaNs). |x| is taken by clearing
  the sign bit, which is exact for NaNs too (PTX ``abs.f32`` of a NaN is unspecified).
- Divisions are correctly rounded (``div_rn``): Triton's default fp32 ``/`` on NVIDIA is an
  approximate ``div.full.f32``, which would change scales in the last bit.
- Round half to even by the 1.5 * 2^23 trick, (v + C) - C, exact for |v| < 2^22. ``libdevice.rint``
  would do on a GPU but the interpreter has no libdevice. The clamp to [-qmax, qmax] comes
  *before* the rounding (same result, the bounds are integers), so the product x * (1/scale)
  never feeds an add directly and cannot be contracted into an FMA, which would round the exact
  product instead of the fp32 one the reference rounds.
"""

import triton
import triton.language as tl

#: 1.5 * 2^23: adding it pushes the fraction bits out of an fp32 mantissa, rounding to even.
ROUND_MAGIC = 12582912.0


@triton.jit
def abs_bits(x):
    """|x| of an fp32 block as int32 bit patterns (monotonic in |x|; NaN above +Inf)."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def bits_to_float(bits):
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def scale_from_absmax(amax, QMAX: tl.constexpr):
    """scale = amax / qmax, at least FLT_MIN (the reciprocal of a subnormal is Inf), an
    all-zero row getting 1 (never a division by zero later); as quant/activation.py."""
    scale = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    scale = tl.where(scale < 1.1754943508222875e-38, 1.1754943508222875e-38, scale)
    return tl.where(amax == 0.0, 1.0, scale)


@triton.jit
def reciprocal(scale):
    return tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)


@triton.jit
def quantize_values(x, inv_scale, QMAX: tl.constexpr):
    """int8 of round_half_even(clamp(x * inv_scale)); x and inv_scale fp32 (broadcastable).

    A NaN product (a NaN input, or Inf * 0 in a row whose scale is Inf) becomes 0, as in the
    reference's self-comparison.
    """
    v = x * inv_scale
    v = tl.where(v == v, v, 0.0)
    v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
    v = (v + 12582912.0) - 12582912.0
    return v.to(tl.int8)
