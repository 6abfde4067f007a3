"""INT4 weights with groups along the input dimension K (reference numerics).

W[N, K] is cut into blocks of ``G_rows`` groups of consecutive output rows (G_rows = N is one
row per group) times K / group_size runs of ``group_size`` consecutive inputs. Each block has one
scale (and, if asymmetric, one zero point); scale has shape [G_rows, K / group_size].

Symmetric:  scale = max|W_block| / 7,  q = clamp(round(W / scale), -7, 7)
Asymmetric: [lo, hi] = [min(W_block, 0), max(W_block, 0)], scale = (hi - lo) / 15,
            zp = round(-8 - lo / scale),  q = clamp(round(W / scale) + zp, -8, 7)
Dequantized: (q - zp) * scale; an all-zero block gets scale 1. q is stored packed, two per
byte (``int4.py``). Small groups along K follow the weight's local range: the INT4 kernels
(ATen's int4pack, the paper's group-wise scheme) expect 32, 64 or 128.

``to_int8_per_row`` turns such a weight into int8 values with one scale per output row, the form
the int8 GEMMs take: each INT4 value times its block scale, re-rounded on a grid 127 steps wide
per row. It is done once per weight (W4A8 at large M, ``codegen/cpu/w4a8.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zq_compile.quant.int4 import pack_int4, unpack_int4

#: Group sizes along K the INT4 kernels take, largest first (the order "nearest valid" tries).
INT4_GROUP_SIZES = (128, 64, 32)


@dataclass(frozen=True)
class Int4Weight:
    """A [N, K] weight quantized to INT4 with groups along K (see module docstring)."""

    qdata: torch.Tensor  # uint8 [N, K / 2], packed
    scale: torch.Tensor  # fp32 [G_rows, K / group_size]
    zero_point: torch.Tensor | None  # int32 like scale, None when symmetric
    group_size: int
    shape: tuple[int, int]
    bits: int = 4

    @property
    def groups(self) -> int:
        return self.scale.numel()

    def int_values(self) -> torch.Tensor:
        return unpack_int4(self.qdata, self.shape[1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_kgroups(self.qdata, self.scale, self.zero_point, self.group_size, self.shape[1], dtype)

    @property
    def nbytes(self) -> int:
        zp = self.zero_point.numel() * self.zero_point.element_size() if self.zero_point is not None else 0
        return self.qdata.numel() * self.qdata.element_size() + self.scale.numel() * 4 + zp


def block_view(t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """A [G_rows, K / gs] table expanded to [N, K / gs] (one entry per row and K group)."""
    return t.repeat_interleave(n // t.shape[0], dim=0)


def quantize_kgroups(w: torch.Tensor, group_size: int = 128, row_groups: int | None = None,
                     symmetric: bool = True) -> Int4Weight:
    if w.dim() != 2 or not w.is_floating_point():
        raise ValueError(f"quantize_kgroups expects a 2-D floating weight, got {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    if group_size < 1 or k % group_size:
        raise ValueError(f"group_size={group_size} must divide the {k} input features")
    g = n if row_groups is None else row_groups
    if g < 1 or n % g:
        raise ValueError(f"weight_groups={row_groups} must divide the {n} output rows")
    if not torch.isfinite(w).all():
        raise ValueError("weight holds NaN or Inf; it cannot be quantized")
    kg = k // group_size
    blocks = w.detach().float().reshape(g, n // g, kg, group_size)
    if symmetric:
        scale = blocks.abs().amax(dim=(1, 3)) / 7
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        q = torch.round(blocks / scale[:, None, :, None]).clamp(-7, 7)
        zp = None
    else:
        lo = blocks.amin(dim=(1, 3)).clamp(max=0)
        hi = blocks.amax(dim=(1, 3)).clamp(min=0)
        scale = (hi - lo) / 15
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(-8 - lo / scale).clamp(-8, 7).to(torch.int32)
        q = (torch.round(blocks / scale[:, None, :, None]) + zp[:, None, :, None]).clamp(-8, 7)
    q = q.to(torch.int8).reshape(n, k)
    return Int4Weight(pack_int4(q), scale.contiguous(), zp, group_size, (n, k))


def dequantize_kgroups(qdata, scale, zero_point, group_size: int, k: int, dtype=torch.float32,
                       split: bool = False) -> torch.Tensor:
    """W [N, K] in ``dtype``; ``split``: the same values with each K group's columns in
    ``split_nibbles``'s order (for graphs: pair it with ``split_inputs``; in the packed order
    Inductor made the unpack a scalar loop, bf16, M = 1, a 2048 x 2048 weight at group 128: 5.0 ms
    against 2.0 on the 2-core Zen 4, ``bench/int4_dequant.py``)."""
    n = qdata.shape[0]
    if split:
        q = split_nibbles(qdata, group_size, k)  # [N, K groups, 2, group / 2]
    else:
        q = unpack_int4(qdata, k).float().reshape(n, k // group_size, group_size)
    per_block = (n, k // group_size) + (1,) * (q.dim() - 2)  # one value per (row, K group)
    if zero_point is not None:
        q = q - block_view(zero_point, n, k).float().reshape(per_block)
    return (q * block_view(scale.float(), n, k).reshape(per_block)).reshape(n, k).to(dtype)


def split_nibbles(qdata: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """fp32 [N, K / group_size, 2, group_size / 2]: the signed INT4 values of packed uint8
    [N, K / 2] with each K group's columns split: the low nibbles of its bytes (its even inputs),
    then the high ones (its odd inputs); ``split_inputs`` puts an activation in the same order.

    For code traced into a graph. In the packed (interleaved) order the output is indexed by
    j // 2 and j % 2, which Inductor's CPU codegen leaves scalar; this order is a contiguous loop
    (``bench/int4_dequant.py``). The nibbles are split in float, which is exact for a byte (the
    floor of a sixteenth): a uint8 shift and mask in this order vectorized worse."""
    n = qdata.shape[0]
    packed = qdata.reshape(n, k // group_size, group_size // 2).float()
    hi = torch.floor(packed * 0.0625)
    both = torch.stack((packed - 16.0 * hi, hi), dim=2)
    return both - 16.0 * (both >= 8.0).float()  # the nibble's two's complement


def split_inputs(x2: torch.Tensor, group_size: int) -> torch.Tensor:
    """x [M, K] with its columns in ``split_nibbles``'s order (a copy of M x K values, in place
    of index arithmetic over the N x K weight); the product with a weight in that order is the
    product in the original order."""
    m, k = x2.shape
    return x2.reshape(m, k // group_size, group_size // 2, 2).transpose(2, 3).reshape(m, k)


def to_int8_per_row(qdata, scale, zero_point, group_size: int, k: int,
                    qmax: int = 127) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [N, K], fp32 [N]) with int8 * scale[row] ~= the dequantized INT4 weight.

    Each row's grid is its largest |value| / 127: finer than every one of its INT4 blocks'
    grids (max |value| / 7 or wider), so the added rounding is at most 1/18 of an INT4 step
    (1/9 with ``qmax`` = 64, the grid of CPUs whose int8 GEMMs saturate)."""
    row = int8_row_scale(qdata, scale, zero_point, group_size, k, qmax)
    return round_to_rows(qdata, scale, zero_point, group_size, k, row), row


def int8_row_scale(qdata, scale, zero_point, group_size: int, k: int, qmax: int = 127) -> torch.Tensor:
    """fp32 [N]: each row's largest dequantized |value| / qmax (1 for an all-zero row)."""
    row = dequantize_kgroups(qdata, scale, zero_point, group_size, k).abs().amax(dim=1) / qmax
    return torch.where(row == 0, torch.ones_like(row), row).contiguous()


def round_to_rows(qdata, scale, zero_point, group_size: int, k: int, row: torch.Tensor) -> torch.Tensor:
    """int8 [N, K]: the dequantized INT4 weight re-rounded on the grids ``row`` (made by
    ``int8_row_scale`` for this weight and qmax; torch ops only:
    the per-call W4A8 kernel traces it into the graph, where Inductor makes it one kernel).

    The nibbles are split by a broadcast shift, not ``unpack_int4``'s stack: Inductor lowers
    that stack to an ``aten.cat`` call between two kernels (measured at 256 x 576 x 1536: the
    per-call path took 6.7 ms against 2.8 for the kept copy). The split order of
    ``split_nibbles`` (with the activation permuted, the same int32 sums) was no faster here: the
    call's oneDNN reorder of the int8 weight dominates (``bench/int4_dequant.py --kernel w4a8``,
    ``bench/results/targeted/2026-12-08_int4_unpack_w4a8_per_call_zen4.txt``)."""
    n = qdata.shape[0]
    shift = torch.arange(0, 8, 4, dtype=torch.uint8, device=qdata.device)
    nib = ((qdata.unsqueeze(-1) >> shift) & 0xF).to(torch.int32)  # int32: Inductor vectorizes it
    q = ((nib ^ 8) - 8).reshape(n, -1)[:, :k].float().reshape(n, k // group_size, group_size)
    if zero_point is not None:
        q = q - block_view(zero_point, n, k).float()[..., None]
    # One multiply per value by (block scale / row scale), a [N, K / group_size] table. No clamp:
    # ``row`` is the row's largest |value| / qmax, so nothing rounds past qmax, and a clamp kept
    # Inductor from vectorizing the cast (1.7 ms against 0.8 at 1536 x 576).
    ratio = block_view(scale.float(), n, k) / row[:, None]
    return torch.round(q * ratio[..., None]).reshape(n, k).to(torch.int8)
