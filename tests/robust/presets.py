"""The presets the robustness tests run over, and the SQNR floor each must keep.

Presets come from ``zq_compile.config.IMPLEMENTED_SCHEMES``, so a preset that lands later is
fuzzed with no change here; its floor is looked up in ``SQNR_FLOOR_DB`` and, when it has none
yet, ``DEFAULT_FLOOR_DB`` applies (low on purpose: it still catches wrong numbers, never a
precision regression; give a new preset its own row).
"""

from __future__ import annotations

import warnings

import torch

from zq_compile.config import IMPLEMENTED_SCHEMES

PRESETS = tuple(IMPLEMENTED_SCHEMES)
TARGETS = ("cpu", "reference")

#: dB against fp32 eager on the fuzzed models (tests/robust/fuzz_models.py): a few residual
#: blocks of random weights at tiny widths. One int8 linear gives ~38-42 dB; a fuzzed model stacks
#: up to 7 of them and ends in a head whose input is a sum of several noisy paths. 16-bit inputs
#: add their own rounding (bf16: 8 mantissa bits). The 4-bit rows are placeholders sized from the
#: bits (6 dB per bit): the schemes that bring them should tighten them from a fuzz run.
SQNR_FLOOR_DB: dict[str, dict[torch.dtype, float]] = {
    "w8a8": {torch.float32: 22.0, torch.float16: 22.0, torch.bfloat16: 18.0},
    "w8a16": {torch.float32: 28.0, torch.float16: 26.0, torch.bfloat16: 20.0},
    "w4a8": {torch.float32: 8.0, torch.float16: 8.0, torch.bfloat16: 8.0},
    "w4/8a8": {torch.float32: 8.0, torch.float16: 8.0, torch.bfloat16: 8.0},  # its FFN linears are w4a8
    "w4a16": {torch.float32: 8.0, torch.float16: 8.0, torch.bfloat16: 8.0},
}
#: For a preset with no row above: conservative (garbage fails it, lost precision does not).
DEFAULT_FLOOR_DB = 6.0


def sqnr_floor(preset: str, dtype: torch.dtype) -> float:
    row = SQNR_FLOOR_DB.get(preset)
    if row is None:
        warnings.warn(f"no SQNR floor for preset {preset!r} in tests/robust/presets.py: using the "
                      f"conservative default {DEFAULT_FLOOR_DB} dB", stacklevel=2)
        return DEFAULT_FLOOR_DB
    return row[dtype]


def require_preset(preset: str) -> None:
    """Skip, saying why, when a test needs a preset this build does not have yet."""
    import pytest

    if preset not in IMPLEMENTED_SCHEMES:
        pytest.skip(f"preset {preset!r} is not implemented in this build "
                    f"(zq_compile.config.IMPLEMENTED_SCHEMES = {IMPLEMENTED_SCHEMES})")
