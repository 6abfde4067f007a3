"""The bench: every contender on every model, side by side in one process.

Sections (each returns a plain dict that goes into the JSON as is):
- ``encoder_section``: an encoder (MiniLM-L6 with real sentences, BERT-base random) over a
  batch x sequence sweep; on MiniLM also the accuracy measures (embedding cosine vs fp32 eager,
  sentiment accuracy of a logistic head trained on fp32 embeddings).
- ``causal_section``: a causal LM on transformers' dynamic KV cache: perplexity and top-1
  agreement with fp32 over fixed windows of real prose (SmolLM2), prefill latency of one window,
  greedy decode tokens/s and the first greedy token that differs from fp32 eager's.
- ``linear_section``: one nn.Linear through every contender, speedup over Inductor fp32 vs M.

Rules every section keeps: a contender is built and called once before anything is timed; a
failure at build, first call or any later step is recorded with its error and the contender
stays in the tables; latencies are medians of interleaved rounds (``timing.interleaved_medians``)
and every figure is also given as a ratio to Inductor fp32 measured in the same rounds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

from zq_compile.benchmarks.contenders import BASELINE, REFERENCE, BenchModel, Contender
from zq_compile.timing import interleaved_medians

Log = Callable[[str], None]


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:400]


def graphs_compiled() -> int:
    """Graphs Dynamo has compiled in this process so far (any backend, any contender)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class Field:
    """The contenders of one model: built functions, and the failure of each one that failed.

    A contender that compiles (``Contender.compiles``) must make Dynamo compile a graph of its own
    at its first call: one that compiled none ran a graph Dynamo had compiled for another
    contender (or eager code under a compiled name) and is failed, never measured. The count is
    kept in its status (``graphs``)."""

    def __init__(self, bm: BenchModel, contenders: list[Contender], example: dict, log: Log):
        self.bm = bm
        self.contenders = contenders
        self.fns: dict[str, Any] = {}
        self.status: dict[str, dict] = {}
        for c in contenders:
            start = time.perf_counter()
            try:
                before = graphs_compiled()
                fn = c.build(bm, example)
                bm.call(fn, example)  # torch.compile compiles here
                graphs = graphs_compiled() - before
                if c.compiles and graphs == 0:
                    raise RuntimeError("Dynamo compiled no graph for this contender at its first call: it ran code "
                                       "compiled for another contender (or eager code)")
                self.fns[c.name] = fn
                self.status[c.name] = {"ok": True, "build_s": round(time.perf_counter() - start, 1), "graphs": graphs}
                log(f"  {c.name:22s} ready in {time.perf_counter() - start:5.1f}s")
                gc.collect()
            except Exception as exc:  # noqa: BLE001  (a failed contender is a result, not a crash)
                self.fail(c.name, "build", exc)
                log(f"  {c.name:22s} FAILED: {_error(exc)}")
                if not isinstance(exc, (ValueError, NotImplementedError, ImportError)):
                    traceback.print_exc(limit=3)

    def fail(self, name: str, stage: str, exc: BaseException) -> None:
        self.fns.pop(name, None)
        entry = self.status.setdefault(name, {})
        entry.update({"ok": False, "stage": stage, "error": _error(exc)})

    def record_pipelines(self) -> dict[str, dict]:
        """The status of every contender, with, for each zeroquant one, how many of its graphs ran
        which pipeline (``CompileReport.runs``: "int8", or the float pipeline that won the
        pipeline race): where the float one served, that section's figures, accuracy included,
        are the float pipeline's and not the preset's, and the tables say so."""
        for name, fn in self.fns.items():
            reports = getattr(fn, "zq_reports", None)
            if reports:
                counts: dict[str, int] = {}
                for r in reports:
                    counts[r.runs] = counts.get(r.runs, 0) + 1
                self.status[name]["pipelines"] = counts
        return self.status

    def alive(self) -> dict[str, Any]:
        return dict(self.fns)

    def try_each(self, stage: str, run: Callable[[str, Any], Any]) -> dict[str, Any]:
        """``run(name, fn)`` for every live contender; failures are recorded, not raised."""
        out = {}
        for name, fn in list(self.fns.items()):
            try:
                out[name] = run(name, fn)
            except Exception as exc:  # noqa: BLE001
                self.fail(name, stage, exc)
        return out


def _ratios(values: dict[str, float], baseline: str = BASELINE, higher_is_better: bool = False) -> dict[str, float]:
    if baseline not in values:
        return {}
    base = values[baseline]
    if higher_is_better:
        return {k: v / base for k, v in values.items()}
    return {k: base / v for k, v in values.items()}


def timed_shape(field: Field, inputs: dict, runs: int, warmup: int) -> dict:
    """Median ms of each live contender on ``inputs``, interleaved; speedups vs Inductor fp32."""
    bm = field.bm
    field.try_each("first call at this shape", lambda name, fn: bm.call(fn, inputs))
    calls = {name: (lambda fn=fn: bm.call(fn, inputs)) for name, fn in field.alive().items()}
    ms = interleaved_medians(calls, runs=runs, warmup=warmup)
    return {"ms": ms, "speedup_vs_inductor_fp32": _ratios(ms)}


# -- encoders ------------------------------------------------------------------------------------
def encoder_inputs(tokenizer, texts: list[str] | None, batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """Real sentences padded/truncated to ``seq`` tokens when a tokenizer is given; else random ids."""
    if tokenizer is not None and texts:
        chosen = (texts * (batch // len(texts) + 1))[:batch]
        enc = tokenizer(chosen, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab // 2), vocab, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def encoder_section(bm: BenchModel, contenders: list[Contender], shapes: list[tuple[int, int]], runs: int,
                    warmup: int, log: Log, tokenizer=None, labelled: list[tuple[str, int]] | None = None) -> dict:
    """Latency over ``shapes`` (the first is the headline: built, and accuracy measured, there).
    Also serves causal LMs as a plain-forward prefill sweep (logits for every position, no cache)."""
    from zq_compile.benchmarks import calibration
    from zq_compile.models import mean_pool

    texts = [t for t, _ in labelled] if labelled else None
    vocab = bm.model.config.vocab_size
    if bm.calibration is None:  # static scales: other sentences (or other random ids) than measured
        bm = dataclasses.replace(bm, calibration=calibration.for_encoder(tokenizer, vocab))

    def make_inputs(batch, seq):
        inputs = encoder_inputs(tokenizer, texts, batch, seq, vocab)
        if bm.kind == "causal-lm":
            inputs["use_cache"] = False  # a plain forward: logits for every position, no KV cache
        return inputs

    first = make_inputs(*shapes[0])
    log(f"{bm.name}: building {len(contenders)} contenders at batch {shapes[0][0]} x seq {shapes[0][1]}")
    field = Field(bm, contenders, first, log)
    result: dict[str, Any] = {"model": bm.name, "note": bm.note, "kind": bm.kind}

    if labelled:
        result["accuracy"] = _sentence_accuracy(field, tokenizer, labelled, *shapes[0], mean_pool, log)

    result["latency"] = []
    for batch, seq in shapes:
        timed = timed_shape(field, make_inputs(batch, seq), runs, warmup)
        result["latency"].append({"batch": batch, "seq": seq, **timed})
        log(f"  {bm.name} {batch}x{seq}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in timed["ms"].items()))
    result["contenders"] = field.record_pipelines()
    return result


def _sentence_accuracy(field: Field, tokenizer, labelled, batch: int, seq: int, mean_pool, log: Log) -> dict:
    """Embeddings of every sentence by every contender, in batches of the headline shape (so no
    contender recompiles); cosine vs fp32 eager and the sentiment head's test accuracy."""
    from zq_compile.benchmarks.accuracy import LogisticHead, fixed_split

    texts = [t for t, _ in labelled]
    labels = torch.tensor([y for _, y in labelled])
    chunks = []
    for start in range(0, len(texts), batch):
        part = texts[start:start + batch]
        padded = part + [part[-1]] * (batch - len(part))  # keep the compiled shape
        enc = tokenizer(padded, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
        chunks.append(({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, len(part)))

    def embed(name, fn):
        outs = []
        for inputs, n in chunks:
            hidden = field.bm.call(fn, inputs)
            outs.append(mean_pool(hidden, inputs["attention_mask"])[:n])
        emb = torch.cat(outs)
        if not torch.isfinite(emb).all():
            raise FloatingPointError("non-finite embeddings")
        return emb

    emb = field.try_each("accuracy", embed)
    if REFERENCE not in emb:
        return {"error": f"{REFERENCE} failed: no reference"}
    ref = emb[REFERENCE]
    train, test = fixed_split(labels.tolist())
    head, l2 = LogisticHead.fit_cv(ref[train], labels[train])
    out = {
        "sentences": len(texts),
        "split": {"train": len(train), "test": len(test), "seed": 0, "stratified": True},
        "head": f"logistic regression (L-BFGS, standardised features, l2={l2} chosen by 5-fold CV on the "
                f"train split) trained on eager fp32 embeddings",
        "fp32_train_accuracy": head.accuracy(ref[train], labels[train]),
        "per_contender": {},
    }
    for name, e in emb.items():
        cos = torch.nn.functional.cosine_similarity(e.double(), ref.double(), dim=-1)
        out["per_contender"][name] = {
            "cosine_mean": cos.mean().item(),
            "cosine_min": cos.min().item(),
            "sentiment_accuracy": head.accuracy(e[test], labels[test]),
        }
        log(f"  {name:22s} cosine {cos.mean().item():.5f} (min {cos.min().item():.4f}), "
            f"sentiment {out['per_contender'][name]['sentiment_accuracy']:.3f}")
    return out


# -- causal LMs ----------------------------------------------------------------------------------
class Generator:
    """Prefill and greedy decode of one contender with transformers' default dynamic KV cache.

    Graphs per compiled contender: the prefill, the first one-token step, and one recompile of the
    step once the cache length changes (Dynamo then makes it dynamic). A static cache would save
    that recompile, but not every peer runs with one, the dynamic cache is what transformers uses
    by default, and the prefill doubles as the perplexity forward.
    """

    def __init__(self, bm: BenchModel, fn):
        self.bm, self.fn = bm, fn
        self.cache = None

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.fn(input_ids=ids, use_cache=True)
        self.cache = getattr(out, "past_key_values", None)
        return out.logits

    def step(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        if self.cache is None:
            raise RuntimeError("the prefill returned no KV cache: decode steps cannot run")
        out = self.fn(input_ids=tok, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits

    def greedy(self, prompt: torch.Tensor, new_tokens: int) -> list[int]:
        logits = self.prefill(prompt)
        tok = logits[:, -1:].argmax(-1)
        out = [tok.item()]
        for i in range(new_tokens - 1):
            tok = self.step(tok, prompt.shape[1] + i)[:, -1:].argmax(-1)
            out.append(tok.item())
        return out


def _interleaved_decode(gens: dict[str, Generator], prompt: torch.Tensor, new_tokens: int, runs: int,
                        warmup: int) -> dict[str, float]:
    """Median ms of the ``new_tokens - 1`` one-token greedy steps after an (untimed) prefill,
    contenders interleaved round by round like ``interleaved_medians``."""
    import statistics

    times: dict[str, list[float]] = {name: [] for name in gens}
    for r in range(warmup + runs):
        for name, g in gens.items():
            tok = g.prefill(prompt)[:, -1:].argmax(-1)
            start = time.perf_counter()
            for i in range(new_tokens - 1):
                tok = g.step(tok, prompt.shape[1] + i)[:, -1:].argmax(-1)
            if r >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


@contextlib.contextmanager
def dynamo_settings():
    """Dynamo settings for a whole bench run. Every contender compiles the same model code, and
    each compile adds entries to that code's cache: past the default limit of 8 Dynamo would
    silently run later contenders in eager mode. So the limit is raised, and hitting it raises
    (the contender is then reported failed) instead of measuring eager under a compiled name."""
    with torch._dynamo.config.patch(recompile_limit=256, accumulated_recompile_limit=4096,
                                    fail_on_recompile_limit_hit=True):
        yield


def causal_section(bm: BenchModel, contenders: list[Contender], windows: torch.Tensor, new_tokens: int,
                   runs: int, warmup: int, log: Log, text_note: str = "",
                   calibration_ids: torch.Tensor | None = None) -> dict:
    """``windows``: [count, L] token ids; perplexity over all of them (when the text is real; each
    window is one prefill, batch 1), prefill latency of one window, greedy decode of ``new_tokens``
    after the first window. ``calibration_ids``: token ids none of which are measured (the text
    after the windows), for the contenders with static scales; default: random ids."""
    from zq_compile.benchmarks import calibration
    from zq_compile.benchmarks.accuracy import nll_sum, perplexity

    length = windows.shape[1]
    prompt = windows[:1]
    example = {"input_ids": prompt}
    log(f"{bm.name}: building {len(contenders)} contenders (prefill 1 x {length}, then {new_tokens} decode steps)")
    gens: dict[int, Generator] = {}

    def builder_call(fn, inputs):  # how Field calls each contender once: a real prefill
        gen = Generator(bm, fn)
        gen.prefill(inputs["input_ids"])
        gens[id(fn)] = gen
        return gen

    if calibration_ids is None:
        gen = torch.Generator().manual_seed(1)
        calibration_ids = torch.randint(0, bm.model.config.vocab_size, (calibration.BATCHES * windows.shape[1],),
                                        generator=gen)
    wrapped = dataclasses.replace(bm, calibration=bm.calibration or calibration.token_stream(calibration_ids))
    wrapped.call = builder_call  # type: ignore[method-assign]
    field = Field(wrapped, contenders, example, log)
    result: dict[str, Any] = {"model": bm.name, "note": bm.note, "kind": bm.kind, "prefill_tokens": length,
                              "decode_tokens": new_tokens, "text": text_note}
    gen_of = {name: gens[id(fn)] for name, fn in field.fns.items()}

    if text_note:
        ref_top1: list[torch.Tensor] = []  # eager fp32 runs first: its next-token argmaxes

        def ppl(name, fn):
            total, count, agree = 0.0, 0, 0
            for i, w in enumerate(windows):
                logits = gen_of[name].prefill(w[None])
                nll, n = nll_sum(logits, w[None])
                total, count = total + nll, count + n
                top1 = logits[0, :-1].argmax(-1)
                if name == REFERENCE:
                    ref_top1.append(top1)
                if len(ref_top1) > i:
                    agree += (top1 == ref_top1[i]).sum().item()
            value = perplexity(total, count)
            if value != value:  # NaN
                raise FloatingPointError("perplexity is NaN")
            return {"perplexity": value, "tokens_scored": count,
                    "top1_agree_fp32": agree / count if len(ref_top1) == len(windows) else None}

        result["perplexity"] = field.try_each("perplexity", ppl)
        base = result["perplexity"].get(REFERENCE, {}).get("perplexity")
        for name, p in result["perplexity"].items():
            p["vs_eager_fp32"] = p["perplexity"] / base if base else None
            log(f"  {name:22s} perplexity {p['perplexity']:.3f}")

    prefill_calls = {name: (lambda g=gen_of[name]: g.prefill(prompt)) for name in field.fns}
    prefill_ms = interleaved_medians(prefill_calls, runs=runs, warmup=warmup)
    result["prefill"] = {"batch": 1, "seq": length, "ms": prefill_ms, "speedup_vs_inductor_fp32": _ratios(prefill_ms)}
    # greedy decode: the tokens (checked against fp32 eager's), then the timing
    tokens = field.try_each("decode", lambda name, fn: gen_of[name].greedy(prompt, new_tokens))
    ref = tokens.get(REFERENCE)
    steps_ms = _interleaved_decode({name: gen_of[name] for name in field.fns}, prompt, new_tokens, runs, warmup)
    decode = {}
    for name, ms in steps_ms.items():
        decode[name] = {
            "tokens_per_s": (new_tokens - 1) / (ms / 1e3),
            "decode_steps_ms": ms,
            "greedy_match_fp32": (sum(a == b for a, b in zip(tokens[name], ref)) / len(ref)) if ref else None,
            "first_divergence": next((i for i, (a, b) in enumerate(zip(tokens[name], ref)) if a != b), None) if ref else None,
        }
    tps = {k: v["tokens_per_s"] for k, v in decode.items()}
    for name, ratio in _ratios(tps, higher_is_better=True).items():
        decode[name]["speedup_vs_inductor_fp32"] = ratio
    result["decode"] = decode
    for name, ms in prefill_ms.items():
        d = decode.get(name)
        log(f"  {name:22s} prefill {ms:7.1f} ms" + (f", decode {d['tokens_per_s']:6.1f} tok/s, greedy match "
                                                    f"{d['greedy_match_fp32']}" if d else ", decode failed"))
    result["contenders"] = field.record_pipelines()
    return result


# -- linear microbenchmark -----------------------------------------------------------------------
def linear_section(bm: BenchModel, contenders: list[Contender], ms_list: list[int], runs: int, warmup: int,
                   log: Log) -> dict:
    linear = next(m for m in bm.model.modules() if isinstance(m, torch.nn.Linear))
    k = linear.in_features
    gen = torch.Generator().manual_seed(0)
    xs = {m: torch.randn(m, k, generator=gen) for m in ms_list}
    log(f"{bm.name}: building {len(contenders)} contenders, M in {ms_list}")
    if bm.calibration is None:
        from zq_compile.benchmarks.calibration import random_tensors

        bm = dataclasses.replace(bm, calibration=random_tensors())
    field = Field(bm, contenders, {"input": xs[ms_list[0]]}, log)
    rows = []
    for m in ms_list:
        timed = timed_shape(field, {"input": xs[m]}, runs, warmup)
        rows.append({"M": m, **timed})
        log(f"  M={m}: " + ", ".join(f"{n} {r:.2f}x" for n, r in timed["speedup_vs_inductor_fp32"].items()))
    return {"model": bm.name, "K": k, "N": linear.out_features, "rows": rows, "contenders": field.record_pipelines()}
