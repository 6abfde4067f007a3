"""quantize_embedding: under release_float_weights, embedding tables are gathered as int8 rows
and their float tables (a tied head's weight included) are freed; elsewhere nothing changes."""

import dataclasses

import pytest
import torch

import zq_compile
from zq_compile import ReleasedWeightError, ZeroQuantConfig
from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.metrics import sqnr_db
from zq_compile.passes.quantize_embedding import gather_rows, quantize_rows
from tests.models.tiny import model_output, tiny_model

pytestmark = pytest.mark.skipif(KERNELS["onednn"].unavailable_reason() is not None, reason="needs oneDNN")

KEEP = ZeroQuantConfig(cpu_kernel="onednn", keep_float=0)  # keep_float=0: the tied head is quantized
RELEASE = dataclasses.replace(KEEP, release_float_weights=True)


def _ids(b=2, s=12, seed=0):
    return torch.randint(0, 1000, (b, s), generator=torch.Generator().manual_seed(seed))


def _compiled(model, config):
    torch._dynamo.reset()
    return zq_compile.compile(model, config)


def _notes(compiled) -> str:
    return " ".join(n for r in compiled.zq_reports for n in r.notes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (13, 7), (1000, 67)])
def test_rows_round_trip_within_half_a_step_and_zero_rows_stay_zero(shape, dtype):
    table = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    table[0] = 0
    made = quantize_rows(table)
    assert made["rows"].dtype == torch.int8 and made["scales"].shape == (shape[0], 1)
    ids = torch.arange(shape[0]).flip(0)[None]
    got = gather_rows(ids, made["rows"], made["scales"], torch.float32)[0].flip(0)
    step = table.float().abs().amax(dim=1, keepdim=True) / 127
    assert ((got - table.float()).abs() <= step / 2 + 1e-6).all()
    assert (got[0] == 0).all()
    assert gather_rows(ids, made["rows"], made["scales"], dtype).dtype == dtype


def test_a_tied_table_is_gathered_from_int8_rows_and_freed():
    """GPT-2: wte is lm_head's weight. With the gather reading int8 rows, nothing reads the
    float table any more, so release frees it (before this pass it was kept: 'also read in
    floating point'); the output stays within int8 error of the float-table compile."""
    kept, released = tiny_model("gpt2"), tiny_model("gpt2")
    with torch.inference_mode():
        ref = model_output(kept(_ids()))
        want = model_output(_compiled(kept, KEEP)(_ids()))
        c = _compiled(released, RELEASE)
        got = model_output(c(_ids()))
    assert c.zq_reports[0].pass_counts["quantize_embedding"] == 2  # token and position tables
    assert released.transformer.wte.weight.untyped_storage().nbytes() == 0
    assert released.transformer.wpe.weight.untyped_storage().nbytes() == 0
    # wte's rows come from the tied head's int8 weight (test_tied_table_shared.py), wpe has its own
    assert "transformer.wte gathers its rows from its tied head's int8 weight" in _notes(c)
    assert "transformer.wpe reads int8 rows of its (128, 64) table" in _notes(c)
    assert sqnr_db(ref, got) > sqnr_db(ref, want) - 1.5, (sqnr_db(ref, got), sqnr_db(ref, want))
    with torch.inference_mode():  # a new shape recompiles from the kept rows: no float table left
        other = model_output(c(_ids(1, 5, 3)))
    assert other.shape == (1, 5, 1000) and torch.isfinite(other).all()


def test_both_owners_of_a_tied_table_refuse_eager_use():
    model = tiny_model("gpt2")
    with torch.inference_mode():
        _compiled(model, RELEASE)(_ids())
    for module, arg in ((model.transformer.wte, _ids()), (model.lm_head, torch.randn(2, 64))):
        with pytest.raises(ReleasedWeightError, match="release_float_weights=True"):
            module(arg)


def test_without_release_nothing_changes():
    model = tiny_model("gpt2")
    with torch.inference_mode():
        c = _compiled(model, KEEP)
        c(_ids())
    assert c.zq_reports[0].pass_counts["quantize_embedding"] == 0
    assert model.transformer.wte.weight.untyped_storage().nbytes() > 0


def test_a_table_a_float_head_still_reads_is_left_float_with_the_reason():
    """heads="float" keeps GPT-2's tied head float; with kept_decode_w8a16 off (under release it
    makes a kept head w8a16, whose rows the gather then reads) the head reads the table in float:
    it cannot be freed, so an int8 copy would only add memory."""
    model = tiny_model("gpt2")
    config = dataclasses.replace(RELEASE, keep_float="auto", heads="float", disable_passes=("kept_decode_w8a16",))
    with torch.inference_mode():
        c = _compiled(model, config)
        c(_ids())
    assert "transformer.wte left float: the table is also read in float" in _notes(c)
    assert model.transformer.wte.weight.untyped_storage().nbytes() > 0
    assert model.transformer.wpe.weight.untyped_storage().nbytes() == 0  # wpe is nobody's head


def test_switched_off_by_name():
    model = tiny_model("gpt2")
    with torch.inference_mode():
        c = _compiled(model, dataclasses.replace(RELEASE, disable_passes=("quantize_embedding",)))
        c(_ids())
    assert "quantize_embedding" in c.zq_reports[0].disabled_passes
    assert model.transformer.wte.weight.untyped_storage().nbytes() > 0


def test_untied_bert_tables_are_freed_and_save_load_round_trips(tmp_path):
    model = tiny_model("bert")
    with torch.inference_mode():
        first = model_output(_compiled(model, RELEASE)(_ids()))
    emb = model.embeddings
    assert all(t.weight.untyped_storage().nbytes() == 0
               for t in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings))
    zq_compile.save(model, tmp_path / "w.safetensors")
    fresh = tiny_model("bert")
    config = zq_compile.load(tmp_path / "w.safetensors", fresh)
    with torch.inference_mode():
        again = model_output(_compiled(fresh, config)(_ids()))
    assert torch.equal(first, again)
