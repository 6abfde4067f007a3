"""Outlier input channels of the heads in float beside the int8 GEMM (calibrate/outliers.py,
smooth_outliers, rewrite_linear, passes/outlier_term.py)."""

import pytest
import torch

import zq_compile
from tests.calibrate.test_smoothing import _ids, _logits, _prepared_logits
from tests.calibrate.test_split import _head_outlier_llama, compiled_head_in_prefill_and_decode
from zq_compile.calibrate.outliers import OUTLIER_STEP, float_term, outlier_count, outliers_for
from zq_compile.metrics import sqnr_db


@pytest.mark.parametrize("k", [1, 13, 64, 576, 1025])
def test_outliers_are_exact_in_float_and_take_the_widest_channels(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(7, k, generator=g, dtype=torch.float64)
    absmax = x.abs().amax(0).float()
    absmax[k // 2] *= 50  # one channel far wider than the rest
    w = torch.randn(5, k, generator=g, dtype=torch.float64)
    o = outliers_for(absmax)
    assert o.index.numel() == outlier_count(k) == min(k, OUTLIER_STEP * -(-k // 1024))
    assert k // 2 in o.index.tolist() and torch.equal(o.index, o.index.sort().values)
    assert torch.equal(o.mask()[o.index], torch.zeros(o.index.numel())) and int(o.mask().sum()) == k - o.index.numel()
    y = o.x(x) @ o.w(w).T + float_term(x, o.w_float(w), o.index).double()
    torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)  # the float term is computed in fp32
    rest = absmax * o.mask()
    assert rest.max() <= absmax.sort(descending=True).values[o.index.numel()] if k > o.index.numel() else True


def test_outliers_are_deterministic_and_take_non_finite_channels_first():
    a = torch.tensor([1.0, 9.0, float("nan"), 9.0, float("inf"), 2.0, 9.0])
    one, two = outliers_for(a, count=4), outliers_for(a.clone(), count=4)
    assert torch.equal(one.index, two.index) and one.tag() == two.tag()
    # NaN / Inf channels first (they would ruin every token's scale), then ties to the lower channel
    assert one.index.tolist() == [1, 2, 3, 4]
    s = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.01, 1.0])  # smoothing's s changes what is widest
    assert 5 in outliers_for(a, s, count=3).index.tolist()


def test_outlier_head_beats_the_plain_head_and_runs_quantized():
    m = _head_outlier_llama()
    ids = _ids(4)
    ref = _logits(m, ids)
    # Only the head quantized (the body skipped), so the figures are the head's; no smoothing,
    # and a dB floor no linear is under, so calibration runs but keeps nothing float.
    only_head = dict(skip=("model.layers.*",), smooth=False, keep_float=-100.0, heads="outliers")
    treated, report = _prepared_logits(m, ids, **only_head)
    plain, _ = _prepared_logits(m, ids, **only_head, disable_passes=("smooth_outliers",))
    split, _ = _prepared_logits(m, ids, **{**only_head, "heads": "split"})
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert head.quantized and "8 outlier input channel(s) of 64 in float" in head.reason, head.reason
    assert sqnr_db(ref, treated) >= sqnr_db(ref, plain) + 6, (sqnr_db(ref, treated), sqnr_db(ref, plain))
    assert sqnr_db(ref, treated) > sqnr_db(ref, split), (sqnr_db(ref, treated), sqnr_db(ref, split))
    assert any("with outlier channels in float" in n for n in report.notes)


def test_weight_only_and_skipped_heads_are_left_alone():
    m = _head_outlier_llama()
    _, report = _prepared_logits(m, _ids(6), preset="w8a16", heads="outliers")
    assert not any("outlier input channel" in d.reason for d in report.decisions)
    _, report = _prepared_logits(m, _ids(5), skip=("lm_head",), heads="outliers")
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert not head.quantized and "skip" in head.reason


def test_compiled_outlier_head_serves_prefill_and_decode_from_one_calibration():
    compiled_head_in_prefill_and_decode("outliers", "in float beside the int8 GEMM")


def test_an_in_place_edit_of_an_outlier_column_reaches_the_float_term():
    """The float term's constant (Wo^T) is re-made through the weight binding like the int8 one.
    Unsmoothed, so the planted channel 5 is surely one of those in float; the body float."""
    m = _head_outlier_llama()
    config = zq_compile.ZeroQuantConfig(heads="outliers", smooth=False, skip=("model.layers.*",))
    zq_compile.calibrate(m, config, [{"input_ids": _ids(30, 2, 16), "use_cache": False}])
    compiled = zq_compile.compile(m, config)
    ids = _ids(7, 1, 12)
    with torch.no_grad():
        compiled(input_ids=ids, use_cache=False)
        m.lm_head.weight[:, 5] *= -3.0
        ref = m(input_ids=ids, use_cache=False).logits
        out = compiled(input_ids=ids, use_cache=False).logits
    assert zq_compile.recent_reports()[-1].requantized >= 1
    assert sqnr_db(ref, out) > 25, sqnr_db(ref, out)


def test_heads_outliers_round_trips_in_the_config():
    config = zq_compile.ZeroQuantConfig(heads="outliers")
    assert zq_compile.ZeroQuantConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="float, split, outliers"):
        zq_compile.ZeroQuantConfig(heads="llm.int8")


def test_release_recompile_and_save_load_keep_the_float_term(tmp_path, monkeypatch):
    """Wo^T lives in zq_compile.store like the quantized constants: a recompile after
    release_float_weights finds it, and save / load carry it (nothing re-made, bit for bit)."""
    from zq_compile.passes import outlier_term

    def twin():
        m = _head_outlier_llama()
        m.config.tie_word_embeddings = False  # an untied head, so its float weight can be freed
        return m

    config = zq_compile.ZeroQuantConfig(heads="outliers", cpu_kernel="onednn", release_float_weights=True)
    m = twin()
    zq_compile.calibrate(m, config, [{"input_ids": _ids(30, 2, 16), "use_cache": False}])
    compiled = zq_compile.compile(m, config)
    with torch.inference_mode():
        first = compiled(input_ids=_ids(7, 2, 12), use_cache=False).logits
    assert m.lm_head.weight.untyped_storage().nbytes() == 0
    zq_compile.save(m, tmp_path / "w.safetensors")

    def refuse(*a, **k):
        raise AssertionError("the float term's constant was made again")

    monkeypatch.setattr(outlier_term, "_make", refuse)
    with torch.inference_mode():
        other = compiled(input_ids=_ids(8, 3, 9), use_cache=False).logits  # a new shape: a recompile
    assert other.shape == (3, 9, m.config.vocab_size) and torch.isfinite(other).all()
    assert any("in float beside" in d.reason for d in zq_compile.recent_reports()[-1].decisions)

    fresh = twin()
    torch._dynamo.reset()
    loaded = zq_compile.load(tmp_path / "w.safetensors", fresh)
    with torch.inference_mode():
        again = zq_compile.compile(fresh, loaded)(input_ids=_ids(7, 2, 12), use_cache=False).logits
    assert torch.equal(first, again)


def test_the_float_term_is_unrolled_into_the_logits_loop_and_equals_the_reduction(monkeypatch):
    """k <= UNROLL_MAX: pointwise multiply-adds that Inductor computes in the loop writing the
    logits, with no reduction kernel left; the logits match the reduction form's."""
    from torch._inductor.utils import run_and_get_code

    from zq_compile.passes import outlier_term

    m = _head_outlier_llama()
    ids = _ids(4)
    options = dict(skip=("model.layers.*",), smooth=False, keep_float=-100.0, heads="outliers", pipeline_race="off")
    got = {}
    for name, unroll in (("unrolled", outlier_term.UNROLL_MAX), ("reduced", 0)):
        monkeypatch.setattr(outlier_term, "UNROLL_MAX", unroll)
        torch._dynamo.reset()
        compiled = torch.compile(m, backend="zeroquant", options=options)
        with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False):
            out, (code,) = run_and_get_code(lambda: compiled(input_ids=ids, use_cache=False).logits)
        head = next(d for d in zq_compile.recent_reports()[-1].decisions if d.module == "lm_head")
        assert "8 outlier input channel(s)" in head.reason, head.reason
        got[name] = (out, code)
    (unrolled, code), (reduced, reduced_code) = got["unrolled"], got["reduced"]
    assert "index_select_linear_w8a8_mul_sum" in reduced_code  # the reduction kernel (the check can fail)
    assert "_sum_" not in code and "index_select" in code
    assert torch.allclose(unrolled, reduced, rtol=1e-5, atol=1e-5), (unrolled - reduced).abs().max()
