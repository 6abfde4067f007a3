"""INT4 storage: two signed 4-bit values per byte.

Layout along the last dim K: byte j holds element 2j in its low nibble and element 2j+1 in its
high nibble, each in two's complement. An odd K is padded with a zero nibble, so a packed row has
ceil(K / 2) bytes. This is the layout the INT4 kernels unpack in registers.
"""

from __future__ import annotations

import torch


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7], shape [..., K] -> uint8 [..., ceil(K/2)]."""
    if q.dtype != torch.int8:
        raise TypeError(f"pack_int4 expects int8 values, got {q.dtype}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("pack_int4: values must lie in [-8, 7]")
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nib = q.to(torch.uint8) & 0xF  # two's complement low nibble
    return nib[..., 0::2] | (nib[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """uint8 [..., ceil(k/2)] -> int8 [..., k], the inverse of ``pack_int4``."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_int4 expects uint8, got {packed.dtype}")
    if packed.shape[-1] != (k + 1) // 2:
        raise ValueError(f"unpack_int4: last dim {packed.shape[-1]} does not hold k={k} values")
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    both = torch.stack((lo, hi), dim=-1).flatten(-2)[..., :k]
    return (both ^ 8) - 8  # sign-extend the nibble
