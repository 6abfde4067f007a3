"""zq_compile.explain on a small model (default run) and on tiny BERT, GPT-2 and Llama (slow):
every linear listed with its scheme and finite SQNR, every fusion the generated code shows."""

import math

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from tests.inspect.helpers import check_report
from tests.models.tiny import tiny_model
from zq_compile.inspect import explain


def test_toy_report_lists_linears_fusions_float_reasons_and_graph_break(toy_explained):
    report, codes, model = toy_explained
    modules = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    check_report(report, codes, modules)
    assert len(report.graphs) == 2 and report.dynamo["graphs"] == 2
    assert report.dynamo["graph_breaks"] and "graph_break" in report.dynamo["graph_breaks"][0]["reason"]
    head = next(r for r in report.linears if r.module == "head")
    assert head.scheme is None and "skip glob 'head'" in head.reason
    floats = [f for g in report.graphs for f in g.float_nodes if f.kind == "linear"]
    assert [f.module for f in floats] == ["head"]
    # LayerNorm -> fc1's quantize and GeLU -> fc2's quantize, in each block
    kinds = [(f.float_ops, f.quantizes_for) for f in report.fusions]
    for block in ("block0", "block1"):
        assert any("native_layer_norm" in ops and q == [f"{block}.fc1"] for ops, q in kinds), kinds
        assert any("gelu" in ops and q == [f"{block}.fc2"] for ops, q in kinds), kinds
    w = report.weights
    assert w["quantized_linears"] == 4 and 0 < w["quant_bytes"] < w["float_bytes"]
    assert report.timing["eager_ms"] > 0 and report.timing["compiled_ms"] > 0
    # the per-layer figures are real: the quantized op alone is close to, not equal to, float
    alone = {r.module: (r.local_sqnr_db, r.sqnr_db, r.kernel) for r in report.linears if r.scheme}
    assert all(20 < db < 80 for db, _, _ in alone.values()), (alone, report.model_error, [(g.output_error, g.kernel_reason) for g in report.graphs])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_tiny_hf_models(kind):
    from transformers.pytorch_utils import Conv1D

    model = tiny_model(kind)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    report, codes = run_and_get_code(explain, model, {"input_ids": ids}, runs=0)
    modules = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    check_report(report, codes, modules)
    # every linear w8a8, except lm_head, which the default accuracy policy keeps float
    assert all(r.scheme == "w8a8" or (r.module.endswith("lm_head") and "kept float" in r.reason) for r in report.linears)
    assert report.dynamo["graph_breaks"] == []
    assert math.isfinite(report.graphs[0].output_error.sqnr_db)


def test_explain_reads_generated_code_when_inductor_has_the_graphs_cached():
    """A graph Inductor's FX graph cache serves has no code generated to read fusions from, no
    byte count and no post-grad pass counts: explain compiles without that cache."""
    import torch._dynamo
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import fresh_cache

    import zq_compile
    from tests.inspect import toy

    model, inputs = toy.build()
    options = {"skip": ["head"], "smooth": False}
    with fresh_cache(), inductor_config.patch(fx_graph_cache=True):
        with torch.inference_mode():
            torch.compile(model, backend="zeroquant", options=options)(*inputs)  # fills the cache
        torch._dynamo.reset()
        report = explain(model, inputs, options, runs=0)
    torch._dynamo.reset()
    assert report.fusions, "no fusion read: the graph came from the cache"
    assert all(g.compile_report.get("inductor_bytes") for g in report.graphs if g.compile_report.get("decisions"))
    assert zq_compile.recent_reports()[-1].inductor_bytes
