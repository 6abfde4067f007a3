"""Small helpers over FX nodes shared by the passes."""

from __future__ import annotations

import math
import re

import torch
import torch.fx as fx


def fake_value(node) -> torch.Tensor | None:
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("example_value", node.meta.get("val"))
    return val if isinstance(val, torch.Tensor) else None


def annotate(node: fx.Node, fake_mode) -> None:
    """Fill meta["example_value"] / meta["val"] of a new node by running it on fake inputs."""
    if fake_mode is None:
        return

    def fake(a):
        if isinstance(a, fx.Node):
            return a.meta.get("example_value", a.meta.get("val"))
        return a

    args = fx.node.map_aggregate(node.args, fake)
    kwargs = fx.node.map_aggregate(node.kwargs, fake)
    with fake_mode:
        if node.op == "call_method":
            out = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            out = node.target(*args, **kwargs)
    node.meta["example_value"] = node.meta["val"] = out


# The compiled module itself: L['self'], or L['args'][0] when its forward is wrapped by a
# decorator (transformers' Llama, for one); its submodules follow.
_DYNAMO_ROOT = re.compile(r"^L\['args'\]\[\d+\]\.?|^L\['[^']*'\]\.?")
_INDEX = re.compile(r"\[(\d+)\]")


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost nn.Module a node was traced in ('' for the top level)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    path = _DYNAMO_ROOT.sub("", path)
    path = _INDEX.sub(r".\1", path)
    return path.replace("._orig_mod", "").strip(".")


def clone_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of Dynamo's graph module that the passes may edit.

    Dynamo reads its graph's placeholders again after the backend returns, so the passes must
    not add inputs to the original. The copy keeps what AOT autograd looks up on a Dynamo graph:
    ``meta``, ``_param_name_to_source`` and each placeholder's ``_dynamo_source``.
    """
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, val_map)
    graph.output(out)
    for old, new in val_map.items():
        if hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    clone = fx.GraphModule(gm, graph)
    clone.meta.update(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        clone._param_name_to_source = gm._param_name_to_source
    return clone


def size_hint(d, exact: bool = False) -> int | None:
    """A size as an int: a symbolic one by its value in the call being compiled, with no guard
    added. A size with no value (unbacked) gets Inductor's fallback guess, or None when ``exact``
    (where a guess would fix a wrong shape, as the pipeline race's tracing would)."""
    if isinstance(d, int):
        return d
    from torch.fx.experimental.symbolic_shapes import optimization_hint

    if exact:
        hint = getattr(getattr(d, "node", None), "hint", None)
        return int(hint) if isinstance(hint, int) else None
    return int(optimization_hint(d))


def gemm_shapes(gm: fx.GraphModule) -> tuple[tuple[int, int, int, int], ...]:
    """(M, K, N, count) of the graph's int8 GEMMs (zq.linear_w8a8) at their traced sizes (hints
    for dynamic ones), most frequent first."""
    counts: dict[tuple[int, int, int], int] = {}
    for node in gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default):
        lead = node.args[0].meta["example_value"].shape[:-1]
        m = math.prod(size_hint(d) for d in lead)
        n, k = node.args[2].meta["example_value"].shape
        counts[(m, k, n)] = counts.get((m, k, n), 0) + 1
    return tuple((m, k, n, c) for (m, k, n), c in sorted(counts.items(), key=lambda kv: -kv[1]))


def gemm_bf16(gm: fx.GraphModule) -> bool:
    """Whether any int8 GEMM of the graph writes bf16."""
    return any(n.args[6] == torch.bfloat16
               for n in gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default))
