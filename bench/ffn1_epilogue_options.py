"""Where the FFN1 epilogue (per-token scale, bias, GeLU, bf16 store) can run, timed side by side.

Issue 10 asks to weigh, by measurement, Inductor's own CPU GEMM template (the max-autotune path
PT2E takes, with AMX/VNNI int8 micro-kernels and epilogue fusion) against oneDNN. Our per-token
activation scale cannot ride in oneDNN's call (``qlinear_pointwise`` takes one scalar x_scale,
and a GeLU post-op would have to come after it), so today the u8s8 GEMM writes its result and an
Inductor kernel reads it back for the epilogue. The template can take the epilogue into its tile
loop. Both variants here are the same graph, written as PT2E writes it (dequantize -> linear),
which Inductor's freezing passes turn into a u8s8 ``qlinear`` with x_scale 1 and zero point 128;
the per-token scale, bias and GeLU follow as plain torch ops:

- ``oneDNN + epilogue``: Inductor without max-autotune: oneDNN's GEMM (fp32 out), then one
  Inductor kernel for the epilogue.
- ``CPP template``: max-autotune with only the CPP backend: the template's micro-kernel GEMM with
  the epilogue fused (the generated code is checked to hold no separate epilogue kernel).

A second table times Inductor's GeLU (erf) kernel alone on inputs of standard deviation 1 and 10,
with and without the erf argument clamped to [-4, 4] (exact in fp32: erf(3.92) rounds to 1.0).

    .venv/bin/python bench/ffn1_epilogue_options.py [--rounds 15]
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: M, K, N: BERT-base 8x128 and MiniLM-L6 32x128 FFN1
SHAPES = [(1024, 768, 3072), (4096, 384, 1536)]


class _FFN1(torch.nn.Module):
    def __init__(self, k: int, n: int, seed: int):
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)

        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g),
                                    requires_grad=False)
        # scales that make the pre-activation ~N(0, 1), as in real BERT FFN1s
        self.w_scale = torch.nn.Parameter(torch.rand(n, generator=g) * 3e-4 + 1e-5, requires_grad=False)
        self.bias = torch.nn.Parameter(torch.randn(n, generator=g) * 0.1, requires_grad=False)
        self.register_buffer("w_zero", torch.zeros(n, dtype=torch.int64))

    def body(self, x_u8: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        x = qd.dequantize_per_tensor.default(x_u8, 1.0, 128, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel.default(self.w, self.w_scale, self.w_zero, 0, -128, 127, torch.int8)
        return F.gelu(F.linear(x, w) * x_scale + self.bias).to(torch.bfloat16)


# One class (one forward code object) per variant, so each has its own Dynamo cache entry.
class OnednnFFN1(_FFN1):
    def forward(self, x_u8, x_scale):
        return self.body(x_u8, x_scale)


class TemplateFFN1(_FFN1):
    def forward(self, x_u8, x_scale):
        return self.body(x_u8, x_scale)


def _compile(module: torch.nn.Module, inputs, template: bool):
    """Compiled under its own Inductor settings (the first call compiles); a fresh torch.compile
    per variant, and each variant's module is its own object, so Dynamo cannot share graphs."""
    from unittest import mock

    import torch._inductor.config as ic
    from torch._inductor.graph import GraphLowering

    # Inductor's run_and_get_code would reset Dynamo, wiping the variant compiled before this one
    # (whose next call then recompiles outside its freezing patch), so the code is caught here.
    code: list[str] = []
    patch = {"freezing": True, "fx_graph_cache": False}
    if template:
        patch.update(max_autotune=True, max_autotune_gemm_backends="CPP")
    fn = torch.compile(module)
    with ic.patch(patch), torch.no_grad(), \
            mock.patch.object(GraphLowering, "save_output_code", lambda c: code.append(c)):
        fn(*inputs)
    text = "\n".join(code)
    kernels = text.count("async_compile.cpp_pybinding(")
    uses_onednn = "qlinear_pointwise" in text
    return fn, {"cpp_kernels": kernels, "onednn_gemm": uses_onednn}


def _interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Medians of interleaved rounds; a recompile while timing raises instead of being timed."""
    from zq_compile.timing import interleaved_medians

    with torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
        return interleaved_medians(fns, runs=rounds, warmup=2)


def gemm_epilogue(rounds: int) -> list[dict]:
    rows = []
    for m, k, n in SHAPES:
        g = torch.Generator().manual_seed(m)
        x_u8 = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
        x_scale = torch.rand(m, 1, generator=g) * 0.02 + 0.01
        fns, info = {}, {}
        ref = None
        for name, cls, template in (("oneDNN + epilogue", OnednnFFN1, False),
                                    ("CPP template, epilogue fused", TemplateFFN1, True)):
            fn, info[name] = _compile(cls(k, n, seed=1).eval(), (x_u8, x_scale), template)
            with torch.no_grad():
                out = fn(x_u8, x_scale).float()
            ref = out if ref is None else ref
            info[name]["max_abs_diff_vs_onednn"] = (out - ref).abs().max().item()
            fns[name] = (lambda f: lambda: f(x_u8, x_scale))(fn)
        ms = _interleaved(fns, rounds)
        rows.append({"shape": [m, k, n], "ms": ms, "code": info})
    return rows


def gelu_kernel(rounds: int) -> list[dict]:
    def plain(x):
        return F.gelu(x).to(torch.bfloat16)

    def clamped(x):
        return (0.5 * x * (1 + torch.erf((x * 0.7071067811865476).clamp(-4, 4)))).to(torch.bfloat16)

    rows = []
    with torch.no_grad():  # compiled and timed in the same grad mode (no recompile)
        for std in (1.0, 10.0):
            x = torch.randn(1024, 3072, generator=torch.Generator().manual_seed(0)) * std
            fns = {}
            for name, body in (("Inductor gelu", plain), ("erf argument clamped", clamped)):
                fn = torch.compile(body)
                fn(x)
                fns[name] = (lambda f: lambda: f(x))(fn)
            fns["ATen gelu (eager, fp32 out)"] = lambda: F.gelu(x)
            same = torch.equal(torch.compile(plain)(x), torch.compile(clamped)(x))
            rows.append({"std": std, "ms": _interleaved(fns, rounds), "clamped_bit_equal": same})
    return rows


def main() -> None:
    from zq_compile.benchmarks.machine import targeted_bench_end, targeted_bench_start

    args, info, started = targeted_bench_start(__doc__, rounds=15)
    result = {"machine": info, "gemm_epilogue": gemm_epilogue(args.rounds), "gelu": gelu_kernel(args.rounds)}
    print("\nFFN1 u8s8 GEMM + per-token scale + bias + GeLU -> bf16 (median ms of interleaved rounds)")
    for r in result["gemm_epilogue"]:
        m, k, n = r["shape"]
        parts = ", ".join(f"{name} {v:.2f}" for name, v in r["ms"].items())
        codes = "; ".join(f"{name}: {c['cpp_kernels']} Inductor kernels, oneDNN GEMM {c['onednn_gemm']}, "
                          f"max |diff| {c['max_abs_diff_vs_onednn']:.3g}" for name, c in r["code"].items())
        print(f"  {m}x{k}x{n}: {parts}\n    ({codes})")
    print("\nGeLU (erf) over 1024x3072 fp32 -> bf16 (median ms)")
    for r in result["gelu"]:
        parts = ", ".join(f"{name} {v:.2f}" for name, v in r["ms"].items())
        print(f"  std {r['std']:g}: {parts}; clamped bit-equal to Inductor's: {r['clamped_bit_equal']}")
    targeted_bench_end(args, started, result)


if __name__ == "__main__":
    main()
