"""The interface every target's kernel object implements (CPU kernels, the Triton kernel).

The backend hands ``quantize_per_token`` and ``linear`` to AOT autograd as the decompositions
of ``zq::quantize_per_token`` and ``zq::linear_w8a8``; ``finalize_weight`` says what the compiled
graph holds for each int8 weight. A hook added here has a default, so no target breaks.
"""

from __future__ import annotations

import torch

from zq_compile.quant.activation import quantize_per_token_ref


class Kernel:
    name: str = ""
    description: str = ""

    def unavailable_reason(self) -> str | None:
        """None if this kernel can run in this process, else why not."""
        return None

    def quantize_per_token(self, x, bits=8):
        # Plain aten code by default: Inductor fuses it into the kernel that produces x.
        return quantize_per_token_ref(x, bits)

    def linear(self, x_q, x_scale, w_q, w_scale, w_zero, bias, out_dtype):
        raise NotImplementedError

    def finalize_weight(self, w_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """What the compiled graph holds for an int8 weight (by default the weight itself)."""
        return w_q

    def finalize_shared(self, w_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
        """As ``finalize_weight`` for a weight the graph also reads as plain int8 (a tied
        embedding's gather, ``passes/quantize_embedding.py``): it must stay plain int8."""
        return w_q
