"""Lower zq ops for the chosen kernel: the decomposition table handed to Inductor."""

from __future__ import annotations

import torch
from torch._inductor.decomposition import select_decomp_table

from zq_compile.ops.quantize import quantize_per_token_decomposition


def decompositions_for(kernel) -> dict:
    table = dict(select_decomp_table())
    table[torch.ops.zq.quantize_per_token.default] = quantize_per_token_decomposition
    table[torch.ops.zq.linear_w8a8.default] = kernel.linear
    return table
