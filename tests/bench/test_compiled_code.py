"""The code Inductor generated for each contender: every contender runs the graph compiled for
it, never another contender's; PT2E static really has static scales.

Dynamo keeps compiled graphs on the model's code objects; two ``torch.compile`` calls with equal
backends share them, so a deep copy of one model with the same dtypes, compiled again under a
freezing patch, silently ran the graph compiled without it. These tests read the code Inductor
generated for each contender at its first call, and show that the harness's check fails a
contender built the old way."""

from unittest import mock

import pytest
import torch
from torch._inductor.graph import GraphLowering

from zq_compile.benchmarks import contenders as C
from zq_compile.benchmarks.harness import Field, dynamo_settings
from zq_compile.codegen.cpu.select import has_bf16

DTYPE = "bf16" if has_bf16() else "fp32"
PLAIN, FROZEN = f"inductor {DTYPE}", f"inductor {DTYPE}+freezing"


def _tiny(act=torch.nn.GELU) -> C.BenchModel:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), act(), torch.nn.Linear(96, 32)).eval()
    return C.BenchModel("tiny", model, "tensor")


def _build_and_capture(names: list[str], bm: C.BenchModel | None = None,
                       x: torch.Tensor | None = None) -> tuple[Field, dict[str, list[str]]]:
    """Field over the named contenders; the Inductor output code generated at each one's first call."""
    torch._dynamo.reset()
    bm = bm or _tiny()
    x = torch.randn(8, 64) if x is None else x
    codes: dict[str, list[str]] = {}
    current: list[str] = []

    def call(fn, inputs):  # Field builds and first-calls the contenders in order
        out = fn(**inputs)
        codes[order.pop(0)] = list(current)  # what its build and first call generated
        current.clear()
        return out

    contenders = [c for c in C.all_contenders() if c.name in names]
    order = [c.name for c in contenders]
    bm.call = call
    # The on-disk graph cache would skip the lowering whose code is read here.
    with torch.inference_mode(), dynamo_settings(), torch._inductor.config.patch(fx_graph_cache=False), \
            mock.patch.object(GraphLowering, "save_output_code", current.append):
        field = Field(bm, contenders, {"input": x}, lambda _msg: None)
    torch._dynamo.reset()
    return field, codes


def test_each_contender_compiles_and_runs_its_own_graph():
    field, codes = _build_and_capture([PLAIN, FROZEN])
    for name in (PLAIN, FROZEN):
        assert field.status[name]["ok"], field.status[name]
        assert field.status[name]["graphs"] >= 1
        assert codes[name], f"{name}: no code was generated at its first call"
    # freezing turns the weights into constants of the generated code: only the frozen one has them
    assert not any("_frozen_param" in code for code in codes[PLAIN])
    assert any("_frozen_param" in code for code in codes[FROZEN])


def test_the_check_fails_a_contender_that_reuses_another_contenders_graph():
    """The setup the bench had before (plain ``torch.compile`` per contender): the frozen contender
    generates no code at all, and the harness reports it failed instead of timing it."""
    with mock.patch.object(C, "_compile", lambda model, name: torch.compile(model)):
        field, codes = _build_and_capture([PLAIN, FROZEN])
    assert field.status[PLAIN]["ok"]
    assert codes[FROZEN] == []  # it ran PLAIN's graph
    assert not field.status[FROZEN]["ok"]
    assert "compiled no graph" in field.status[FROZEN]["error"]
    assert FROZEN not in field.fns


@pytest.mark.skipif(not has_bf16(), reason="bf16 contenders run only on CPUs with native bf16")
def test_bf16_contenders_refuse_nothing_here_and_cast_their_inputs():
    bm = _tiny()
    x = torch.randn(4, 64)
    fn = C.compile_float(bm.mutable().to(torch.bfloat16), "test bf16 eager-equivalent", torch.bfloat16)
    with torch.inference_mode():
        out = fn(input=x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), bm.model(x), atol=0.05, rtol=0.05)
    torch._dynamo.reset()


def test_pt2e_static_calibrates_on_other_data_and_runs_fixed_scales():
    # X86InductorQuantizer lives in torchao on torch 2.13: a bench extra, not installed by `make test`
    pytest.importorskip("torchao", reason="torchao is a bench dependency (make .venv/.bench-installed)")
    from zq_compile.benchmarks.calibration import random_tensors

    bm = _tiny(torch.nn.ReLU)
    seen = []
    bm.calibration = lambda inputs: seen.append(inputs["input"].shape) or random_tensors()(inputs)
    x = torch.randn(13, 64)
    field, codes = _build_and_capture([C.PT2E_STATIC], bm, x)
    assert field.status[C.PT2E_STATIC]["ok"], field.status
    assert seen == [x.shape]  # calibrated once, at the exported shape, on data that is not x (checked)
    code = "\n".join(codes[C.PT2E_STATIC])
    assert "qlinear_pointwise" in code and "_frozen_param" in code  # oneDNN int8 linears, frozen
    assert "choose_qparams" not in code  # no scale computed at run time: static
    with torch.inference_mode():
        out, ref = field.fns[C.PT2E_STATIC](input=x), bm.model(x)
    sqnr = 10 * torch.log10(ref.pow(2).mean() / (out - ref).pow(2).mean())
    assert sqnr > 25, sqnr


def test_graphs_the_pipeline_race_ran_in_float_are_named_in_the_tables(monkeypatch):
    # A section's figures for a contender whose graphs ran the float pipeline are bf16's (or
    # fp32's), not its preset's: the SmolLM2 perplexity of w8a8, w8a16 and w4a16 read the same
    # 23.746 on an AMX Xeon (2026-12-06). record_pipelines keeps which pipeline ran each graph.
    from zq_compile import pipeline_race as pr
    from zq_compile.benchmarks import render

    monkeypatch.setattr(pr, "gemm_gflop", lambda gm: 100.0)  # over the default threshold
    monkeypatch.setattr(pr, "race", lambda a, b: (a(), b(), pr.Race(10.0, 1.0, 10.0, pr.RACE_RUNS))[-1])  # float "wins"
    names = ["zeroquant w8a8", "zeroquant w8a8 int8"]
    torch._dynamo.reset()
    with torch.inference_mode(), dynamo_settings(), pytest.warns(UserWarning, match="runs as"):
        field = Field(_tiny(), [c for c in C.all_contenders() if c.name in names],
                      {"input": torch.randn(64, 64)}, lambda _msg: None)
    torch._dynamo.reset()
    status = field.record_pipelines()
    assert status["zeroquant w8a8"]["pipelines"] == {pr.float_pipeline_label(): 1}
    assert status["zeroquant w8a8 int8"]["pipelines"] == {"int8": 1}
    lines = render.pipelines({"sections": {"tiny": {"contenders": status}}})
    assert f"- zeroquant w8a8 [tiny]: {pr.float_pipeline_label()} 1 graph(s)" in lines
    assert not any(line.startswith("- zeroquant w8a8 int8") for line in lines)
    assert render.pipelines({"sections": {"tiny": {"contenders": {"zeroquant w8a8 int8": status["zeroquant w8a8 int8"]}}}}) == []
