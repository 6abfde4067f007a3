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

from zq_compile import store
from zq_compile.binding import WeightSource
from zq_compile.calibrate.outliers import Outliers
from zq_compile.calibrate.smooth import transformed_weight
from zq_compile.passes.graph_utils import annotate, fake_value

aten, prims = torch.ops.aten, torch.ops.prims


class _Recipe:
    """Stands in for a scheme handler in the store key: what makes Wo^T from W."""

    name = "outlier_columns_t"


def _constant(ctx, rl, m, w_nk, scale, outliers: Outliers) -> tuple[torch.Tensor, str | None]:
    key = rl._store_key(m, _Recipe, {"layout": "kn", "k": int(outliers.index.numel())}, 0, scale, outliers)
    root = ctx.input_value(rl.constant_roots(m.weight)[0]) if key is not None else None
    made = store.get(root, key) if root is not None else None
    if made is None:
        if root is not None and store.is_released(root):
            raise store.ReleasedWeightError(store.missing_message(root))
        made = _make(transformed_weight(w_nk, scale), outliers)
        if root is not None:
            store.put(root, key, made, ctx.config.to_json())
    return made["wo_t"], key


def _make(w_nk: torch.Tensor, outliers: Outliers) -> dict[str, torch.Tensor]:
    return {"wo_t": outliers.w_float(w_nk).t().contiguous()}


def emit(ctx, m, y: fx.Node, w_nk: torch.Tensor, scale, outliers: Outliers, xo: fx.Node, module: str) -> fx.Node:
    """Add xo Wo^T to the GEMM output ``y`` (m: the head's LinearMatch before the rewrite)."""
    from zq_compile.passes import rewrite_linear as rl  # rewrite_linear calls this module

    graph = ctx.gm.graph
    wo_t, key = _constant(ctx, rl, m, w_nk, scale, outliers)
    slot = len(ctx.constants)
    wo_node = ctx.add_constant(f"{y.name}_outlier_wo_t", wo_t)
    roots = rl.constant_roots(m.weight)
    if roots:
        chain, weight_is_nk = rl.replay_chain(ctx, m.weight, roots), m.weight_is_nk

        def make_float(values):
            w = chain(*values)
            return transformed_weight(w if weight_is_nk else w.t(), scale)

        ctx.weight_sources.append(WeightSource(tuple(ctx.input_index(r) for r in roots), make_float,
                                               lambda w: _make(w, outliers), {"wo_t": slot}, key,
                                               ctx.config.to_json()))
        if key is not None:
            root = ctx.input_value(roots[0])
            ctx.memo.setdefault("stored", []).append((roots[0], root, key, {"wo_t": slot}, module))
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
