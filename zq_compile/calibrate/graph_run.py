"""Calibration on the captured graph itself: the float FX graph Dynamo handed the backend, run
by an fx.Interpreter on the real inputs of the call that triggered compilation, with every
linear the rewrite will quantize routed through a ``Simulator``.

Used when ``zq_compile.calibrate`` was not called for the model's weights (plain
``torch.compile(model, backend="zeroquant")``).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.calibrate.policy import Simulator
from zq_compile.calibrate.stats import float_leaves


class _Interpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, sim: Simulator, linears: dict):
        super().__init__(gm, garbage_collect_values=True)
        self.sim, self.linears = sim, linears  # node -> (site key, LinearMatch)

    def run_node(self, n: fx.Node):
        hit = self.linears.get(n)
        if hit is None:
            return super().run_node(n)
        key, m = hit
        x = self.env[m.x]
        bias = self.env[m.bias] if isinstance(m.bias, fx.Node) else m.bias
        return self.sim.linear(key, x, self.sim.sites[key].w_nk, bias)


def _mutates(gm: fx.GraphModule) -> bool:
    for n in gm.graph.nodes:
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
        if n.op in ("call_function", "call_method") and name.endswith("_") and not name.endswith("__"):
            return True
    return False


def _concrete(value):
    """A dynamic-shape graph's size placeholders arrive as SymInts; the interpreter runs real
    tensors, whose sizes are the SymInts' hints (the values of this call)."""
    if isinstance(value, torch.SymInt):
        hint = value.node.hint
        if hint is None:
            raise RuntimeError(f"calibration: a size input of the graph ({value}) has no value for this call")
        return int(hint)
    return value


def graph_runner(gm: fx.GraphModule, example_inputs: list, linears: dict):
    """``run(sim)`` for ``policy.decide``: one batch, the call's own inputs. Inputs the graph
    writes to (a KV cache's ``index_copy_``) are cloned first, so calibration leaves no trace."""
    inputs = [_concrete(t) for t in example_inputs]
    if _mutates(gm):
        inputs = [t.clone() if isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) else t
                  for t in inputs]

    def run(sim: Simulator) -> list[list[torch.Tensor]]:
        args = [t.clone() if isinstance(t, torch.Tensor) and t is not o else t for t, o in zip(inputs, example_inputs)]
        with torch.no_grad():
            out = _Interpreter(gm, sim, linears).run(*args)
        return [float_leaves(out)]

    return run
