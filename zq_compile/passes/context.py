"""State shared by the passes over one captured graph."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor

from zq_compile.config import ZeroQuantConfig
from zq_compile.report import CompileReport


@dataclass
class PassContext:
    gm: fx.GraphModule
    example_inputs: list
    config: ZeroQuantConfig
    report: CompileReport
    target: str
    #: (name, tensor) pairs appended to the graph's inputs, in placeholder order.
    constants: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    #: per-pass scratch space (e.g. the quantize node already emitted for an activation).
    memo: dict = field(default_factory=dict)
    #: activations and biases detached because grad mode was on (see schemes/base.py).
    gradients_stopped: int = 0
    #: how each set of constants derives from the graph's float inputs (see binding.py).
    weight_sources: list = field(default_factory=list)

    def __post_init__(self) -> None:
        placeholders = list(self.gm.graph.find_nodes(op="placeholder"))
        self._input_of = dict(zip(placeholders, self.example_inputs))
        self._index_of = {p: i for i, p in enumerate(placeholders)}
        # The mode Dynamo made the placeholders' example values in: new nodes must share it.
        # (detect_fake_mode would answer the TracingContext's mode, a different one here.)
        fakes = [p.meta.get("example_value") for p in placeholders]
        self.fake_mode = next((v.fake_mode for v in fakes if isinstance(v, FakeTensor)), None)

    def input_value(self, node: fx.Node):
        """The real tensor Dynamo passes for a placeholder (parameters included)."""
        return self._input_of.get(node)

    def input_index(self, node: fx.Node) -> int | None:
        """Position of one of Dynamo's placeholders among the graph's inputs."""
        return self._index_of.get(node)

    def add_constant(self, name: str, value: torch.Tensor) -> fx.Node:
        if value.requires_grad:  # made from a parameter under grad mode (an outlier head's float
            # columns): a constant must not pass a partial gradient back to the weight
            value = value.detach()
        graph = self.gm.graph
        last = list(graph.find_nodes(op="placeholder"))[-1]
        with graph.inserting_after(last):
            node = graph.placeholder(f"zq_{name}")
        # AOT autograd asks every placeholder of a Dynamo graph for its source; ours have none.
        node._dynamo_source = None
        if self.fake_mode is not None:
            fake = self.fake_mode.from_tensor(value, static_shapes=True)
            node.meta["example_value"] = node.meta["val"] = fake
        self.constants.append((node.name, value))
        return node
