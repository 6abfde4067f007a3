"""ZQ_DEBUG=1 prints each graph's report as it compiles; ZQ_DEBUG=2 also writes the graph after
every pass; the backend logs under the `zeroquant` logger."""

import logging

import torch

import zq_compile


def _compile_and_run(model):
    x = torch.randn(3, 16)
    with torch.inference_mode():
        torch.compile(model, backend="zeroquant")(x)


def test_zq_debug_1_prints_the_report(monkeypatch, capsys):
    monkeypatch.setenv("ZQ_DEBUG", "1")
    monkeypatch.delenv("ZQ_DEBUG_DIR", raising=False)
    _compile_and_run(torch.nn.Sequential(torch.nn.Linear(16, 8)).eval())
    err = capsys.readouterr().err
    assert "[zeroquant] graph" in err and "1/1 linear layers quantized" in err
    assert "pass dumps" not in err


def test_zq_debug_2_writes_the_graph_after_each_pass(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ZQ_DEBUG", "2")
    monkeypatch.setenv("ZQ_DEBUG_DIR", str(tmp_path))
    _compile_and_run(torch.nn.Sequential(torch.nn.Linear(16, 8)).eval())
    from zq_compile.passes import PASS_ORDER

    files = sorted(p.name for p in tmp_path.iterdir())
    for name in PASS_ORDER:
        assert any(f.endswith(f"_{name}_after.py") for f in files), files
    rewritten = next(p for p in tmp_path.iterdir() if p.name.endswith("_rewrite_linear_after.py")).read_text()
    assert "zq.linear_w8a8" in rewritten
    assert f"pass dumps in {tmp_path}" in capsys.readouterr().err


def test_no_zq_debug_prints_nothing(monkeypatch, capsys):
    monkeypatch.delenv("ZQ_DEBUG", raising=False)
    _compile_and_run(torch.nn.Sequential(torch.nn.Linear(16, 8)).eval())
    assert "[zeroquant]" not in capsys.readouterr().err


def test_backend_logs_under_zeroquant(caplog, monkeypatch):
    monkeypatch.delenv("ZQ_DEBUG", raising=False)
    with caplog.at_level(logging.INFO, logger="zeroquant"):
        _compile_and_run(torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval())
    ours = [r for r in caplog.records if r.name == "zeroquant"]
    # "2/2" or "1/2": the default accuracy policy may keep the worse of two random linears float
    assert any("/2 linear layers quantized" in r.getMessage() for r in ours), [r.getMessage() for r in ours]
    assert zq_compile.recent_reports()
