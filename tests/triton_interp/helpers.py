"""Problems shared by the interpreter tests: awkward sizes, special rows, per-dtype tolerances."""

import zlib

import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
#: Awkward token counts: a single token, a prime below the smallest tile, one spanning tiles.
MS = [1, 13, 67]

#: Output rounding of the GEMM epilogue, per output dtype: fp32 differs by FMA contraction or
#: summation order only; fp16 / bf16 by one unit in the last place of the output format.
EPILOGUE_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-3),
                torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}


def special_rows(x: torch.Tensor) -> torch.Tensor:
    """x with row 0 all zero and, if there are 3 rows or more, a NaN in row 2."""
    x = x.clone()
    x[0] = 0
    if x.shape[0] > 2:
        x[2, x.shape[1] // 2] = float("nan")
    return x


def generator(*key) -> torch.Generator:
    """A generator seeded from the test's parameters (crc32: stable across processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))
