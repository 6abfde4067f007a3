"""The pipeline race (zq_compile/pipeline_race.py): the int8 graph against this CPU's best float
pipeline, timed at compile time; the float one runs only where it wins and the config allows it."""

import dataclasses
import json
import warnings

import pytest
import torch

import zq_compile
from zq_compile import ZeroQuantConfig
from zq_compile import pipeline_race as pr
from zq_compile.metrics import sqnr_db
from tests.modules import Block

#: every tiny graph is raced (they are far under the default threshold)
RACED = ZeroQuantConfig(pipeline_race_min_gflop=0)


def _block():
    torch.manual_seed(0)
    return Block(d=64, hidden=256).eval()


def _compile(model, config, x):
    sink = []
    compiled = torch.compile(model, backend=lambda gm, ex: zq_compile.backend.zeroquant_backend(
        gm, ex, options=config, report_sink=sink))
    with torch.no_grad():
        out = compiled(x)
    assert len(sink) == 1
    return compiled, out, sink[0]


def _timed(int8_ms, float_ms):
    """A stand-in for the race's clock only: both callables still run once."""
    return lambda a, b: (a(), b(), pr.Race(int8_ms, float_ms, int8_ms / float_ms, pr.RACE_RUNS))[-1]


def _x(rows=64):
    return torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))


def test_config_fields_are_validated_and_round_trip():
    with pytest.raises(ValueError, match="pipeline_race=.*auto, report, off"):
        ZeroQuantConfig(pipeline_race="always")
    for bad in (-1, float("nan"), float("inf"), True, "8"):
        with pytest.raises(ValueError, match="pipeline_race_min_gflop"):
            ZeroQuantConfig(pipeline_race_min_gflop=bad)
    c = ZeroQuantConfig(pipeline_race="report", pipeline_race_min_gflop=2.5)
    assert ZeroQuantConfig.from_json(c.to_json()) == c
    assert json.loads(c.to_json())["pipeline_race"] == "report"


def test_report_mode_races_and_keeps_int8(monkeypatch):
    monkeypatch.setattr(pr, "race", _timed(10.0, 1.0))  # float "wins" by 10x
    model = _block()
    x = _x()
    _, out, report = _compile(model, dataclasses.replace(RACED, pipeline_race="report"), x)
    _, off, _ = _compile(_block(), dataclasses.replace(RACED, pipeline_race="off"), x)
    assert report.pipeline == "int8"
    assert any(r.startswith("pipeline: int8 10.00 ms") and "would be faster" in r for r in report.races)
    assert torch.equal(out, off)  # the int8 graph ran, as with the race off


def test_float_winner_runs_float_and_says_so(monkeypatch):
    monkeypatch.setattr(pr, "race", _timed(10.0, 1.0))
    model = _block()
    x = _x()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, out, report = _compile(model, RACED, x)
    label = pr.float_pipeline_label()
    assert report.pipeline.startswith(label) and report.runs == label
    assert any("runs as" in str(w.message) for w in caught)
    with torch.no_grad():
        ref = model(x)
    assert out.dtype == ref.dtype == torch.float32
    # bf16 arithmetic (or fp32) beats the int8 pipeline's error on this block by a wide margin
    _, int8_out, _ = _compile(_block(), dataclasses.replace(RACED, pipeline_race="off"), x)
    assert sqnr_db(ref, out) > sqnr_db(ref, int8_out) + 3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float_winner_returns_the_models_dtype(monkeypatch, dtype):
    # autocast computes in bf16 and the float pipeline once cast every bf16 output to fp32
    monkeypatch.setattr(pr, "race", _timed(10.0, 1.0))
    model = _block().to(dtype)
    x = _x().to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled, out, report = _compile(model, RACED, x)
    assert report.pipeline.startswith(pr.float_pipeline_label())
    with torch.no_grad():
        ref = model(x)
        again = compiled(x)
    assert out.dtype == again.dtype == ref.dtype == dtype
    assert sqnr_db(ref.float(), out.float()) > 25


def test_float_winner_switches_to_int8_when_a_weight_changes(monkeypatch):
    monkeypatch.setattr(pr, "race", _timed(10.0, 1.0))
    model = _block()
    x = _x()
    compiled, _, report = _compile(model, RACED, x)
    with torch.no_grad():
        model.up.weight.mul_(-1.5)  # in place: the frozen float copy is now stale
        ref = model(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = compiled(x)
    assert any("parameter changed" in str(w.message) for w in caught)
    assert any("parameter changed" in n for n in report.notes)
    assert sqnr_db(ref, out) > 20  # the int8 graph re-quantized the new weight


def test_int8_kept_when_it_wins(monkeypatch):
    monkeypatch.setattr(pr, "race", _timed(1.0, 1.02))
    _, _, report = _compile(_block(), RACED, _x())
    assert report.pipeline == "int8"
    assert any(r.endswith("-> int8") for r in report.races)


def test_real_race_times_both(monkeypatch):
    """No stand-in: both pipelines compiled and timed; whichever wins, the output is right."""
    model = _block()
    x = _x(256)
    _, out, report = _compile(model, RACED, x)
    line = next(r for r in report.races if r.startswith("pipeline:"))
    assert pr.float_pipeline_label() in line
    with torch.no_grad():
        assert sqnr_db(model(x), out) > 20


@pytest.mark.parametrize("config, why", [
    (ZeroQuantConfig(), "GFLOP of linears per call, under pipeline_race_min_gflop=8"),
    (dataclasses.replace(RACED, pipeline_race="off"), "pipeline_race='off'"),
    (dataclasses.replace(RACED, release_float_weights=True), "release_float_weights"),
])
def test_not_raced_says_why(monkeypatch, config, why):
    def fail(*a):
        raise AssertionError("compiled the float pipeline")

    monkeypatch.setattr(pr, "compile_float_pipeline", fail)
    _, _, report = _compile(_block(), config, _x())
    assert report.pipeline.startswith("int8 (not raced: ") and why in report.pipeline
    assert not any(r.startswith("pipeline:") for r in report.races)


def test_decode_sized_graph_is_not_raced(monkeypatch):
    monkeypatch.setattr(pr, "compile_float_pipeline", lambda *a: (_ for _ in ()).throw(AssertionError))
    _, _, report = _compile(_block(), RACED, _x(1))
    assert "decode-sized" in report.pipeline


def test_grad_mode_is_not_raced():
    model = _block()
    sink = []
    compiled = torch.compile(model, backend=lambda gm, ex: zq_compile.backend.zeroquant_backend(
        gm, ex, options=RACED, report_sink=sink))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the grad-mode warning is tested elsewhere
        compiled(_x())
    assert "grad mode on" in sink[0].pipeline


def test_a_failing_float_pipeline_keeps_int8(monkeypatch):
    def broken(*a):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(pr, "compile_float_pipeline", broken)
    model = _block()
    x = _x()
    compiled, out, report = _compile(model, RACED, x)
    assert "failed" in report.pipeline and "no such kernel" in report.pipeline
    assert any("runs int8" in n for n in report.notes)
    with torch.no_grad():
        assert sqnr_db(model(x), compiled(x)) > 20


def test_gemm_gflop_counts_linears():
    from tests.conftest import capture

    gm, _ = capture(_block(), _x(64))
    assert pr.gemm_gflop(gm) == pytest.approx(2 * 64 * 64 * 256 * 2 / 1e9)


def test_a_dynamic_graph_runs_float_at_the_raced_shape_only(monkeypatch):
    """Dynamo recompiles for a second shape with symbolic sizes: the float pipeline is traced at
    that call's shapes and serves them; a third shape runs the (dynamic) int8 graph."""
    monkeypatch.setattr(pr, "race", _timed(10.0, 1.0))
    sink, off_sink = [], []
    model, twin = _block(), _block()
    compiled = torch.compile(model, backend=lambda gm, ex: zq_compile.backend.zeroquant_backend(
        gm, ex, options=RACED, report_sink=sink))
    off = torch.compile(twin, backend=lambda gm, ex: zq_compile.backend.zeroquant_backend(
        gm, ex, options=dataclasses.replace(RACED, pipeline_race="off"), report_sink=off_sink))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rows in (64, 96, 128):
            got, want = compiled(_x(rows)), off(_x(rows))
            if rows == 96:
                assert not torch.equal(got, want)  # the float pipeline ran
            if rows == 128:
                assert torch.equal(got, want)  # the dynamic int8 graph ran
    assert len(sink) == 2 and "dynamic graph" in sink[1].pipeline


def test_gemm_gflop_counts_conv1d_addmm_and_matmul():
    from tests.conftest import capture

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(64, 32))  # [K, N], as GPT-2's Conv1D holds it
            self.b = torch.nn.Parameter(torch.randn(32))
            self.v = torch.nn.Parameter(torch.randn(32, 16))

        def forward(self, x):
            y = torch.addmm(self.b, x, self.w)
            return y @ self.v

    gm, _ = capture(Mixed(), torch.randn(10, 64))
    assert pr.gemm_gflop(gm) == pytest.approx((2 * 10 * 64 * 32 + 2 * 10 * 32 * 16) / 1e9)


def _sleeper(ms):
    import time
    return lambda: time.sleep(ms / 1e3)


def test_a_clear_race_is_decided_in_one_batch():
    timed = pr.race(_sleeper(12), _sleeper(3))
    assert timed.rounds == pr.RACE_RUNS
    assert timed.ratio > 2 and timed.int8_ms > timed.float_ms


def test_a_close_race_runs_more_rounds(monkeypatch):
    """int8 3% slower: within UNDECIDED of the margin, so batches go on to the round limit."""
    monkeypatch.setattr(pr, "RACE_MAX_RUNS", 15)
    timed = pr.race(_sleeper(10.3), _sleeper(10.0))
    assert pr.undecided(timed.ratio)
    assert timed.rounds == 15


def test_a_close_race_stops_at_its_time_budget(monkeypatch):
    monkeypatch.setattr(pr, "RACE_BUDGET_S", 0.05)
    timed = pr.race(_sleeper(10.3), _sleeper(10.0))
    assert timed.rounds == pr.RACE_RUNS  # 5 rounds of 2 x 10 ms already exceed 0.05 s

