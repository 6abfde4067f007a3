import os
import shutil
import tempfile

import pytest
import torch
import torch._dynamo

# A fresh Inductor cache for every test run, so a run behaves the same on a developer's machine
# as on a clean CI machine: graphs cached by an earlier run of the same source were served
# from the cache, which skips the post-grad passes (no pass counts) and hid race-dependent
# kernel choices behind the earlier run's. Graphs repeated within one run are still served.
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="zq_test_inductor_cache_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE

import zq_compile  # noqa: F401  (registers the zq ops)
from zq_compile.report import _RECENT


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test starts with Dynamo's caches and counters empty, so recompile counts are exact."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # recent_reports() keeps the last 64: tests counting new reports need room after long runs
    _RECENT.clear()
    yield
    torch._dynamo.reset()


def capture(fn, *args, **kwargs):
    """The (GraphModule, example_inputs) Dynamo hands a backend for ``fn(*args)``; one graph."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append((gm, list(example_inputs)))
        return gm.forward

    with torch.no_grad():
        torch.compile(fn, backend=backend, fullgraph=True)(*args, **kwargs)
    assert len(graphs) == 1
    return graphs[0]


def pytest_unconfigure(config):
    shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)
