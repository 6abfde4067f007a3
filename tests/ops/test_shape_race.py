"""The compile-time race of GEMM variants on a graph's own shapes (codegen/cpu/select.py), and
what the report shows of it and of the bytes moved."""

import math

import pytest
import torch

from tests.modules import Block
from zq_compile import recent_reports
from zq_compile.codegen.cpu import select


def test_race_times_every_variant_and_the_float_alternative():
    ready, _ = select._candidates()
    times = select.race_shapes(((13, 67, 24, 2), (1, 67, 40, 1)), tuple(ready), True, rounds=1)
    float_name = "bf16 F.linear" if select.has_bf16() else "fp32 F.linear"
    assert float_name in times
    if "onednn" in ready:
        assert {"onednn->bf16", "onednn->fp32"} <= set(times)
    if "int_mm" in ready:
        assert "int_mm->int32" in times
    assert all(math.isfinite(t) and t > 0 for t in times.values()), times


def test_choice_names_the_shapes_and_the_winner():
    ready, _ = select._candidates()
    if len(ready) < 2:
        pytest.skip(f"one fast int8 kernel here ({ready}): nothing to race")
    choice, line, note = select.choose_for_shapes(((13, 67, 24, 3),), gemm_bf16=False)
    assert choice.kernel.name in ready
    assert "13x67x24 (x3)" in line and line.endswith(f"-> {choice.kernel.name}")
    assert note is None or "no int8 variant beats" in note


def test_report_shows_race_and_bytes_per_forward():
    m = Block().eval()
    with torch.inference_mode():
        torch.compile(m, backend="zeroquant")(torch.randn(3, 11, 64))
    report = recent_reports()[-1]
    text = report.summary()
    assert "bytes per forward:" in text
    # GEMM bytes from the shapes: 33 tokens, 64 -> 160 -> 64, 8-bit activations and weights
    out = 2 if report.kernel == "onednn" and "bf16 storage" in report.activations else 4
    want = sum(33 * k + n * k + 33 * n * out for k, n in ((64, 160), (160, 64)))
    assert report.gemm_bytes == want
    if len(select._candidates()[0]) > 1:
        assert report.races and "race: GEMMs per forward" in text
