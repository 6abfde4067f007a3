"""Group-wise weight quantization (reference), groups along the output rows.

W[N, K] is split into G groups of N / G consecutive output rows; each group has one scale
(and, if asymmetric, one zero point). G = N is per-channel.

Symmetric:  scale_g = max|W_g| / qmax,  q = clamp(round(W / scale), -qmax, qmax)
Asymmetric: [lo, hi] = [min(W_g, 0), max(W_g, 0)], scale_g = (hi - lo) / (2^b - 1),
            zp_g = round(qmin - lo / scale_g),  q = clamp(round(W / scale) + zp, qmin, qmax)
Dequantized: (q - zp) * scale. Every element round-trips within half a step (scale / 2).
An all-zero group gets scale 1. 4-bit values are stored packed two per byte (``int4.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zq_compile.quant.int4 import pack_int4, unpack_int4


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized [N, K] weight. ``qdata`` is int8 [N, K] for 8 bits, uint8 [N, ceil(K/2)] for 4."""

    qdata: torch.Tensor
    scale: torch.Tensor  # fp32 [G]
    zero_point: torch.Tensor | None  # int32 [G], None when symmetric
    bits: int
    shape: tuple[int, int]

    @property
    def groups(self) -> int:
        return self.scale.numel()

    @property
    def group_size(self) -> int:
        return self.shape[0] // self.groups

    def int_values(self) -> torch.Tensor:
        """int8 [N, K], unpacked if needed."""
        return unpack_int4(self.qdata, self.shape[1]) if self.bits == 4 else self.qdata

    def row_scale(self) -> torch.Tensor:
        return self.scale.repeat_interleave(self.group_size)

    def row_zero_point(self) -> torch.Tensor | None:
        if self.zero_point is None:
            return None
        return self.zero_point.repeat_interleave(self.group_size)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = self.int_values().float()
        zp = self.row_zero_point()
        if zp is not None:
            q = q - zp.float()[:, None]
        return (q * self.row_scale()[:, None]).to(dtype)

    @property
    def nbytes(self) -> int:
        zp = self.zero_point.numel() * self.zero_point.element_size() if self.zero_point is not None else 0
        return self.qdata.numel() * self.qdata.element_size() + self.scale.numel() * 4 + zp


def check_groups(n_rows: int, groups: int | None) -> int:
    g = n_rows if groups is None else groups
    if g < 1 or n_rows % g:
        raise ValueError(f"weight_groups={groups} must divide the {n_rows} output rows")
    return g


def quantize_weight(
    w: torch.Tensor, bits: int = 8, groups: int | None = None, symmetric: bool = True,
    qmax: int | None = None,
) -> QuantizedWeight:
    """Quantize a [N, K] floating weight; ``groups=None`` means one group per output row.

    ``qmax`` narrows an 8-bit grid to [-qmax, qmax] (asymmetric: 2 * qmax steps), for int8 GEMMs
    that saturate on full-range weights (``codegen/cpu/select.int8_weight_qmax``)."""
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_weight expects a 2-D floating weight, got {tuple(w.shape)} {w.dtype}")
    if bits not in (8, 4):
        raise ValueError(f"bits={bits} is not valid; allowed: 8, 4")
    if not torch.isfinite(w).all():
        raise ValueError("weight holds NaN or Inf; it cannot be quantized")
    full = 2 ** (bits - 1) - 1
    if qmax is not None and (bits != 8 or not isinstance(qmax, int) or not 1 <= qmax <= full):
        raise ValueError(f"qmax={qmax!r} is not valid; allowed: None, or an int in 1..{full} for 8-bit weights")
    n, k = w.shape
    g = check_groups(n, groups)
    wf = w.detach().float()
    wg = wf.reshape(g, -1)
    if symmetric:
        qmax = qmax or full
        scale = wg.abs().amax(dim=1) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        rows = scale.repeat_interleave(n // g)[:, None]
        q = torch.round(wf / rows).clamp(-qmax, qmax).to(torch.int8)
        zp = None
    else:
        qmin, qmax = (-qmax, qmax) if qmax else (-(2 ** (bits - 1)), full)
        lo = wg.amin(dim=1).clamp(max=0)
        hi = wg.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int32)
        rows = scale.repeat_interleave(n // g)[:, None]
        zrows = zp.repeat_interleave(n // g)[:, None]
        q = (torch.round(wf / rows) + zrows).clamp(qmin, qmax).to(torch.int8)
    qdata = pack_int4(q) if bits == 4 else q.contiguous()
    return QuantizedWeight(qdata=qdata, scale=scale.contiguous(), zero_point=zp, bits=bits, shape=(n, k))
