"""What holding a tied head's int8 weight once costs at prefill: oneDNN's u8s8 GEMM on a weight it
keeps reordered (the default) against the same weight reordered at every call
(``kernels.pack_per_call``, used under ``release_float_weights`` when the embedding gathers from
the head's table). Side by side in one process, the variants taking turns, minimum of each.

    .venv/bin/python bench/tied_head_reorder.py                    # SmolLM2's head: 49152 x 576
    .venv/bin/python bench/tied_head_reorder.py --n 50257 --k 768  # GPT-2's
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    import torch

    from zq_compile.codegen.cpu import kernels
    from zq_compile.codegen.cpu.select import cpu_description, int8_weight_qmax, time_variants

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=49152)
    p.add_argument("--k", type=int, default=576)
    p.add_argument("--m", type=int, nargs="+", default=[1, 32, 128, 256])
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    qmax = int8_weight_qmax()
    kept = torch.randint(-qmax, qmax + 1, (a.n, a.k), generator=g, dtype=torch.int8)
    per_call = kept.clone()
    w_s = torch.rand(a.n, generator=g)
    kernels.pack_per_call(per_call, w_s)
    assert per_call in kernels._PACK_PER_CALL
    print(f"u8s8 GEMM, weight {a.n} x {a.k} int8 ({a.n * a.k / 2**20:.0f} MiB), torch threads "
          f"{torch.get_num_threads()}, {cpu_description()}; ms, min of {a.rounds}")
    print(f"{'M':>5s} {'kept copy':>10s} {'per call':>10s} {'extra':>8s}")
    for m in a.m:
        x = torch.randint(0, 256, (m, a.k), generator=g, dtype=torch.uint8)
        t = time_variants({"kept": lambda: torch.ops.zq.onednn_u8s8_mm(x, kept, w_s),
                           "per call": lambda: torch.ops.zq.onednn_u8s8_mm(x, per_call, w_s)}, a.rounds)
        print(f"{m:5d} {t['kept']:10.2f} {t['per call']:10.2f} {t['per call'] - t['kept']:+8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
