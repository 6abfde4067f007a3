"""quantize_embedding under release_float_weights: a table tied to an int8 head is held once.

The head's int8 weight (one scale per row) is the table's rows, W * s with its outlier columns
in float beside it at most; the gather rebuilds the rows from those constants, the head's weight
stays plain int8 and oneDNN reorders it at each call instead of keeping a second copy."""

import dataclasses

import pytest
import torch
import torch.nn as nn

import zq_compile
from zq_compile import ZeroQuantConfig, store
from zq_compile.codegen.cpu import kernels
from zq_compile.metrics import sqnr_db
from tests.models.tiny import model_output, tiny_model

pytestmark = pytest.mark.skipif(kernels.KERNELS["onednn"].unavailable_reason() is not None, reason="needs oneDNN")

RELEASE = ZeroQuantConfig(cpu_kernel="onednn", keep_float=0, release_float_weights=True)
SHARED = "gathers its rows from its tied head's int8 weight"


class TiedLM(nn.Module):
    """An embedding, one block and a head tied to the table; returns the gathered rows too, so
    the test reads what the compiled gather produced."""

    def __init__(self, vocab=512, width=64):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return h, self.head(self.norm(h + torch.tanh(self.mix(h))))


def _tied(seed=0):
    torch.manual_seed(seed)
    model = TiedLM().eval()
    with torch.no_grad():  # a few wide channels, so smoothing and the outlier columns matter
        model.emb.weight[:, :4] *= 8
    return model


def _ids(b=2, s=24, seed=0, vocab=512):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _notes(compiled) -> str:
    return " ".join(n for r in compiled.zq_reports for n in r.notes)


def _int8_tensors_kept_for(weight) -> list[torch.Tensor]:
    return [t for e in store.entries(weight).values() for t in e.tensors.values()
            if isinstance(t, torch.Tensor) and t.dtype == torch.int8]


@pytest.mark.parametrize("smooth", [False, {"alpha": 0.5}])
@pytest.mark.parametrize("heads", ["outliers", "split"])
def test_the_gather_reads_the_heads_int8_rows_where_their_layout_allows(smooth, heads):
    """Smoothed or not, outlier columns or none: the rows the compiled gather returns are the
    table's within int8 error (a missing division by s or a missing outlier column costs tens
    of dB here), and the table is held once. Split columns (another layout) keep their own rows."""
    model, twin = _tied(), _tied()
    weight = model.emb.weight
    ids = _ids()
    with torch.inference_mode():
        want_rows, want_logits = twin(ids)
        torch._dynamo.reset()
        c = zq_compile.compile(model, dataclasses.replace(RELEASE, smooth=smooth, heads=heads))
        rows, logits = c(ids)
    shared = heads == "outliers"
    assert (SHARED in _notes(c)) == shared, _notes(c)
    assert sqnr_db(want_rows, rows) > 30, sqnr_db(want_rows, rows)
    assert sqnr_db(want_logits, logits) > 20, sqnr_db(want_logits, logits)
    assert weight.untyped_storage().nbytes() == 0  # released
    int8 = _int8_tensors_kept_for(weight)
    if shared:
        assert len(int8) == 1 and int8[0].shape == (512, 64)
        assert int8[0] in kernels._PACK_PER_CALL and int8[0] not in kernels._ONEDNN_PACKED
    else:
        assert len(int8) == 2  # the head's (laid out anew) and the gather's own rows


def test_the_shared_head_matches_the_reference_kernel_on_the_same_int8_table():
    """oneDNN reordering the plain table at each call computes what the exact reference kernel
    computes from it (and twice the same)."""
    outs = {}
    for kernel, target in (("onednn", "cpu"), ("reference", "reference")):
        with torch.inference_mode():
            torch._dynamo.reset()
            # fp32 between ops on both sides: on CPUs with native bf16 the cpu target would store
            # bf16 (activations="auto"), 52 dB from the fp32 reference on an AMX Xeon
            c = zq_compile.compile(_tied(), dataclasses.replace(RELEASE, target=target, smooth=False,
                                                                activations="fp32"))
            outs[kernel] = [c(_ids())[1] for _ in range(2)]
            assert SHARED in _notes(c)
    assert torch.equal(outs["onednn"][0], outs["onednn"][1])
    assert sqnr_db(outs["reference"][0], outs["onednn"][0]) > 60


def test_a_decode_step_after_a_shared_prefill_runs():
    """The prefill graph shares the table and frees it; a decode step (1 token) compiled after it
    must find its rows in the head's constants too. Before: the decode graph, whose head ran an
    int8 GEMM, asked for rows of its own, which could not be made from the freed table
    (ReleasedWeightError in SmolLM2's generate())."""
    model, twin = tiny_model("gpt2"), tiny_model("gpt2")
    step = _ids(1, 1, vocab=1000)
    with torch.inference_mode():
        torch._dynamo.reset()
        c = zq_compile.compile(model, RELEASE)
        c(_ids(2, 24, vocab=1000))
        got = model_output(c(step))
        want = model_output(twin(step))
    assert [SHARED in " ".join(r.notes) for r in c.zq_reports] == [True, True]
    assert "oneDNN reorders it per call" in _notes(c)  # cpu_kernel="onednn" asked for that GEMM
    assert sqnr_db(want, got) > 20, sqnr_db(want, got)


def test_in_a_decode_graph_of_int8_gemms_the_tied_head_alone_runs_weight_only(monkeypatch):
    """With the kernel left to us, a decode-sized graph whose GEMMs stay int8 (the weight-only
    race lost) runs its tied head weight-only on the plain table rather than reordering the
    whole table at every step; its other linears keep the int8 GEMM."""
    monkeypatch.setattr("zq_compile.passes.decode_weight_only._race", lambda *args: None)
    model, twin = tiny_model("gpt2"), tiny_model("gpt2")
    step = _ids(1, 1, vocab=1000)
    config = dataclasses.replace(RELEASE, cpu_kernel="auto")
    with torch.inference_mode():
        torch._dynamo.reset()
        c = zq_compile.compile(model, config)
        got = model_output(c(step))
        again = model_output(c(_ids(1, 1, seed=4, vocab=1000)))
        want, want_again = model_output(twin(step)), model_output(twin(_ids(1, 1, seed=4, vocab=1000)))
    report = c.zq_reports[0]
    head = next(d for d in report.decisions if d.module == "lm_head")
    assert "the tied head of a decode-sized graph, weight-only" in head.reason, head.reason
    others = [d for d in report.decisions if d.module != "lm_head" and d.scheme]
    assert others and not any("weight-only" in d.reason for d in others)
    assert "the head runs weight-only on it" in _notes(c)
    assert sqnr_db(want, got) > 20 and sqnr_db(want_again, again) > 20


def test_gpt2_prefill_then_decode_and_a_second_module_through_one_function():
    """GPT-2's wte through a prefill graph (shared) and a decode graph (own rows), then a second
    model through the same compiled function: the binding re-quantizes its head's rows plain
    for the gather, and each model gets its own logits."""
    a, b = tiny_model("gpt2", seed=0), tiny_model("gpt2", seed=1)
    ref_a, ref_b = tiny_model("gpt2", seed=0), tiny_model("gpt2", seed=1)
    fn = torch.compile(lambda m, ids: model_output(m(ids)), backend="zeroquant",
                       options=dataclasses.replace(RELEASE, release_float_weights=False))
    torch._dynamo.reset()
    with torch.inference_mode():
        fn(a, _ids(2, 24, vocab=1000))
    # release_float_weights=False above: sharing applies only under release, so nothing shared
    assert not any(t in kernels._PACK_PER_CALL for t in _int8_tensors_kept_for(a.transformer.wte.weight))
    torch._dynamo.reset()
    fn = torch.compile(lambda m, ids: model_output(m(ids)), backend="zeroquant", options=RELEASE)
    with torch.inference_mode():
        got_a = fn(a, _ids(2, 24, vocab=1000))
        step_a = fn(a, _ids(1, 1, vocab=1000))
        got_b = fn(b, _ids(2, 24, vocab=1000))
        want_a, want_b = (model_output(r(_ids(2, 24, vocab=1000))) for r in (ref_a, ref_b))
        want_step = model_output(ref_a(_ids(1, 1, vocab=1000)))
    assert sqnr_db(want_a, got_a) > 20 and sqnr_db(want_b, got_b) > 20, (sqnr_db(want_a, got_a), sqnr_db(want_b, got_b))
    assert sqnr_db(want_step, step_a) > 20
    assert sqnr_db(want_a, got_b) < 5  # b's own weights, not a's
    held_b = _int8_tensors_kept_for(b.transformer.wte.weight)
    assert any(t in kernels._PACK_PER_CALL for t in held_b)


def test_save_and_load_round_trip_the_shared_table(tmp_path):
    """zq_compile.save writes the one int8 table (plain, not a handle's zeros); a fresh model
    loaded from it compiles to the same outputs bit for bit, sharing again."""
    model = _tied()
    with torch.inference_mode():
        torch._dynamo.reset()
        first = zq_compile.compile(model, RELEASE)(_ids())
    zq_compile.save(model, tmp_path / "w.safetensors")
    fresh = _tied()
    config = zq_compile.load(tmp_path / "w.safetensors", fresh)
    with torch.inference_mode():
        torch._dynamo.reset()
        c = zq_compile.compile(fresh, config)
        again = c(_ids())
    assert SHARED in _notes(c)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tables_are_shared_too(dtype):
    """The head's scales, outlier columns and smoothing scales are read in fp32 and the rows
    come out in the model's dtype."""
    model, twin = _tied().to(dtype), _tied().to(dtype)
    with torch.inference_mode():
        torch._dynamo.reset()
        c = zq_compile.compile(model, dataclasses.replace(RELEASE, smooth={"alpha": 0.5}))
        rows, logits = c(_ids())
        want_rows, want_logits = twin(_ids())
    assert SHARED in _notes(c) and rows.dtype == dtype and logits.dtype == dtype
    assert sqnr_db(want_rows.float(), rows.float()) > 30
    assert sqnr_db(want_logits.float(), logits.float()) > 20
