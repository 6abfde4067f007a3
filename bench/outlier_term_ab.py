"""SmolLM2-135M prefill (1 x 256, int8 pipeline forced) with the outlier head's float term
unrolled into pointwise multiply-adds (``passes/outlier_term.py``, ``UNROLL_MAX``) against the
reduction over k it replaced, side by side in one process: each variant compiled through its own
copy of the calling function (Dynamo keeps compiled code per code object, so two deep copies of
one model called through one function would run one graph), interleaved medians per round.

    .venv/bin/python bench/outlier_term_ab.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def main() -> None:
    from zq_compile.benchmarks.machine import describe, machine_info
    from zq_compile.benchmarks.models import smollm2
    from zq_compile.passes import outlier_term
    from zq_compile.timing import interleaved_medians

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    print(describe(machine_info()))
    bm, _ = smollm2()
    ids = torch.randint(100, 20000, (1, 256), generator=torch.Generator().manual_seed(0))
    fns, outs = {}, {}
    with torch.inference_mode():
        for name, unroll in (("unrolled", outlier_term.UNROLL_MAX), ("reduced", 0)):
            outlier_term.UNROLL_MAX = unroll  # read when the graph is rewritten: at the first call
            body = types.FunctionType(_logits.__code__.replace(co_name=f"logits_{name}"), _logits.__globals__)
            compiled = torch.compile(body, backend="zeroquant", options={"pipeline_race": "off"})
            model = copy.deepcopy(bm.model)
            outs[name] = compiled(model, ids)
            fns[name] = (lambda c, m: lambda: c(m, ids))(compiled, model)
        print("max |logits unrolled - reduced|:", (outs["unrolled"] - outs["reduced"]).abs().max().item())
        with torch.compiler.set_stance("fail_on_recompile"):
            for _ in range(args.rounds):
                print({k: round(v, 1) for k, v in interleaved_medians(fns, runs=7, warmup=1).items()}, flush=True)


if __name__ == "__main__":
    main()
