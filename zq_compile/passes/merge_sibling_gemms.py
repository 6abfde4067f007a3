"""merge_sibling_gemms (target "cpu"): int8 linears that read one quantized input become one GEMM.

Q, K and V read one LayerNorm's output, a Llama MLP's gate and up one RMSNorm's: after
``rewrite_linear`` they share one (x_q, x_s), and each runs its own oneDNN call. One call over
the concatenated weights reads x_q once and gives oneDNN a wider N to block over (SmolLM2's K
and V are 192 wide): `bench/sibling_merge_ab.py` measured SmolLM2's prefill 1.09x faster with
this pass on an AMX Xeon (busy host), BERT-base within the noise. Per-row weight scales make the merged GEMM's columns equal the
separate GEMMs' outputs bit for bit (each weight's group scales are repeated per row).

Before (x_q, x_s from one zq.quantize_per_token):

    (x_q, x_s) ─┬─► linear_w8a8(Wq_1, Ws_1, b_1) ─► y_1
                ├─► linear_w8a8(Wq_2, Ws_2, b_2) ─► y_2
                └─► linear_w8a8(Wq_3, Ws_3, b_3) ─► y_3

After (one constant [N_1+N_2+N_3, K] in place of three; cat of the biases is a graph op):

    (x_q, x_s) ─► linear_w8a8([Wq_1; Wq_2; Wq_3], [Ws rows], cat(b_1, b_2, b_3)) ─► y
                      y[..., 0:N_1] ─► y_1,   y[..., N_1:N_1+N_2] ─► y_2,   ... (column views)

The weights stay bound to their float parameters: the merged constants' ``WeightSource`` lists
the members' sources and re-makes them from the store or the float weights as one
(``binding.py``); each member's entry in ``zq_compile.store`` keeps its own rows as a view of
the merged copy (``codegen/cpu/kernels.row_slice``), so zq_compile.save writes every weight and a
recompile merges the same copy again instead of packing another.

Left separate, with the reason in ``report.fusion_fallbacks``: weights with zero points or a
kernel form of their own (INT4), a weight another node also reads (a tied embedding table),
different result dtypes, biases on some members only, a reader that needs a member's output
contiguous (a ``view`` the column slice cannot take), and every group under
``release_float_weights=True`` (the store keeps per-weight constants for that path).
Returns the number of linears merged away (a group of three counts two).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.binding import WeightSource
from zq_compile.passes.fusion_common import carry_decision, record_fallback, record_fusion
from zq_compile.passes.graph_utils import annotate, fake_value

NAME = "merge_sibling_gemms"
LINEAR = torch.ops.zq.linear_w8a8.default
VIEWS = {torch.Tensor.view, torch.ops.aten.view.default}


def _where(ctx, node) -> str:
    decision = ctx.memo.get("decision_of", {}).get(node)
    return (decision.module or decision.node) if decision is not None else node.name


def _source_of(ctx, slot: int):
    return next((s for s in ctx.weight_sources if s.slots.get("wq") == slot), None)


def _problem(ctx, node: fx.Node, index: dict) -> str | None:
    """Why ``node`` cannot join a merge, or None."""
    w_q, w_s, w_z = node.args[2:5]
    if w_z is not None:
        return "asymmetric weights (a zero point per group)"
    for w in (w_q, w_s):
        if not (isinstance(w, fx.Node) and w.op == "placeholder" and w.name in index and len(w.users) == 1):
            return "its weight is also read by another node (a shared or tied weight)"
    source = _source_of(ctx, index[w_q.name])
    if source is None or source.slots.get("ws") != index[w_s.name] or set(source.slots) != {"wq", "ws"}:
        return "its constants are not one int8 weight and its scales"
    if source.finalize is not None or source.int8_finalize is not None or source.parts:
        return "its weight has a kernel form of its own"
    for user in node.users:
        if user.op == "output":
            return "its output leaves the graph (a column slice would reach the caller)"
        is_view = (user.op == "call_method" and user.target == "view") or \
            (user.op == "call_function" and user.target in VIEWS)
        if is_view and not _view_takes_slice(ctx, node, user):
            return "a reader views its output in a shape a column slice cannot take"
    return None


def _view_takes_slice(ctx, node: fx.Node, view: fx.Node) -> bool:
    """Whether ``view`` still works when ``node``'s output is a column slice of a wider one."""
    val = fake_value(node)
    args = view.args[1:]
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = args[0]
    shape = [a.meta.get("example_value") if isinstance(a, fx.Node) else a for a in args]  # SymInts too
    if val is None or ctx.fake_mode is None or any(s is None for s in shape):
        return False
    try:
        with ctx.fake_mode:
            wide = torch.empty((*val.shape[:-1], val.shape[-1] + 1), dtype=val.dtype)
            wide[..., : val.shape[-1]].view(*shape)
    except Exception:  # noqa: BLE001  (any refusal: keep this linear separate)
        return False
    return True


def _rows(ws: torch.Tensor, n: int) -> torch.Tensor:
    return ws.repeat_interleave(n // ws.numel())


def merged_constants(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_q [sum N, K], w_s per row) of the members' (w_q, w_s), in order. Members that are row
    slices of one merged weight (the store's entries after an earlier merge) give it back, with
    its own scale tensor, so the kernel's packed copy is found again instead of made twice."""
    from zq_compile.codegen.cpu.kernels import merged_scale, plain_weight, rows_of

    whole = rows_of([w for w, _ in parts])
    if whole is not None and merged_scale(whole) is not None:
        return whole, merged_scale(whole)
    w_q = torch.cat([plain_weight(w) for w, _ in parts])
    w_s = torch.cat([_rows(s, w.shape[0]) for w, s in parts])
    return w_q, w_s


def _to_move(first: fx.Node, bias, pos: dict) -> list[fx.Node] | None:
    """The nodes to move before ``first`` so that ``bias`` is defined there, inputs first, or None
    when that is not a chain of ops on placeholders (``inference_only``'s detach of a parameter).
    ``pos``: each node's place in the graph."""
    if not isinstance(bias, fx.Node) or bias.op == "placeholder" or pos[bias] < pos[first]:
        return []
    if bias.op not in ("call_function", "call_method"):
        return None
    moves: list[fx.Node] = []
    for a in bias.all_input_nodes:
        more = _to_move(first, a, pos)
        if more is None:
            return None
        moves += [n for n in more if n not in moves]
    return moves + [bias]


def _drop_constants(ctx, nodes: list[fx.Node]) -> None:
    """Erase placeholders of ours that nothing reads any more and renumber every slot."""
    names = {n.name for n in nodes}
    for n in nodes:
        ctx.gm.graph.erase_node(n)
    kept, new_slot = [], {}
    for i, (name, t) in enumerate(ctx.constants):
        if name not in names:
            new_slot[i] = len(kept)
            kept.append((name, t))
    ctx.constants[:] = kept
    for source in ctx.weight_sources:
        source.slots = {k: new_slot[v] for k, v in source.slots.items()}
    for entry in ctx.memo.get("stored", []):
        entry[3].update({k: new_slot[v] for k, v in entry[3].items()})


def _merge(ctx, members: list[fx.Node]) -> None:
    graph = ctx.gm.graph
    index = {name: i for i, (name, _) in enumerate(ctx.constants)}
    slots = [(index[m.args[2].name], index[m.args[3].name]) for m in members]
    parts = [(ctx.constants[q][1], ctx.constants[s][1]) for q, s in slots]
    sources = [_source_of(ctx, q) for q, _ in slots]
    bounds, row = [], 0
    for w, _ in parts:
        bounds.append((row, row + w.shape[0]))
        row += w.shape[0]
    # The members' store entries stay (zq_compile.save writes them); the backend turns their int8
    # weights into views of the merged copy once the kernel has made its form of it.
    stored = ctx.memo.get("stored", [])
    in_store = {entry[3].get("wq"): entry for entry in stored}
    views = [(in_store[q][1], in_store[q][2], a, b) for (q, _), (a, b) in zip(slots, bounds) if q in in_store]
    stored[:] = [e for e in stored if e[3].get("wq") not in {q for q, _ in slots}]
    ctx.weight_sources[:] = [s for s in ctx.weight_sources if all(s is not m for m in sources)]

    w_q, w_s = merged_constants(parts)
    wq_node = ctx.add_constant(f"{members[0].name}_merged_wq", w_q)
    ws_node = ctx.add_constant(f"{members[0].name}_merged_ws", w_s)
    source = WeightSource(tuple(i for s in sources for i in s.input_indices), None, None,
                          {"wq": len(ctx.constants) - 2, "ws": len(ctx.constants) - 1},
                          parts=tuple(sources), part_rows=tuple(bounds))
    ctx.weight_sources.append(source)
    ctx.memo.setdefault("merged", []).append((source, views))

    first = members[0]
    pos = {n: i for i, n in enumerate(graph.nodes)}
    moved: set[fx.Node] = set()
    for m in members[1:]:  # a later member's bias may be made after the first member (a detach)
        for n in _to_move(first, m.args[5], pos):
            if n not in moved:
                first.prepend(n)
                moved.add(n)
    with graph.inserting_before(first):
        bias = None
        if first.args[5] is not None:
            bias = graph.call_function(torch.ops.aten.cat.default, ([m.args[5] for m in members],))
            annotate(bias, ctx.fake_mode)
        merged = graph.call_function(LINEAR, (first.args[0], first.args[1], wq_node, ws_node, None, bias,
                                              first.args[6]))
        annotate(merged, ctx.fake_mode)
    merged.meta["zq_merged"] = len(members)
    record_fusion(ctx, "sibling_gemms", members)
    decision_of = ctx.memo.get("decision_of", {})
    # explain names the merged GEMM's kernels by the linears it computes
    merged.meta["zq_members"] = [decision_of[m].node for m in members if m in decision_of]
    dead = []
    for m, (start, end) in zip(members, bounds):
        with graph.inserting_before(m):
            piece = graph.call_function(torch.ops.aten.slice.Tensor, (merged, -1, start, end))
            annotate(piece, ctx.fake_mode)
        if m in decision_of:  # explain links the float linear to its columns
            piece.meta["zq_replaces"] = decision_of[m].node
        carry_decision(ctx, m, piece)
        m.replace_all_uses_with(piece)
        dead += [m.args[2], m.args[3]]
        graph.erase_node(m)
    _drop_constants(ctx, dead)


def run(ctx) -> int:
    if ctx.target != "cpu":
        return 0
    graph = ctx.gm.graph
    groups: dict[tuple, list[fx.Node]] = {}
    for node in graph.find_nodes(op="call_function", target=LINEAR):
        groups.setdefault((node.args[0], node.args[1]), []).append(node)
    groups = {k: g for k, g in groups.items() if len(g) > 1}
    if groups and ctx.config.release_float_weights:
        for g in groups.values():
            record_fallback(ctx, NAME, _where(ctx, g[0]), "release_float_weights=True keeps each weight's "
                            "constants apart (recompiles after the release find them per weight)")
        return 0
    merged = 0
    for members in groups.values():
        index = {name: i for i, (name, _) in enumerate(ctx.constants)}
        ok = []
        for m in members:
            why = _problem(ctx, m, index)
            if why:
                record_fallback(ctx, NAME, _where(ctx, m), why)
            else:
                ok.append(m)
        pos = {n: i for i, n in enumerate(graph.nodes)}
        if ok and any(_to_move(ok[0], m.args[5], pos) is None for m in ok[1:]):
            record_fallback(ctx, NAME, _where(ctx, ok[0]), "a bias is computed between the linears")
            continue
        by_dtype: dict = {}
        for m in ok:
            by_dtype.setdefault((m.args[6], m.args[5] is None), []).append(m)
        if len(by_dtype) > 1:
            record_fallback(ctx, NAME, _where(ctx, ok[0]), "siblings differ in result dtype or in having a bias")
        for same in by_dtype.values():
            if len(same) > 1:
                _merge(ctx, same)
                merged += len(same) - 1
    return merged
