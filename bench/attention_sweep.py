"""Attention alone: fp32 SDPA (PyTorch's CPU flash kernel) against zeroquant's bf16 attention
lowering compiled by Inductor, over batch x heads x seq x head-size; medians of 15 interleaved
rounds (``zq_compile.timing.interleaved_medians``, as the rest of the bench).

    .venv/bin/python bench/attention_sweep.py

Prints one line per shape with the bf16 scores one call stores (the attention_bf16 pass keeps
fp32 attention above ``SCORES_BUDGET_MIB`` of them) and the speedup of bf16 over fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zq_compile.codegen.cpu.attention import attention_bf16
from zq_compile.codegen.cpu.select import cpu_description
from zq_compile.timing import interleaved_medians

SHAPES = [(32, 12, 128, 32), (8, 12, 256, 32), (8, 12, 512, 32), (8, 12, 32, 32), (32, 12, 32, 32),
          (8, 12, 128, 64), (1, 9, 512, 64), (1, 12, 1024, 64), (1, 12, 2048, 64)]


def main() -> None:
    print(f"CPU {cpu_description()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'B x H x L x D':>18s} {'scores MiB':>10s} {'fp32 SDPA ms':>12s} {'bf16 ms':>8s} {'speedup':>8s}")
    compiled = torch.compile(attention_bf16)
    g = torch.Generator().manual_seed(0)
    for b, h, length, d in SHAPES:
        q, k, v = (torch.randn(b, h, length, d, generator=g) for _ in range(3))
        bias = torch.zeros(b, 1, length, length)
        with torch.inference_mode():
            ms = interleaved_medians({
                "fp32": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                "bf16": lambda: compiled(q, k, v, bias, d**-0.5, False, False),
            }, runs=15, warmup=3)
        fp32, bf16 = ms["fp32"], ms["bf16"]
        mib = b * h * length * length * 2 / 2**20
        print(f"{f'{b}x{h}x{length}x{d}':>18s} {mib:10.1f} {fp32:12.2f} {bf16:8.2f} {fp32 / bf16:7.2f}x")


if __name__ == "__main__":
    main()
