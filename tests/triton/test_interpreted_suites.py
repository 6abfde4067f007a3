"""Run each file of tests/triton_interp in its own pytest process with TRITON_INTERPRET=1.

Triton reads TRITON_INTERPRET once, when a kernel is defined; a child process per file keeps the
interpreter out of this process (other tests compile kernels for real GPUs, see
test_static_checks.py) while each kernel test still reports its own parametrisations. A failure
here shows the child's failures; rerun them with ``TRITON_INTERPRET=1 pytest <file>``.

The interpreter runs a kernel's program instances one after another in Python, on one core: the
selected suites start together, as many at a time as there are cores, each child with one torch
thread (2-core EPYC, 2026-12-07: 218 s one after another in a clean-clone `make test`, 131 s
side by side).
"""

import concurrent.futures
import functools
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUITES = sorted(p.name for p in (ROOT / "tests" / "triton_interp").glob("test_*.py"))
SLOW = {"test_models.py", "test_presets.py"}


def _params():
    for name in SUITES:
        marks = [pytest.mark.slow] if name in SLOW else []
        yield pytest.param(name, marks=marks, id=name.removesuffix(".py"))


def _run(suite: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/triton_interp/{suite}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def started(request):
    """suite -> future of its child process, for the suites this session selected (a
    ``-m "not slow"`` run must not start the slow one)."""
    selected = [item.callspec.params["suite"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_interpreted_suite"]
    pool = concurrent.futures.ThreadPoolExecutor(max(1, min(len(selected), os.cpu_count() or 1)))
    request.addfinalizer(functools.partial(pool.shutdown, cancel_futures=True))
    # the longest first, so the last to start is not the one that ends last
    order = sorted(selected, key=lambda name: name not in SLOW)
    return {name: pool.submit(_run, name) for name in order}


@pytest.mark.parametrize("suite", _params())
def test_interpreted_suite(suite, started):
    proc = started[suite].result()
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"TRITON_INTERPRET=1 pytest tests/triton_interp/{suite} failed:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, f"no test ran in {suite}: {summary}"
    assert not re.search(r"\d+ (skipped|xfailed|deselected)", summary), summary


def test_suites_are_not_collected_without_the_interpreter():
    """Run in this process, they would define compiled (not interpreted) kernels; they must not."""
    assert os.environ.get("TRITON_INTERPRET") != "1" or pytest.skip("this process runs under the interpreter")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                           "tests/triton_interp"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert "no tests collected" in proc.stdout + proc.stderr
