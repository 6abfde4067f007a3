"""Outlier channel splitting of the heads (calibrate/split.py, smooth_outliers, rewrite_linear)."""

import pytest
import torch

import zq_compile
from tests.calibrate.test_smoothing import _ids, _logits, _prepared_logits, outlier_llama
from zq_compile.calibrate.split import SPLIT_STEP, extra_columns, split_for
from zq_compile.codegen.cpu.select import int8_weight_qmax
from zq_compile.metrics import sqnr_db


@pytest.mark.parametrize("k", [1, 13, 64, 576, 1025])
def test_split_is_exact_in_float_and_narrows_the_widest_channel(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(7, k, generator=g, dtype=torch.float64)
    absmax = x.abs().amax(0).float()
    absmax[k // 2] *= 50  # one channel far wider than the rest
    w = torch.randn(5, k, generator=g, dtype=torch.float64)
    split = split_for(absmax)
    assert split.extra == extra_columns(k) and split.extra % SPLIT_STEP == 0
    assert split.index.numel() == k + split.extra
    assert torch.equal(split.index, split.index.sort().values)  # each channel's copies side by side
    torch.testing.assert_close(split.x(x) @ split.w(w).T, x @ w.T, rtol=1e-6, atol=1e-6)  # 1/c in fp32
    after = (absmax * split.inv).max()
    assert after < absmax.max() and after >= absmax.max() / (split.extra + 1)


def test_split_is_deterministic_and_ignores_non_finite_statistics():
    a = torch.tensor([1.0, 9.0, float("nan"), 9.0, float("inf"), 2.0])
    one, two = split_for(a, extra=4), split_for(a.clone(), extra=4)
    assert torch.equal(one.index, two.index) and one.digest() == two.digest()
    # ties go to the lower channel; NaN / Inf channels are never split
    assert one.index.tolist() == [0, 1, 1, 1, 2, 3, 3, 3, 4, 5]


def _head_outlier_llama():
    """outlier_llama with a planted channel at the head's input too (the final norm's weight)."""
    m = outlier_llama()
    with torch.no_grad():
        m.model.norm.weight[5] *= 40.0
        m.lm_head.weight[:, 5] /= 40.0
    return m


def test_split_head_beats_the_plain_head_and_runs_quantized():
    m = _head_outlier_llama()
    ids = _ids(4)
    ref = _logits(m, ids)
    # Only the head quantized (the body skipped), so the figures are the head's; no smoothing,
    # and a dB floor no linear is under, so calibration runs but keeps nothing float.
    only_head = dict(skip=("model.layers.*",), smooth=False, keep_float=-100.0, heads="split")
    split, report = _prepared_logits(m, ids, **only_head)
    plain, plain_report = _prepared_logits(m, ids, **only_head, disable_passes=("smooth_outliers",))
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert head.quantized and "outlier channel copies (K 64 -> 96" in head.reason, head.reason
    plain_head = next(d for d in plain_report.decisions if d.module == "lm_head")
    assert plain_head.quantized and "outlier" not in plain_head.reason
    # the weights' grid caps what moving the activations' outliers can win: the narrow grid of
    # CPUs without VNNI (codegen/cpu/select.int8_weight_qmax) left +4.9 dB on an AVX2 EPYC
    gain = 6 if int8_weight_qmax() == 127 else 4
    assert sqnr_db(ref, split) >= sqnr_db(ref, plain) + gain, (sqnr_db(ref, split), sqnr_db(ref, plain))


def test_skip_keeps_the_head_float_and_unsplit():
    m = _head_outlier_llama()
    ids = _ids(5)
    _, report = _prepared_logits(m, ids, skip=("lm_head",), heads="split")
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert not head.quantized and "skip" in head.reason
    assert not any("outlier channel copies" in d.reason for d in report.decisions)


def test_weight_only_heads_are_not_split():
    m = _head_outlier_llama()
    _, report = _prepared_logits(m, _ids(6), preset="w8a16", heads="split")
    assert not any("outlier channel copies" in d.reason for d in report.decisions)


def compiled_head_in_prefill_and_decode(heads: str, says: str):
    """Calibrate, compile, run a prefill and one decode step: both track float (SQNR > 25 dB),
    and the head's treatment (``says``, in the calibration notes and both graphs' decisions) is
    the same in the two graphs, which share one calibration (the store key carries it)."""
    m = _head_outlier_llama()
    data = [{"input_ids": _ids(s, 2, 16), "use_cache": False} for s in (30, 31)]
    config = zq_compile.ZeroQuantConfig(heads=heads)
    report = zq_compile.calibrate(m, config, data)
    assert not report.kept_float or all(la.module != "lm_head" for la in report.kept_float)
    assert any(n.startswith("lm_head: ") and says in n for n in report.notes), report.notes
    compiled = zq_compile.compile(m, config)
    ids = _ids(7, 1, 12)
    with torch.no_grad():
        ref = m(input_ids=ids)
        out = compiled(input_ids=ids)
        step_ref = m(input_ids=ids[:, -1:], past_key_values=ref.past_key_values).logits
        step = compiled(input_ids=ids[:, -1:], past_key_values=out.past_key_values).logits
    assert sqnr_db(ref.logits, out.logits) > 25
    assert sqnr_db(step_ref, step) > 25
    found = [d for r in zq_compile.recent_reports()[-2:] for d in r.decisions if d.module == "lm_head"]
    assert len(found) == 2 and all(says in d.reason for d in found), [d.reason for d in found]


def test_compiled_split_head_serves_prefill_and_decode_from_one_calibration():
    compiled_head_in_prefill_and_decode("split", "outlier channel copies")


def test_heads_outliers_by_default_float_on_request_and_bad_values_refused():
    m = _head_outlier_llama()
    _, report = _prepared_logits(m, _ids(8))
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert head.quantized and "in float beside the int8 GEMM" in head.reason, head.reason
    _, report = _prepared_logits(m, _ids(8), heads="float")
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert not head.quantized and "lm_head / embedding-tied" in head.reason
    with pytest.raises(ValueError, match="heads"):
        zq_compile.ZeroQuantConfig(heads="int8")
    config = zq_compile.ZeroQuantConfig(heads="split")
    assert zq_compile.ZeroQuantConfig.from_json(config.to_json()) == config
