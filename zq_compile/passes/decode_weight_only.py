"""decode_weight_only: a decode step's int8 GEMMs read the same int8 weights with float activations
where the CPU's int8 GEMM loses at one row.

A decode step multiplies one row (or a few) by every weight, so its time is the weight's bytes plus
each call's fixed cost. oneDNN's u8s8 GEMM pays ~0.1 ms per call whatever M is (primitive lookup,
reorder of the activation, its scales): on a 2-core AVX2 EPYC, 1x576x1536 took 0.166 ms against
0.080 for fp32 ``F.linear`` and 0.053 for ATen's ``_weight_int8pack_mm`` on bf16 activations, so
SmolLM2's w8a8 decode ran at 0.96x Inductor fp32 (bench, 2026-12-05). The int8 weights are the
same either way; only the activation side differs, and float activations are the more accurate.

In graphs where every int8 GEMM sees at most ``select.SMALL_M`` rows, the graph's own shapes are
raced (``select.race_shapes``): the int8 kernels as the pipeline calls them, and the weight-only
kernel ``select_wo_kernel("small", 8)`` picks, on the same int8 weights. Only if the weight-only
kernel is faster by the race margin does the rewrite happen, all linears of the graph or none
(the race line and the decision are in the report either way):

Before:  x ──► zq.quantize_per_token ──► (x_q, x_s) ──► zq.linear_w8a8(x_q, x_s, W_q, W_s, W_z, b)
After:   x ──► zq.linear_wo(x, W_q, W_s, W_z, b, bits=8, kernel) ──────────────────────────────────

The weights are the w8a8 constants themselves (same store recipe, same grid), so the decode and
prefill graphs share one quantization. A prefill graph's oneDNN kernel keeps its own reordered copy
and the decode graph the plain int8 values: one more byte per weight while both graphs live
(``kernels._READ_BACK`` keeps it from growing past that). Target cpu with ``cpu_kernel="auto"``
only; returns the number of linears rewritten.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from zq_compile.codegen.cpu import select
from zq_compile.passes.graph_utils import annotate, fake_value, gemm_bf16, gemm_shapes

NAME = "decode_weight_only"


def _activation(node: fx.Node) -> fx.Node | None:
    """The float input of a w8a8 node, if its (x_q, x_s) come straight from quantize_per_token."""
    x_q, x_s = node.args[0], node.args[1]
    if not all(isinstance(n, fx.Node) and n.target is operator.getitem for n in (x_q, x_s)):
        return None
    q = x_q.args[0]
    if q is not x_s.args[0] or q.target is not torch.ops.zq.quantize_per_token.default:
        return None
    return q.args[0]


def _decode_sized(nodes: list[fx.Node]) -> bool:
    for node in nodes:
        lead = fake_value(node.args[0]).shape[:-1]
        if not all(isinstance(d, int) for d in lead) or torch.Size(lead).numel() > select.SMALL_M:
            return False
    return True


def _race(ctx, shapes, bf16: bool) -> str | None:
    """The weight-only kernel when it beats every int8 variant, else None (the race line goes
    to the report either way)."""
    from zq_compile.codegen.cpu.weight_only import select_wo_kernel

    ready, _ = select._candidates()
    wo = select_wo_kernel("small", 8).kernel
    times = select.race_shapes(tuple(shapes), tuple(ready), bf16, weight_only=wo)
    int8 = min((times[select.own_variant(n, bf16)] for n in ready), default=float("inf"))
    where = select.describe_shapes(shapes)
    wins = times[f"weight-only {wo}"] < select.RACE_MARGIN * int8
    line = (f"{NAME}: decode-sized GEMMs {where}: "
            + ", ".join(f"{v} {t:.2f} ms" for v, t in sorted(times.items(), key=lambda kv: kv[1]))
            + (f" -> weight-only {wo} on the int8 weights" if wins else " -> int8 GEMM"))
    ctx.report.races.append(line)
    return wo if wins else None


def run(ctx) -> int:
    if ctx.target != "cpu" or ctx.config.cpu_kernel != "auto":
        return 0
    graph = ctx.gm.graph
    nodes = list(graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default))
    if not nodes or not _decode_sized(nodes) or any(_activation(n) is None for n in nodes):
        return 0
    won = _race(ctx, gemm_shapes(ctx.gm), gemm_bf16(ctx.gm))
    if won is None:
        return 0
    quantizers = {node.args[0].args[0] for node in nodes}  # before the rewrite clears the args
    for node in nodes:
        to_weight_only(ctx, node, won, f"{NAME}: a decode step, its int8 weights read by the weight-only "
                                       "kernel {kernel} with float activations (raced faster)")
    drop_unread_quantizers(ctx, quantizers)
    ctx.report.note(f"{NAME}: {len(nodes)} int8 GEMM(s) of this decode-sized graph run weight-only "
                    f"({won}) on the same int8 weights, faster than the int8 GEMM here (race in the report)")
    return len(nodes)


def to_weight_only(ctx, node: fx.Node, wo: str, why: str) -> fx.Node:
    """Replace one zq.linear_w8a8 node (whose input ``_activation`` finds) by zq.linear_wo on the
    same int8 constants, kernel ``wo`` (``dequant`` where ``wo`` cannot take the shape); ``why``
    ({kernel} filled in) joins its decision's reason. The quantize node is left to
    ``drop_unread_quantizers``."""
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS

    graph = ctx.gm.graph
    decision_of = ctx.memo.setdefault("decision_of", {})
    x = _activation(node)
    _xq, _xs, w_q, w_s, w_z, bias, out_dtype = node.args
    n, k = fake_value(w_q).shape
    kernel = "dequant" if WO_KERNELS[wo].unavailable_reason(8, n, k, 0) else wo
    with graph.inserting_before(node):
        y = graph.call_function(torch.ops.zq.linear_wo.default, (x, w_q, w_s, w_z, bias, 8, 0, k, kernel, out_dtype))
    annotate(y, ctx.fake_mode)
    node.replace_all_uses_with(y)
    graph.erase_node(node)
    decision = decision_of.pop(node, None)
    if decision is not None:
        decision_of[y] = decision
        decision.reason += "; " + why.format(kernel=kernel)
    return y


def drop_unread_quantizers(ctx, quantizers) -> None:
    """Erase the per-token quantize nodes among ``quantizers`` that nothing reads any more."""
    graph = ctx.gm.graph
    erased = set()
    for q in quantizers:
        getters = list(q.users)
        if all(not g.users for g in getters):
            for g in getters:
                graph.erase_node(g)
            graph.erase_node(q)
            erased.add(q)
    shared = ctx.memo.get("quantize_per_token", {})  # schemes/w8a8.py shares them per activation
    for x in [x for x, (x_q, _) in shared.items() if x_q.args[0] in erased]:
        del shared[x]
