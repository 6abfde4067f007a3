"""Accuracy of each step of issue 12 on the real models: w8a8, + smoothing, + keep_float policy.

SmolLM2-135M perplexity on the bench's evaluation text (the first 6 windows of 256 tokens of the
Wikipedia prose, as bench/run.py), calibrated on the 2 windows that follow them (never scored);
MiniLM-L6 embedding cosine vs fp32 on the 200 polarity sentences, calibrated on Wikipedia prose.
Accuracy only (no timing), real int8 kernels through zq_compile.compile.

    python bench/smoothing_accuracy.py [--only smollm2|minilm]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import zq_compile
from zq_compile.config import ZeroQuantConfig

STEPS = {
    "w8a8": dict(smooth=False, keep_float=0),
    "w8a8 + smoothing": dict(keep_float=0),
    "w8a8 + smoothing + policy": dict(),
}


def _compiled(model, options: dict, calibration):
    config = ZeroQuantConfig(**options)
    report = zq_compile.calibrate(model, config, calibration) if calibration is not None else None
    return zq_compile.compile(model, config), report


def smollm2(log) -> dict:
    from zq_compile.benchmarks.accuracy import nll_sum, perplexity, token_windows
    from zq_compile.benchmarks.models import smollm2 as load
    from zq_compile.data import wikipedia_prose

    bm, tok = load()
    model = bm.model
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids
    windows = token_windows(ids, 256, 8)
    evaluate, calib = windows[:6], windows[6:]
    calibration = [{"input_ids": w[None], "use_cache": False} for w in calib]

    def ppl(fn):
        total, count = 0.0, 0
        for w in evaluate:
            nll, n = nll_sum(fn(input_ids=w[None], use_cache=False).logits, w[None])
            total, count = total + nll, count + n
        return perplexity(total, count)

    out = {"fp32": ppl(model)}
    log(f"SmolLM2 fp32 perplexity {out['fp32']:.3f}")
    for name, options in STEPS.items():
        torch._dynamo.reset()
        t = time.time()
        fn, report = _compiled(model, options, calibration)
        out[name] = ppl(fn)
        log(f"SmolLM2 {name}: perplexity {out[name]:.3f} ({(out[name] / out['fp32'] - 1) * 100:+.2f}% vs fp32) "
            f"[{time.time() - t:.0f}s]")
        if report is not None:
            log(str(report))
    torch._dynamo.reset()
    fn, _ = _compiled(model, {}, None)
    out["default, calibrated on the first call (eval window 0)"] = value = ppl(fn)
    log(f"SmolLM2 default without calibrate(): perplexity {value:.3f} ({(value / out['fp32'] - 1) * 100:+.2f}%)")
    log(str(fn.zq_reports[0].calibration))
    return out


def minilm(log) -> dict:
    from zq_compile.data import polarity_sentences, wikipedia_prose
    from zq_compile.metrics import mean_cosine
    from zq_compile.models import load_minilm, mean_pool

    model, tok = load_minilm()
    sentences = [s for s, _ in polarity_sentences()]
    batch = tok(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    cal = tok(wikipedia_prose()[:32], padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    calibration = [dict(cal)]

    def emb(fn):
        return mean_pool(fn(**batch).last_hidden_state, batch["attention_mask"])

    ref = emb(model)
    out = {}
    for name, options in STEPS.items():
        torch._dynamo.reset()
        fn, report = _compiled(model, options, calibration)
        out[name] = mean_cosine(ref, emb(fn))
        log(f"MiniLM {name}: cosine {out[name]:.5f}")
        if report is not None:
            log(str(report))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("smollm2", "minilm", "none"))
    p.add_argument("--simulate", action="store_true", help="SmolLM2 with the reference quantizers, no Inductor")
    args = p.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    result = {}
    with torch.inference_mode():
        if args.simulate:
            if args.only in (None, "minilm"):
                result["minilm (simulated)"] = simulate_minilm(log)
            if args.only in (None, "smollm2"):
                result["smollm2 (simulated)"] = simulate_smollm2(log)
            args.only = "none"
        if args.only in (None, "minilm"):
            result["minilm"] = minilm(log)
        if args.only in (None, "smollm2"):
            result["smollm2"] = smollm2(log)
    print(json.dumps(result, indent=1))



def _simulator(model, calibration):
    """Every nn.Linear of ``model`` behind one Simulator with statistics from ``calibration``;
    ``set_plan(alpha, kept)`` then makes the next run fp32 (alpha "fp32"), plain w8a8 (None) or
    smoothed w8a8 at ``alpha``, the modules in ``kept`` float."""
    from zq_compile.calibrate import _module_runner, _sites
    from zq_compile.calibrate.policy import Simulator, group_scales

    found = _sites(model, ZeroQuantConfig())
    sim = Simulator({k: s for k, (s, _) in found.items()})
    sim.mode = "stats"
    _module_runner(model, calibration, found)(sim)
    absmax = sim.stats.values

    def set_plan(alpha, kept) -> None:
        sim.mode = "quant" if alpha != "fp32" else "float"
        sim.set_plan(group_scales(sim.sites, absmax, None if alpha == "fp32" else alpha), set(sim.sites) - set(kept))

    return found, sim, set_plan


def simulate_smollm2(log) -> dict:
    """The same steps with the reference quantizers (calibrate/smooth.py, what the kernels are
    tested against) applied by module hooks, fp32 attention, no Inductor: minutes instead of
    the compiled run's Inductor builds on a loaded machine. Decisions come from calibrate()."""
    from zq_compile.benchmarks.accuracy import nll_sum, perplexity, token_windows
    from zq_compile.benchmarks.models import smollm2 as load
    from zq_compile.calibrate import _module_runner
    from zq_compile.data import wikipedia_prose

    bm, tok = load()
    model = bm.model
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids
    windows = token_windows(ids, 256, 8)
    evaluate = [{"input_ids": w[None], "use_cache": False} for w in windows[:6]]
    calibration = [{"input_ids": w[None], "use_cache": False} for w in windows[6:]]
    found, sim, set_plan = _simulator(model, calibration)

    def ppl(alpha, kept) -> float:
        set_plan(alpha, kept)
        outs = _module_runner(model, evaluate, found)(sim)
        total = count = 0
        for out, batch in zip(outs, evaluate):
            nll, n = nll_sum(out[0], batch["input_ids"])
            total, count = total + nll, count + n
        return perplexity(total, count)

    result = {"fp32": ppl("fp32", ())}
    log(f"fp32 {result['fp32']:.3f}")
    result["w8a8"] = ppl(None, ())
    log(f"w8a8 {result['w8a8']:.3f}")
    for name, options in (("w8a8 + smoothing", dict(keep_float=0)), ("w8a8 + smoothing + policy", {})):
        t = time.time()
        report = zq_compile.calibrate(model, ZeroQuantConfig(**options), calibration)
        log(str(report) + f"  [{time.time() - t:.0f}s]")
        kept = [k for k in sim.sites if any(la.module == k and la.kept_float for la in report.layers)]
        result[name] = ppl(report.alpha, kept)
        log(f"{name} {result[name]:.3f} ({(result[name] / result['fp32'] - 1) * 100:+.2f}%)")
    for alpha in (0.3, 0.5, 0.7):
        result[f"w8a8 + smoothing alpha {alpha}"] = value = ppl(alpha, ())
        log(f"alpha {alpha}: {value:.3f}")
    return result


def simulate_minilm(log) -> dict:
    """MiniLM embedding cosine vs fp32 on the 200 polarity sentences (seq 128), simulated as in
    ``simulate_smollm2``; calibrated on 32 Wikipedia paragraphs."""
    from zq_compile.calibrate import _module_runner
    from zq_compile.data import polarity_sentences, wikipedia_prose
    from zq_compile.metrics import mean_cosine
    from zq_compile.models import load_minilm, mean_pool

    model, tok = load_minilm()
    batch = dict(tok([t for t, _ in polarity_sentences()], padding="max_length", truncation=True, max_length=128,
                     return_tensors="pt"))
    calibration = [dict(tok(wikipedia_prose()[:32], padding="max_length", truncation=True, max_length=128,
                            return_tensors="pt"))]
    found, sim, set_plan = _simulator(model, calibration)

    def emb(alpha, kept):
        set_plan(alpha, kept)
        (out,) = _module_runner(model, [batch], found)(sim)
        return mean_pool(out[0], batch["attention_mask"])

    ref = emb("fp32", ())
    result = {"w8a8": mean_cosine(ref, emb(None, ()))}
    log(f"MiniLM w8a8 cosine {result['w8a8']:.5f}")
    for name, options in (("w8a8 + smoothing", dict(keep_float=0)), ("w8a8 + smoothing + policy", {})):
        report = zq_compile.calibrate(model, ZeroQuantConfig(**options), calibration)
        log(str(report))
        kept = [k for k in sim.sites if any(la.module == k and la.kept_float for la in report.layers)]
        result[name] = mean_cosine(ref, emb(report.alpha, kept))
        log(f"MiniLM {name} cosine {result[name]:.5f}")
    return result


if __name__ == "__main__":
    main()
