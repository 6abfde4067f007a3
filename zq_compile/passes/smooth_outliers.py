"""smooth_outliers: divide each quantized linear's input by s per channel, multiply W by s.

s comes from ``calibrate_linears`` (max |X_j| and alpha; ``calibrate/smooth.py`` has the maths);
linears reading one activation share one s. ``rewrite_linear`` quantizes W * s (it reads
``ctx.memo["smooth_scale"]``). Where the activation is X / s comes from one of two places.

Fold, when X is a norm's output read by the smoothed linears only (a pre-LN block: Llama's
RMSNorm, GPT's ln_1), 1/s goes into the norm's weight (and bias), a new graph constant, so it
costs nothing at run time; the user's parameters are not touched:

    h ──► rms_norm ──► mul(γ, ·) ──► X ──► linear(X, Wq) / linear(X, Wk) / linear(X, Wv)
    h ──► rms_norm ──► mul(γ / s, ·) ──► X/s ──► linear(X/s, Wq·s) / ...          (after)

Divide, elsewhere (the norm output also feeds the residual, as in post-LN BERT; or X is an
activation such as SiLU(gate) * up): a multiply by the constant 1/s, which Inductor fuses into
the per-token quantize that reads it (and that into X's producer):

    X ──► linear(X, W) ;  X ──► residual            (before)
    X ──► mul(X, 1/s) ──► linear(·, W·s) ;  X ──► residual                        (after)

Split, for a head that reads its input alone (``calibrate/split.py``): its widest channels
become several columns. The copies' 1/c joins 1/s (folded or divided as above), a gather lays
the columns out, and ``rewrite_linear`` quantizes (W * s)[:, index] (``ctx.memo["columns"]``):

    X ──► lm_head(X, W)                                                            (before)
    X ──► (X / (s·c)) ──► index_select(·, -1, index) ──► lm_head(·, (W·s)[:, index])  (after)

Outliers, for such a head under ``heads="outliers"`` (``calibrate/outliers.py``): the int8 GEMM
reads X / s with its k widest channels zeroed, and those channels are gathered for the float term
that ``outlier_term`` adds after the GEMM (``ctx.memo["outlier_x"]``):

    X/s ──► mul(·, m) ──► lm_head(·, (W·s)·m)
    X/s ──► index_select(·, -1, idx) ──► xo                                        (after)

Returns the number of activation groups smoothed or treated.
"""

from __future__ import annotations

import operator

import torch
from torch.utils.weak import WeakIdKeyDictionary
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.binding import WeightSource
from zq_compile.calibrate.smooth import smooth_scale
from zq_compile.calibrate.outliers import Outliers
from zq_compile.calibrate.policy import columns_for
from zq_compile.calibrate.split import Split
from zq_compile.calibrate.stats import signature
from zq_compile.passes.graph_utils import annotate, fake_value
from zq_compile.passes.rewrite_linear import constant_roots, constant_value, replay_chain

MUL = {operator.mul, torch.mul, torch.ops.aten.mul.Tensor}
LAYER_NORM = {F.layer_norm, torch.layer_norm, torch.ops.aten.layer_norm.default}
RMS_NORM = {getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None)} - {None}


def _folded_constant(ctx, node: fx.Node, s: torch.Tensor, name: str) -> fx.Node:
    """A new graph constant holding ``node``'s value / s, re-derived from the float input by the
    weight binding when a call brings other norm weights."""
    value = constant_value(ctx, node)
    roots = constant_roots(node)
    inv = (1.0 / s).to(value.dtype)
    slot = len(ctx.constants)
    new = ctx.add_constant(name, value * inv)

    chain = replay_chain(ctx, node, roots)  # not ctx / node: they would keep the graph alive

    def make_float(values):
        return chain(*values) * inv

    ctx.weight_sources.append(WeightSource(tuple(ctx.input_index(r) for r in roots), make_float,
                                           lambda t: {"norm": t}, {"norm": slot}))
    return new


def _norm_params(ctx, x: fx.Node, k: int) -> list[tuple[int | str, fx.Node]] | None:
    """(position, node) of the affine parameters of the norm that produces ``x``, or None."""
    if x.op != "call_function":
        return None

    def const_vector(a):
        v = constant_value(ctx, a) if isinstance(a, fx.Node) else None
        return v is not None and v.dim() == 1 and v.numel() == k and bool(constant_roots(a))

    if x.target in MUL and len(x.args) == 2 and not x.kwargs:
        hits = [(i, a) for i, a in enumerate(x.args) if const_vector(a)]
        return hits if len(hits) == 1 else None
    if x.target in LAYER_NORM or x.target in RMS_NORM:
        names = ("weight", "bias") if x.target in LAYER_NORM else ("weight",)
        out = []
        for j, name in enumerate(names):
            pos = 2 + j
            a = x.args[pos] if len(x.args) > pos else x.kwargs.get(name)
            if a is None:
                continue
            if not const_vector(a):
                return None
            out.append((pos if len(x.args) > pos else name, a))
        return out if out and out[0][1] is not None else None
    return None


def _fold(ctx, x: fx.Node, s: torch.Tensor) -> bool:
    params = _norm_params(ctx, x, s.numel())
    if not params:
        return False
    for pos, a in params:
        new = _folded_constant(ctx, a, s, f"{x.name}_{a.name}_smoothed")  # one norm module may run twice
        if isinstance(pos, int):
            args = list(x.args)
            args[pos] = new
            x.args = tuple(args)
        else:
            x.kwargs = {**x.kwargs, pos: new}
    return True


def _divide(ctx, x: fx.Node, s: torch.Tensor, readers: list[fx.Node]) -> fx.Node:
    graph = ctx.gm.graph
    inv = ctx.add_constant(f"{x.name}_inv_smooth", (1.0 / s).to(fake_value(x).dtype))
    first = next(n for n in graph.nodes if n in readers)
    with graph.inserting_before(first):
        xs = graph.call_function(operator.mul, (x, inv))
    annotate(xs, ctx.fake_mode)
    for n in readers:
        n.replace_input_with(x, xs)
    return xs


#: weight tensor -> {(alpha, calibration signature, k): s} of every config that smoothed it.
#: Later graphs of the same weights and config (decode steps, new shapes) reuse s: their
#: quantized weights (W * s, kept in zq_compile.store) stay valid, and a released weight is never
#: read again. The signature (``stats.signature``, per preset too) keeps one config's s from
#: another whose statistics came from other data; keeping each config's (a [K] vector) means a
#: second config never makes the first one's later graphs read a weight it already released.
_SCALES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _scale_for(ctx, weights: list[torch.Tensor], k: int, alpha, compute) -> torch.Tensor:
    # k: one weight tied in two orientations (W and W^T) is met with two input widths
    tag = (alpha, signature(ctx.config), k)
    kept = [_SCALES.get(w, {}).get(tag) for w in weights]
    if all(c is not None and c is kept[0] for c in kept):
        return kept[0]
    s = compute()
    for w in weights:
        by_tag = _SCALES.get(w)
        if by_tag is None:
            _SCALES[w] = by_tag = {}
        by_tag[tag] = s
    return s


def _gather(ctx, x: fx.Node, reader: fx.Node, index: torch.Tensor) -> None:
    graph = ctx.gm.graph
    idx = ctx.add_constant(f"{reader.name}_split_index", index)
    with graph.inserting_before(reader):
        g = graph.call_function(torch.ops.aten.index_select.default, (x, -1, idx))
    annotate(g, ctx.fake_mode)
    reader.replace_input_with(x, g)


def _mask(ctx, x: fx.Node, reader: fx.Node, outliers: Outliers) -> None:
    graph = ctx.gm.graph
    mask = ctx.add_constant(f"{reader.name}_outlier_mask", outliers.mask(fake_value(x).dtype))
    idx = ctx.add_constant(f"{reader.name}_outlier_index", outliers.index)
    with graph.inserting_before(reader):
        xm = graph.call_function(operator.mul, (x, mask))
        xo = graph.call_function(torch.ops.aten.index_select.default, (x, -1, idx))
    annotate(xm, ctx.fake_mode)
    annotate(xo, ctx.fake_mode)
    reader.replace_input_with(x, xm)
    ctx.memo.setdefault("outlier_x", {})[reader] = xo  # outlier_term adds xo Wo^T after the GEMM


def run(ctx) -> int:
    plan = ctx.memo.get("smooth_plan")
    if not plan:
        return 0
    scales = ctx.memo.setdefault("smooth_scale", {})
    treated = ctx.memo.setdefault("columns", {})
    how = ctx.memo.setdefault("smooth_how", {})
    groups: dict[fx.Node, list[fx.Node]] = {}
    for node, (site, _, _) in plan.items():
        groups.setdefault(site.group, []).append(node)
    done = 0
    for x, nodes in groups.items():
        smoothed = [n for n in nodes if plan[n][2] is not None]
        stats = [plan[n][1] for n in nodes if plan[n][1] is not None]
        # a head reading its input alone; kept float by the policy: no smooth_plan alpha, no split
        head = nodes[0] if (len(nodes) == 1 and plan[nodes[0]][0].columns and stats
                            and nodes[0] not in ctx.memo.get("keep_float", {})) else None
        if not (smoothed or head) or not stats:
            continue
        s = None
        if smoothed:
            alpha = plan[smoothed[0]][2]
            s = _scale_for(ctx, [plan[n][0].weight for n in nodes], plan[nodes[0]][0].w_nk.shape[1], alpha,
                           lambda: smooth_scale(torch.stack(stats).amax(dim=0), [plan[n][0].w_nk for n in nodes], alpha))
            for n in smoothed:
                scales[n] = s
        divisor, columns = s, None
        if head is not None:
            columns = treated[head] = columns_for(plan[head][0], stats[0], s)
            if isinstance(columns, Split):
                divisor = (1.0 if s is None else s) / columns.inv
        readers = smoothed or [head]
        if divisor is None:  # outlier channels in float, nothing smoothed: nothing to divide
            folded, source, done_how = False, x, "not smoothed"
        else:
            folded = set(x.users) <= set(readers) and _fold(ctx, x, divisor)
            source = x if folded else _divide(ctx, x, divisor, readers)
            done_how = "folded into the norm" if folded else "divided before quantize"
        if isinstance(columns, Split):
            _gather(ctx, source, head, columns.index)
            done_how += ", outlier channels split"
        elif isinstance(columns, Outliers):
            _mask(ctx, source, head, columns)
            done_how += ", outlier channels in float"
        how[x.name] = done_how
        done += 1
    if done:
        folded = sum(v.startswith("folded") for v in how.values())
        divided = sum(v.startswith("divided") for v in how.values())
        split = sum(isinstance(c, Split) for c in treated.values())
        ctx.report.note(f"smooth_outliers: {done} input(s) smoothed or treated: {folded} folded into the norm "
                        f"before them, {divided} divided by s in the per-token quantize; heads: {split} split, "
                        f"{len(treated) - split} with outlier channels in float")
    return done
