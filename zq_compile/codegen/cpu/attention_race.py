"""Race the CPU attention variants on one attention problem's own shapes, at compile time.

Which attention is fastest on a CPU depends on the CPU and on the shapes, and measurements taken
on one day disagreed with those of another on this project's own machine (``passes/
attention_bf16.py``), so under ``attention="auto"`` the variants are timed on the problem the
graph will run, the way the int8 GEMM kernels are (``select.race_shapes``):

- ``bf16_matmul``: our two-bmm lowering (``codegen/cpu/attention.py``) compiled by Inductor, as it
  runs in the model (it is only fast once Inductor has fused its softmax loop), on bf16 q/k/v;
- ``bf16_flash``: ATen's flash kernel on bf16 q/k/v (what Inductor calls for the rewritten SDPA);
- ``fp32_flash``: ATen's flash kernel on the fp32 q/k/v, the graph left as written.

The inputs are what the pipeline hands each variant: bf16 for the bf16 variants (the cast is
fused into the kernel that produces q/k/v), fp32 for fp32. Times are the fastest of a few
interleaved rounds and are cached per problem for the process; the compiled lowering is not kept.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math

import torch
import torch.nn.functional as F

from zq_compile.codegen.cpu.attention import attention_bf16, mask_to_bias
from zq_compile.codegen.cpu.select import time_variants

VARIANTS = ("bf16_matmul", "bf16_flash", "fp32_flash")
#: Most exact first: a later variant must be RACE_MARGIN times the time of the current pick.
PREFERENCE = ("fp32_flash", "bf16_flash", "bf16_matmul")
RACE_MARGIN = 0.9
#: Problems smaller than this (bf16 scores of one call) are not raced: timing them costs an
#: Inductor compile of a few seconds for a kernel that takes well under a millisecond.
RACE_MIN_SCORES_MIB = 1.0
ROUNDS = 5


@functools.cache
def race_attention(q_shape: tuple, k_shape: tuple, v_shape: tuple, mask: tuple | None, is_causal: bool,
                   enable_gqa: bool, scale: float, variants: tuple[str, ...] = VARIANTS) -> dict[str, float]:
    """ms per call of each variant in ``variants``. ``mask`` is (shape, dtype) or None."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=g) for s in (q_shape, k_shape, v_shape))
    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    m = None if mask is None else _mask(*mask)
    low_mask = m.to(torch.bfloat16) if m is not None and m.dtype == torch.float32 else m

    def sdpa(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)

    fns = {
        "bf16_flash": lambda: sdpa(*low, low_mask),
        "fp32_flash": lambda: sdpa(q, k, v, m),
    }
    if "bf16_matmul" in variants:
        bias = m if m is None or m.dtype == torch.float32 else mask_to_bias(m)
        args = [*low, bias]
        lowering = _compiled_lowering(args, scale, is_causal, enable_gqa)
        fns["bf16_matmul"] = lambda: lowering(*args)
    with torch.inference_mode():  # fastest of ROUNDS interleaved rounds, as the GEMM race times
        return time_variants({name: fns[name] for name in variants}, ROUNDS)


def choose(times: dict[str, float]) -> str:
    """The most exact variant unless a less exact one is at least ``1 - RACE_MARGIN`` faster.

    The variants round differently (fp32 flash keeps fp32 scores, bf16 flash bf16 inputs, our
    lowering also bf16 scores), so the choice changes the model's numbers, not only its speed:
    SmolLM2 w8a8's perplexity read 24.466 with fp32 attention and 24.218 with bf16 flash. Timings
    within a few percent of each other flip from run to run; a margin keeps the choice, and so
    the model's output, the same across compiles unless the speed difference is real."""
    best = next(name for name in PREFERENCE if name in times)
    for name in PREFERENCE:
        if name in times and times[name] < RACE_MARGIN * times[best]:
            best = name
    return best


def ranked(times: dict[str, float], winner: str) -> str:
    """"a 1.20 ms, b 1.35 ms -> a": the variants fastest first, then the pick."""
    order = sorted(times.items(), key=lambda kv: kv[1])
    return ", ".join(f"{name} {ms:.{3 if ms < 1 else 2}f} ms" for name, ms in order) + f" -> {winner}"


def race_line(q_shape: tuple, count: int, times: dict[str, float], winner: str) -> str:
    where = "x".join(str(d) for d in q_shape) + (f" (x{count})" if count > 1 else "")
    return f"attention per call at q {where}: {ranked(times, winner)}"


def scores_mib(q_shape: tuple, k_shape: tuple) -> float:
    return math.prod(q_shape[:-1]) * k_shape[-2] * 2 / 2**20


def _mask(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """A mask that attends everywhere (bool True / fp32 zeros): the cost does not depend on it."""
    return torch.ones(shape, dtype=torch.bool) if dtype == torch.bool else torch.zeros(shape, dtype=dtype)


def _compiled_lowering(args: list, scale: float, is_causal: bool, enable_gqa: bool):
    """Our lowering compiled by Inductor alone, under the backend's Inductor settings. Compiled in
    a thread of its own: this runs inside Dynamo's call to our backend, whose tracing context
    (fake mode, guards) must not see this unrelated graph."""
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    from zq_compile.backend import INDUCTOR_PATCHES

    def attend(q, k, v, bias):
        return (attention_bf16(q, k, v, bias, scale, is_causal, enable_gqa),)

    def build():
        with torch.inference_mode():
            gm = make_fx(attend)(*args)
            return compile_fx(gm, list(args), config_patches=dict(INDUCTOR_PATCHES))

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="zq-attention-race") as pool:
        return pool.submit(build).result()

