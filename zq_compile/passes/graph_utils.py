"""Small helpers over FX nodes shared by the passes."""

from __future__ import annotations

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
