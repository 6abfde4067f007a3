"""LKD through the compiler: options={"lkd": ...} on backend="zeroquant" and zq_compile.compile run
it once, before the first graph's weights are quantized, and the trained weights are the ones
quantized for real."""

import pytest
import torch

import zq_compile
from tests.models.tiny import tiny_model
from zq_compile.calibrate import lkd as lkd_module

pytestmark = pytest.mark.slow  # compiles a model (about 30 s on a busy 2-core machine)

#: w8a8 (the one preset built) barely moves a tiny random model: a small lr still lowers its loss
LKD = {"steps": 1, "lr": 1e-6, "samples": 2, "batch": 2, "seq": 8, "progress": False}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_backend_string_runs_lkd_once_before_quantizing():
    m = tiny_model("llama")
    ref = tiny_model("llama")
    expected = lkd_module.run_lkd(ref, None, LKD)  # what the backend must do to the weights (w8a8)
    before = _state(m)
    c = torch.compile(m, backend="zeroquant", options={"preset": "w8a8", "lkd": LKD})
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    start = len(zq_compile.recent_reports())
    with torch.no_grad():
        out = c(input_ids=ids).logits
    after, want = _state(m), _state(ref)
    # Trained as run_lkd trains it: the same update, up to float noise (inside Dynamo, transformers
    # takes its is_compiling() code paths, e.g. for masks, which round differently).
    delta = torch.cat([(after[k] - before[k]).flatten() for k in before])
    want_delta = torch.cat([(want[k] - before[k]).flatten() for k in before])
    assert want_delta.abs().max() > 0
    assert torch.nn.functional.cosine_similarity(delta, want_delta, dim=0) > 0.99
    reports = zq_compile.recent_reports()[start:]
    notes = [n for r in reports for n in r.notes if n.startswith("LKD")]
    assert len(notes) == 1 and notes[0].startswith("LKD ran before this graph compiled")
    assert all(r.kept == "trained" for r in expected.results)
    with torch.no_grad():  # the compiled model quantized the trained weights: it tracks eager LKD'd model
        eager = m(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(out.flatten(), eager.flatten(), dim=0) > 0.99


def test_zq_compile_runs_lkd_eagerly_and_reports_it():
    m = tiny_model("gpt2")
    before = _state(m)
    c = zq_compile.compile(m, {"lkd": LKD})
    assert c.zq_lkd_report is not None and len(c.zq_lkd_report.results) == 2
    assert any(not torch.equal(v, before[k]) for k, v in _state(m).items())
    trained = _state(m)
    with torch.no_grad():
        c(input_ids=torch.ones(1, 5, dtype=torch.long))
    assert all(torch.equal(v, trained[k]) for k, v in _state(m).items())  # not trained a second time
    assert any(n.startswith("LKD already ran") for n in c.zq_reports[0].notes)


def test_calibrate_then_compile_trains_once():
    """calibrate() with LKD, then compile() with the same config (the bench's +lkd rows): LKD ran
    twice until 2026-12-07, the second time distilling towards the first run's weights."""
    m = tiny_model("gpt2")
    data = [{"input_ids": torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(3))}]
    report = zq_compile.calibrate(m, {"lkd": LKD}, data)
    assert report.lkd is not None
    trained = _state(m)
    c = zq_compile.compile(m, {"lkd": LKD})
    assert c.zq_lkd_report is report.lkd
    with pytest.warns(UserWarning, match="LKD already ran on this model"):
        again = zq_compile.calibrate(m, {"lkd": LKD}, data)
    assert again.lkd is report.lkd
    with torch.no_grad():
        c(input_ids=torch.ones(1, 5, dtype=torch.long))
    assert all(torch.equal(v, trained[k]) for k, v in _state(m).items())
    assert any(n.startswith("LKD already ran") for n in c.zq_reports[0].notes)


def test_backend_on_a_function_without_a_module_is_a_clear_error():
    lin = torch.nn.Linear(8, 8)

    def fn(x, w, b):
        return torch.nn.functional.linear(x, w, b)

    c = torch.compile(fn, backend="zeroquant", options={"lkd": LKD})
    with torch.no_grad(), pytest.raises(Exception, match="could not find the nn.Module"):
        c(torch.randn(2, 8), lin.weight, lin.bias)


def test_lkd_turns_auto_smoothing_off_and_an_explicit_alpha_stays():
    """LKD trains for the unsmoothed quantization; smoothing afterwards undid it (MiniLM w4/8a8
    cosine 0.956 against 0.975 without smoothing: bench/lkd_smoothing.py), so smooth="auto" is off under LKD."""
    data = [{"input_ids": torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(4))}]
    plain = zq_compile.calibrate(tiny_model("gpt2"), {}, data)
    assert plain.smooth == "auto" and len(plain.alpha_search) > 1
    trained = zq_compile.calibrate(tiny_model("gpt2"), {"lkd": LKD}, data)
    assert trained.smooth is False and list(trained.alpha_search) == ["off"] and trained.alpha is None
    assert any("LKD trained the weights for the unsmoothed quantization" in n for n in trained.notes)
    forced = zq_compile.calibrate(tiny_model("gpt2"), {"lkd": LKD, "smooth": {"alpha": 0.5}}, data)
    assert forced.alpha == 0.5 and not any("unsmoothed" in n for n in forced.notes)
