"""quantize_embedding: with ``release_float_weights``, embedding tables are read as int8 rows.

``release_float_weights`` frees the float weights of quantized linears, but an embedding table
stayed float, and a table tied to the lm_head (GPT-2, SmolLM2: 49152 x 576, 108 MiB in fp32, a
fifth of the model) kept the head's float weight alive too, since the gather read it in float.
Here each table is quantized once per row (symmetric int8, one fp32 scale per row: a row is one
token's vector, so a rare token with large values does not coarsen the others), kept in
``zq_compile.store`` like a linear's constants, and the gather reads the int8 rows and scales:

Before:   ids ──► embedding(ids, W fp32 [V, D]) ──► h
After:    ids ──► embedding(Wq int8 [V, D], ids) ──► convert(fp32) ──► mul ──► h
          ids ──► embedding(Ws fp32 [V, 1], ids) ──────────────────────┘

Inductor fuses the two gathers and the multiply into one kernel; the table's float values are
then read by nothing and ``release_float_weights`` frees them. Only tables that really get
released are rewritten: a table another op of the graph still reads in float (a head the accuracy
policy keeps float, as under the weight-only presets) would only gain an int8 copy. Without
``release_float_weights`` nothing changes: the float table stays in the user's module anyway.

A table tied to an int8 head (GPT-2, SmolLM2) is held once: the head's int8 weight, one scale
per row, already is the table's rows, quantized as W * s (s: the smoothing scales, or 1) with
its outlier columns zeroed and multiplied in float beside the GEMM (``Wo^T [k, V]``,
``outlier_term.py``). The gather rebuilds the rows from those constants, and the head's weight
stays plain int8 (``kernels.pack_per_call``: oneDNN reorders it at each call instead of keeping a
second copy, SmolLM2's 27 MiB):

After:    ids ──► embedding(Wq, ids) * embedding(Ws, ids) ──► where(outlier, Wo^T[slot, ids], ·) / s ──► h

In a decode-sized graph that head runs weight-only on the plain table, unless ``cpu_kernel``
names a GEMM (a reorder of the whole table per token, ~10 ms for SmolLM2's: to_weight_only). A
head whose columns are split (another layout) is not shared: that gather gets its own rows.

Skipped, with the reason in the report: ``max_norm`` (renormalises the table in place), tables
that need gradients in grad mode, non-float or non-parameter tables, target "triton" (untested
on GPUs). Returns the number of embedding calls rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.passes import decode_weight_only as dwo
from zq_compile.passes import rewrite_linear as rl
from zq_compile.passes.calibrate_linears import EMBEDDING
from zq_compile.passes.graph_utils import annotate, fake_value, module_path
from zq_compile.quant.weight import quantize_weight

NAME = "quantize_embedding"
aten, prims = torch.ops.aten, torch.ops.prims


class _Rows:
    """A scheme handler for rewrite_linear's constant helpers (store key, store, re-make)."""

    name = "embedding_rows"

    @staticmethod
    def quantize(table: torch.Tensor, scheme, groups, qmax=None) -> dict[str, torch.Tensor]:
        return quantize_rows(table)

    @staticmethod
    def constant_tensors(made: dict) -> dict:
        return made


RECIPE = {"bits": 8, "per": "row", "symmetric": True}


def quantize_rows(table: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"rows": int8 [V, D], "scales": fp32 [V, 1]}: one symmetric scale per row (a zero row gets
    1). Not named "wq" / "ws": the binding hands those to the int8 GEMM kernel's packing."""
    q = quantize_weight(table, bits=8)
    return {"rows": q.qdata, "scales": q.scale.float().reshape(-1, 1).contiguous()}


def gather_rows(ids: torch.Tensor, rows: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The reference of what the rewritten graph computes: the dequantized rows of ``ids``."""
    return (F.embedding(ids, rows).float() * F.embedding(ids, scales)).to(dtype)


@dataclass
class _Match:
    """What ``rl._quantized_constants`` / ``rl._weight_source`` read of a linear's match."""

    node: fx.Node
    weight: fx.Node
    ids: fx.Node
    weight_is_nk: bool = True  # the table is used as it is: [V, D]


def _match(node: fx.Node) -> tuple[_Match | None, str | None]:
    """(match, None), or (None, why it is not rewritten) for an embedding call; (None, None)
    for anything else."""
    if node.op != "call_function" or node.target not in EMBEDDING:
        return None, None
    if node.target is F.embedding:
        ids, weight = rl._arg(node, 0, "input"), rl._arg(node, 1, "weight")
        if rl._arg(node, 3, "max_norm") is not None:
            return None, "max_norm renormalises the table in place"
    else:  # torch.embedding / aten.embedding: table first
        weight, ids = rl._arg(node, 0, "weight"), rl._arg(node, 1, "indices")
    if not isinstance(weight, fx.Node) or weight.op != "placeholder":
        return None, "the table is not a graph input (a parameter)"
    return _Match(node, weight, ids), None


def _float_readers(weight: fx.Node, rewritten: set[fx.Node]) -> list[fx.Node]:
    """Users that still read the table in float once the embeddings in ``rewritten`` are not."""
    return [u for u in weight.users if u not in rewritten and rl.reads_in_float(u)]


def run(ctx) -> int:
    if not ctx.config.release_float_weights:
        return 0
    found = []
    for node in list(ctx.gm.graph.nodes):
        m, why = _match(node)
        if m is None:
            if why:
                ctx.report.note(f"{NAME}: {_where(node)} left float: {why}")
            continue
        why = _problem(ctx, m)
        if why:
            ctx.report.note(f"{NAME}: {_where(node)} left float: {why}")
            continue
        found.append(m)
    by_table: dict[fx.Node, list[_Match]] = {}
    for m in found:
        by_table.setdefault(m.weight, []).append(m)
    count = 0
    for weight, matches in by_table.items():
        readers = _float_readers(weight, {m.node for m in matches})
        if readers:
            ctx.report.note(f"{NAME}: {', '.join(_where(m.node) for m in matches)} left float: the table is also read "
                            f"in float by {', '.join(r.name for r in readers)} (e.g. a head kept float), so it "
                            "cannot be released and an int8 copy would only add memory")
            continue
        for m in matches:
            _rewrite(ctx, m)
            count += 1
    return count


def _problem(ctx, m: _Match) -> str | None:
    if ctx.target not in ("cpu", "reference"):
        return f"target {ctx.target!r} (int8 tables are built for the cpu target)"
    value = ctx.input_value(m.weight)
    if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
        return "the table is not a 2-D float tensor"
    if not rl._is_param_or_buffer(m.weight, value) or rl._mutated_in_graph(m.weight):
        return "the table is not a parameter the graph leaves unchanged"
    if torch.is_grad_enabled() and value.requires_grad:
        return "grad mode: the float table keeps its gradient"
    return None


def _tied_head(ctx, m: _Match) -> dict | None:
    """The int8 constants of a head tied to this table whose rows the gather can read (then the
    table is held once), or None. In a decode-sized graph the head's int8 GEMM would reorder the
    whole table at every step; unless a kernel was asked for, the head runs weight-only on the
    plain table there instead (``decode_weight_only.to_weight_only``): for SmolLM2's head at one
    row, oneDNN took 14.7 ms reordering per call against 5.3 on a kept copy
    (``bench/tied_head_reorder.py``), ATen's weight-only int8 GEMM about 3 ms."""
    head = ctx.memo.get("int8_rows", {}).get(m.weight)
    if head is None:
        return None
    gemms = [u for u in head["wq"].users if u.target is torch.ops.zq.linear_w8a8.default]
    if gemms and ctx.target == "cpu" and ctx.config.cpu_kernel == "auto" \
            and all(dwo._activation(g) is not None for g in gemms):
        from zq_compile.backend import m_regime
        from zq_compile.codegen.cpu.weight_only import select_wo_kernel

        if m_regime(ctx.gm) == "small":
            quantizers = {g.args[0].args[0] for g in gemms}
            wo = select_wo_kernel("small", 8).kernel
            for g in gemms:
                dwo.to_weight_only(ctx, g, wo, f"{NAME}: the tied head of a decode-sized graph, weight-only "
                                               "({kernel}) on the plain int8 table it shares with the gather")
            dwo.drop_unread_quantizers(ctx, quantizers)
    return head


def _rewrite(ctx, m: _Match) -> None:
    graph = ctx.gm.graph
    table = ctx.input_value(m.weight)
    head = _tied_head(ctx, m)
    dtype = fake_value(m.node).dtype
    with graph.inserting_before(m.node):
        if head is not None:
            out, new = _head_rows(ctx, head, m.ids, table.shape)
        else:
            out, new = _gather_rows(graph, *_own_rows(ctx, m, table), m.ids)
        if dtype != torch.float32:
            out = graph.call_function(prims.convert_element_type.default, (out, dtype))
            new.append(out)
    for n in new:
        annotate(n, ctx.fake_mode)
    m.node.replace_all_uses_with(out)
    graph.erase_node(m.node)
    if head is not None:
        extra = [w for w, on in (("divided by the smoothing scales", head["scale"] is not None),
                                 ("the outlier columns from the head's float term", head["outliers"] is not None)) if on]
        ctx.report.note(f"{NAME}: {_where(m.node)} gathers its rows from its tied head's int8 weight"
                        f"{' (' + '; '.join(extra) + ')' if extra else ''}: one {tuple(table.shape)} int8 table "
                        f"for both, held plain ({_how_the_head_reads(head)})")
    else:
        ctx.report.note(f"{NAME}: {_where(m.node)} reads int8 rows of its {tuple(table.shape)} table, one scale per row")


def _how_the_head_reads(head: dict) -> str:
    if any(u.target is torch.ops.zq.linear_w8a8.default for u in head["wq"].users):
        return "an int8 GEMM; oneDNN reorders it per call"
    return "the head runs weight-only on it"


def _head_rows(ctx, head: dict, ids: fx.Node, shape) -> tuple[fx.Node, list[fx.Node]]:
    """The table's rows rebuilt from its tied head's constants, fp32: the head quantized
    W * s (s: smoothing scales, or none) with its outlier columns zeroed and kept in float
    (``Wo^T [k, V]``, ``passes/outlier_term.py``), one scale per row. So

        rows(ids) = where(outlier column, Wo^T[slot of column, ids], Wq[ids] * Ws[ids]) / s

    where Inductor fuses the three gathers, the select and the division into one kernel."""
    graph = ctx.gm.graph
    ws = graph.call_function(aten.view.default, (head["ws"], [shape[0], 1]))  # fp32 [V] -> [V, 1]
    out, new = _gather_rows(graph, head["wq"], ws, ids)
    new.insert(0, ws)
    outliers = head["outliers"]
    if outliers is not None:
        slot = torch.zeros(shape[1], dtype=torch.int64)
        slot[outliers.index] = torch.arange(outliers.index.numel())
        is_outlier = outliers.mask() == 0
        slot_node = ctx.add_constant(f"{ids.name}_outlier_slot", slot)
        mask_node = ctx.add_constant(f"{ids.name}_outlier_mask", is_outlier)
        col = graph.call_function(aten.unsqueeze.default, (ids, -1))
        floats = graph.call_function(aten.index.Tensor, (head["wo_t"], [slot_node, col]))
        floats_f = graph.call_function(prims.convert_element_type.default, (floats, torch.float32))
        out = graph.call_function(aten.where.self, (mask_node, floats_f, out))
        new += [col, floats, floats_f, out]
    if head["scale"] is not None:
        s_node = ctx.add_constant(f"{ids.name}_smooth_scale", head["scale"].float().contiguous())
        out = graph.call_function(aten.div.Tensor, (out, s_node))
        new.append(out)
    return out, new


def _gather_rows(graph: fx.Graph, wq: fx.Node, ws: fx.Node, ids: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """embedding(Wq int8 [V, D], ids) * embedding(Ws fp32 [V, 1], ids) in fp32, and the new nodes."""
    rows = graph.call_function(aten.embedding.default, (wq, ids))
    scales = graph.call_function(aten.embedding.default, (ws, ids))
    rows_f = graph.call_function(prims.convert_element_type.default, (rows, torch.float32))
    out = graph.call_function(aten.mul.Tensor, (rows_f, scales))
    return out, [rows, scales, rows_f, out]


def _own_rows(ctx, m: _Match, table: torch.Tensor) -> tuple[fx.Node, fx.Node]:
    """The table's own int8 rows and per-row scales as new constants, kept in the store."""
    made, root, key = rl._quantized_constants(ctx, m, table, _Rows, RECIPE, 0)
    slots = {"rows": len(ctx.constants), "scales": len(ctx.constants) + 1}
    wq = ctx.add_constant(f"{m.node.name}_rows", made["rows"])
    ws = ctx.add_constant(f"{m.node.name}_scales", made["scales"])
    source = rl._weight_source(ctx, m, _Rows, RECIPE, 0, slots)
    if source is not None:
        ctx.weight_sources.append(source)
    if root is not None:
        ctx.memo.setdefault("stored", []).append((m.weight, root, key, slots, module_path(m.node) or m.node.name))
    return wq, ws


def _where(node: fx.Node) -> str:
    return module_path(node) or node.name
