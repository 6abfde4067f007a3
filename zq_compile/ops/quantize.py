"""zq::quantize_per_token: float rows -> int8 values + one fp32 scale per row.

The op is opaque to tracing (it has a fake implementation for Dynamo, AOT and torch.export);
inside the zeroquant backend the chosen kernel's ``quantize_per_token`` replaces it (plain aten
ops on CPU), so Inductor fuses it with the producer of x (LayerNorm, GeLU, residual add) instead
of writing x out and reading it back.
"""

from __future__ import annotations

import torch

from zq_compile.quant.activation import quantize_per_token_ref


@torch.library.custom_op("zq::quantize_per_token", mutates_args=())
def quantize_per_token(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """x[..., K] -> (q int8 [..., K], scale fp32 [..., 1]); see ``quant/activation.py``."""
    if bits != 8:
        raise ValueError(f"quantize_per_token: bits={bits} is not valid; allowed: 8")
    return quantize_per_token_ref(x, bits)


@quantize_per_token.register_fake
def _(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.empty_like(x, dtype=torch.int8)
    scale = x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return q, scale
