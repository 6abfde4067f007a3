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
    if not ready:
        pytest.skip("no fast int8 kernel here: nothing to race")
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
    if select._candidates()[0]:  # one int8 kernel is still raced against the float alternative
        assert report.races and "race: GEMMs per forward" in text


def test_one_int8_kernel_is_still_raced_against_float_and_float_wins_are_said(monkeypatch):
    """CPUs without VNNI have one int8 kernel (oneDNN): the report must still say where the
    float alternative is faster (seen on an AVX2 EPYC at decode shapes: oneDNN 0.18 ms against
    fp32 F.linear's 0.11 ms at 1x576x1536)."""
    ready, _ = select._candidates()
    if not ready:
        pytest.skip("no fast int8 kernel here: nothing to race")
    monkeypatch.setattr(select, "_candidates", lambda: (ready[:1], ()))
    shapes = ((5, 64, 48, 2),)
    slow = {"onednn->fp32": 9.0, "onednn->bf16": 9.0, "int_mm->int32": 9.0, "fp32 F.linear": 1.0}
    monkeypatch.setattr(select, "race_shapes", lambda *a, **k: dict(slow))
    choice, line, note = select.choose_for_shapes(shapes, gemm_bf16=False)
    assert choice.kernel.name == ready[0] and "5x64x48 (x2)" in line
    assert note is not None and "no int8 variant beats" in note
