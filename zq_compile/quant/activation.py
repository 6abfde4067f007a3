"""Token-wise dynamic activation quantization (reference).

x[..., K] -> q[..., K] int8 and scale[..., 1] fp32, one scale per token (row), computed at run
time:  scale = max|x_row| / qmax,  q = clamp(round(x * (1 / scale)), -qmax, qmax),
qmax = 2^(b-1) - 1 (x times the fp32 reciprocal of the scale, not x / scale: kernels must match).

Edge cases are part of the contract every kernel must match:
- an all-zero row gets scale 1 (no division by zero) and q = 0;
- a nonzero scale is at least FLT_MIN (2^-126): below it 1 / scale overflows to Inf and every
  q of the row became +-127 whatever x was (fp32 / bf16 rows with absmax under ~1.5e-36 are
  quantized with the fixed step FLT_MIN instead, losing precision gradually);
- a row holding NaN or +-Inf gets a NaN or Inf scale, so the row's GEMM output is non-finite,
  while its q values are 0 wherever x / scale is NaN; other rows are untouched;
- rounding is half-to-even (torch.round).
Scales are computed in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch


def qmax_for(bits: int) -> int:
    return 2 ** (bits - 1) - 1


#: Smallest scale used for a nonzero row: the reciprocal of a subnormal scale is Inf.
MIN_SCALE = torch.finfo(torch.float32).tiny


def per_token_scale(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    scale = amax / qmax_for(bits)
    # Comparisons, not clamp_min: a NaN scale must stay NaN (its row's output is NaN).
    scale = torch.where(scale < MIN_SCALE, torch.full_like(scale, MIN_SCALE), scale)
    return torch.where(amax == 0, torch.ones_like(scale), scale)


def quantize_per_token_ref(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    if not x.is_floating_point():
        raise TypeError(f"quantize_per_token expects a floating tensor, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("quantize_per_token needs at least one dimension (the token's features)")
    scale = per_token_scale(x, bits)
    qmax = qmax_for(bits)
    # Multiply by the reciprocal (cheaper than a division in every kernel), and zero NaNs with
    # a self-comparison, which Inductor's CPU codegen vectorizes (isnan it does not). The product
    # is written three times on purpose: each copy has one consumer, so Inductor keeps the whole
    # chain in one loop (its C++ codegen computes the identical products once); one product with
    # three readers is stored to memory and read back under our realize_reads_threshold=0
    # (backend.py), a full extra pass over the activation.
    inv = 1.0 / scale

    def product():  # x.float() too is repeated: for bf16/fp16 x it is a node of its own
        return x.float() * inv

    rounded = torch.round(product())
    scaled = torch.where(product() == product(), rounded, torch.zeros_like(rounded))
    q = scaled.clamp(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize_per_token_ref(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.float() * scale).to(dtype)
