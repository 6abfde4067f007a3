"""kept_decode_w8a16: in decode-sized graphs the linears keep_float leaves float read INT8
weights (w8a16); at prefill sizes they stay float. The kept linear here is a head kept float by
heads="float" (the default, "outliers", quantizes it)."""

import pytest
import torch

import zq_compile
import zq_compile.codegen.cpu.select as select
from tests.passes.test_kept_linear_bf16 import WithHead, _float_linears, _prepare
from zq_compile.metrics import sqnr_db


@pytest.mark.parametrize("rows", [1, 13, select.SMALL_M])
def test_a_kept_head_reads_int8_weights_in_a_decode_step(rows):
    torch.manual_seed(0)
    model, x = WithHead().eval(), torch.randn(1, rows, 64)
    prepared, out = _prepare(model, x, keep_float="auto", heads="float")
    assert prepared.report.pass_counts["kept_decode_w8a16"] == 1
    head = next(d for d in prepared.report.decisions if d.module == "lm_head")
    assert head.scheme == "w8a16" and "lm_head / embedding-tied" in head.reason
    assert "kept_decode_w8a16: " in head.reason
    assert head.quant_bytes < head.float_bytes / 3  # INT8 weight + one scale per row
    assert _float_linears(prepared.gm) == []
    with torch.no_grad():
        ref = model(x)
    assert out.dtype == ref.dtype and sqnr_db(ref, out) > 30


def test_prefill_sized_graphs_keep_the_head_float():
    torch.manual_seed(0)
    prepared, _ = _prepare(WithHead().eval(), torch.randn(1, select.SMALL_M + 1, 64), keep_float="auto", heads="float")
    assert prepared.report.pass_counts["kept_decode_w8a16"] == 0
    head = next(d for d in prepared.report.decisions if d.module == "lm_head")
    assert head.scheme is None and "kept_decode_w8a16" not in head.reason


def test_switched_off_by_name_the_decode_head_stays_float():
    torch.manual_seed(0)
    prepared, _ = _prepare(WithHead().eval(), torch.randn(1, 1, 64), keep_float="auto", heads="float",
                           disable_passes=("kept_decode_w8a16",))
    assert "kept_decode_w8a16" in prepared.report.disabled_passes
    head = next(d for d in prepared.report.decisions if d.module == "lm_head")
    assert head.scheme is None and _float_linears(prepared.gm) == [torch.float32]


def test_a_fp16_model_decode_head_is_w8a16_too():
    torch.manual_seed(0)
    model = WithHead().eval().half()
    x = torch.randn(1, 1, 64, dtype=torch.float16)
    prepared, out = _prepare(model, x, keep_float="auto", heads="float")
    head = next(d for d in prepared.report.decisions if d.module == "lm_head")
    assert head.scheme == "w8a16" and out.dtype == torch.float16
    with torch.no_grad():
        assert sqnr_db(model(x).float(), out.float()) > 25


def test_under_release_the_decode_graph_then_the_prefill_graph_both_read_the_int8_head():
    """Whichever graph compiles first, a kept head is w8a16 under release; the prefill graph that
    compiles after its float weight was freed takes the stored INT8 weight."""
    import zq_compile

    torch.manual_seed(0)
    model = WithHead().eval()
    x = torch.randn(1, 24, 64)
    with torch.no_grad():
        ref = model(x)  # before compiling: release frees the float weights
    config = {"keep_float": "auto", "heads": "float", "smooth": False, "release_float_weights": True}
    compiled = torch.compile(model, backend="zeroquant", options=config, dynamic=False)
    with torch.no_grad():
        compiled(torch.randn(1, 1, 64))  # decode-sized first
        head = next(d for d in zq_compile.recent_reports()[-1].decisions if d.module == "lm_head")
        assert head.scheme == "w8a16"
        assert zq_compile.store.is_released(model.lm_head.weight)
        out = compiled(x)  # prefill-sized
    head = next(d for d in zq_compile.recent_reports()[-1].decisions if d.module == "lm_head")
    assert head.scheme == "w8a16" and "release_float_weights" in head.reason
    assert sqnr_db(ref, out) > 25


def test_under_release_a_kept_head_is_int8_at_prefill_size_too_and_its_float_weight_is_freed():
    from zq_compile import store

    torch.manual_seed(0)
    model, x = WithHead().eval(), torch.randn(2, select.SMALL_M + 3, 64)
    with torch.no_grad():
        ref = model(x)
    compiled = zq_compile.compile(model, {"keep_float": "auto", "heads": "float", "smooth": False,
                                          "release_float_weights": True})
    with torch.inference_mode():
        out = compiled(x)
    report = compiled.zq_reports[0]
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert head.scheme == "w8a16" and "release_float_weights: INT8 weights" in head.reason
    assert store.is_released(model.lm_head.weight)
    assert sqnr_db(ref, out) > 30


def test_without_release_the_prefill_head_keeps_its_float_weight():
    from zq_compile import store

    torch.manual_seed(0)
    model, x = WithHead().eval(), torch.randn(2, select.SMALL_M + 3, 64)
    compiled = zq_compile.compile(model, {"keep_float": "auto", "heads": "float", "smooth": False})
    with torch.inference_mode():
        compiled(x)
    head = next(d for d in compiled.zq_reports[0].decisions if d.module == "lm_head")
    assert head.scheme is None and not store.is_released(model.lm_head.weight)


@pytest.mark.slow
def test_under_release_a_tied_head_kept_by_the_policy_shares_its_int8_rows_with_the_embedding():
    """GPT-2 under w4a16: its tied head is kept by the policy (INT4 heads get no outlier
    treatment); with release it is w8a16 in the prefill graph too, the embedding gathers its int8
    rows, and the tied float table is freed."""
    from tests.models.tiny import model_output, tiny_model
    from zq_compile import store

    model = tiny_model("gpt2")
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model_output(model(ids))
        compiled = zq_compile.compile(model, {"preset": "w4a16", "release_float_weights": True})
        out = model_output(compiled(ids))
    report = compiled.zq_reports[0]
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert head.scheme == "w8a16", head.reason
    assert report.pass_counts["quantize_embedding"] == 2  # the token table (tied) and the positions
    assert any("transformer.wte gathers its rows from its tied head's int8 weight" in n for n in report.notes)
    assert store.is_released(model.lm_head.weight) and model.transformer.wte.weight is model.lm_head.weight
    assert sqnr_db(ref, out) > 12
