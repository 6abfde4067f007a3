"""Resident memory of SmolLM2-135M after one forward, each contender in a fresh process:
fp32 eager, torch.compile fp32 (Inductor), and zeroquant presets with and without
``release_float_weights=True``. Issue 11's targets: w8a8 + release <= fp32 eager; w4/8a8 + release
<= 0.5x torch.compile fp32.

    .venv/bin/python bench/memory_release.py                       # w8a8, with and without release
    .venv/bin/python bench/memory_release.py --presets w8a8 w4/8a8
    .venv/bin/python bench/memory_release.py --presets w8a8 w4/8a8 --release-only

Per process: import everything, trim the heap, note RSS ("base"); load the model (real weights,
fp32); build the contender in place; drop the script's own references; one forward of batch 1 x
``--seq`` tokens (``use_cache=False``: weights, not a KV cache, are what is compared); collect
garbage, return freed heap to the OS (malloc_trim) and note RSS again. Printed: RSS over base
("model + contender", what the user pays for the model) and the absolute RSS.

Each compiled contender runs twice on a fresh Inductor cache directory of its own: "cold" (the
first compile on a machine: Inductor generates and builds every kernel) and "warm" (the same
graphs served from Inductor's FX graph cache, as after a restart). They differ in what stays
resident: code generation churns through Python's object arenas and the objects that outlive
it keep ~100 MiB of them half empty (SmolLM2 under zeroquant), so each column is compared with
torch.compile fp32 in the same state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def probe(contender: str, seq: int) -> dict:
    import torch

    import zq_compile
    from zq_compile.benchmarks import models
    from zq_compile.benchmarks.memory import _status_kib, _trim

    _trim()
    base = _status_kib("VmRSS")
    bm, _ = models.smollm2()
    model = bm.model
    bm.model = None
    loaded = _status_kib("VmRSS")
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(0))
    if contender == "eager fp32":
        fn = model
    elif contender == "inductor fp32":
        fn = torch.compile(model)
    else:  # "zeroquant <preset>[ release][ in-process]"
        _, preset, *flags = contender.split()
        config = zq_compile.ZeroQuantConfig(preset=preset, release_float_weights="release" in flags,
                                            isolate_codegen=False if "in-process" in flags else "auto")
        fn = zq_compile.compile(model, config)
    del model
    start = time.perf_counter()
    with torch.inference_mode():
        fn(input_ids=ids, use_cache=False)
    first_call_s = time.perf_counter() - start
    _trim()
    steady = _status_kib("VmRSS")
    return {"base_mib": base / 1024, "loaded_mib": (loaded - base) / 1024,
            "steady_mib": (steady - base) / 1024, "rss_mib": steady / 1024, "first_call_s": first_call_s}


def run(contender: str, seq: int, cache_dir: str | None = None) -> dict:
    from zq_compile.benchmarks.fresh_process import json_line

    env = {} if cache_dir is None else {"TORCHINDUCTOR_CACHE_DIR": cache_dir}
    cmd = [sys.executable, os.path.abspath(__file__), "--one", contender, "--seq", str(seq)]
    return json_line(cmd, "ZQ_MEMORY", 1800, env)


def cold_and_warm(contender: str, seq: int) -> dict:
    """{"cold": ..., "warm": ...}: two processes on one fresh Inductor cache (eager: one)."""
    if contender.startswith("eager"):
        r = run(contender, seq)
        return {"cold": r, "warm": r}
    with tempfile.TemporaryDirectory(prefix="zq_inductor_cache_") as cache_dir:
        return {"cold": run(contender, seq, cache_dir), "warm": run(contender, seq, cache_dir)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["w8a8"])
    p.add_argument("--release-only", action="store_true", help="only the presets with release_float_weights")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print("ZQ_MEMORY " + json.dumps(probe(a.one, a.seq)), flush=True)
        return 0
    contenders = ["eager fp32", "inductor fp32"]
    # --release-only also runs each with isolate_codegen=False ("in-process"), what "auto" replaced
    suffixes = (" release", " release in-process") if a.release_only else ("", " release")
    contenders += [f"zeroquant {p}{suffix}" for p in a.presets for suffix in suffixes]
    results = {}
    print(f"SmolLM2-135M, batch 1 x {a.seq} tokens, one forward; MiB of RSS over the import baseline, "
          "each in a fresh process; Inductor's cache cold, then warm")
    print(f"{'contender':36s} {'cold':>7s} {'warm':>7s}   vs eager (cold, warm)   vs inductor (cold, warm)"
          "   first call s (cold, warm)")
    for c in contenders:
        r = results[c] = cold_and_warm(c, a.seq)
        errors = [f"{state}: {r[state]['error']}" for state in ("cold", "warm") if "error" in r[state]]
        if errors:
            print(f"{c:36s} failed: {'; '.join(errors)}", flush=True)
            continue
        cells = ""
        for ref in ("eager fp32", "inductor fp32"):
            base = results.get(ref)
            if base is None or any("error" in base[state] for state in ("cold", "warm")):
                cells += f"   {'-':>21s}"
                continue
            ratio = [r[state]["steady_mib"] / base[state]["steady_mib"] for state in ("cold", "warm")]
            cells += f"   {ratio[0]:9.2f}x {ratio[1]:9.2f}x"
        cells += f"   {r['cold']['first_call_s']:9.1f} {r['warm']['first_call_s']:9.1f}"
        print(f"{c:36s} {r['cold']['steady_mib']:7.0f} {r['warm']['steady_mib']:7.0f}{cells}", flush=True)
    print("ZQ_MEMORY_RESULTS " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
