"""Exact GeLU in Inductor's CPU code, erf as ATen's vectorized erf or as ``erf_without_exp``.

Times GeLU over a BERT-base FFN1 output (1024 x 3072 fp32 in, bf16 out, as our epilogue stores
it) on inputs of standard deviation 1 and 10, interleaved in one process:

- ``Inductor erf``: Inductor's own lowering (ATen's ``Vectorized::erf``: A&S 7.1.26, a division
  and a SLEEF exp per element);
- ``erf_without_exp``: the same graph after our post-grad pass (A&S 7.1.28, no exp);
- ``ATen gelu (eager)``: PyTorch's eager GeLU (oneDNN's eltwise kernel; fp32 out, so it writes
  twice the bytes), for scale.

Each compiled form is built at this CPU's vector width and at 256 bits (Inductor's
``cpp.simdlen``), which is the code an AVX2-only CPU would get, so one machine shows both.

    .venv/bin/python bench/gelu_erf_forms.py [--rounds 25] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gelu_bf16(x):
    return F.gelu(x).to(torch.bfloat16)


def _compiled(simdlen: int | None, rewrite: bool):
    """A compiled GeLU of its own: Dynamo keeps compiled code per code object, so each variant
    gets a copy of the function's code (no ``torch._dynamo.reset()``, which would make the
    earlier variants recompile later, outside their config patches)."""
    import types

    from zq_compile.passes import erf_without_exp

    code = _gelu_bf16.__code__.replace(co_name=f"gelu_{simdlen}_{rewrite}")
    body = types.FunctionType(code, _gelu_bf16.__globals__)

    def post_grad(graph):
        if rewrite:
            erf_without_exp.run(graph)

    fn = torch.compile(body)
    patches = {"post_grad_custom_pre_pass": post_grad, "fx_graph_cache": False}
    if simdlen:
        patches["cpp.simdlen"] = simdlen

    def first_call(x):
        with torch._inductor.config.patch(patches):
            return fn(x)
    return fn, first_call


def main() -> None:
    from zq_compile.benchmarks.machine import describe, machine_info
    from zq_compile.timing import interleaved_medians

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    info = machine_info()
    print(describe(info))
    started, rows = time.time(), []
    with torch.no_grad():
        for std in (1.0, 10.0):
            x = torch.randn(1024, 3072, generator=torch.Generator().manual_seed(0)) * std
            ref = F.gelu(x.double())
            fns, errs = {}, {}
            for simdlen, width in ((None, "native"), (256, "256-bit")):
                for rewrite, form in ((False, "Inductor erf"), (True, "erf_without_exp")):
                    name = f"{form}, {width}"
                    fn, first_call = _compiled(simdlen, rewrite)
                    out = first_call(x)
                    errs[name] = (out.double() - ref.to(torch.bfloat16).double()).abs().max().item()
                    fns[name] = (lambda f: lambda: f(x))(fn)
            fns["ATen gelu (eager)"] = lambda: F.gelu(x)
            with torch.compiler.set_stance("fail_on_recompile"):  # each times its own code
                ms = interleaved_medians(fns, runs=args.rounds, warmup=2)
            rows.append({"std": std, "ms": ms, "max_abs_diff_vs_float64_in_bf16": errs})
    print("\nGeLU over 1024x3072 fp32 -> bf16 (median ms of interleaved rounds)")
    for r in rows:
        print(f"  std {r['std']:g}: " + ", ".join(f"{n} {v:.2f}" for n, v in r["ms"].items()))
        print("    max |out - float64 GeLU rounded to bf16|: "
              + ", ".join(f"{n} {v:.3g}" for n, v in r["max_abs_diff_vs_float64_in_bf16"].items()))
    print(f"\n({time.time() - started:.0f} s; medians of {args.rounds} interleaved rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
