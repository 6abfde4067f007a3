"""attention_bf16 on graphs Dynamo captured: which attention calls get bf16 matmuls, which stay
fp32, and why. Runs the passes without Inductor (``prepare``) and the rewritten graph eagerly."""

import re

import pytest
import torch
import torch.nn.functional as F

import zq_compile.codegen.cpu.select as select
from tests.conftest import capture
from tests.modules import TwoLayers, attention_inputs as _inputs
from zq_compile import ZeroQuantConfig
from zq_compile.backend import prepare
from zq_compile.codegen.cpu import attention_race
from zq_compile.codegen.cpu.attention import mask_to_bias
from zq_compile.metrics import sqnr_db

OP = torch.ops.zq.attention_bf16.default


def _prepare(fn, *args, **config):
    gm, inputs = capture(fn, *args)
    with torch.no_grad():
        prepared = prepare(gm, inputs, ZeroQuantConfig(**config))
        (out,) = prepared.gm(*inputs, *prepared.constants)
    return prepared, out


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target == target)


@pytest.mark.skipif(not select.has_bf16(), reason="auto keeps fp32 attention on a CPU without native bf16")
def test_both_layers_rewritten_mask_converted_once_and_close_to_eager():
    m = TwoLayers().eval()
    x, mask = _inputs()
    prepared, out = _prepare(m, x, mask, attention="bf16_matmul")
    report = prepared.report
    assert report.pass_counts["attention_bf16"] == 2
    assert _count(prepared.gm, OP) == 2 and _count(prepared.gm, F.scaled_dot_product_attention) == 0
    assert _count(prepared.gm, mask_to_bias) == 1  # one bias for both layers
    assert [a.dtype for a in report.attention] == ["bf16", "bf16"]
    assert "attention" in report.summary()
    with torch.no_grad():
        assert sqnr_db(m(x, mask), out) > 30  # int8 linears and bf16 attention together


@pytest.mark.parametrize("config,reason", [
    ({"attention": "fp32"}, "attention='fp32'"),
    ({"target": "reference"}, "cpu-target rewrite"),
])
def test_config_keeps_fp32_attention(config, reason):
    x, mask = _inputs()
    prepared, _ = _prepare(TwoLayers().eval(), x, mask, **config)
    assert prepared.report.pass_counts["attention_bf16"] == 0
    assert all(a.dtype == "fp32" and reason in a.reason for a in prepared.report.attention)
    assert _count(prepared.gm, F.scaled_dot_product_attention) == 2


def test_pass_switched_off_by_name():
    x, mask = _inputs()
    prepared, _ = _prepare(TwoLayers().eval(), x, mask, disable_passes=("attention_bf16",))
    assert "attention_bf16" in prepared.report.disabled_passes
    assert _count(prepared.gm, F.scaled_dot_product_attention) == 2 and _count(prepared.gm, OP) == 0


def test_dropout_and_16_bit_inputs_stay():
    x, mask = _inputs()
    prepared, _ = _prepare(TwoLayers(dropout=0.1).train(), x, mask)
    assert all("dropout_p=0.1" in a.reason for a in prepared.report.attention)

    def half(q, k, v):
        return F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())

    q = torch.randn(1, 2, 20, 8)
    prepared, _ = _prepare(half, q, q, q)
    (a,) = prepared.report.attention
    assert a.dtype == "fp32" and "torch.bfloat16" in a.reason


def test_decode_step_stays_fp32_under_auto_and_is_rewritten_when_asked(monkeypatch):
    monkeypatch.setattr(select, "has_bf16", lambda: True)  # the decode rule, not the CPU's, decides

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    q, k = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 40, 16)
    prepared, _ = _prepare(attend, q, k, k)
    (a,) = prepared.report.attention
    assert a.dtype == "fp32" and "decode step" in a.reason
    prepared, out = _prepare(attend, q, k, k, attention="bf16")
    assert prepared.report.attention[0].dtype == "bf16"
    assert sqnr_db(attend(q, k, k), out) > 35


def test_causal_with_explicit_scale_is_rewritten_when_asked():
    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2)

    q = torch.randn(2, 3, 17, 8)
    prepared, out = _prepare(attend, q, q * 0.5, q + 1, attention="bf16_matmul")
    (node,) = [n for n in prepared.gm.graph.nodes if n.target == OP]
    assert node.args[4:] == (0.2, True, False)
    assert sqnr_db(attend(q, q * 0.5, q + 1), out) > 35


def test_cpu_without_native_bf16_keeps_fp32_under_auto(monkeypatch):
    monkeypatch.setattr(select, "has_bf16", lambda: False)  # the policy as on an AVX2-only CPU
    x, mask = _inputs()
    prepared, _ = _prepare(TwoLayers().eval(), x, mask)
    assert all("no native bf16" in a.reason for a in prepared.report.attention)
    prepared, _ = _prepare(TwoLayers().eval(), x, mask, attention="bf16")
    assert prepared.report.pass_counts["attention_bf16"] == 2


@pytest.mark.skipif(not select.has_bf16(), reason="auto keeps fp32 attention on a CPU without native bf16")
def test_dynamic_sequence_and_scores_over_budget_stay_fp32(monkeypatch):
    import zq_compile.passes.attention_bf16 as attention_pass

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    q = torch.randn(2, 3, 40, 8)
    torch._dynamo.mark_dynamic(q, 2)
    prepared, _ = _prepare(attend, q, q.clone(), q.clone())
    (a,) = prepared.report.attention
    assert a.dtype == "fp32" and "sequence length is dynamic" in a.reason

    torch._dynamo.reset()
    q = torch.randn(2, 3, 40, 8)  # 2 x 3 x 40 x 40 bf16 scores: 18.75 KiB
    monkeypatch.setattr(attention_race, "RACE_MIN_SCORES_MIB", 0.0)
    monkeypatch.setattr(attention_pass, "SCORES_BUDGET_MIB", 0.01)
    prepared, _ = _prepare(attend, q, q, q)
    (a,) = prepared.report.attention
    assert "0.0 MiB of stored scores per call (budget 0.01 MiB)" in a.reason
    (line,) = [r for r in prepared.report.races if r.startswith("attention")]
    assert "bf16_flash" in line and "fp32_flash" in line and "bf16_matmul" not in line
    assert _count(prepared.gm, OP) == 0  # the lowering that stores the scores was never a candidate


@pytest.mark.skipif(not select.has_bf16(), reason="auto keeps fp32 attention on a CPU without native bf16")
def test_auto_races_the_variants_and_emits_the_winner(monkeypatch):
    """Over RACE_MIN_SCORES_MIB, "auto" times the three variants on the problem's shapes (once
    per distinct problem: both layers share one race line) and the graph holds the pick."""
    monkeypatch.setattr(attention_race, "RACE_MIN_SCORES_MIB", 0.0)
    m = TwoLayers().eval()
    x, mask = _inputs()
    prepared, out = _prepare(m, x, mask)
    (line,) = [r for r in prepared.report.races if r.startswith("attention")]
    assert "(x2)" in line and all(v in line for v in attention_race.VARIANTS)
    winner = line.rsplit("-> ", 1)[1]  # the choice rule itself: the test below, on given times
    times = {name: float(ms) for name, ms in re.findall(r"(\w+) ([\d.]+) ms", line.split(": ", 1)[1])}
    assert set(times) == set(attention_race.VARIANTS) and winner in times
    sdpa = [n for n in prepared.gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    if winner == "bf16_matmul":
        assert _count(prepared.gm, OP) == 2 and not sdpa
    else:
        dtype = torch.bfloat16 if winner == "bf16_flash" else torch.float32
        assert len(sdpa) == 2 and _count(prepared.gm, OP) == 0
        assert all(n.args[0].meta["example_value"].dtype == dtype for n in sdpa)
    assert all("raced at this problem's shapes" in a.reason for a in prepared.report.attention)
    with torch.no_grad():
        assert sqnr_db(m(x, mask), out) > 30


def test_race_choice_needs_a_clear_margin_to_leave_the_more_exact_variant():
    choose = attention_race.choose
    assert choose({"bf16_matmul": 1.29, "bf16_flash": 1.40, "fp32_flash": 1.25}) == "fp32_flash"
    assert choose({"bf16_matmul": 1.20, "bf16_flash": 1.40, "fp32_flash": 1.25}) == "fp32_flash"  # 4%: no
    assert choose({"bf16_matmul": 7.42, "bf16_flash": 12.85, "fp32_flash": 11.11}) == "bf16_matmul"
    assert choose({"bf16_matmul": 3.0, "bf16_flash": 2.0, "fp32_flash": 2.5}) == "bf16_flash"
    assert choose({"bf16_flash": 2.0, "fp32_flash": 2.1}) == "fp32_flash"
    assert choose({"bf16_flash": 1.0}) == "bf16_flash"


@pytest.mark.skipif(not select.has_bf16(), reason="auto keeps fp32 attention on a CPU without native bf16")
@pytest.mark.parametrize("causal", [False, True])
def test_auto_runs_flash_attention_on_bf16_inputs(causal):
    """attention="auto": the fp32 SDPA becomes ATen's SDPA on bf16 q/k/v (Inductor lowers it to
    the CPU flash kernel), its result cast back to fp32; no zq.attention_bf16 op."""
    m = TwoLayers().eval()
    x, mask = _inputs()

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.2)

    if causal:
        q = torch.randn(2, 3, 17, 8)
        prepared, out = _prepare(attend, q, q * 0.5, q + 1)
        want = attend(q, q * 0.5, q + 1)
    else:
        prepared, out = _prepare(m, x, mask)
        with torch.no_grad():
            want = m(x, mask)
    sdpa = [n for n in prepared.gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    assert sdpa and _count(prepared.gm, OP) == 0
    for node in sdpa:
        assert all(a.meta["example_value"].dtype == torch.bfloat16 for a in node.args[:3])
        assert node.kwargs["is_causal"] is causal and (not causal or node.kwargs["scale"] == 0.2)
    assert all("flash" in a.reason and a.dtype == "bf16" for a in prepared.report.attention)
    assert sqnr_db(want, out) > 30
