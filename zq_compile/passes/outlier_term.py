"""The float term of a head whose outlier input channels stay in float (``heads="outliers"``).

Not a pass of its own: ``smooth_outliers`` masks the head's input and gathers the outlier
channels (``xo``), ``rewrite_linear`` quantizes the masked GEMM and calls ``emit`` to add the
exact float product of those channels (``calibrate/outliers.py`` has the maths):

    X ──► mul(X, m) ──► linear_w8a8(·, Q(W·m)) ──► Y                                     (before)
    X ──► mul(X, m) ──► linear_w8a8(·, Q(W·m)) ──► Y ──► add(Y, sum(xo[..., :, None] * Wo^T, -2))
    X ──► index_select(X, -1, idx) ──► xo ─────────────────────────────┘                  (after)

Wo^T [k, N] is laid out along N so the k multiply-adds per logit vectorise over the vocabulary in
the one Inductor kernel that adds them to the GEMM's output: no GEMM call and no [tokens, N]
temporary. It is a constant made from the float weight like the quantized ones: kept in
``zq_compile.store`` (so recompiles after ``release_float_weights`` find it) and re-made by the
weight binding when a call brings other weights or an edited one.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.calibrate.outliers import Outliers
from zq_compile.calibrate.smooth import transformed_weight
from zq_compile.passes.graph_utils import annotate, fake_value

aten, prims = torch.ops.aten, torch.ops.prims


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
    with graph.inserting_before(y.next):  # in order, right after the GEMM
        xf = graph.call_function(prims.convert_element_type.default, (xo, torch.float32))
        col = graph.call_function(aten.unsqueeze.default, (xf, -1))
        prod = graph.call_function(aten.mul.Tensor, (col, wo_node))
        term = graph.call_function(aten.sum.dim_IntList, (prod, [-2]))
        out = graph.call_function(aten.add.Tensor, (y, term))
        new = [xf, col, prod, term, out]
        if out_dtype != torch.float32:
            out = graph.call_function(prims.convert_element_type.default, (out, out_dtype))
            new.append(out)
    for n in new:
        annotate(n, ctx.fake_mode)
    y.replace_all_uses_with(out, delete_user_cb=lambda u: u is not new[4])
    return out
