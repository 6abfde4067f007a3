"""Would one loop over rows make the int8 BERT forward faster? A measured "no" on the AMX Xeon.

Inductor's CPU code can run a reduction and the pointwise work that reads it in one parallel loop
over rows ("outer-loop fusion"), keeping a row-sized intermediate in a local buffer instead of
memory. Our per-token quantize (``quant/activation.py``) and bf16 LayerNorm (``codegen/cpu/norm.py``)
are split by Inductor into three to five loops instead: a per-row value with two readers (the
scale, read by the returned scale and by 1 / scale; the LayerNorm mean) is stored by a [rows] loop
of its own, vectorised along rows, and that loop blocks the fusion. Written so that every per-row
value has one reader (the forms below), the FFN1 epilogue (scale, bias, GeLU, quantize) and each
LayerNorm + quantize become one loop, and the GeLU output lives in a local buffer.

This script compiles BERT-base (random weights, 8 x 128, int8 pipeline forced) with the package's
forms and with these row-loop forms, side by side in one process: the number of parallel loops in
the GeLU and LayerNorm kernels, the outputs' difference, interleaved median latencies.

    .venv/bin/python bench/row_loop_fusion_ab.py [--rounds 20] [--json out.json]

What it showed (2026-12-06, README "Benchmarks", where the BERT-base gap is): the fused kernels are
not faster. The bytes between the loops stay in cache at these sizes, and the per-row scale is
then recomputed from the row max at each vector step (a scalar division chain the compiler cannot
hoist), which costs more than the saved pass.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zq_compile.quant.activation import MIN_SCALE, qmax_for  # noqa: E402


def scale_from_absmax(amax, bits=8):
    # torch.maximum keeps a NaN scale NaN, as the package's comparison does
    return torch.where(amax == 0, torch.ones_like(amax),
                       torch.maximum(amax / qmax_for(bits), torch.full_like(amax, MIN_SCALE)))


def quantize_per_token_rows(x, bits=8):
    """The package's quantize, bit for bit, with every per-row value written once per reader."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    qmax = qmax_for(bits)

    def product():
        return x.float() * (1.0 / scale_from_absmax(amax, bits))

    rounded = torch.round(product())
    scaled = torch.where(product() == product(), rounded, torch.zeros_like(rounded))
    return scaled.clamp(-qmax, qmax).to(torch.int8), scale_from_absmax(amax, bits)


def layer_norm_rows(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """The package's bf16 LayerNorm with the mean written once per reader."""
    dims = tuple(range(-len(normalized_shape), 0))
    n = 1
    for d in normalized_shape:
        n *= d
    total = x.float().sum(dim=dims, keepdim=True)
    var = (x.float() - total / n).square().sum(dim=dims, keepdim=True) / n
    y = (x.float() - total / n) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(torch.bfloat16)


@contextlib.contextmanager
def row_loop_forms():
    import zq_compile.codegen.base as base
    import zq_compile.passes.bf16_activations as bfa

    saved = base.quantize_per_token_ref, bfa.layer_norm_bf16
    base.quantize_per_token_ref, bfa.layer_norm_bf16 = quantize_per_token_rows, layer_norm_rows
    try:
        yield
    finally:
        base.quantize_per_token_ref, bfa.layer_norm_bf16 = saved


def _forward(model, inputs):
    return model(**inputs)[0]


def _loops(code: str) -> dict:
    """Parallel loops per GeLU / LayerNorm kernel that quantizes (the first of each)."""
    found = {}
    for m in re.finditer(r"^(cpp_fused\w+) = async_compile\.cpp_pybinding\((.*?)'''\)", code, re.S | re.M):
        name, src = m[1], m[2]
        if ".round()" not in src or "embedding" in name:
            continue
        kind = "gelu" if "gelu" in name else "norm" if "rsqrt" in name else None
        if kind and kind not in found:
            found[kind] = {"loops": src.count("#pragma omp for"), "local_buffers": "local_buffer_data" in src}
    return found


def main() -> None:
    from torch._inductor.utils import run_and_get_code

    from zq_compile.benchmarks.machine import targeted_bench_end, targeted_bench_start
    from zq_compile.benchmarks.models import bert_base_random
    from zq_compile.timing import interleaved_medians

    args, info, started = targeted_bench_start(__doc__, rounds=20)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"  # both variants' code hashes alike: no cache
    model = bert_base_random().model
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (8, 128), generator=g),
              "attention_mask": torch.ones(8, 128, dtype=torch.long)}
    fns, outs, loops = {}, {}, {}
    compiles = itertools.count()

    def compiled(forms):
        # a code object per compile: Dynamo would otherwise reuse the first one's graph
        code = _forward.__code__.replace(co_name=f"forward_{next(compiles)}")
        f = torch.compile(types.FunctionType(code, _forward.__globals__), backend="zeroquant",
                          options={"pipeline_race": "off"})
        m = copy.deepcopy(model)
        with forms():
            out = f(m, inputs)
        return (lambda: f(m, inputs)), out

    variants = {"package forms": contextlib.nullcontext, "row-loop forms": row_loop_forms}
    with torch.inference_mode():
        for name, forms in variants.items():  # the generated code first: run_and_get_code resets Dynamo
            _, sources = run_and_get_code(compiled, forms)
            loops[name] = _loops("\n".join(sources))
        torch._dynamo.reset()
        for name, forms in variants.items():
            fns[name], outs[name] = compiled(forms)
        diff = (outs["package forms"].float() - outs["row-loop forms"].float()).abs().max().item()
        with torch.compiler.set_stance("fail_on_recompile"):
            ms = interleaved_medians(fns, runs=args.rounds, warmup=2)
    print("\nBERT-base (random) 8x128, zeroquant w8a8 with pipeline_race='off'")
    for name in fns:
        print(f"  {name}: {ms[name]:.1f} ms; parallel loops per kernel {loops[name]}")
    print(f"  max |difference| of the outputs: {diff:g}")
    targeted_bench_end(args, started, {"machine": info, "ms": ms, "loops": loops, "max_abs_diff": diff})


if __name__ == "__main__":
    main()
