"""The bench's sections end to end on tiny models with real compiles (slow: several compiles).

Only structure and accuracy plumbing are checked; no timing is asserted."""

import pytest
import torch

from zq_compile.benchmarks.contenders import BASELINE, BenchModel, select
from zq_compile.benchmarks.harness import causal_section, dynamo_settings, encoder_section, linear_section

pytestmark = pytest.mark.slow
NAMES = ["eager fp32", "zeroquant w8a8", "zeroquant w4a8"]


def _quiet(_msg):
    pass


def test_linear_section_reports_every_contender_and_ratios_to_inductor():
    torch.manual_seed(0)
    bm = BenchModel("lin", torch.nn.Sequential(torch.nn.Linear(64, 48)).eval(), "tensor")
    with torch.inference_mode(), dynamo_settings():
        out = linear_section(bm, select(NAMES), [1, 13], runs=1, warmup=0, log=_quiet)
    assert [r["M"] for r in out["rows"]] == [1, 13]
    for row in out["rows"]:
        assert row["speedup_vs_inductor_fp32"][BASELINE] == 1.0
        assert "zeroquant w8a8" in row["ms"]
    assert set(out["contenders"]) == set(NAMES) | {BASELINE}


def test_encoder_section_on_tiny_bert_with_random_ids():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                 num_attention_heads=4, vocab_size=300), add_pooling_layer=False).eval()
    bm = BenchModel("tiny-bert", model, "encoder")
    with torch.inference_mode(), dynamo_settings():
        out = encoder_section(bm, select(NAMES), [(2, 16), (3, 24)], runs=1, warmup=0, log=_quiet)
    assert [(s["batch"], s["seq"]) for s in out["latency"]] == [(2, 16), (3, 24)]
    assert out["contenders"]["zeroquant w8a8"]["ok"]


def _tiny_llama():
    """A random-weight 2-layer Llama as a causal-lm BenchModel, and two windows of 12 ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=300)).eval()
    windows = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    return BenchModel("tiny-llama", model, "causal-lm"), windows


def test_causal_section_perplexity_decode_and_failures_on_tiny_llama():
    bm, windows = _tiny_llama()
    with torch.inference_mode(), dynamo_settings():
        out = causal_section(bm, select(NAMES), windows, new_tokens=4, runs=1, warmup=0, log=_quiet,
                             text_note="random ids")
    ppl = out["perplexity"]
    assert ppl["eager fp32"]["tokens_scored"] == 2 * 11
    assert ppl[BASELINE]["perplexity"] == pytest.approx(ppl["eager fp32"]["perplexity"], rel=1e-4)
    # quantized, so not bit-identical to fp32 (a silent eager fallback would be), yet close
    assert ppl["zeroquant w8a8"]["perplexity"] != ppl["eager fp32"]["perplexity"]
    assert ppl["zeroquant w8a8"]["vs_eager_fp32"] == pytest.approx(1.0, abs=0.05)
    assert out["decode"]["eager fp32"]["greedy_match_fp32"] == 1.0
    assert out["decode"]["zeroquant w8a8"]["tokens_per_s"] > 0
    assert out["contenders"]["zeroquant w4a8"]["ok"], out["contenders"]["zeroquant w4a8"]


def test_pt2e_static_on_a_causal_lm_calibrates_on_other_ids_and_runs_prefill_only():
    pytest.importorskip("torchao", reason="torchao is a bench dependency (make .venv/.bench-installed)")
    bm, windows = _tiny_llama()
    with torch.inference_mode(), dynamo_settings():
        out = causal_section(bm, select(["eager fp32", "pt2e x86 static"]), windows, new_tokens=3, runs=1, warmup=0,
                             log=_quiet, text_note="random ids", calibration_ids=torch.arange(100, 160))
    assert out["perplexity"]["pt2e x86 static"]["vs_eager_fp32"] == pytest.approx(1.0, abs=0.05)
    assert "pt2e x86 static" in out["prefill"]["ms"]
    assert "no KV cache" in out["contenders"]["pt2e x86 static"]["error"]  # decode needs a cache it lacks


def test_an_lkd_contender_runs_lkd_on_a_copy():
    """The "+lkd" contenders once gathered statistics only (calibrate() runs LKD only when the
    config asks): they scored exactly as their plain twins. Now LKD trains a copy of the model."""
    import zq_compile

    bm, windows = _tiny_llama()
    before = {n: p.detach().clone() for n, p in bm.model.named_parameters()}
    example = {"input_ids": windows[:1]}
    reports = len(zq_compile.recent_reports())
    (lkd,) = [c for c in select(["zeroquant w8a8+lkd"]) if c.name.endswith("+lkd")]
    with torch.inference_mode(), dynamo_settings():
        fn = lkd.build(bm, example)
        fn(**example)
    notes = [n for r in zq_compile.recent_reports()[reports:] for n in r.notes]
    assert any(n.startswith("LKD already ran on this model") for n in notes), notes
    assert all(torch.equal(p, before[n]) for n, p in bm.model.named_parameters())  # the copy trained
