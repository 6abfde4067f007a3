"""MiniLM-L6 (or BERT-base with random weights, ``--model bert-base``: speed only) under several
zeroquant option sets, side by side in one process: embedding cosine against fp32 eager, the
report's bytes-per-forward / race / activations lines, and interleaved median latencies (trust
the ratios only on a quiet machine).

    python bench/pipeline_ab.py --batch 32 --seq 128 \
        --variants '{"before-like": {"activations": "fp32", "attention": "bf16_matmul"}, "after": {}}'
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F

import zq_compile
from zq_compile.data import polarity_sentences
from zq_compile.models import load_minilm, mean_pool
from zq_compile.timing import interleaved_medians

SHOWN = ("bytes", "race:", "kernel:", "activations:", "kept_linear_bf16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--variants", default='{"zeroquant": {}}', help="JSON: name -> zeroquant options")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", choices=("minilm", "bert-base"), default="minilm")
    args = ap.parse_args()
    variants = json.loads(args.variants)
    model, tok = load_minilm()  # BERT-base shares MiniLM's tokenizer (bert-base-uncased's vocabulary)
    if args.model == "bert-base":
        from zq_compile.benchmarks.models import bert_base_random

        model = bert_base_random().model
    sentences = [s for s, _ in polarity_sentences()]
    texts = (sentences * (args.batch // len(sentences) + 1))[: args.batch]
    enc = tok(texts, padding="max_length", truncation=True, max_length=args.seq, return_tensors="pt")

    def make(options):
        compiled = torch.compile(copy.deepcopy(model), backend="zeroquant", options=options)
        return lambda: mean_pool(compiled(**enc).last_hidden_state, enc["attention_mask"])

    with torch.inference_mode():
        ref = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        fns = {}
        for name, options in variants.items():
            torch._dynamo.reset()
            fn = make(options)
            out = fn()
            fn()
            print(f"{name}: cosine {F.cosine_similarity(ref, out).mean().item():.5f}", flush=True)
            for line in zq_compile.recent_reports()[-1].summary().splitlines():
                if any(k in line for k in SHOWN):
                    print("   ", line.strip())
            fns[name] = fn
        for _ in range(args.rounds):
            print({n: round(v, 1) for n, v in interleaved_medians(fns, runs=5, warmup=1).items()}, flush=True)


if __name__ == "__main__":
    main()
