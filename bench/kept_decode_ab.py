"""SmolLM2-135M greedy decode with the default policy, kept_decode_w8a16 on and off, side by side
in one process: tokens/s over 5 interleaved rounds and the first generated token that differs
from eager fp32's (trust the ratio only; run it on a quiet machine).

    python bench/kept_decode_ab.py
"""

from __future__ import annotations

import copy

import torch

import zq_compile
from zq_compile.benchmarks.accuracy import token_windows
from zq_compile.benchmarks.calibration_text import batches
from zq_compile.benchmarks.harness import Generator, _interleaved_decode
from zq_compile.benchmarks.models import smollm2
from zq_compile.config import ZeroQuantConfig
from zq_compile.data import wikipedia_prose

NEW_TOKENS = 24
VARIANTS = {"policy (kept_decode_w8a16)": {}, "policy, pass off": {"disable_passes": ("kept_decode_w8a16",)}}


def main() -> None:
    bm, tok = smollm2()
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids.flatten()
    prompt = token_windows(ids, 256, 1)[:1]
    data, _ = batches(bm, {"input_ids": prompt})
    with torch.inference_mode():
        want = Generator(bm, bm.model).greedy(prompt, NEW_TOKENS)
    gens, greedy = {}, {}
    for name, options in VARIANTS.items():
        model, config = copy.deepcopy(bm.model), ZeroQuantConfig(**options)
        with torch.inference_mode():
            zq_compile.calibrate(model, config, data)
            gens[name] = Generator(bm, zq_compile.compile(model, config))
            greedy[name] = gens[name].greedy(prompt, NEW_TOKENS)
    with torch.inference_mode():
        ms = _interleaved_decode(gens, prompt, NEW_TOKENS, runs=5, warmup=1)
    for name, v in ms.items():
        differs = next((i for i, (a, b) in enumerate(zip(greedy[name], want)) if a != b), None)
        print(f"{name}: decode {(NEW_TOKENS - 1) / v * 1000:.1f} tok/s, greedy differs from fp32 at token "
              f"{'never' if differs is None else differs}")


if __name__ == "__main__":
    main()
