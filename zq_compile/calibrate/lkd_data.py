"""Calibration batches for LKD: what the model is called with while block inputs are recorded.

A batch is ``(args, kwargs)`` for ``model(*args, **kwargs)``. Accepted ``data``:

- None: ``lkd.data`` says where from: "random" token ids drawn uniformly from the vocabulary
  (seeded; the paper's setting without training data), "generated" (a causal LM writes its own
  text: a random first token, then sampled continuations; still no training data) or
  "wikipedia" (bundled prose, tokenized);
- a tensor: token ids [N, S] (integers) or any [N, ...] first argument, cut into batches;
- a dict of tensors sharing dim 0 (``input_ids``, ``attention_mask``, ...): the same;
- a str or a list of str: raw text, tokenized with ``tokenizer`` and cut into windows of
  ``lkd.seq`` tokens;
- a list/tuple of batches, a DataLoader or any iterable: each item one batch (a dict is kwargs,
  a tuple/list positional args, a tensor the first argument), used as given.

At most ``lkd.samples`` sequences are taken. Bad input raises ValueError naming the argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch

Batch = tuple[tuple, dict[str, Any]]


def vocab_size(model: torch.nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(emb, torch.nn.Embedding):
        return emb.num_embeddings
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int):
        return size
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    return embeddings[0].num_embeddings if embeddings else None


def max_positions(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int):
            return value
    return None


def _takes(model: torch.nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def calibration_batches(model: torch.nn.Module, lkd, data=None, tokenizer=None) -> list[Batch]:
    if data is None:
        if lkd.data == "random":
            return _id_batches(model, _random_ids(model, lkd), lkd)
        if lkd.data == "generated":
            return _id_batches(model, _generated_ids(model, lkd), lkd)
        if tokenizer is None:
            raise ValueError("tokenizer: lkd.data='wikipedia' needs a tokenizer (pass tokenizer=...)")
        from zq_compile.data import wikipedia_prose

        data = wikipedia_prose()
    if isinstance(data, str) or (isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data)):
        return _id_batches(model, _text_ids(data, tokenizer, lkd), lkd)
    if isinstance(data, torch.Tensor):
        return _tensor_batches(model, {None: data}, lkd)
    if isinstance(data, dict):
        return _tensor_batches(model, data, lkd)
    if isinstance(data, Iterable):
        return _iterable_batches(model, data, lkd)
    raise ValueError(f"data: a {type(data).__name__} is not calibration data; allowed: None, a tensor, a dict of "
                     "tensors, text (str or list of str), or an iterable of batches (list, DataLoader)")


def _seq(model, lkd) -> int:
    return min(lkd.seq, max_positions(model) or lkd.seq)


def _uniform_ids(model, lkd, width: int) -> torch.Tensor:
    """[lkd.samples, width] token ids drawn uniformly from the vocabulary, seeded by lkd.seed."""
    vocab = vocab_size(model)
    if vocab is None:
        raise ValueError(f"data: {type(model).__name__} has no token embedding to draw random ids from; pass data=")
    gen = torch.Generator().manual_seed(lkd.seed)
    return torch.randint(0, vocab, (lkd.samples, width), generator=gen)


def _random_ids(model, lkd) -> torch.Tensor:
    return _uniform_ids(model, lkd, _seq(model, lkd))


def _generated_ids(model, lkd) -> torch.Tensor:
    """The float model's own text from a uniformly random first token, sampled at temperature 1.

    Uniform random ids are a sequence no text looks like: a decoder's later blocks then see
    hidden states far from those of real text, and what LKD learns there need not carry over.
    Sampling the model itself (as LLM-QAT does for data-free QAT) gives sequences with the
    statistics the model was trained on, at the cost of one generation (seconds on CPU).
    """
    can = getattr(model, "can_generate", None)
    if not callable(can) or not can():
        raise ValueError(f"lkd.data: 'generated' needs a model that can generate text (a causal LM with "
                         f".generate()); {type(model).__name__} cannot; use 'random' or pass data=")
    from tqdm.auto import tqdm

    seq = _seq(model, lkd)
    first = _uniform_ids(model, lkd, 1)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), \
                tqdm(total=seq - 1, desc="LKD data: generating", unit="tok", disable=not lkd.progress) as progress:
            torch.manual_seed(lkd.seed)
            # min_new_tokens keeps every sequence at full length: an end-of-text token is not
            # sampled, and no padding is needed
            out = model.generate(input_ids=first, attention_mask=torch.ones_like(first), do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=seq - 1,
                                 min_new_tokens=seq - 1, pad_token_id=0, logits_processor=[_advancing(progress)])
    finally:
        model.train(was_training)
    return out[:, :seq].contiguous()


def _advancing(bar):
    """A logits processor that leaves the scores alone and advances ``bar`` (called once a step)."""
    from transformers import LogitsProcessor

    class Advance(LogitsProcessor):
        def __call__(self, input_ids, scores):
            bar.update(1)
            return scores

    return Advance()


def _text_ids(text, tokenizer, lkd) -> torch.Tensor:
    if tokenizer is None:
        raise ValueError("tokenizer: raw text data needs a tokenizer (pass tokenizer=...)")
    joined = text if isinstance(text, str) else "\n\n".join(text)
    if not joined.strip():
        raise ValueError("data: the text is empty")
    ids = torch.as_tensor(tokenizer(joined, add_special_tokens=False)["input_ids"]).flatten()
    windows = min(lkd.samples, ids.numel() // lkd.seq)
    if windows == 0:
        raise ValueError(f"data: the text has {ids.numel()} tokens, fewer than one window of lkd.seq={lkd.seq}")
    return ids[: windows * lkd.seq].view(windows, lkd.seq)


def _id_batches(model, ids: torch.Tensor, lkd) -> list[Batch]:
    return _tensor_batches(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, lkd)


def _tensor_batches(model, tensors: dict, lkd) -> list[Batch]:
    if not tensors:
        raise ValueError("data: the dict is empty")
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"data: entries {bad} are not tensors")
    sizes = {k: v.shape[0] if v.dim() else None for k, v in tensors.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"data: tensors must share their first (sample) dim; got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError("data: no samples (first dim is 0)")
    for key, t in tensors.items():
        _check_ids(model, key, t)
    n = min(n, lkd.samples)
    out = []
    for start in range(0, n, lkd.batch):
        chunk = {k: v[start : min(start + lkd.batch, n)] for k, v in tensors.items()}
        args = (chunk.pop(None),) if None in chunk else ()
        out.append((args, _no_cache(model, chunk)))
    return out


def _check_ids(model, key, t: torch.Tensor) -> None:
    if key not in (None, "input_ids") or t.is_floating_point():
        return
    name = "data" if key is None else "data['input_ids']"
    if t.dim() != 2:
        raise ValueError(f"{name}: token ids must be [samples, seq], got shape {tuple(t.shape)}")
    vocab = vocab_size(model)
    if vocab is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab):
        raise ValueError(f"{name}: token ids must lie in [0, {vocab}), got [{int(t.min())}, {int(t.max())}]")


def _iterable_batches(model, data, lkd) -> list[Batch]:
    out, seen = [], 0
    for item in data:
        if isinstance(item, dict):
            for key, t in item.items():
                if isinstance(t, torch.Tensor):
                    _check_ids(model, key, t)
            batch = ((), _no_cache(model, dict(item)))
        elif isinstance(item, (tuple, list)):
            batch = (tuple(item), _no_cache(model, {}))
        elif isinstance(item, torch.Tensor):
            _check_ids(model, None, item)
            batch = ((item,), _no_cache(model, {}))
        else:
            raise ValueError(f"data: an item is a {type(item).__name__}; allowed: dict, tuple/list or tensor")
        out.append(batch)
        first = next((t for t in (*batch[0], *batch[1].values()) if isinstance(t, torch.Tensor) and t.dim()), None)
        seen += first.shape[0] if first is not None else 1
        if seen >= lkd.samples:
            break
    if not out:
        raise ValueError("data: no batches (it is empty)")
    return out


def _no_cache(model, kwargs: dict) -> dict:
    """Block inputs are recorded from plain forwards: no KV cache that the blocks would fill."""
    if _takes(model, "use_cache") and "use_cache" not in kwargs:
        kwargs["use_cache"] = False
    return kwargs
