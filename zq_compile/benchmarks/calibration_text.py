"""Calibration batches for the bench's zeroquant contenders, from text the bench never scores.

- SmolLM2 (perplexity on the first windows of the Wikipedia prose): the last 2 windows of 256
  tokens of that same prose, far past the scored ones.
- MiniLM (cosine and sentiment on the Pang & Lee sentences): 32 Wikipedia paragraphs, padded
  like the example batch.
- Random-weight models (speed only): the example batch itself.
"""

from __future__ import annotations

import functools

import torch

from zq_compile.benchmarks.contenders import BenchModel


@functools.lru_cache(maxsize=2)
def _smollm2_windows() -> torch.Tensor:
    from zq_compile.benchmarks.models import SMOLLM2_GGUF, smollm2_folder
    from zq_compile.data import wikipedia_prose
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=SMOLLM2_GGUF)
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids.flatten()
    return ids[-512:].view(2, 256)


def batches(bm: BenchModel, example: dict) -> tuple[list, str]:
    """(calibration batches, where they come from)."""
    if bm.name.startswith("SmolLM2"):
        return [{"input_ids": w[None]} for w in _smollm2_windows()], "the last 512 tokens of the Wikipedia prose"
    if bm.name.startswith("MiniLM"):
        from zq_compile.data import wikipedia_prose
        from zq_compile.models import load_minilm

        _, tok = load_minilm()
        seq = example["input_ids"].shape[1]
        enc = tok(wikipedia_prose()[:32], padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        return [dict(enc)], "32 Wikipedia paragraphs"
    return [dict(example)], "the example batch (random weights: speed only)"


def zeroquant_calibrated(options: dict, bm: BenchModel, example: dict):
    import zq_compile
    from zq_compile.config import ZeroQuantConfig

    config = ZeroQuantConfig(**options)
    data, _ = batches(bm, example)
    with torch.inference_mode():
        zq_compile.calibrate(bm.model, config, data)
    return zq_compile.compile(bm.model, config)
