"""Per-layer error on the example inputs: Dynamo's float graph against the rewritten one, both run
eagerly on the same real inputs (the zq ops' eager implementations are the real kernels).

Two figures per quantized linear:
- in the model: the rewritten graph's output of that op against the float graph's output of the
  linear it replaced, so errors of the layers before it are included (what the model sees);
- alone: the quantized op (with its quantize step) fed the float graph's own input, so only this
  layer's rounding is measured.
Only the linears' outputs are kept between the two runs, not every activation.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from zq_compile.inspect.schema import Error
from zq_compile.metrics import sqnr_db


def error(reference, approx) -> Error:
    ref, out = _flat(reference), _flat(approx)
    if ref is None or out is None or ref.shape != out.shape:
        return Error(None, None)
    if ref.numel() == 0:
        return Error(math.inf, 0.0)
    ref, out = ref.double(), out.double()
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0).item()
    return Error(sqnr_db(ref, out), (ref - out).abs().max().item(), cos)


def _flat(value) -> torch.Tensor | None:
    leaves = [t for t in torch.utils._pytree.tree_leaves(value) if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not leaves:
        return None
    return torch.cat([t.detach().reshape(-1).cpu() for t in leaves])


class _Recorder(fx.Interpreter):
    def __init__(self, gm, on_node):
        super().__init__(gm, garbage_collect_values=True)
        self.on_node = on_node

    def run_node(self, n):
        value = super().run_node(n)
        self.on_node(n, value, self.env)
        return value


def measure(float_gm: fx.GraphModule, prepared, example_inputs: list, linear_map: dict[str, fx.Node],
            in_model_only: set[str] = frozenset()):
    """({float node name: (in-model Error, alone Error)}, Error of the graph's output).

    ``linear_map``: float linear node name -> the zq op node that replaced it in ``prepared.gm``
    (or, for the names in ``in_model_only``, the float node left there: no "alone" figure).
    """
    wanted = {name: zq for name, zq in linear_map.items()}
    float_out: dict[str, torch.Tensor] = {}
    alone: dict[str, Error] = {}
    inputs = {p: v for p, v in zip(prepared.gm.graph.find_nodes(op="placeholder"),
                                     list(example_inputs) + list(prepared.constants))}

    def on_float(n, value, env):
        zq = wanted.get(n.name)
        if zq is None:
            return
        float_out[n.name] = value.detach()
        if n.name in in_model_only:
            return
        x = n.args[0] if n.args else n.kwargs.get("input")
        if n.target in (torch.addmm,) or getattr(n.target, "__name__", "") == "addmm":
            x = n.args[1]
        if isinstance(x, fx.Node) and x in env:
            try:
                alone[n.name] = error(value, _eval_quantized(zq, x.name, env[x], inputs))
            except Exception:  # noqa: BLE001  (a chain we cannot replay: no "alone" figure)
                pass

    with torch.no_grad():
        ref = _Recorder(float_gm, on_float).run(*example_inputs)
        in_model: dict[str, Error] = {}
        by_zq = {zq.name: name for name, zq in wanted.items()}

        def on_quant(n, value, env):
            name = by_zq.get(n.name)
            if name is not None and name in float_out:
                in_model[name] = error(float_out.pop(name), value)

        out = _Recorder(prepared.gm, on_quant).run(*example_inputs, *prepared.constants)
    rows = {name: (in_model.get(name, Error(None, None)), alone.get(name, Error(None, None))) for name in wanted}
    return rows, error(ref, out)


def _eval_quantized(zq: fx.Node, x_name: str, x_value, inputs: dict):
    """Evaluate ``zq`` and the nodes it depends on in the rewritten graph, with the node named
    ``x_name`` (the float input of the replaced linear) set to ``x_value``."""
    memo: dict[fx.Node, object] = {}

    def ev(a):
        if not isinstance(a, fx.Node):
            return a
        if a in memo:
            return memo[a]
        if a.name == x_name:
            v = x_value
        elif a.op == "placeholder":
            v = inputs[a]
        elif a.op == "call_function":
            v = a.target(*fx.node.map_aggregate(a.args, ev), **fx.node.map_aggregate(a.kwargs, ev))
        elif a.op == "call_method":
            args = fx.node.map_aggregate(a.args, ev)
            v = getattr(args[0], a.target)(*args[1:], **fx.node.map_aggregate(a.kwargs, ev))
        else:
            raise ValueError(f"cannot replay {a.op} {a.target}")
        memo[a] = v
        return v

    return ev(zq)
