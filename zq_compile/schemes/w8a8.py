"""W8A8: int8 weights (group-wise scales), int8 activations with one dynamic scale per token.

    x ──► zq.quantize_per_token ──► (x_q, x_scale) ──► zq.linear_w8a8(·, W_q, W_s, W_z, b) ──► y

Consumers of the same x share one quantize node (Q, K and V projections read one LayerNorm
output: quantizing it once saves two passes over the activations per layer).
"""

from __future__ import annotations

import operator

import torch

from zq_compile.passes.graph_utils import annotate
from zq_compile.quant.weight import quantize_weight
from zq_compile.schemes.base import SchemeHandler, inference_only, register


class W8A8(SchemeHandler):
    name = "w8a8"
    int8_gemm = True

    def quantize(self, w_nk, scheme, groups, qmax=None):
        return quantize_weight(w_nk, bits=8, groups=groups, symmetric=scheme.symmetric, qmax=qmax)

    def emit(self, ctx, x, weight, bias, out_dtype):
        graph = ctx.gm.graph
        x_q, x_s = self.quantized_activation(ctx, x)
        w_q, w_s, w_z = weight
        y = graph.call_function(
            torch.ops.zq.linear_w8a8.default,
            (x_q, x_s, w_q, w_s, w_z, inference_only(ctx, bias), out_dtype),
        )
        annotate(y, ctx.fake_mode)
        return y

    def quantized_activation(self, ctx, x):
        """(x_q, x_s) for ``x``, emitted once per activation and shared by its consumers."""
        graph = ctx.gm.graph
        memo = ctx.memo.setdefault("quantize_per_token", {})
        if x not in memo:
            q = graph.call_function(torch.ops.zq.quantize_per_token.default, (inference_only(ctx, x), 8))
            annotate(q, ctx.fake_mode)
            x_q = graph.call_function(operator.getitem, (q, 0))
            x_s = graph.call_function(operator.getitem, (q, 1))
            for n in (x_q, x_s):
                annotate(n, ctx.fake_mode)
            memo[x] = (x_q, x_s)
        return memo[x]


register(W8A8())
