"""Outlier channels in float for the heads (``heads="outliers"``): the int8 GEMM without them,
plus their exact float product.

A head's input (the final norm's output) has a few channels far wider than the rest (SmolLM2-135M:
max |X_j| 53 on one channel, median 3.9), so one int8 scale per token spends most of its range on
them. Here the k widest channels (8 per 1024 inputs) leave the int8 GEMM and are multiplied in
float, the decomposition LLM.int8 (Dettmers et al. 2022) uses:

    y = Q(X * m) Q(W * m)^T  +  X[:, idx] W[:, idx]^T          m: 1, with 0 at the k channels idx

Exact in float. The per-token scale now covers the ordinary channels only, and the weight's per-row
scales no longer see the zeroed columns. The float term is a rank-k update: k multiply-adds per
logit, which Inductor fuses into the kernel that writes the logits (k = 8: no GEMM call, no extra
[tokens, vocab] tensor).

Measured on SmolLM2-135M (fp32 perplexity 23.780 on the bench's 6 Wikipedia windows, statistics
from the 2 held-out windows after them), the head alone quantized, the rest fp32 (eager
simulation): plain w8a8 24.014, split 23.852 (``split.py``), these 8 channels in float 23.795,
float head 23.780.

The channels are chosen from max |X_j / s_j| (after smoothing, what the quantize reads), so smoothing
and this compose: everything below works on X / s and W * s.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

#: float channels per this many input channels
OUTLIERS_PER_K = 1024
OUTLIER_STEP = 8


def outlier_count(k: int) -> int:
    return min(k, OUTLIER_STEP * math.ceil(k / OUTLIERS_PER_K))


@dataclass(frozen=True, eq=False)
class Outliers:
    index: torch.Tensor  # int64 [k], ascending: the channels multiplied in float
    width: int  # K, the linear's input width

    def mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[K]: 1 on the channels the int8 GEMM reads, 0 on the outliers."""
        m = torch.ones(self.width, dtype=dtype)
        m[self.index] = 0
        return m

    def x(self, x: torch.Tensor) -> torch.Tensor:
        """What the int8 GEMM quantizes: X with the outlier channels zeroed."""
        return x * self.mask(x.dtype)

    def w(self, w_nk: torch.Tensor) -> torch.Tensor:
        """What the int8 GEMM quantizes: W with the outlier columns zeroed (a copy)."""
        w = w_nk.clone()
        w[:, self.index] = 0
        return w

    def w_float(self, w_nk: torch.Tensor) -> torch.Tensor:
        """[N, k]: the outlier columns, for the float term."""
        return w_nk[:, self.index].contiguous()

    def tag(self) -> str:
        """The weight's treatment in its store key."""
        return f"outliers{hashlib.sha1(self.index.numpy().tobytes()).hexdigest()[:16]}/{self.width}"

    def describe(self) -> str:
        return f"{self.index.numel()} outlier input channel(s) of {self.width} in float beside the int8 GEMM"


def outliers_for(act_absmax: torch.Tensor, s: torch.Tensor | None = None, count: int | None = None) -> Outliers:
    """The float channels of a linear whose input has max |X_j| = ``act_absmax`` [K], smoothed
    by ``s`` when given. Non-finite statistics count as widest (those channels are the ones
    that would ruin a token's scale)."""
    a = act_absmax.detach().float().clone()
    if s is not None:
        a = a / s
    a = torch.where(torch.isnan(a), torch.full_like(a, math.inf), a)
    k = outlier_count(a.numel()) if count is None else count
    # stable sort: ties go to the lowest channel, so the choice is deterministic
    index = torch.sort(torch.sort(-a, stable=True).indices[:k]).values
    return Outliers(index, a.numel())


def float_term(x: torch.Tensor, w_float: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """X[..., idx] W_o^T in fp32: the reference of what the graph computes beside the GEMM."""
    return torch.nn.functional.linear(x.float()[..., index], w_float.float())
