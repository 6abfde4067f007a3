"""Calibration inputs for the contenders that fix static activation scales (PT2E static): drawn
from data the bench never measures, in the shapes of the measured inputs.

- Sentences (MiniLM): sentences of English Wikipedia prose, taken from the end of the text (the
  causal LM's perplexity reads its beginning); the measured sentences are Pang & Lee's.
- Causal LM windows: the token windows that follow the ones perplexity and timing read.
- Random-weight models and the linear microbenchmark: random draws from other seeds.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch

#: batches of the measured shape per calibration (static scales need more than one batch to
#: see a realistic range; each is one forward through the observers)
BATCHES = 4

Calibration = Callable[[dict], list[dict]]


@functools.cache
def wikipedia_sentences(count: int = 512, min_words: int = 5) -> tuple[str, ...]:
    """``count`` sentences from the end of ``zq_compile.data.wikipedia_prose``, in text order."""
    from zq_compile.data import wikipedia_prose

    found: list[str] = []
    for para in reversed(wikipedia_prose()):
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", para) if len(s.split()) >= min_words]
        found = sentences + found
        if len(found) >= count:
            break
    return tuple(found[-count:])


def sentences(tokenizer, texts: tuple[str, ...] | list[str], vocab: int) -> Calibration:
    """Batches of ``texts`` tokenized to the measured (batch, seq)."""
    from zq_compile.benchmarks.harness import encoder_inputs

    def calibration(inputs: dict) -> list[dict]:
        batch, seq = inputs["input_ids"].shape
        if len(texts) < BATCHES * batch:
            raise ValueError(f"calibration needs {BATCHES * batch} sentences, has {len(texts)}")
        return [encoder_inputs(tokenizer, list(texts[i * batch:(i + 1) * batch]), batch, seq, vocab)
                for i in range(BATCHES)]

    return calibration


def random_ids(vocab: int, first_seed: int = 1) -> Calibration:
    """Random ids as ``harness.encoder_inputs`` draws them for the random-weight models, from
    seeds other than the measured one (0)."""
    from zq_compile.benchmarks.harness import encoder_inputs

    def calibration(inputs: dict) -> list[dict]:
        batch, seq = inputs["input_ids"].shape
        return [encoder_inputs(None, None, batch, seq, vocab, seed=first_seed + i) for i in range(BATCHES)]

    return calibration


def for_encoder(tokenizer, vocab: int) -> Calibration:
    """An encoder's calibration: Wikipedia sentences where it has a tokenizer, else random ids
    from other seeds than the measured ones."""
    return sentences(tokenizer, wikipedia_sentences(), vocab) if tokenizer is not None else random_ids(vocab)


def token_stream(ids: torch.Tensor) -> Calibration:
    """Consecutive slices of ``ids`` (token ids never measured) in the measured ``input_ids`` shape."""
    flat = ids.flatten()

    def calibration(inputs: dict) -> list[dict]:
        shape = inputs["input_ids"].shape
        n = shape.numel()
        if flat.numel() < n:
            raise ValueError(f"calibration needs {n} tokens, has {flat.numel()}")
        count = min(BATCHES, flat.numel() // n)
        return [{"input_ids": flat[i * n:(i + 1) * n].view(shape)} for i in range(count)]

    return calibration


def random_tensors(first_seed: int = 1) -> Calibration:
    """Standard-normal tensors (the linear microbenchmark's activations) from other seeds."""

    def calibration(inputs: dict) -> list[dict]:
        out = []
        for i in range(BATCHES):
            gen = torch.Generator().manual_seed(first_seed + i)
            out.append({k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in inputs.items()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()})
        return out

    return calibration
