"""Outlier smoothing, calibration statistics and the keep_float policy on tiny HF models.

Graphs go through ``prepare`` (the real passes and kernels) and run eagerly, without Inductor,
so these stay fast; one test compiles with Inductor to read the generated code.
"""

import copy
import math

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

import zq_compile
from tests.conftest import capture
from tests.models.tiny import tiny_model
from zq_compile import ZeroQuantConfig
from zq_compile.backend import prepare
from zq_compile.metrics import sqnr_db
from zq_compile.passes import calibrate_linears, smooth_outliers
from zq_compile.passes.context import PassContext
from zq_compile.passes.graph_utils import clone_graph_module
from zq_compile.report import CompileReport

OUTLIER = 7  # the planted channel
FACTOR = 60.0


def outlier_llama(seed: int = 0):
    """Tiny Llama whose norm outputs carry one channel ~60x the others (as real LLMs do), with
    the reading linears' columns scaled down so the float model computes the same function."""
    m = tiny_model("llama", seed)
    with torch.no_grad():
        for layer in m.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            for norm, linears in ((layer.input_layernorm, (a.q_proj, a.k_proj, a.v_proj)),
                                  (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                norm.weight[OUTLIER] *= FACTOR
                for lin in linears:
                    lin.weight[:, OUTLIER] /= FACTOR
    return m


def _ids(seed=0, batch=2, seq=24):
    return torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _logits(m, ids):
    with torch.no_grad():
        return m(input_ids=ids, use_cache=False).logits


def _prepared_logits(m, ids, **config):
    gm, inputs = capture(m, input_ids=ids, use_cache=False)
    with torch.no_grad():
        p = prepare(gm, inputs, ZeroQuantConfig(**config))
        out = p.gm(*inputs, *p.constants)
    return out[0], p.report


def test_smoothing_raises_sqnr_on_planted_outlier_by_6db():
    m = outlier_llama()
    ids = _ids()
    ref = _logits(m, ids)
    plain, _ = _prepared_logits(m, ids, smooth=False, keep_float=0)
    smoothed, report = _prepared_logits(m, ids, smooth={"alpha": 0.5}, keep_float=0)
    auto, auto_report = _prepared_logits(m, ids, keep_float=0)
    gain = sqnr_db(ref, smoothed) - sqnr_db(ref, plain)
    assert gain >= 6, (sqnr_db(ref, plain), sqnr_db(ref, smoothed))
    assert sqnr_db(ref, auto) - sqnr_db(ref, plain) >= 6
    assert auto_report.calibration.alpha is not None, auto_report.summary()
    assert report.calibration.source == "first call inputs"
    assert all("smoothed" in d.reason for d in report.quantized), report.summary()
    # Q/K/V and gate/up read RMSNorm outputs only: folded; o_proj, down_proj and lm_head (it reads
    # a slice of the final norm) divided
    assert report.pass_counts["smooth_outliers"] == 9
    assert any("4 folded into the norm" in n for n in report.notes), report.notes


def _smoothed_graph(m, ids, **config):
    """The graph after calibrate_linears + smooth_outliers, and its context."""
    gm, inputs = capture(m, input_ids=ids, use_cache=False)
    config = ZeroQuantConfig(**config)
    ctx = PassContext(clone_graph_module(gm), inputs, config, CompileReport(config=config.to_dict()), "cpu")
    with torch.no_grad():
        calibrate_linears.run(ctx)
        smooth_outliers.run(ctx)
    ctx.gm.graph.lint()
    ctx.gm.recompile()
    return ctx


class _FloatSmoothed(fx.Interpreter):
    """Runs the smoothed graph in float: each smoothed linear uses W * s, as rewrite_linear
    quantizes it; everything else (folded norms, the 1/s multiplies) is the pass's own graph."""

    def __init__(self, ctx):
        super().__init__(ctx.gm)
        self.scales, self.splits = ctx.memo["smooth_scale"], ctx.memo["columns"]

    def run_node(self, n):
        s, split = self.scales.get(n), self.splits.get(n)
        if s is None and split is None:
            return super().run_node(n)
        x, w = self.env[n.args[0]], self.env[n.args[1]]
        bias = self.env[n.args[2]] if len(n.args) > 2 and n.args[2] is not None else None
        w = w if s is None else w * s
        return F.linear(x, w if split is None else split.w(w), bias)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_folding_and_division_leave_float_outputs_unchanged(kind):
    m = outlier_llama() if kind == "llama" else tiny_model("bert")
    before = copy.deepcopy(m.state_dict())
    ids = _ids(1)
    ctx = _smoothed_graph(m, ids, smooth={"alpha": 0.5}, heads="float")  # folding is tested, not the head
    how = ctx.memo["smooth_how"]
    if kind == "llama":
        assert sum(v.startswith("folded") for v in how.values()) == 4, how  # QKV, gate/up (lm_head float)
    else:  # post-LN BERT: the LayerNorm output also feeds the residual, so nothing folds
        assert how and all(v.startswith("divided") for v in how.values()), how
    with torch.no_grad():
        out = _FloatSmoothed(ctx).run(*ctx.example_inputs, *[t for _, t in ctx.constants])[0]
        ref = m(input_ids=ids, use_cache=False)[0] if kind == "llama" else m(input_ids=ids)[0]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert sqnr_db(ref, out) > 90
    # the user's parameters are untouched (folding works on graph constants)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compiled_model_leaves_user_model_unchanged_and_tracks_float():
    m = outlier_llama()
    ids = _ids(2)
    ref = _logits(m, ids)
    params = {k: v.clone() for k, v in m.state_dict().items()}
    out, report = _prepared_logits(m, ids)
    assert torch.equal(_logits(m, ids), ref)
    assert all(torch.equal(params[k], v) for k, v in m.state_dict().items())
    assert sqnr_db(ref, out) > 30
    assert report.calibration is not None and report.calibration.layers


def test_calibrate_statistics_reach_the_compiled_graph():
    m = outlier_llama()
    data = [{"input_ids": _ids(s, 2, 16), "use_cache": False} for s in (10, 11)]
    config = ZeroQuantConfig(keep_float=1)
    report = zq_compile.calibrate(m, config, data)
    assert report.source == "calibrate(data)" and report.batches == 2 and report.tokens == 64
    assert len(report.kept_float) == 1
    # compiled on other inputs: the decisions come from calibrate(), not from this call
    _, compiled = _prepared_logits(m, _ids(3), keep_float=1)
    assert compiled.calibration is report
    kept = [d for d in compiled.decisions if not d.quantized]
    assert [d.module for d in kept] == [report.kept_float[0].module]  # graph paths are module names
    # another config: recalibrated on the call's own inputs
    _, other = _prepared_logits(m, _ids(3), keep_float=0)
    assert other.calibration.source == "first call inputs"


def test_policy_is_deterministic_and_follows_keep_float():
    data = [{"input_ids": _ids(s, 2, 16), "use_cache": False} for s in (20, 21)]
    reports = [zq_compile.calibrate(outlier_llama(), ZeroQuantConfig(), data) for _ in range(2)]
    a, b = ([(la.module, la.sqnr_db, la.kept_float) for la in r.layers] for r in reports)
    assert a == b and reports[0].alpha == reports[1].alpha
    assert reports[0].alpha_search == reports[1].alpha_search
    layers = reports[0].layers
    # heads="outliers" by default: the head is quantized (its outlier channels in float), not kept
    assert any(la.module == "lm_head" and not la.kept_float for la in layers)
    assert all(math.isfinite(la.sqnr_db) for la in layers)

    # smooth=False below: one plan to score instead of six, the policy is what is tested
    r3 = zq_compile.calibrate(outlier_llama(), ZeroQuantConfig(smooth=False, keep_float=3), data)
    worst = sorted(r3.layers, key=lambda la: (la.sqnr_db, la.module))[:3]
    assert {la.module for la in r3.kept_float} == {la.module for la in worst}
    floor = sorted(la.sqnr_db for la in r3.layers)[4]
    r4 = zq_compile.calibrate(outlier_llama(), ZeroQuantConfig(smooth=False, keep_float=float(floor)), data)
    assert {la.module for la in r4.kept_float} == {la.module for la in r4.layers if la.sqnr_db < floor}
    assert len(r4.kept_float) == 4


@pytest.mark.parametrize("field,value", [
    ("smooth", {"alpha": 1.5}), ("smooth", {"alpha": -0.1}), ("smooth", "yes"), ("smooth", True),
    ("smooth", {"beta": 0.5}), ("keep_float", "many"), ("keep_float", True), ("keep_float", [1]),
    ("keep_float", -1), ("keep_float", None),
])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ZeroQuantConfig(**{field: value})


def test_config_round_trips_with_accuracy_fields():
    c = ZeroQuantConfig(smooth={"alpha": 0.4}, keep_float=2.5)
    assert c.smooth == 0.4 and ZeroQuantConfig.from_json(c.to_json()) == c
    assert ZeroQuantConfig.from_json(ZeroQuantConfig(smooth=False, keep_float=3).to_json()).keep_float == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_calibration_data_with_nan_or_inf_is_refused(bad):
    m = tiny_model("llama")
    x = torch.zeros(1, 4, 64)
    x[0, 2, 5] = bad
    with pytest.raises(ValueError, match=r"data\[1\]\['inputs_embeds'\]"):
        zq_compile.calibrate(m, None, [{"input_ids": _ids()}, {"inputs_embeds": x}])


@pytest.mark.slow  # two Inductor compiles (70 s on the loaded shared machine)
def test_smoothing_adds_no_kernel_division_fused_into_the_quantize():
    """Read the generated code of a LayerNorm -> Linear -> GeLU -> Linear block: with smoothing
    the LayerNorm weight is folded and the GeLU output's 1/s multiply is fused into the quantize
    kernel, so the number of generated kernels and of GEMM calls is the same as without."""
    from torch._inductor.utils import run_and_get_code

    from tests.modules import Block

    codes = {}
    for smooth in (False, 0.5):
        torch._dynamo.reset()
        torch.manual_seed(0)
        m = Block().eval()
        compiled = torch.compile(m, backend="zeroquant", options={"smooth": smooth, "keep_float": 0})
        with torch.inference_mode():
            _, (codes[smooth],) = run_and_get_code(compiled, torch.randn(4, 13, 64))
        report = zq_compile.recent_reports()[-1]
    assert any("1 folded into the norm" in n and "1 divided" in n for n in report.notes), report.notes
    kernels = {k: code.count("cpp_fused_") for k, code in codes.items()}
    assert kernels[0.5] == kernels[False] > 0, kernels
    gemms = {k: code.count("_mm") for k, code in codes.items()}
    assert gemms[0.5] == gemms[False]
