"""Outlier channel splitting for the heads (``heads="split"``): their input's widest channels
run as several.

A head (``lm_head``, or a linear tied to an embedding) writes the logits every token's loss reads,
and its input, the final norm's output, has a few channels far wider than the rest (SmolLM2-135M:
max |X_j| 53 on one channel, median 3.9), so one int8 scale per token spends most of the range on
them. Smoothing moves that range into the weight; splitting removes it instead. Channel j
becomes c_j copies, each carrying X_j / c_j and reading the same weight column, which is exact
in float:

    y = sum_j X_j W_j  =  sum_j sum_{1..c_j} (X_j / c_j) W_j

The widest channel is halved (then thirded, ...) one extra column at a time; the weight columns
are copied unscaled, so the per-row weight scales do not change. K grows by ``extra_columns(K)``
(SmolLM2's head: 576 -> 608, 5.6% more GEMM work on one linear).

Measured on SmolLM2-135M (fp32 perplexity 23.780 on the bench's 6 Wikipedia windows, statistics
from the 2 held-out windows after them): the head alone quantized (the rest fp32, eager
simulation) 24.014 in plain w8a8, 23.895 smoothed (alpha 0.5), 23.852 split (32 columns, no
smoothing); the compiled model (smoothed w8a8, down_proj 25 kept float) 24.291 with the head plain
w8a8, 24.206 split, 24.068 with the head float. So a split head keeps about 40% of what a
float head buys in accuracy, and runs as an int8 GEMM; it is opt-in (``heads="split"``).

``Split`` is computed from max |X_j / s_j| (after smoothing) and applied to both sides:
x' = (x * inv)[..., index] and W' = W[:, index].
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

#: extra columns per this many input channels, in steps of SPLIT_STEP (K' stays a multiple of
#: 32 when K is, so INT4 group sizes still divide it)
SPLIT_PER_K = 1024
SPLIT_STEP = 32


def extra_columns(k: int) -> int:
    return SPLIT_STEP * math.ceil(k / SPLIT_PER_K)


@dataclass(frozen=True, eq=False)
class Split:
    index: torch.Tensor  # int64 [K']: the source channel of each column
    inv: torch.Tensor  # fp32 [K]: 1 / copies of each channel

    @property
    def extra(self) -> int:
        return self.index.numel() - self.inv.numel()

    def x(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.inv.to(x.dtype))[..., self.index]

    def w(self, w_nk: torch.Tensor) -> torch.Tensor:
        return w_nk[:, self.index]

    def digest(self) -> str:
        return hashlib.sha1(self.index.numpy().tobytes()).hexdigest()[:16]

    def tag(self) -> str:
        """The weight's treatment in its store key."""
        return f"split{self.digest()}"

    def describe(self) -> str:
        k = self.inv.numel()
        widest = int((1 / self.inv).max().item())
        return f"{self.extra} outlier channel copies (K {k} -> {k + self.extra}, widest split {widest} ways)"


def split_for(act_absmax: torch.Tensor, s: torch.Tensor | None = None, extra: int | None = None) -> Split:
    """The split of a linear whose input has max |X_j| = ``act_absmax`` [K], smoothed by ``s``
    when given (the split sees X / s, what the GEMM's quantize reads)."""
    a = act_absmax.detach().float().clone()
    if s is not None:
        a = a / s
    a = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    copies = torch.ones_like(a)
    for _ in range(extra_columns(a.numel()) if extra is None else extra):
        j = int(torch.argmax(a / copies))  # ties: the lowest channel, so the split is deterministic
        copies[j] += 1
    index = torch.arange(a.numel()).repeat_interleave(copies.long())
    return Split(index, 1.0 / copies)
