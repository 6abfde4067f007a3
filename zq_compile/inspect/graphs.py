"""The two graphs of one capture (Dynamo's float graph, the rewritten one) as drawable node lists,
the link from each replaced linear to its quantized op, and the fused groups of the generated code.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from zq_compile.inspect.kernels import Call
from zq_compile.inspect.schema import FloatNode, Fusion, GraphNode, ZQ_PARTS
from zq_compile.passes.graph_utils import fake_value, module_path

OPAQUE = ("scaled_dot_product", "attention", "mm", "bmm", "matmul", "linear", "conv")


def is_op(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method", "call_module")


def zq_kind(node: fx.Node) -> str | None:
    """"linear", "quantize", "attention" for our ops, else None."""
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or target.namespace != "zq":
        return None
    name = target._opname
    if name.startswith("linear"):
        return "linear"
    if name.startswith("quantize"):
        return "quantize"
    if "attention" in name:
        return "attention"
    return "other"


def label(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f".{t}"
    if node.op == "call_module":
        return str(t)
    if t is operator.getitem:
        return f"getitem[{node.args[1]}]" if len(node.args) > 1 else "getitem"
    if isinstance(t, torch._ops.OpOverload):
        return f"{t.namespace}.{t._opname}"
    return getattr(t, "__name__", str(t))


def _shape(node: fx.Node) -> str:
    v = fake_value(node)
    if v is None:
        return ""
    return f"{str(v.dtype).replace('torch.', '')}[{', '.join(str(s) for s in v.shape)}]"


def link_linears(report, gm: fx.GraphModule) -> dict[str, fx.Node]:
    """Float linear node name -> the zq linear op that replaced it.

    Our quantized weights enter the graph as placeholders named ``zq_<original node>_<part>``
    (passes/context.py); a weight shared by several linears is entered once, so the rest are
    matched in order (the rewrite emits them in graph order).
    """
    names = [d.node for d in report.decisions if d.quantized]
    # linears merged into one GEMM (passes/merge_sibling_gemms.py): each is its column slice
    out: dict[str, fx.Node] = {n.meta["zq_replaces"]: n for n in gm.graph.nodes
                               if n.meta.get("zq_replaces") in names}
    zq_linears = [n for n in gm.graph.nodes if zq_kind(n) == "linear" and "zq_merged" not in n.meta]
    unclaimed = []
    for n in zq_linears:
        owner = next((a.name[3:].rsplit("_", 1)[0] for a in n.args
                      if isinstance(a, fx.Node) and a.op == "placeholder" and a.name.startswith("zq_")), None)
        if owner in names and owner not in out:
            out[owner] = n
        else:
            unclaimed.append(n)
    rest = [name for name in names if name not in out]
    out.update(zip(rest, unclaimed))
    return out


def float_reasons(report, gm: fx.GraphModule) -> dict[str, FloatNode]:
    """Every op node of Dynamo's graph that stays in float, with why."""
    decisions = {d.node: d for d in report.decisions}
    attention = {a.node: a for a in getattr(report, "attention", [])}
    out = {}
    for n in gm.graph.nodes:
        if not is_op(n):
            continue
        d, a = decisions.get(n.name), attention.get(n.name)
        if d is not None:
            if not d.quantized:
                out[n.name] = FloatNode(n.name, label(n), d.module, "linear", d.reason)
        elif a is not None:
            if a.dtype != "bf16":
                out[n.name] = FloatNode(n.name, label(n), a.module, "attention", a.reason)
        else:
            v = fake_value(n)
            dtype = str(v.dtype).replace("torch.", "") if v is not None else "its own dtype"
            out[n.name] = FloatNode(n.name, label(n), module_path(n), "other",
                                    f"not a linear layer: Inductor compiles it as is ({dtype})")
    return out


def draw_nodes(gm: fx.GraphModule, report, floats: dict[str, FloatNode] | None,
               zq_info: dict[str, tuple[str, str]] | None = None) -> list[GraphNode]:
    """Op nodes (placeholders and output left out) with their inputs among op nodes.
    ``zq_info``: zq linear node name -> (module, scheme) of the linear it replaced."""
    zq_info = zq_info or {}
    decisions = {d.node: d for d in report.decisions}
    attention = {a.node: a for a in getattr(report, "attention", [])}
    nodes = []
    ops = {n for n in gm.graph.nodes if is_op(n)}
    for n in gm.graph.nodes:
        if n not in ops:
            continue
        kind, scheme, reason = "float", None, ""
        zk = zq_kind(n)
        module = module_path(n)
        if zk == "linear":
            module, scheme = zq_info.get(n.name, ("", None))
            kind, reason = "quantized", f"{scheme}: int8 GEMM, epilogue left to Inductor to fuse"
        elif zk == "quantize":
            users = [u for g in n.users for u in g.users if u.name in zq_info] or []
            scheme = zq_info[users[0].name][1] if users else None
            kind, reason = "quantize", "per-token int8 quantize of the activation"
        elif zk == "attention":
            kind, reason = "attention", "bf16 matmuls, fp32 softmax"
        elif floats is not None and n.name in floats:
            reason = floats[n.name].reason
        elif n.name in decisions:
            d = decisions[n.name]
            kind, scheme, reason = ("quantized", d.scheme, d.reason) if d.quantized else ("float", None, d.reason)
        elif n.name in attention:
            a = attention[n.name]
            kind, reason = ("attention", a.reason) if a.dtype == "bf16" else ("float", a.reason)
        inputs = [a.name for a in n.all_input_nodes if a in ops]
        nodes.append(GraphNode(n.name, label(n), kind, scheme, module, _shape(n), reason, inputs))
    return nodes


def fusions(calls: list[Call], gm: fx.GraphModule, module_of_zq: dict[str, list[str]]) -> list[Fusion]:
    """Kernels that run part of a quantized linear (its quantize step or its epilogue) together
    with other work, read from the generated code (kernels.py). ``module_of_zq``: zq linear node
    name -> the modules it computes (several for a merged GEMM, passes/merge_sibling_gemms.py)."""
    gemm_of: dict[int, str] = {}  # call index -> zq linear node name
    zq_names = set(module_of_zq)
    for c in calls:
        if not (c.extern and is_gemm_call(c.name)):
            continue
        # Source nodes are listed in graph order: a quantized linear's GEMM ends with its zq
        # linear, while the matmuls of an attention that reads the projections end with the
        # attention op (and list the linears before it)
        if c.source_nodes and c.source_nodes[-1] in zq_names:
            gemm_of[c.index] = c.source_nodes[-1]
    readers: dict[int, list[int]] = {}
    for c in calls:
        for p in c.producers:
            readers.setdefault(p, []).append(c.index)
    by_name = {n.name: n for n in gm.graph.nodes}
    out = []
    for c in calls:
        if c.extern:
            continue
        epi = sorted({gemm_of[p] for p in c.producers if p in gemm_of}, key=_order(by_name))
        feeds = sorted({gemm_of[r] for r in readers.get(c.index, []) if r in gemm_of}, key=_order(by_name))
        ops = c.ops
        if not (epi or feeds or any(o in ZQ_PARTS for o in ops)):
            continue
        if len(ops) < 2 and not (epi and feeds):
            continue  # a kernel of one op fuses nothing
        nodes = _region(gm, [by_name[e] for e in epi], [by_name[f] for f in feeds])
        nodes.extend(s for s in c.source_nodes if s in by_name and s not in nodes)
        out.append(Fusion(c.name, ops, [m for e in epi for m in module_of_zq[e]],
                          [m for f in feeds for m in module_of_zq[f]], nodes))
    return out


def is_gemm_call(name: str) -> bool:
    """An extern call that is a matrix product (our int8 GEMMs, ATen's mm family), not an
    attention or other opaque op that also lists a linear among its source nodes."""
    op = name.rsplit(".", 2)[-2] if name.endswith(".default") else name.rsplit(".", 1)[-1]
    op = op.lower()
    return "attention" not in op and any(k in op for k in ("mm", "gemm", "linear", "matmul"))


def _order(by_name):
    index = {name: i for i, name in enumerate(by_name)}
    return lambda name: index.get(name, 0)


def _stop(n: fx.Node) -> bool:
    if n.op != "call_function" and n.op != "call_method" and n.op != "call_module":
        return True
    if zq_kind(n) in ("linear", "attention"):
        return True
    name = label(n).lower()
    return zq_kind(n) is None and any(k in name for k in OPAQUE)


def _region(gm: fx.GraphModule, epilogues: list[fx.Node], feeds: list[fx.Node]) -> list[str]:
    """Nodes of the rewritten graph a kernel covers, for drawing its box: those between the GEMMs
    whose epilogue it runs and the quantize steps of the GEMMs it feeds (or, with only one side
    known, the nodes reached from that side before the next opaque op)."""
    quantizers = []
    for f in feeds:
        for a in f.all_input_nodes:
            src = a.args[0] if a.target is operator.getitem else a
            if isinstance(src, fx.Node) and zq_kind(src) == "quantize":
                quantizers.append(src)

    def walk(starts, nxt, limit=12):
        seen, frontier = set(), list(starts)
        for _ in range(limit):
            new = []
            for n in frontier:
                for m in nxt(n):
                    if m not in seen and not _stop(m):
                        seen.add(m)
                        new.append(m)
            frontier = new
        return seen

    down = walk(epilogues, lambda n: list(n.users))
    up = walk(quantizers, lambda n: n.all_input_nodes) | set(quantizers)
    if epilogues and quantizers:
        region = (down & up) | set(quantizers) | {g for q in quantizers for g in q.users}
    else:
        region = down | up | ({g for q in quantizers for g in q.users} if quantizers else set())
    region |= set(epilogues)
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    return [n.name for n in sorted(region, key=order.get)]
