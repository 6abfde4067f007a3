import pytest
import torch
import torch._dynamo

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
