"""The INT4 weight-only "dequant" kernels' unpack, in two forms, timed side by side under Inductor.

- ``interleaved``: ``dequantize_kgroups`` in the packed order (two inputs per byte, low nibble
  first), then ``F.linear``: what the kernels traced before. Inductor indexes the output by
  j // 2 and j % 2 and leaves the loop scalar.
- ``split``: ``codegen/cpu/weight_only.int4_split`` (each K group's even inputs, then its odd
  ones) with the activation's columns permuted to match (``split_inputs``): a contiguous loop.

Each form is one function compiled by Inductor with static shapes (bf16 activations and weight,
as the ``dequant_bf16`` kernel runs on CPUs with native bf16), timed in alternating rounds in
one process; the table gives medians in microseconds and the ratio. Both forms' outputs are
checked against the fp32 reference (relative error, printed).

    .venv/bin/python bench/int4_dequant.py [--rounds 9] [--json out.json]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: (K, N): SmolLM2-135M's FFN down and up projections, a 2048 x 2048 layer
SHAPES = [(1536, 576), (576, 1536), (2048, 2048)]
ROWS = [1, 64, 512]
GROUPS = [32, 64, 128]


def main() -> None:
    from zq_compile.benchmarks.machine import targeted_bench_end, targeted_bench_start
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS, int4_split, split_inputs
    from zq_compile.quant.kgroups import dequantize_kgroups, quantize_kgroups

    args, info, started = targeted_bench_start(__doc__, rounds=9)
    rows = []
    print("| K x N | group | M | interleaved us | split us | speedup | rel. error (interleaved / split) |")
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        w = torch.randn(n, k, generator=gen) * 0.05
        for gs in (g for g in GROUPS if k % g == 0):
            qw = quantize_kgroups(w, group_size=gs)

            def interleaved(x, p, s, gs=gs, k=k):
                wf = dequantize_kgroups(p, s, None, gs, k, torch.bfloat16)
                return F.linear(x.to(torch.bfloat16), wf).float()

            def split(x, p, s, gs=gs, k=k):
                return F.linear(split_inputs(x.to(torch.bfloat16), gs), int4_split(p, s, None, gs, k, torch.bfloat16)).float()

            for m in ROWS:
                # Static shapes, and a fresh Dynamo cache per problem: a second K, group size or M
                # would otherwise make them symbolic (automatic dynamic), and the index arithmetic
                # with them (what the bench compares, not the GEMM) would not be the deployed one.
                torch._dynamo.reset()
                forms = {"interleaved": torch.compile(interleaved, dynamic=False),
                         "split": torch.compile(split, dynamic=False)}
                x = torch.randn(m, k, generator=gen)
                want = WO_KERNELS["reference"].linear(x, qw.qdata, qw.scale, None, None, 4, gs, k, torch.float32)
                err, times = {}, {name: [] for name in forms}
                for name, fn in forms.items():
                    got = fn(x, qw.qdata, qw.scale)
                    err[name] = ((got - want).norm() / want.norm()).item()
                for _ in range(args.rounds):
                    for name, fn in forms.items():
                        start = time.perf_counter()
                        fn(x, qw.qdata, qw.scale)
                        times[name].append((time.perf_counter() - start) * 1e6)
                a, b = statistics.median(times["interleaved"]), statistics.median(times["split"])
                rows.append({"K": k, "N": n, "group_size": gs, "M": m, "interleaved_us": a, "split_us": b,
                             "rel_err": err})
                print(f"| {k} x {n} | {gs} | {m} | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
                      f"{err['interleaved']:.2e} / {err['split']:.2e} |", flush=True)
    targeted_bench_end(args, started, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
