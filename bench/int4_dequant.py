"""INT4 unpacking inside a graph, in two column orders, timed side by side under Inductor.

- ``interleaved``: the packed order (two inputs per byte, low nibble first), what the kernels
  traced before 2026-12-08. Inductor indexes the output by j // 2 and j % 2 and leaves the loop
  scalar.
- ``split``: ``quant/kgroups.split_nibbles`` (each K group's even inputs, then its odd ones) with
  the activation's columns permuted to match (``split_inputs``): a contiguous loop.

``--kernel wo`` (default): the weight-only ``dequant_bf16`` kernel (bf16 activations and weight,
``dequantize_kgroups`` without and with ``split=True``, then ``F.linear``). ``--kernel w4a8``: the per-call
W4A8 kernel of ``release_float_weights`` (``unpack:onednn``: int8 activations, the INT4 weight
re-rounded to int8 rows in the graph, then oneDNN's u8s8 GEMM; it ships the interleaved form,
since the split one measured no faster), whose two orders give the same output to the bit (an
int32 accumulation; checked, printed as "exact").

Each form is one function compiled by Inductor with static shapes, timed in alternating rounds
in one process; the table gives medians in microseconds and the ratio, and each form's relative
error against the fp32 reference.

    .venv/bin/python bench/int4_dequant.py [--kernel wo|w4a8] [--rounds 9] [--json out.json]
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
ROWS = {"wo": [1, 64, 512], "w4a8": [64, 256, 1024]}
GROUPS = [32, 64, 128]


def _wo_forms(k: int, gs: int):
    from zq_compile.quant.kgroups import dequantize_kgroups, split_inputs

    def interleaved(x, p, s):
        return F.linear(x.to(torch.bfloat16), dequantize_kgroups(p, s, None, gs, k, torch.bfloat16)).float()

    def split(x, p, s):
        return F.linear(split_inputs(x.to(torch.bfloat16), gs), dequantize_kgroups(p, s, None, gs, k, torch.bfloat16, split=True)).float()

    return {"interleaved": interleaved, "split": split}


def _w4a8_forms(k: int, gs: int):
    from zq_compile.codegen.cpu.kernels import shifted_uint8
    from zq_compile.quant.activation import quantize_per_token_ref
    from zq_compile.quant.kgroups import block_view, round_to_rows, split_inputs, split_nibbles

    def split_rows(p, s, row):  # round_to_rows in split_nibbles' column order
        ratio = block_view(s.float(), p.shape[0], k) / row[:, None]
        return torch.round(split_nibbles(p, gs, k) * ratio[:, :, None, None]).reshape(p.shape[0], k).to(torch.int8)

    def form(split: bool):
        def run(x, p, s, row):
            x_q, x_s = quantize_per_token_ref(x)
            w8 = split_rows(p, s, row) if split else round_to_rows(p, s, None, gs, k, row)
            x_u8 = shifted_uint8(x_q)
            acc = torch.ops.zq.onednn_u8s8_mm_once(split_inputs(x_u8, gs) if split else x_u8, w8, row)
            return acc * x_s
        return run

    return {"interleaved": form(False), "split": form(True)}


def main() -> None:
    import argparse

    import zq_compile.ops  # noqa: F401  (registers the zq ops)
    from zq_compile.benchmarks.machine import describe, machine_info, targeted_bench_end
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS
    from zq_compile.quant.kgroups import int8_row_scale, quantize_kgroups

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernel", choices=("wo", "w4a8"), default="wo")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    info, started = machine_info(), time.time()
    print(describe(info))
    print(f"kernel: {args.kernel}")
    print("| K x N | group | M | interleaved us | split us | speedup | rel. error (interleaved / split) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    gen = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        w = torch.randn(n, k, generator=gen) * 0.05
        for gs in (g for g in GROUPS if k % g == 0):
            qw = quantize_kgroups(w, group_size=gs)
            inputs = [qw.qdata, qw.scale]
            if args.kernel == "w4a8":
                inputs.append(int8_row_scale(qw.qdata, qw.scale, None, gs, k))
            make = _wo_forms if args.kernel == "wo" else _w4a8_forms
            for m in ROWS[args.kernel]:
                # Static shapes, and a fresh Dynamo cache per problem: a second K, group size or M
                # would otherwise make them symbolic (automatic dynamic), and the index arithmetic
                # with them (what the bench compares, not the GEMM) would not be the deployed one.
                torch._dynamo.reset()
                forms = {name: torch.compile(fn, dynamic=False) for name, fn in make(k, gs).items()}
                x = torch.randn(m, k, generator=gen)
                want = WO_KERNELS["reference"].linear(x, qw.qdata, qw.scale, None, None, 4, gs, k, torch.float32)
                outs = {name: fn(x, *inputs) for name, fn in forms.items()}
                err = {name: ((y - want).norm() / want.norm()).item() for name, y in outs.items()}
                exact = torch.equal(outs["interleaved"], outs["split"])
                times = {name: [] for name in forms}
                for _ in range(args.rounds):
                    for name, fn in forms.items():
                        start = time.perf_counter()
                        fn(x, *inputs)
                        times[name].append((time.perf_counter() - start) * 1e6)
                a, b = statistics.median(times["interleaved"]), statistics.median(times["split"])
                rows.append({"K": k, "N": n, "group_size": gs, "M": m, "interleaved_us": a, "split_us": b,
                             "rel_err": err, "identical": exact})
                same = ", exact" if exact else ""
                print(f"| {k} x {n} | {gs} | {m} | {a:.0f} | {b:.0f} | {a / b:.2f}x | "
                      f"{err['interleaved']:.2e} / {err['split']:.2e}{same} |", flush=True)
    targeted_bench_end(args, started, {"machine": info, "kernel": args.kernel, "rows": rows})


if __name__ == "__main__":
    main()
