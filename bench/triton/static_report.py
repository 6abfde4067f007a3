"""Static GPU report of the Triton kernels, with no GPU: compile every kernel, variant and autotune
config for sm_80 and sm_90, record registers / stack / local / shared memory / tensor-core
instructions, and an H100 roofline estimate per kernel, config and benchmark shape.

    python bench/triton/static_report.py            # shipped configs -> bench/results/triton_static.json
    python bench/triton/static_report.py --sweep    # candidate tiles -> bench/results/triton_static_sweep.json

The sweep is how the autotune lists in zq_compile/codegen/triton/configs.py were chosen: a
candidate is kept only if every variant passes on both targets (no spills, shared memory fits,
tensor-core dot). Figures are from ptxas and cuobjdump; the roofline is arithmetic (roofline.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import roofline  # noqa: E402
import shapes  # noqa: E402

from zq_compile.codegen.triton import checks  # noqa: E402
from zq_compile.codegen.triton.configs import TABLES  # noqa: E402
from zq_compile.codegen.triton.runtime import m_bucket  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")

#: Candidate tiles for the sweep: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per M bucket.
CANDIDATES = {
    "a8": {
        0: [(16, 32, 128, 4, 4), (16, 32, 256, 4, 4), (16, 64, 128, 4, 4), (16, 64, 256, 4, 3),
            (16, 128, 128, 4, 4), (16, 128, 256, 4, 3), (16, 64, 128, 2, 4), (16, 256, 128, 4, 3)],
        1: [(32, 64, 128, 4, 4), (32, 128, 128, 4, 4), (64, 64, 128, 4, 4), (64, 128, 64, 4, 4),
            (64, 128, 128, 4, 3), (64, 256, 64, 4, 3), (32, 256, 64, 4, 3)],
        2: [(64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (128, 64, 128, 4, 4), (128, 128, 64, 8, 3),
            (128, 128, 128, 8, 3), (64, 256, 64, 8, 3), (128, 128, 64, 4, 4)],
        3: [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3),
            (128, 128, 64, 4, 4), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 256, 8, 3)],
    },
    "a16": {
        0: [(16, 32, 128, 4, 4), (16, 32, 256, 4, 4), (16, 64, 64, 4, 4), (16, 64, 128, 4, 4),
            (16, 128, 64, 4, 4), (16, 64, 256, 4, 3)],
        1: [(32, 64, 64, 4, 4), (64, 64, 64, 4, 4), (32, 128, 64, 4, 4), (64, 128, 64, 4, 3)],
        2: [(64, 128, 64, 4, 3), (128, 64, 64, 8, 3), (128, 128, 64, 8, 3), (64, 128, 32, 4, 4)],
        3: [(128, 128, 32, 8, 3), (128, 128, 64, 8, 3), (128, 256, 32, 8, 3), (128, 128, 64, 4, 3)],
    },
}


def machine() -> dict:
    import torch
    import triton

    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "triton": triton.__version__, "gpu": None,
            "note": "no GPU: every figure comes from ptxas/cuobjdump on cubins compiled ahead of time"}


def sweep() -> dict:
    jobs, where = [], {}
    for kind, buckets in CANDIDATES.items():
        tiles = sorted({t for ts in buckets.values() for t in ts})
        for spec in checks.gemm_specs(kind, tiles=tiles, full=True):
            for arch in checks.ARCHS:
                jobs.append((spec, arch))
                where[(spec.id, arch)] = kind
    t0 = time.time()
    rows = checks.check_many(jobs)
    verdict: dict[str, dict] = {}
    for r in rows:
        key = f"{r['kernel']}/{r['config']}"
        v = verdict.setdefault(key, {"kernel": r["kernel"], "tile": r["tile"], "problems": [], "max_regs": 0,
                                     "max_shared": 0})
        v["max_regs"] = max(v["max_regs"], r["regs"])
        v["max_shared"] = max(v["max_shared"], r["shared"])
        v["problems"] += [f"{r['variant']} sm_{r['arch']}: {p}" for p in r["problems"]]
    return {"builds": rows, "verdict": verdict, "seconds": round(time.time() - t0, 1)}


def report() -> dict:
    jobs = [(s, a) for s in checks.all_specs(full=True) for a in checks.ARCHS]
    t0 = time.time()
    rows = checks.check_many(jobs)
    seconds = round(time.time() - t0, 1)
    sm90 = {(r["kernel"], r["variant"], r["config"]): r for r in rows if r["arch"] == 90}
    estimates = []
    for kernel, kind, variant, w_bits, act_bytes, peak in (
        ("gemm_a8", "a8", "w8-bias-int8", 8, 1, roofline.H100["int8_tops"]),
        ("gemm_a8", "a8", "w4-all-int8", 4, 1, roofline.H100["int8_tops"]),
        ("gemm_a16", "a16", "w8-bias-fp16", 8, 2, roofline.H100["fp16_tflops"]),
        ("gemm_a16", "a16", "w4-all-bf16", 4, 2, roofline.H100["fp16_tflops"]),
    ):
        for model, layer, k, n in shapes.gemm_shapes():
            for m in shapes.M_VALUES:
                base = roofline.fp16_baseline(m, n, k)
                per_config = {}
                for tile in TABLES[kind][m_bucket(m)]:
                    cfg = f"{tile[0]}x{tile[1]}x{tile[2]}-w{tile[3]}-s{tile[4]}"
                    build = sm90[(kernel, variant, cfg)]
                    est = roofline.gemm_estimate(m, n, k, act_bytes=act_bytes, w_bits=w_bits, out_bytes=2,
                                                 peak=peak, tile=tile)
                    per_config[cfg] = {**est, "ctas_per_sm": roofline.ctas_per_sm(build["regs"], build["num_warps"],
                                                                                 build["shared"])}
                best = min(per_config.values(), key=lambda e: e["us"])
                estimates.append({"kernel": kernel, "variant": variant, "model": model, "layer": layer, "M": m,
                                  "K": k, "N": n, "fp16_cublas_roofline_us": round(base["us"], 3),
                                  "best_us": round(best["us"], 3),
                                  "bound_speedup_vs_fp16": round(base["us"] / best["us"], 2),
                                  "configs": {c: {k2: (round(v, 3) if isinstance(v, float) else v)
                                                  for k2, v in e.items()} for c, e in per_config.items()}})
    for model, width in shapes.NORM_WIDTHS.items():
        for m in shapes.M_VALUES:
            est = roofline.rows_estimate(m, width, read_bytes=2, write_bytes=2 + 1)
            estimates.append({"kernel": "norm_quantize", "variant": "ln-bf16 emit y", "model": model, "M": m,
                              "N": width, "best_us": round(est["us"], 3)})
    for model, widths in shapes.QUANT_WIDTHS.items():
        for width in widths:
            for m in shapes.M_VALUES:
                est = roofline.rows_estimate(m, width, read_bytes=2, write_bytes=1)
                estimates.append({"kernel": "quantize", "variant": "fp16", "model": model, "M": m, "K": width,
                                  "best_us": round(est["us"], 3)})
    return {"builds": rows, "roofline_h100": estimates, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep", action="store_true", help="sweep candidate tiles instead of the shipped configs")
    args = ap.parse_args()
    out = sweep() if args.sweep else report()
    out = {"date": datetime.date.today().isoformat(), "machine": machine(),
           "limits": {"smem_bytes": {"sm_80": 163 * 1024, "sm_90": 227 * 1024}, "gpu_peaks": roofline.H100}, **out}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "triton_static_sweep.json" if args.sweep else "triton_static.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
    bad = [r for r in out["builds"] if r["problems"]]
    print(f"{len(out['builds'])} builds in {out['seconds']} s, {len(bad)} with problems -> {path}")
    if args.sweep:
        for key, v in sorted(out["verdict"].items()):
            print(f"{'DROP' if v['problems'] else 'keep'} {key} regs<={v['max_regs']} smem<={v['max_shared']}"
                  + (f"  {v['problems'][0]}" if v["problems"] else ""))


if __name__ == "__main__":
    main()
