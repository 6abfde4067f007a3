"""Lower zq ops for the chosen kernel: the decomposition table handed to Inductor.

A kernel object supplies ``quantize_per_token`` and ``linear`` written in torch ops (the bf16
attention has a single lowering, ``codegen/cpu/attention.py``); AOT autograd traces them in place
of the zq ops, so whatever they leave as aten code Inductor fuses, and whatever they call as an
opaque op (the GEMM) stays one call.
"""

from __future__ import annotations

import torch
from torch._inductor.decomposition import select_decomp_table

from zq_compile.codegen.cpu.attention import attention_bf16
from zq_compile.ops.linear_wo import decompositions as scheme_decompositions


def decompositions_for(kernel) -> dict:
    table = dict(select_decomp_table())
    table[torch.ops.zq.quantize_per_token.default] = kernel.quantize_per_token
    table[torch.ops.zq.linear_w8a8.default] = kernel.linear
    table[torch.ops.zq.attention_bf16.default] = attention_bf16
    table.update(scheme_decompositions())  # zq::linear_wo, zq::linear_w4a8 (their kernel is an argument)
    return table
