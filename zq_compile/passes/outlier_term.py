"""The float term of a head whose outlier input channels stay in float (``heads="outliers"``).

Not a pass of its own: ``smooth_outliers`` masks the head's input and gathers the outlier
channels (``xo``), ``rewrite_linear`` quantizes the masked GEMM and calls ``emit`` to add the
exact float product of those channels (``calibrate/outliers.py`` has the maths):

    X ──► mul(X, m) ──► linear_w8a8(·, Q(W·m)) ──► Y                                     (before)
    X ──► mul(X, m) ──► linear_w8a8(·, Q(W·m)) ──► Y ──► add(Y, sum_j xo[..., j] * Wo^T[j])
    X ──► index_select(X, -1, idx) ──► xo ─────────────────────────────┘                  (after)

Wo^T [k, N] is laid out along N so the k multiply-adds per logit vectorise over the vocabulary in
the one Inductor kernel that adds them to the GEMM's output: no GEMM call. For k <= ``UNROLL_MAX``
the sum is written as k pointwise multiply-adds (``xo[..., j:j+1] * Wo^T[j]``, in the order the
sum would take them) rather than a reduction over k: Inductor gave the reduction a loop of its
own, which wrote the whole [tokens, N] term to memory and read it back in a second loop over the
GEMM's output (SmolLM2's head, 256 tokens x 49152 logits, k = 8: 50 MB written and read again,
17.8 ms of a 94 ms prefill in a torch profile of 2026-12-06); unrolled, one loop reads the GEMM
output and writes the logits once. Larger k keep the reduction.

Wo^T is a constant made from the float weight like the quantized ones: kept in
``zq_compile.store`` (so recompiles after ``release_float_weights`` find it) and re-made by the
weight binding when a call brings other weights or an edited one.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.calibrate.outliers import Outliers
from zq_compile.calibrate.smooth import transformed_weight
from zq_compile.passes.graph_utils import annotate, fake_value
from zq_compile.schemes.base import inference_only

aten, prims = torch.ops.aten, torch.ops.prims

#: Up to this many outlier channels the float term is unrolled into pointwise multiply-adds.
UNROLL_MAX = 32


class _Columns:
    """A scheme handler for rewrite_linear's constant helpers: Wo^T from W * s. Its recipe (the
    store key's "scheme") names the channels, so the helpers store, look up and re-make it
    exactly as they do quantized weights."""

    name = "outlier_columns_t"

    def __init__(self, outliers: Outliers):
        self.outliers = outliers

    def recipe(self) -> dict:
        return {"layout": "kn", "k": int(self.outliers.index.numel()), "channels": self.outliers.tag()}

    def quantize(self, w_nk: torch.Tensor, scheme, groups, qmax=None) -> dict[str, torch.Tensor]:
        return _make(w_nk, self.outliers)

    @staticmethod
    def constant_tensors(made: dict) -> dict:
        return made


def _make(w_nk: torch.Tensor, outliers: Outliers) -> dict[str, torch.Tensor]:
    return {"wo_t": outliers.w_float(w_nk).t().contiguous()}


def emit(ctx, m, y: fx.Node, w_nk: torch.Tensor, scale, outliers: Outliers, xo: fx.Node, module: str) -> fx.Node:
    """Add xo Wo^T to the GEMM output ``y`` (m: the head's LinearMatch before the rewrite)."""
    from zq_compile.passes import rewrite_linear as rl  # rewrite_linear calls this module

    graph = ctx.gm.graph
    handler = _Columns(outliers)
    made, root, key = rl._quantized_constants(ctx, m, w_nk, handler, handler.recipe(), 0, scale)
    slots = {"wo_t": len(ctx.constants)}
    wo_node = ctx.add_constant(f"{y.name}_outlier_wo_t", made["wo_t"])
    rows = ctx.memo.get("int8_rows", {}).get(m.weight)
    if rows is not None:  # a tied table's gather reads these columns from here (quantize_embedding)
        rows["wo_t"] = wo_node
    source = rl._weight_source(ctx, m, handler, handler.recipe(), 0, slots, scale)
    if source is not None:
        ctx.weight_sources.append(source)
    if root is not None:
        ctx.memo.setdefault("stored", []).append((rl.constant_roots(m.weight)[0], root, key, slots, module))
    out_dtype = fake_value(y).dtype
    new = []
    k = int(outliers.index.numel())
    with graph.inserting_before(y.next):  # in order, right after the GEMM
        # the term belongs to the quantized head, which passes no gradient (and a prims cast
        # has no autograd formula: grad mode would fail to compile)
        xf = graph.call_function(prims.convert_element_type.default, (inference_only(ctx, xo), torch.float32))
        new = [xf]
        term = _unrolled_term(graph, xf, wo_node, k, new) if 0 < k <= UNROLL_MAX else _reduced_term(graph, xf, wo_node, new)
        out = graph.call_function(aten.add.Tensor, (y, term))
        new.append(out)
        add = out
        if out_dtype != torch.float32:
            out = graph.call_function(prims.convert_element_type.default, (out, out_dtype))
            new.append(out)
    for n in new:
        annotate(n, ctx.fake_mode)
    y.replace_all_uses_with(out, delete_user_cb=lambda u: u is not add)
    return out


def _reduced_term(graph: fx.Graph, xf: fx.Node, wo_node: fx.Node, new: list) -> fx.Node:
    """sum(xo[..., :, None] * Wo^T, -2): a reduction over the k channels."""
    col = graph.call_function(aten.unsqueeze.default, (xf, -1))
    prod = graph.call_function(aten.mul.Tensor, (col, wo_node))
    term = graph.call_function(aten.sum.dim_IntList, (prod, [-2]))
    new += [col, prod, term]
    return term


def _unrolled_term(graph: fx.Graph, xf: fx.Node, wo_node: fx.Node, k: int, new: list) -> fx.Node:
    """xo[..., 0:1] * Wo^T[0] + ... + xo[..., k-1:k] * Wo^T[k-1]: pointwise only, so Inductor
    computes it inside the loop that adds it to the GEMM output."""
    term = None
    for j in range(k):
        xj = graph.call_function(aten.slice.Tensor, (xf, -1, j, j + 1))
        wj = graph.call_function(aten.select.int, (wo_node, 0, j))
        prod = graph.call_function(aten.mul.Tensor, (xj, wj))
        new += [xj, wj, prod]
        if term is not None:
            prod = graph.call_function(aten.add.Tensor, (term, prod))
            new.append(prod)
        term = prod
    return term
