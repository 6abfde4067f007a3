"""isolate_codegen (codegen_child.py): Inductor's code generation in a forked child, this process
served from the FX graph cache; failures and hangs of the child fall back to compiling here."""

import sys

import pytest
import torch

import zq_compile
from zq_compile import backend, codegen_child
from zq_compile.config import ZeroQuantConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based: Linux only")


def _mlp(width: int) -> torch.nn.Module:
    # a width per test: the run's Inductor cache is shared, and each test needs a graph no
    # earlier test has code-generated
    torch.manual_seed(width)
    return torch.nn.Sequential(torch.nn.Linear(width, 96), torch.nn.GELU(), torch.nn.Linear(96, width)).eval()


def _run(model, x, **options):
    torch._dynamo.reset()
    fn = zq_compile.compile(model, {"smooth": False, "target": "cpu", **options})
    with torch.inference_mode():
        out = fn(x)
    return out, zq_compile.recent_reports()[-1]


def test_child_generates_the_code_and_this_process_loads_it_from_the_cache():
    model, x = _mlp(56), torch.randn(3, 7, 56)
    out, report = _run(model, x, isolate_codegen=True)
    assert report.codegen.startswith("in a forked child") and "loaded it from Inductor's FX graph cache" in report.codegen
    # what only a code-generating compile measures came back from the child
    assert report.inductor_bytes and report.inductor_kernels
    assert {"merge_duplicate_casts", "uint8_shift_in_float", "erf_without_exp"} <= set(report.pass_counts)
    here, plain = _run(model, x, isolate_codegen=False)
    assert plain.codegen == "in this process (isolate_codegen=False)"
    assert torch.equal(out, here)


def test_auto_isolates_with_release_float_weights_only():
    x = torch.randn(2, 5, 40)
    _, report = _run(_mlp(40), x)
    assert report.codegen == "in this process (isolate_codegen='auto' isolates only with release_float_weights=True)"
    _, released = _run(_mlp(40), x, release_float_weights=True)
    assert released.codegen.startswith("in a forked child")
    _, ref = _run(_mlp(40), x, target="reference", isolate_codegen=True)
    assert ref.codegen == "in this process (target 'reference': only target 'cpu' forks (a forked child cannot use CUDA))"


def test_max_autotune_compiles_in_process():
    config = ZeroQuantConfig(isolate_codegen=True)
    from torch._inductor import list_mode_options

    assert "max-autotune" in codegen_child.why_not(config, "cpu", list_mode_options("max-autotune"))
    assert codegen_child.why_not(config, "cpu", list_mode_options("reduce-overhead")) is None


def test_a_failing_child_leaves_the_compile_to_this_process(monkeypatch):
    def broken(inductor):
        raise RuntimeError("codegen exploded")

    monkeypatch.setattr(backend, "_child_compile", broken)  # the fork inherits the patch
    model, x = _mlp(44), torch.randn(2, 3, 44)
    out, report = _run(model, x, isolate_codegen=True)
    assert report.codegen == ("in this process: code generation in a forked child failed "
                              "(the child's compile raised RuntimeError: codegen exploded)")
    assert any(n.startswith("isolate_codegen: the child's compile raised") for n in report.notes)
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(out.flatten(), model(x).flatten(), dim=0) > 0.99


def test_a_hanging_child_is_killed_at_the_timeout(monkeypatch):
    import time

    def hangs(inductor):
        time.sleep(120)

    monkeypatch.setattr(backend, "_child_compile", hangs)
    monkeypatch.setattr(codegen_child, "CHILD_TIMEOUT_S", 2.0)
    start = time.monotonic()
    out, report = _run(_mlp(36), torch.randn(2, 3, 36), isolate_codegen=True)
    assert time.monotonic() - start < 60
    assert "the child ran past 2 s and was killed" in report.codegen
    assert torch.isfinite(out).all()


def test_child_runs_aten_ops_without_waiting_for_the_parents_thread_pool(monkeypatch):
    """A forked child inherits none of the OpenMP pool's threads: a parallel ATen op there would
    hang (libgomp) unless the child runs one thread, as it does."""
    a = torch.randn(1500, 1500)
    (a @ a).sum()  # this process's pool is up
    real = backend._child_compile

    def with_parallel_op(inductor):
        torch.randn(4_000_000).exp_().sum()
        (a @ a).sum()
        return real(inductor)

    monkeypatch.setattr(backend, "_child_compile", with_parallel_op)
    monkeypatch.setattr(codegen_child, "CHILD_TIMEOUT_S", 120.0)
    _, report = _run(_mlp(52), torch.randn(2, 3, 52), isolate_codegen=True)
    assert "loaded it from Inductor's FX graph cache" in report.codegen, report.codegen


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_isolate_codegen_is_validated(value):
    with pytest.raises(ValueError, match="isolate_codegen"):
        ZeroQuantConfig(isolate_codegen=value)


def test_isolate_codegen_round_trips_through_json():
    for value in ("auto", True, False):
        config = ZeroQuantConfig(isolate_codegen=value)
        assert ZeroQuantConfig.from_json(config.to_json()) == config
