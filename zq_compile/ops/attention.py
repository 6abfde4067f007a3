"""zq::attention_bf16: scaled dot-product attention with bf16 matmuls and an fp32 softmax.

Same arguments as ``F.scaled_dot_product_attention`` except the mask, which arrives as an
additive fp32 ``bias`` (the ``attention_bf16`` pass turns a bool mask into one, once per mask);
no dropout. The op is registered on the lowering function itself (``codegen/cpu/attention.py``),
so its eager implementation and the decomposition the backend hands Inductor are one function:
two bf16 ``bmm`` calls and one fused softmax loop.
"""

from __future__ import annotations

import torch

from zq_compile.codegen.cpu.attention import attention_bf16 as _lowering

attention_bf16 = torch.library.custom_op("zq::attention_bf16", mutates_args=())(_lowering)


@attention_bf16.register_fake
def _(q, k, v, bias, scale, is_causal, enable_gqa):
    return q.new_empty((*q.shape[:-1], v.shape[-1]))
