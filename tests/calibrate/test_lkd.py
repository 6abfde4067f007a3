"""LKD on tiny Hugging Face models (random weights): the mechanics, not accuracy claims (those
are measured on real models by bench/lkd_accuracy.py)."""

import pytest
import torch

from tests.models.tiny import tiny_model
from zq_compile.calibrate.blocks import find_blocks
from zq_compile.calibrate.fake_quant import preset_rule
from zq_compile.calibrate.lkd import run_lkd
from zq_compile.calibrate.lkd_data import calibration_batches
from zq_compile.config import LkdConfig, ZeroQuantConfig

W48 = preset_rule("w4/8a8")
SMALL = {"steps": 1, "lr": 1e-5, "samples": 4, "batch": 2, "seq": 16, "progress": False}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind, path", [("bert", "encoder.layer"), ("gpt2", "transformer.h"), ("llama", "model.layers")])
def test_blocks_found_generically(kind, path):
    blocks = find_blocks(tiny_model(kind))
    assert blocks.path == path and len(blocks) == 2


def test_blocks_override_and_errors():
    m = tiny_model("llama")
    assert find_blocks(m, "model.layers").modules[1] is m.model.layers[1]
    with pytest.raises(ValueError, match="blocks='model.nope'"):
        find_blocks(m, "model.nope")
    with pytest.raises(ValueError, match="blocks='model.norm'"):
        find_blocks(m, "model.norm")
    with pytest.raises(ValueError, match="^model: no repeated blocks"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4)))


def test_one_step_lowers_each_blocks_loss_and_touches_nothing_else():
    m = tiny_model("llama")
    before = _state(m)
    report = run_lkd(m, None, SMALL, spec_for=W48)
    assert [r.name for r in report.results] == ["model.layers.0", "model.layers.1"]
    for r in report.results:
        assert r.linears == 7
        assert r.kept == "trained" and r.loss_after < r.loss_before, r
    after = _state(m)
    for name, value in before.items():
        if name.startswith("model.layers."):
            continue
        assert torch.equal(after[name], value), name  # embeddings, final norm, lm_head untouched
    changed = [n for n in before if n.startswith("model.layers.") and not torch.equal(after[n], before[n])]
    assert any(".mlp." in n for n in changed) and any(".self_attn." in n for n in changed)
    assert any("layernorm" in n for n in changed)  # all of a block's parameters train, norms too


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_other_architectures_train(kind):
    m = tiny_model(kind)
    report = run_lkd(m, None, {**SMALL, "lr": 1e-4}, spec_for=W48)
    assert len(report.results) == 2 and all(r.loss_before > 0 and r.linears > 0 for r in report.results)
    assert any(r.kept == "trained" for r in report.results)


def test_same_seed_same_weights_other_seed_other_weights():
    runs = []
    for seed in (3, 3, 4):
        m = tiny_model("llama")
        run_lkd(m, None, {**SMALL, "seed": seed, "samples": 2, "seq": 8}, spec_for=W48)
        runs.append(_state(m))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_error_mid_way_restores_the_weights():
    m = tiny_model("llama")
    before = _state(m)

    def spec_for(path):  # the second block's scheme cannot be resolved: fails after block 0 trained
        if path.startswith("model.layers.1."):
            raise RuntimeError("no scheme for " + path)
        return W48(path)

    with pytest.raises(RuntimeError, match="no scheme for model.layers.1"):
        run_lkd(m, None, SMALL, spec_for=spec_for)
    after = _state(m)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_user_data_forms_are_batched_alike():
    m = tiny_model("llama")
    lkd = LkdConfig(**SMALL)
    ids = torch.randint(0, 1000, (5, 16), generator=torch.Generator().manual_seed(0))
    for data in (ids, {"input_ids": ids}, torch.utils.data.DataLoader(ids, batch_size=2)):
        batches = calibration_batches(m, lkd, data)
        got = torch.cat([(a[0] if a else kw["input_ids"]) for a, kw in batches])
        assert torch.equal(got, ids[:4]), type(data)  # at most lkd.samples sequences
        assert all(kw["use_cache"] is False for _, kw in batches)  # no KV cache filled by the blocks
    listed = [{"input_ids": ids[:2]}, {"input_ids": ids[2:3]}]
    assert [kw["input_ids"].shape[0] for _, kw in calibration_batches(m, lkd, listed)] == [2, 1]
    rand = calibration_batches(m, lkd)
    assert len(rand) == 2 and rand[0][1]["input_ids"].shape == (2, 16)
    assert torch.equal(rand[1][1]["input_ids"], calibration_batches(m, lkd)[1][1]["input_ids"])  # seeded
    report = run_lkd(m, None, SMALL, data=listed, spec_for=W48)
    assert report.samples == 3 and report.batches == 2 and report.data == "user list"


def test_generated_data_is_the_models_own_text_seeded_and_full_length():
    m = tiny_model("llama")
    with torch.no_grad():  # a random-weight model is near-flat: sharpen it so sampling shows
        m.lm_head.weight.mul_(300)
    lkd = LkdConfig(**{**SMALL, "data": "generated"})
    state = torch.random.get_rng_state()
    batches = calibration_batches(m, lkd)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is not drawn from
    ids = torch.cat([kw["input_ids"] for _, kw in batches])
    assert ids.shape == (4, 16) and int(ids.min()) >= 0 and int(ids.max()) < 1000
    assert torch.equal(ids, torch.cat([kw["input_ids"] for _, kw in calibration_batches(m, lkd)]))
    other = torch.cat([kw["input_ids"] for _, kw in calibration_batches(m, LkdConfig(**{**SMALL, "data": "generated", "seed": 1}))])
    assert not torch.equal(ids[:, 1:], other[:, 1:])
    # the continuation is sampled from the model: each token has non-negligible probability under it
    with torch.no_grad():
        logp = torch.log_softmax(m(input_ids=ids, use_cache=False).logits[:, :-1].float(), -1)
    chosen = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    assert float(chosen.exp().mean()) > 50 / 1000  # uniform ids would score 1 / 1000
    report = run_lkd(m, None, {**SMALL, "data": "generated"}, spec_for=W48)
    assert report.data == "the model's own text from random first tokens" and report.samples == 4
    with pytest.raises(ValueError, match="^lkd.data: 'generated' needs a model that can generate"):
        run_lkd(tiny_model("bert"), None, {**SMALL, "data": "generated"}, spec_for=W48)


def test_text_data_with_a_tokenizer():
    from transformers import AutoTokenizer

    from zq_compile.models import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    m = tiny_model("bert")
    text = "the quick brown fox jumps over the lazy dog. " * 20
    with pytest.raises(ValueError, match="^tokenizer"):
        run_lkd(m, None, SMALL, data=text, spec_for=W48)
    # MiniLM's vocabulary is larger than the tiny model's: the ids are refused, naming data
    with pytest.raises(ValueError, match=r"data.*token ids must lie in \[0, 1000\)"):
        run_lkd(m, None, SMALL, data=text, tokenizer=tok, spec_for=W48)
    m.resize_token_embeddings(tok.vocab_size)
    report = run_lkd(m, None, SMALL, data=[text], tokenizer=tok, spec_for=W48)
    assert report.data == "user text" and report.samples == 4


@pytest.mark.parametrize("data, match", [
    ([], "^data: no batches"),
    (torch.zeros(0, 16, dtype=torch.long), "^data: no samples"),
    (torch.zeros(16, dtype=torch.long), r"^data: token ids must be \[samples, seq\]"),
    (torch.full((2, 8), 5000), r"^data: token ids must lie in \[0, 1000\)"),
    ({"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.ones(3, 8)}, "^data: tensors must share"),
    (3.5, "^data: a float is not calibration data"),
    ("", "^data: the text is empty"),
])
def test_bad_data_names_the_argument(data, match):
    m = tiny_model("llama")
    before = _state(m)
    with pytest.raises(ValueError, match=match):
        run_lkd(m, None, SMALL, data=data, tokenizer=(lambda t, **kw: {"input_ids": [1, 2]}), spec_for=W48)
    assert all(torch.equal(v, before[k]) for k, v in _state(m).items())


def test_no_blocks_names_model():
    with pytest.raises(ValueError, match="^model: no repeated blocks"):
        run_lkd(torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4)), None, SMALL)


def test_blocks_that_do_not_run_are_refused():
    m = tiny_model("llama")
    m.model.unused = torch.nn.ModuleList([torch.nn.Linear(64, 64) for _ in range(2)])
    with pytest.raises(ValueError, match="did not run"):
        run_lkd(m, None, {**SMALL, "blocks": "model.unused"}, spec_for=W48)


def test_lkd_config_validation_and_json():
    c = ZeroQuantConfig(lkd={"steps": 5, "lr": 1e-4, "data": "wikipedia", "blocks": "model.layers"})
    assert isinstance(c.lkd, LkdConfig) and c.lkd.steps == 5
    assert ZeroQuantConfig.from_json(c.to_json()) == c
    assert ZeroQuantConfig(lkd=True).lkd == LkdConfig() and ZeroQuantConfig(lkd=False).lkd is None
    for bad, field in (({"steps": 0}, "lkd.steps"), ({"lr": -1.0}, "lkd.lr"), ({"data": "web"}, "lkd.data"), ({"schedule": "cosine"}, "lkd.schedule"),
                       ({"seq": True}, "lkd.seq"), ({"stepz": 1}, "unknown lkd field")):
        with pytest.raises(ValueError, match=field):
            ZeroQuantConfig(lkd=bad)


def test_runs_under_inference_mode_on_a_copy_made_there():
    """The bench calibrates inside torch.inference_mode() on a deep copy made there, whose
    parameters are inference tensors."""
    import copy

    src = tiny_model("llama")
    with torch.inference_mode():
        m = copy.deepcopy(src)
        assert next(m.parameters()).is_inference()
        report = run_lkd(m, None, SMALL, spec_for=W48)
    assert all(r.kept == "trained" for r in report.results)
    assert any(not torch.equal(a, b) for a, b in zip(m.parameters(), src.parameters()))
