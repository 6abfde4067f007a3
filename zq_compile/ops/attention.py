"""zq::attention_bf16: scaled dot-product attention with bf16 matmuls and an fp32 softmax.

Same arguments as ``F.scaled_dot_product_attention`` except the mask, which arrives as an
additive fp32 ``bias`` (the ``attention_bf16`` pass turns a bool mask into one, once per mask);
no dropout. The eager implementation and the decomposition the backend hands Inductor are the
same function (``codegen/cpu/attention.py``), so the matmuls become two bf16 ``bmm`` calls and
the softmax one fused loop.
"""

from __future__ import annotations

import torch

from zq_compile.codegen.cpu.attention import attention_bf16 as _attention_bf16


@torch.library.custom_op("zq::attention_bf16", mutates_args=())
def attention_bf16(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    is_causal: bool,
    enable_gqa: bool,
) -> torch.Tensor:
    if bias is not None and is_causal:
        raise ValueError("zq::attention_bf16: give a bias or is_causal=True, not both")
    return _attention_bf16(q, k, v, bias, scale, is_causal, enable_gqa)


@attention_bf16.register_fake
def _(q, k, v, bias, scale, is_causal, enable_gqa):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
