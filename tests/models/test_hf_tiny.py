"""Hugging Face BERT, GPT-2 and Llama built from tiny configs (random weights): every linear is
rewritten, the compiled model tracks eager, and new shapes do not recompile per shape."""

import pytest
import torch

from tests.models.tiny import linear_module_count, model_output, tiny_model
from zq_compile import recent_reports
from zq_compile.codegen.cpu.select import has_bf16
from zq_compile.metrics import sqnr_db

pytestmark = pytest.mark.slow

#: Per scheme, SQNR (dB) of the compiled model's output against fp32 eager. Random tiny models
#: are easier than real ones (BERT's output is dominated by its embeddings): these guard against
#: breakage, the accuracy claims come from real weights.
SQNR_DB = {"w8a8": {"bert": 40, "gpt2": 28, "llama": 28}}


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_every_linear_rewritten_and_close_to_eager(kind):
    m = tiny_model(kind)
    c = torch.compile(m, backend="zeroquant")
    before = len(recent_reports())
    with torch.inference_mode():
        for batch, seq in [(3, 17), (2, 9), (5, 31)]:
            ids = torch.randint(0, 1000, (batch, seq), generator=torch.Generator().manual_seed(batch))
            ref = model_output(m(input_ids=ids))
            out = model_output(c(input_ids=ids))
            assert not torch.isnan(out).any()
            assert sqnr_db(ref, out) > SQNR_DB["w8a8"][kind], (batch, seq)
    reports = recent_reports()[before:]
    for i, report in enumerate(reports):
        assert len(report.decisions) == linear_module_count(m), report.summary()
        # the others are kept float by the accuracy policy (keep_float="auto"; heads are quantized
        # with their outlier channels in float by default)
        assert all(d.reason.startswith("kept float") for d in report.skipped), report.summary()
        # every attention call is accounted for: bf16 matmuls where the CPU has them in the
        # static first graph; the dynamic-shape graph keeps fp32 (its sequence length is unbounded)
        assert len(report.attention) == m.config.num_hidden_layers, report.summary()
        want = "bf16" if has_bf16() and i == 0 else "fp32"
        assert all(a.dtype == want for a in report.attention), report.summary()
        if i == 1 and has_bf16():
            assert all("dynamic" in a.reason for a in report.attention), report.summary()
    # first shape, then batch and sequence both change at once: one dynamic recompile, no more
    assert len(reports) == 2


def test_llama_with_static_kv_cache_matches_eager():
    """StaticCache writes k/v with index_copy_ inside the graph; those writes must survive."""
    from transformers import StaticCache

    m = tiny_model("llama")
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = m(input_ids=ids, use_cache=False).logits
        cache = StaticCache(config=m.config, max_cache_len=20)
        out = torch.compile(m, backend="zeroquant")(
            input_ids=ids, past_key_values=cache, cache_position=torch.arange(12), use_cache=True
        ).logits
    assert sqnr_db(ref, out) > SQNR_DB["w8a8"]["llama"]
    assert cache.layers[0].keys[:, :, :12].abs().sum() > 0
