import pytest
from torch._inductor.utils import run_and_get_code

from tests.inspect import toy


@pytest.fixture(scope="session")
def toy_explained():
    """(report, generated code, model) for tests/inspect/toy.py, built once for the session."""
    import torch._dynamo

    from zq_compile.inspect import explain

    model, inputs = toy.build()
    report, codes = run_and_get_code(explain, model, inputs, {"skip": ["head"], "smooth": False}, runs=1)  # local SQNR is for unsmoothed linears
    torch._dynamo.reset()
    return report, codes, model
