"""Where a contender's forward spends its time, kernel by kernel: BERT-base (random weights),
MiniLM-L6 or a SmolLM2-135M prefill through any bench contender, under the torch profiler with Inductor's kernel profiling
on, each contender in a fresh process of its own (so one's compiled code and caches cannot serve
another's, and the profiler's overhead lands on one at a time).

    .venv/bin/python bench/kernel_profile.py --contenders "pt2e x86 static" "zeroquant w8a8 int8"
    .venv/bin/python bench/kernel_profile.py --model minilm --shape 32x128 --top 15
    .venv/bin/python bench/kernel_profile.py --model smollm2 --shape 1x256 \
        --contenders "pt2e x86 static" "zeroquant w8a8"

SmolLM2's forward is the bench's prefill (``use_cache=True``, the first window of the Wikipedia
prose the bench measures); static-scale peers calibrate on the windows after the measured ones,
as in ``make bench``.

Per contender: the median of ``--calls`` timed forwards without the profiler (ms), then the
profiler's self time per op or Inductor kernel, averaged per forward (an op called once per layer
shows its layer count). Kernels whose names differ only by Inductor's numbering are grouped, so a
LayerNorm kernel repeated per layer reads as one line. The profiler inflates the total: compare
lines between contenders, not the total with the median.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Inductor names a kernel graph_<g>_cpp_fused_<ops>_<n>: the trailing number tells copies apart
_NUMBERED = re.compile(r"^(graph_\d+_)?(cpp_fused_.*?)(_\d+)?$")
#: forwards under the profiler; its figures are averaged over them
PROFILED = 3


def _group(name: str) -> str:
    m = _NUMBERED.match(name)
    return m.group(2) if m else name


def probe(model: str, contender: str, batch: int, seq: int, calls: int) -> dict:
    import torch

    from zq_compile.benchmarks import contenders as C
    from zq_compile.benchmarks import models
    from zq_compile.benchmarks.harness import encoder_inputs

    if model == "smollm2":
        bm, inputs = _smollm2_prefill(batch, seq)
    else:
        bm, tok, texts = models.encoder(model)
        inputs = encoder_inputs(tok, texts, batch, seq, bm.model.config.vocab_size)
    (c,) = [c for c in C.select([contender]) if c.name == contender]
    with torch.inference_mode():
        fn = c.build(bm, inputs)
        for _ in range(3):
            fn(**inputs)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn(**inputs)
            times.append(time.perf_counter() - t0)
        with torch.profiler.profile() as prof:
            for _ in range(PROFILED):
                fn(**inputs)
    self_ms: dict[str, float] = collections.Counter()
    count: dict[str, float] = collections.Counter()
    for e in prof.key_averages():
        self_ms[_group(e.key)] += e.self_cpu_time_total / PROFILED / 1000
        count[_group(e.key)] += e.count / PROFILED
    return {"median_ms": 1000 * statistics.median(times), "self_ms": dict(self_ms), "calls": dict(count)}


def _smollm2_prefill(batch: int, seq: int):
    """SmolLM2 and the bench's prefill inputs: ``batch`` windows of ``seq`` tokens of the prose;
    the calibration of static-scale peers reads the windows after them (``bench/run.py``'s split)."""
    from zq_compile.benchmarks import calibration, models
    from zq_compile.benchmarks.accuracy import token_windows
    from zq_compile.data import wikipedia_prose

    bm, tok = models.smollm2()
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids
    windows = token_windows(ids, seq, batch + 4)
    bm.calibration = calibration.token_stream(windows[batch:])
    return bm, {"input_ids": windows[:batch], "use_cache": True}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("bert-base", "minilm", "smollm2"), default="bert-base")
    p.add_argument("--shape", default="8x128", help="batch x sequence length")
    p.add_argument("--contenders", nargs="+", default=["pt2e x86 static", "zeroquant w8a8 int8"])
    p.add_argument("--calls", type=int, default=10, help="timed forwards for the median")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--json", help="write the figures here too")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    batch, seq = (int(v) for v in a.shape.split("x"))
    if a.one:
        print("ZQ_PROFILE " + json.dumps(probe(a.model, a.one, batch, seq, a.calls)), flush=True)
        return 0
    from zq_compile.benchmarks.fresh_process import json_line
    from zq_compile.benchmarks.machine import describe, machine_info

    print(describe(machine_info()))
    results = {}
    for c in a.contenders:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", c, "--model", a.model, "--shape", a.shape,
               "--calls", str(a.calls)]
        r = json_line(cmd, "ZQ_PROFILE", 1800, {"TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE": "1"})
        if "error" in r:
            print(f"\n{c}: failed: {r['error']}")
            continue
        results[c] = r
        print(f"\n{c}, {a.model} {a.shape}: median {r['median_ms']:.1f} ms over {a.calls} forwards; "
              f"profiler self time per forward {sum(r['self_ms'].values()):.1f} ms")
        for name, ms in sorted(r["self_ms"].items(), key=lambda kv: -kv[1])[:a.top]:
            print(f"  {ms:8.2f} ms  {r['calls'][name]:5.0f}x  {name[:100]}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0 if len(results) == len(a.contenders) else 1


if __name__ == "__main__":
    sys.exit(main())
