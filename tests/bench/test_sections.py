"""The bench runs each timed section in its own process: what one section compiled is freed
before the next (one process grew to 24 GiB and was OOM-killed in the full run of 2026-12-07),
and a section whose process dies is reported while the run goes on."""

import pytest

from zq_compile.benchmarks import render
from zq_compile.benchmarks.run import _section_in_child, run

pytestmark = pytest.mark.slow


def test_a_section_in_its_own_process_returns_its_table_and_peak_memory():
    sec, error = _section_in_child("linear", "quick", ["eager fp32"], runs=1)
    assert error == ""
    assert [r["M"] for r in sec["rows"]] == [1, 32, 512]
    assert {"eager fp32", "inductor fp32"} <= set(sec["contenders"])
    assert 100 < sec["peak_rss_mib"] < 64 * 1024  # the child's own, read from getrusage


def test_a_section_whose_process_is_killed_is_reported_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    # every child kills itself with SIGKILL as it starts, as the OOM killer would
    (tmp_path / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    result = run("quick", sections=("minilm", "linear"), names=["eager fp32"], runs=1)
    assert result["sections"] == {}
    assert set(result["failed_sections"]) == {"minilm", "linear"}
    assert all("killed by SIGKILL (the OOM killer, most likely)" in e for e in result["failed_sections"].values())
    assert "section linear FAILED" in capsys.readouterr().out
    assert "- minilm: the section's process was killed by SIGKILL" in render.markdown(result)
