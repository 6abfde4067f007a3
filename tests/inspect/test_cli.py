"""`zeroquant inspect`: bad MODEL gives one line and exit code 2 (a traceback only under ZQ_DEBUG);
a module:factory model writes the table, JSON and HTML."""

import json
import os
import subprocess
import sys

import pytest

from zq_compile.cli import main
from zq_compile.inspect.sources import ModelSourceError

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture
def no_debug(monkeypatch):
    monkeypatch.delenv("ZQ_DEBUG", raising=False)


@pytest.mark.parametrize("model, message", [
    ("nosuchmodel", "unknown MODEL 'nosuchmodel'"),
    ("{empty}", "no Hugging Face model here (no config.json)"),
    ("{config_only}", "config.json but no weights"),
    ("tests.inspect.toy:broken", "factory tests.inspect.toy:broken raised RuntimeError: weights not found"),
    ("tests.inspect.toy:missing", "module 'tests.inspect.toy' has no callable 'missing'"),
    ("tests.inspect.nosuchmodule:build", "cannot import module 'tests.inspect.nosuchmodule'"),
])
def test_bad_model_is_one_line_and_exit_code_2(model, message, tmp_path, capsys, no_debug):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text("{}")
    model = model.format(empty=tmp_path / "empty", config_only=tmp_path / "config_only")
    assert main(["inspect", model]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zeroquant inspect: error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)


def test_bad_preset_is_one_line(capsys, no_debug):
    assert main(["inspect", "tests.inspect.toy:build", "--preset", "w3a3"]) == 2
    assert "preset='w3a3' is not valid" in capsys.readouterr().err


def test_zq_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("ZQ_DEBUG", "1")
    with pytest.raises(ModelSourceError, match="raised RuntimeError"):
        main(["inspect", "tests.inspect.toy:broken"])


@pytest.mark.slow  # a fresh interpreter importing torch: about 15 s
def test_bad_model_from_the_shell_prints_no_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ZQ_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "zq_compile.cli", "inspect", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"zeroquant inspect: error: {tmp_path}: no Hugging Face model here (no config.json)"


def test_factory_model_writes_table_json_and_html(tmp_path, capsys, no_debug):
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["inspect", "tests.inspect.toy:build", "--runs", "0", "--json", str(out_json),
                 "--html", str(out_html)]) == 0
    text = capsys.readouterr().out
    for module in ("block0.fc1", "block0.fc2", "block1.fc1", "block1.fc2", "head"):
        assert module in text
    data = json.loads(out_json.read_text())
    assert data["weights"]["quantized_linears"] == 5 and len(data["graphs"]) == 2
    assert out_html.read_text().startswith("<!DOCTYPE html>")
    # a saved report renders again without compiling anything
    again = tmp_path / "again.html"
    assert main(["inspect", str(out_json), "--html", str(again)]) == 0
    assert again.read_text() == out_html.read_text()


def test_a_json_that_is_not_a_report_is_one_line(tmp_path, capsys, no_debug):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 99}')
    assert main(["inspect", str(bad)]) == 2
    assert "not a zeroquant inspect report (schema_version 99 is not 1)" in capsys.readouterr().err
