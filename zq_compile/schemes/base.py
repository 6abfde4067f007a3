"""The interface every scheme handler implements."""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.config import QuantScheme
from zq_compile.passes.graph_utils import annotate, fake_value
from zq_compile.quant.weight import QuantizedWeight

HANDLERS: dict[str, SchemeHandler] = {}


def register(handler: SchemeHandler) -> SchemeHandler:
    HANDLERS[handler.name] = handler
    return handler


class SchemeHandler:
    name: str = ""

    #: Whether the weight goes to an int8 x int8 GEMM as it is quantized (then ``quantize`` takes
    #: the narrower grid of CPUs whose int8 GEMMs saturate, ``qmax``).
    int8_gemm: bool = False

    def quantize(self, w_nk: torch.Tensor, scheme: QuantScheme, groups: int,
                 qmax: int | None = None) -> QuantizedWeight:
        raise NotImplementedError

    def emit(self, ctx, x: fx.Node, weight: list[fx.Node], bias, out_dtype: torch.dtype) -> fx.Node:
        """Insert the quantized computation of ``x @ W^T + bias`` and return its output node.

        ``weight`` are the constant placeholders from ``constant_tensors``; the caller has set
        the graph's insertion point.
        """
        raise NotImplementedError

    def constant_tensors(self, qw: QuantizedWeight) -> dict[str, torch.Tensor | None]:
        return {"wq": qw.qdata, "ws": qw.scale, "wz": qw.zero_point}


def inference_only(ctx, node):
    """``node``, detached if it would carry a gradient into a quantized op.

    The quantized ops have no backward: the weights are constants of the compiled graph and the
    rounding of activations has no useful derivative. A model called with grad enabled (a common
    way to run inference) still compiles; its quantized linears stop gradients, which the report
    and a warning say.
    """
    val = fake_value(node)
    if val is None or not val.requires_grad or not torch.is_grad_enabled():
        return node
    detached = ctx.gm.graph.call_method("detach", (node,))
    annotate(detached, ctx.fake_mode)
    ctx.gradients_stopped += 1
    return detached
