"""Exact GeLU in Inductor's CPU code, erf as ATen's vectorized erf or as ``erf_without_exp``.

Times GeLU over a BERT-base FFN1 output (1024 x 3072 fp32 in, bf16 out, as our epilogue stores
it) on inputs of standard deviation 1 and 10, interleaved in one process:

- ``Inductor erf``: Inductor's own lowering (ATen's ``Vectorized::erf``: A&S 7.1.26, a division
  and a SLEEF exp per element);
- ``erf_without_exp``: the same graph after our post-grad pass (A&S 7.1.28, no exp);
- ``ATen gelu (eager)``: PyTorch's eager GeLU (oneDNN's eltwise kernel; fp32 out, so it writes
  twice the bytes), for scale.

A second table times the two erf forms where the int8 pipeline really computes GeLU: the FFN1
epilogue kernel (bf16 GEMM output x per-token scale + bias, GeLU, then the per-token quantize of
``quant/activation.py`` with oneDNN's +128 shift), 1024 x 3072, at pre-activation standard
deviations 1 and 3.

Each compiled form is built at this CPU's vector width and at 256 bits (Inductor's
``cpp.simdlen``), which is the code an AVX2-only CPU would get, so one machine shows both.

    .venv/bin/python bench/gelu_erf_forms.py [--rounds 25] [--json out.json]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gelu_bf16(x):
    return F.gelu(x).to(torch.bfloat16)


def _ffn1_epilogue(acc, x_scale, bias):
    from zq_compile.quant.activation import quantize_per_token_ref

    q, scale = quantize_per_token_ref(F.gelu(acc.float() * x_scale + bias).to(torch.bfloat16))
    return (q.to(torch.float32) + 128).to(torch.uint8), scale


def _compiled(simdlen: int | None, rewrite: bool, fn=_gelu_bf16):
    """A compiled GeLU of its own: Dynamo keeps compiled code per code object, so each variant
    gets a copy of the function's code (no ``torch._dynamo.reset()``, which would make the
    earlier variants recompile later, outside their config patches)."""
    import types

    from zq_compile.passes import erf_without_exp

    code = fn.__code__.replace(co_name=f"{fn.__name__}_{simdlen}_{rewrite}")
    body = types.FunctionType(code, fn.__globals__)

    def post_grad(graph):
        if rewrite:
            erf_without_exp.run(graph)

    compiled = torch.compile(body)
    # realize_reads_threshold as in the backend's compile call (backend.INDUCTOR_PATCHES)
    patches = {"post_grad_custom_pre_pass": post_grad, "fx_graph_cache": False, "realize_reads_threshold": 0}
    if simdlen:
        patches["cpp.simdlen"] = simdlen

    def first_call(*args):
        with torch._inductor.config.patch(patches):
            return compiled(*args)
    return compiled, first_call


def _race(fns: dict, rounds: int) -> dict:
    from zq_compile.timing import interleaved_medians

    with torch.compiler.set_stance("fail_on_recompile"):  # each times its own code
        return interleaved_medians(fns, runs=rounds, warmup=2)


def gelu_alone(rounds: int) -> list[dict]:
    rows = []
    for std in (1.0, 10.0):
        x = torch.randn(1024, 3072, generator=torch.Generator().manual_seed(0)) * std
        ref = F.gelu(x.double()).to(torch.bfloat16).double()
        fns, errs = {}, {}
        for simdlen, width in ((None, "native"), (256, "256-bit")):
            for rewrite, form in ((False, "Inductor erf"), (True, "erf_without_exp")):
                name = f"{form}, {width}"
                fn, first_call = _compiled(simdlen, rewrite)
                errs[name] = (first_call(x).double() - ref).abs().max().item()
                fns[name] = (lambda f: lambda: f(x))(fn)
        fns["ATen gelu (eager)"] = lambda: F.gelu(x)
        rows.append({"std": std, "ms": _race(fns, rounds), "max_abs_diff_vs_float64_in_bf16": errs})
    return rows


def ffn1_epilogue(rounds: int) -> list[dict]:
    rows = []
    for std in (1.0, 3.0):
        g = torch.Generator().manual_seed(1)
        inputs = (torch.randn(1024, 3072, generator=g).to(torch.bfloat16), torch.full((1024, 1), std),
                  torch.randn(3072, generator=g) * 0.1)
        fns, diffs, ref = {}, {}, None
        for simdlen, width in ((None, "native"), (256, "256-bit")):
            for rewrite, form in ((False, "Inductor erf"), (True, "erf_without_exp")):
                name = f"{form}, {width}"
                fn, first_call = _compiled(simdlen, rewrite, _ffn1_epilogue)
                q = first_call(*inputs)[0].int()
                ref = q if ref is None else ref
                diffs[name] = (q - ref).abs().max().item()
                fns[name] = (lambda f: lambda: f(*inputs))(fn)
        rows.append({"std": std, "ms": _race(fns, rounds), "max_int8_diff_vs_first": diffs})
    return rows


def main() -> None:
    from zq_compile.benchmarks.machine import targeted_bench_end, targeted_bench_start

    from zq_compile.passes import erf_without_exp

    args, info, started = targeted_bench_start(__doc__, rounds=25)
    erf_without_exp.MAX_VECTOR_BITS = None  # both forms at every width: that is what is measured
    with torch.no_grad():  # compiled and timed in the same grad mode (no recompile)
        result = {"machine": info, "gelu": gelu_alone(args.rounds), "ffn1_epilogue": ffn1_epilogue(args.rounds)}
    print("\nGeLU over 1024x3072 fp32 -> bf16 (median ms of interleaved rounds)")
    for r in result["gelu"]:
        print(f"  std {r['std']:g}: " + ", ".join(f"{n} {v:.2f}" for n, v in r["ms"].items()))
        print("    max |out - float64 GeLU rounded to bf16|: "
              + ", ".join(f"{n} {v:.3g}" for n, v in r["max_abs_diff_vs_float64_in_bf16"].items()))
    print("\nFFN1 epilogue 1024x3072: bf16 x per-token scale + bias, GeLU, per-token quantize -> uint8 (median ms)")
    for r in result["ffn1_epilogue"]:
        print(f"  pre-activation std {r['std']:g}: " + ", ".join(f"{n} {v:.2f}" for n, v in r["ms"].items()))
        print("    max |int8 - the first column's|: "
              + ", ".join(f"{n} {v}" for n, v in r["max_int8_diff_vs_first"].items()))
    targeted_bench_end(args, started, result)


if __name__ == "__main__":
    main()
