"""merge_sibling_gemms: linears reading one quantized input run as one int8 GEMM, with the same
results, one copy of their weights, per-weight store entries (save / load) and the reasons
where a linear stays separate."""

import dataclasses
import gc

import pytest
import torch

import zq_compile
from zq_compile import ZeroQuantConfig
from zq_compile.codegen.cpu import kernels as K
from zq_compile.metrics import sqnr_db
from zq_compile import store
from tests.models.tiny import model_output, tiny_model

pytestmark = pytest.mark.skipif(K.KERNELS["onednn"].unavailable_reason() is not None, reason="needs oneDNN")

CONFIG = ZeroQuantConfig(cpu_kernel="onednn", pipeline_race="off")
SEPARATE = dataclasses.replace(CONFIG, disable_passes=("merge_sibling_gemms",))


def _ids(b=2, s=12, seed=0):
    return torch.randint(0, 1000, (b, s), generator=torch.Generator().manual_seed(seed))


def _run(model, config, *inputs):
    torch._dynamo.reset()
    compiled = zq_compile.compile(model, config)
    with torch.inference_mode():
        outs = [model_output(compiled(x)) for x in inputs]
    return compiled, outs


@pytest.mark.parametrize("kind, merged, gemms", [("bert", 2 * 2, 2), ("llama", 3 * 2, 2 * 2)])
def test_siblings_run_as_one_gemm_with_the_separate_results(kind, merged, gemms):
    """2 layers. BERT: Q, K, V as one GEMM (two fewer per layer); Llama: q, k, v as one and
    gate, up as another (three fewer)."""
    model = tiny_model(kind)
    with torch.inference_mode():
        ref = model_output(model(_ids()))
    c, (got,) = _run(model, CONFIG, _ids())
    _, (want,) = _run(model, SEPARATE, _ids())
    report = c.zq_reports[0]
    assert report.pass_counts["merge_sibling_gemms"] == merged
    assert report.fusions["sibling_gemms"] == gemms
    assert sum("sibling_gemms" in d.fused for d in report.decisions) == merged + gemms
    # The rewritten graphs compute the same values (run eagerly they agree bit for bit); Inductor
    # fuses the two forms' epilogues differently, which moves a few outputs by one bf16 step, and
    # requantizing the next layer's input spreads that: equal accuracy, not equal bits.
    assert sqnr_db(want, got) > 30
    assert abs(sqnr_db(ref, got) - sqnr_db(ref, want)) < 0.5


def test_each_weight_keeps_its_store_entry_as_rows_of_the_one_merged_copy(tmp_path, monkeypatch):
    """The members' int8 weights in zq_compile.store are views of the merged oneDNN copy (read
    back on demand), equal to what the separate compile made; save / load round-trips them, and
    the compile after loading quantizes nothing and merges again."""
    separate = tiny_model("llama")
    _run(separate, SEPARATE, _ids())
    model = tiny_model("llama")
    c, (before,) = _run(model, CONFIG, _ids())
    for name in ("q_proj", "k_proj", "v_proj"):
        layer = getattr(model.model.layers[0].self_attn, name)
        (entry,) = store.entries(layer.weight).values()
        assert K.is_weight_handle(entry.tensors["wq"]) and entry.tensors["wq"] not in K._HANDLES  # a row view
        (want,) = store.entries(getattr(separate.model.layers[0].self_attn, name).weight).values()
        assert torch.equal(K.plain_weight(entry.tensors["wq"]), K.plain_weight(want.tensors["wq"]))
    zq_compile.save(c, tmp_path / "w.safetensors")
    fresh = tiny_model("llama")
    zq_compile.load(tmp_path / "w.safetensors", fresh)
    import zq_compile.schemes.w8a8 as w8a8

    def refuse(*args, **kwargs):
        raise AssertionError("quantize_weight called after load")

    monkeypatch.setattr(w8a8, "quantize_weight", refuse)
    c2, (after,) = _run(fresh, CONFIG, _ids())
    assert c2.zq_reports[0].fusions["sibling_gemms"] == 4
    assert torch.equal(before, after)


def test_a_recompile_merges_the_same_copy_again():
    """A second graph (another sequence length) takes the members back from the store as rows
    of the first graph's merged weight: no second oneDNN copy of it."""
    model = tiny_model("bert")
    torch._dynamo.reset()
    c = zq_compile.compile(model, CONFIG)
    with torch.inference_mode():
        c(_ids(s=12))
        gc.collect()  # earlier tests' models (and their packed copies) go first
        packed = len(K._ONEDNN_PACKED)
        c(_ids(b=3, s=9))
    gc.collect()
    assert len(c.zq_reports) == 2 and c.zq_reports[1].fusions["sibling_gemms"] == 2
    assert len(K._ONEDNN_PACKED) == packed


def test_an_in_place_weight_edit_reaches_the_merged_gemm():
    model = tiny_model("bert")
    c, _ = _run(model, CONFIG, _ids())
    value = model.encoder.layer[0].attention.self.value
    with torch.no_grad():
        value.weight.mul_(-1)
    with torch.inference_mode():
        got = model_output(c(_ids()))
        ref = model_output(model(_ids()))
    _, (want,) = _run(model, SEPARATE, _ids())
    assert sqnr_db(want, got) > 45 and sqnr_db(ref, got) > 20


class _Block(torch.nn.Module):
    def __init__(self, view_flat: bool):
        super().__init__()
        self.ln = torch.nn.LayerNorm(64)
        self.q, self.k, self.v = torch.nn.Linear(64, 64), torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)
        self.view_flat = view_flat

    def forward(self, x):
        h = self.ln(x)
        q = self.q(h)
        # [B, S, 64] -> [B, S * 64] joins the last dim with S: a column slice cannot be viewed so
        q = q.view(q.shape[0], -1) if self.view_flat else q.view(*q.shape[:2], 4, 16).flatten(2)
        return q.sum(-1), (self.k(h) * 2).sum(-1), self.v(h)  # v: returned as it is


@pytest.mark.parametrize("view_flat", [False, True])
def test_readers_that_need_a_contiguous_output_keep_their_linear_separate(view_flat):
    model = _Block(view_flat).eval()
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    c = zq_compile.compile(model, CONFIG)
    with torch.inference_mode():
        c(x)
    report = c.zq_reports[0]
    reasons = " ".join(report.fusion_fallbacks)
    assert "v: its output leaves the graph" in reasons
    if view_flat:
        assert "q: a reader views its output in a shape a column slice cannot take" in reasons
        assert "sibling_gemms" not in report.fusions  # k alone is left
    else:
        assert report.fusions["sibling_gemms"] == 1 and report.pass_counts["merge_sibling_gemms"] == 1
    with torch.inference_mode():
        got, want = c(x), model(x)
    assert all(sqnr_db(w, g) > 20 for w, g in zip(want, got))


def test_switched_off_by_name_and_under_release():
    model = tiny_model("bert")
    c, _ = _run(model, SEPARATE, _ids())
    assert "sibling_gemms" not in c.zq_reports[0].fusions
    assert "merge_sibling_gemms" in c.zq_reports[0].disabled_passes
    c, _ = _run(tiny_model("bert"), dataclasses.replace(CONFIG, release_float_weights=True), _ids())
    assert "sibling_gemms" not in c.zq_reports[0].fusions
    assert any("release_float_weights=True" in r for r in c.zq_reports[0].fusion_fallbacks)


def test_explain_links_each_merged_linear_to_its_columns():
    model = tiny_model("bert")
    torch._dynamo.reset()
    # smooth=False: a smoothed linear gets no "alone" error (explain.py), merged or not
    result = zq_compile.explain(model, {"input_ids": _ids()}, dataclasses.replace(CONFIG, smooth=False), runs=0)
    rows = [r for g in result.graphs for r in g.linears if r.module.endswith(("query", "key", "value"))]
    assert rows and all(r.zq_node and r.zq_node.startswith("slice") for r in rows)
    assert all(r.sqnr_db is not None and r.local_sqnr_db is not None and r.local_sqnr_db > 20 for r in rows)
    # the kernel that writes the merged GEMM's int8 input serves all three linears
    fed = {m for f in result.graphs[0].fusions for m in f.quantizes_for}
    assert {f"encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")} <= fed, fed


def test_grad_mode_detached_biases_are_moved_before_the_merged_gemm():
    """Compiled with grad enabled, each bias reaches its linear through a detach made just before
    it (schemes/base.inference_only): the later members' detaches move up to the merged GEMM."""
    model = _Block(False).eval()
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    c = zq_compile.compile(model, CONFIG)
    with pytest.warns(UserWarning, match="grad mode was on"):
        got = c(x)
    assert c.zq_reports[0].fusions["sibling_gemms"] == 1
    want = model(x)
    assert all(sqnr_db(w.detach(), g.detach()) > 20 for w, g in zip(want, got))
