"""LKD accuracy probe: the quantized model's gap to fp32 with and without LKD.

Quantization is *fake* end to end here (``zq_compile.calibrate.fake_quant``: the deployed
numerics, computed in float): every linear inside the model's blocks gets the preset's weights
and per-token activations; embeddings, norms and the LM head stay fp32 in both runs.

    python bench/lkd_accuracy.py minilm  --preset w4/8a8 --data random text
    python bench/lkd_accuracy.py smollm2 --preset w4/8a8 --data random generated text

MiniLM-L6: gap = 1 - mean cosine of sentence embeddings vs fp32 on the 200 polarity sentences
(held out: LKD never sees them). Calibration text: Wikipedia prose.
SmolLM2-135M: gap = perplexity - fp32 perplexity on the first 6 windows of 256 tokens of the
Wikipedia prose (what the bench scores); calibration text: Wikipedia tokens after the first 16
windows of 256, so the two never overlap.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

import torch

sys.path.insert(0, ".")

from zq_compile.calibrate.blocks import find_blocks  # noqa: E402
from zq_compile.calibrate.fake_quant import attach_fake_quant, spec_for_config  # noqa: E402
from zq_compile.calibrate.lkd import run_lkd  # noqa: E402
from zq_compile.config import ZeroQuantConfig  # noqa: E402


def fake_quantized(model, spec_for):
    m = copy.deepcopy(model)
    blocks = find_blocks(m)
    for i, block in enumerate(blocks.modules):
        attach_fake_quant(block, blocks.name(i), spec_for)
    return m


def minilm_case():
    from zq_compile.data import polarity_sentences, wikipedia_prose
    from zq_compile.models import load_minilm, mean_pool

    model, tok = load_minilm()
    sentences = [s for s, _ in polarity_sentences()]
    enc = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")

    def embed(m):
        with torch.no_grad():
            return mean_pool(m(**enc).last_hidden_state, enc["attention_mask"])

    ref = embed(model)

    def gap(m):
        return 1 - torch.nn.functional.cosine_similarity(embed(m).double(), ref.double(), dim=-1).mean().item()

    calib_text = wikipedia_prose()
    return model, tok, gap, calib_text, "1 - mean embedding cosine (200 polarity sentences)"


def smollm2_case():
    from zq_compile.benchmarks.accuracy import nll_sum, perplexity, token_windows
    from zq_compile.benchmarks.models import smollm2
    from zq_compile.data import wikipedia_prose

    bm, tok = smollm2()
    model = bm.model
    text = "\n\n".join(wikipedia_prose())
    ids = tok(text, return_tensors="pt").input_ids
    windows = token_windows(ids, 256, 6)

    def ppl(m):
        with torch.no_grad():
            total, count = 0.0, 0
            for w in windows:
                t, c = nll_sum(m(input_ids=w[None], use_cache=False).logits, w[None])
                total, count = total + t, count + c
        return perplexity(total, count)

    base = ppl(model)
    print(f"fp32 perplexity {base:.4f}", flush=True)

    def gap(m):
        return ppl(m) - base

    calib_ids = ids.flatten()[256 * 16:]
    return model, tok, gap, calib_ids, f"perplexity - fp32 perplexity ({base:.4f}), 6x256 Wikipedia tokens"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["minilm", "smollm2"])
    ap.add_argument("--preset", default="w4/8a8")
    ap.add_argument("--group-size", type=int, default=128, help="INT4 inputs per group along K (config.group_size)")
    ap.add_argument("--data", nargs="+", default=["random", "text"], choices=["random", "generated", "text"])
    ap.add_argument("--lkd", default="{}", help="LkdConfig fields as JSON")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--base-gap", type=float, default=None, help="the no-LKD gap of an earlier run (skips it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok, gap, calib, what = (minilm_case if args.model == "minilm" else smollm2_case)()
    # The fake quantization the backend would deploy for this config (schemes/policy.scheme_for)
    config = ZeroQuantConfig(preset=args.preset, group_size=args.group_size)
    spec_for = spec_for_config(config, model)
    base_gap = args.base_gap if args.base_gap is not None else gap(fake_quantized(model, spec_for))
    out = {"model": args.model, "preset": args.preset, "group_size": args.group_size, "gap": what,
           "no_lkd": base_gap, "lkd": {}}
    print(f"{args.preset} without LKD: gap {base_gap:.6g}", flush=True)
    lkd = json.loads(args.lkd)
    for source in args.data:
        m = copy.deepcopy(model)
        own = lkd
        if source in ("random", "generated"):  # made by run_lkd itself, from lkd.data
            data, own = None, {**lkd, "data": source}
        elif isinstance(calib, torch.Tensor):  # token ids
            seq = lkd.get("seq", 128)
            n = lkd.get("samples", 32)
            data = {"input_ids": calib[: n * seq].view(n, seq)}
        else:
            data = calib
        t0 = time.perf_counter()
        report = run_lkd(m, config, own, data=data, tokenizer=tok, spec_for=spec_for_config(config, m))
        seconds = time.perf_counter() - t0
        g = gap(fake_quantized(m, spec_for_config(config, m)))
        cut = 1 - g / base_gap if base_gap else float("nan")
        print(report.summary(), flush=True)
        print(f"{args.preset} with LKD ({source} data): gap {g:.6g}, cut {100 * cut:.1f}% in {seconds:.0f}s", flush=True)
        out["lkd"][source] = {"gap": g, "cut": cut, "seconds": seconds, "config": report.config,
                              "blocks": [(r.name, r.loss_before, r.loss_after, r.kept) for r in report.results]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
