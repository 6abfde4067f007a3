"""Outlier smoothing (scale migration from activations to weights).

A few input channels of a transformer linear carry values tens of times larger than the rest;
with one int8 scale per token they take most of the range. Per input channel j,

    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)          (W_j: column j of every linear reading X)

and y = (X / s) (s * W)^T is exact in float; after the division the channels are even, and the
weight, quantized per output row, absorbs the factor. Linears that read one tensor (Q, K, V;
gate and up) share one s, so X / s is computed (or folded into the norm before it) once.

``fake_linear`` is the simulation the calibration runs use: the same reference quantizers the
kernels are tested against, dequantized, in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zq_compile.quant.activation import quantize_per_token_ref
from zq_compile.quant.weight import quantize_weight

#: s is kept within [1/S_LIMIT, S_LIMIT]: a dead channel (max 0) gets s = 1, and no weight
#: column is scaled so far that its neighbours in the same output row round to zero.
S_LIMIT = 1e4
EPS = 1e-8


def smooth_scale(act_absmax: torch.Tensor, weights_nk: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """s [K] (fp32) for the linears ``weights_nk`` (each [N_i, K]) that read one activation."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r} is not valid; allowed: 0 <= alpha <= 1")
    a = act_absmax.float()
    w = torch.stack([wt.detach().float().abs().amax(dim=0) for wt in weights_nk]).amax(dim=0)
    s = a.clamp(min=EPS).pow(alpha) / w.clamp(min=EPS).pow(1 - alpha)
    s = torch.where((a > 0) & (w > 0), s, torch.ones_like(s))
    return s.clamp(1 / S_LIMIT, S_LIMIT)


def transformed_weight(w_nk: torch.Tensor, s: torch.Tensor | None, columns=None) -> torch.Tensor:
    """What is quantized in place of W, in W's dtype: W * s (smoothed), its columns then treated
    for the heads' outlier channels (``columns``: a ``split.Split`` lays them out, an
    ``outliers.Outliers`` zeroes those computed in float). Compile and the calibration simulator
    both read it, so they quantize the same matrix."""
    if s is not None:
        w_nk = (w_nk.float() * s).to(w_nk.dtype)
    return w_nk if columns is None else columns.w(w_nk)


def quantized_weight(w_nk: torch.Tensor, s: torch.Tensor | None, groups: int, symmetric: bool,
                     columns=None) -> torch.Tensor:
    """``transformed_weight`` quantized to int8 as the w8a8 scheme does and dequantized, fp32 [N, K'].

    Always on the full +-127 grid, also on CPUs that deploy +-64 (``select.deployed_weight_qmax``):
    scoring on the deployed grid was tried and picked a smoothing strength that did worse on real
    text (SmolLM2 w8a8 on an AVX2 EPYC, 2026-12-05: perplexity 24.397 against 24.121, fp32 23.780).
    """
    w = transformed_weight(w_nk.detach().float(), s, columns)
    return quantize_weight(w, bits=8, groups=groups, symmetric=symmetric).dequantize()


def fake_linear(x: torch.Tensor, w_deq: torch.Tensor, bias, s: torch.Tensor | None) -> torch.Tensor:
    """y = Q(x / s) Q(W s)^T + b in fp32 (``w_deq`` from ``quantized_weight``), in x's dtype."""
    xf = x.float() if s is None else x.float() / s
    q, scale = quantize_per_token_ref(xf, 8)
    y = F.linear(q.float() * scale, w_deq, None if bias is None else bias.float())
    return y.to(x.dtype)
