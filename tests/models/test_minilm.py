"""MiniLM-L6 with its real weights on real sentences: the accuracy the demo and bench claim."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zq_compile import recent_reports
from zq_compile.data import polarity_sentences
from zq_compile.models import load_minilm, mean_pool

pytestmark = pytest.mark.slow


def test_w8a8_sentence_embeddings_keep_cosine_0995():
    model, tok = load_minilm()
    texts = [s for s, _ in polarity_sentences()][::5]  # 40 sentences, both labels
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        # the int8 pipeline is what this test measures: where the pipeline race would pick bf16
        # (AMX Xeons), the default config would run that instead
        compiled = torch.compile(model, backend="zeroquant", options={"pipeline_race": "off"})
        out = mean_pool(compiled(**enc).last_hidden_state, enc["attention_mask"])
    report = recent_reports()[-1]
    assert len(report.decisions) == 37  # 6 layers x 6 + pooler
    # any not quantized was kept float by the accuracy policy (keep_float="auto"), with its reason
    assert all(d.reason.startswith("kept float") for d in report.skipped), report.summary()
    cos = torch.nn.functional.cosine_similarity(out, ref)
    assert cos.mean().item() >= 0.995, cos
    assert cos.min().item() >= 0.98, cos


def test_demo_command_prints_the_table(tmp_path):
    exe = Path(sys.executable).with_name("zeroquant")
    out_json = tmp_path / "demo.json"
    done = subprocess.run(
        [str(exe), "demo", "--batch", "4", "--seq", "32", "--runs", "1", "--json", str(out_json)],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for needle in ("eager fp32", "torch.compile fp32", "zeroquant w8a8", "cosine vs fp32", "MiB fp32 ->"):
        assert needle in done.stdout
    import json

    result = json.loads(out_json.read_text())
    rows = {row["contender"]: row for row in result["rows"]}
    assert rows["zeroquant w8a8"]["cosine"] > 0.99
    # the strongest float alternative of this CPU is in the first table
    from zq_compile.codegen.cpu.select import has_bf16

    assert ("torch.compile bf16+freezing" in rows) == has_bf16()
    assert ("torch.compile fp32+freezing" in rows) == (not has_bf16())
    assert "CPU class" in done.stdout and result["fastest_float"] in rows
