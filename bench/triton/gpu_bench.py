"""GPU benchmark of the Triton kernels against cuBLAS fp16, torch._int_mm + separate scaling and
torchao int8 dynamic quantization. Needs a CUDA GPU; none was available when this was written,
so no result exists yet (a run writes bench/results/triton_gpu_<gpu>.json with the GPU's name).

    python bench/triton/gpu_bench.py              # every shape, M in 1, 16, 128, 1024, 4096
    python bench/triton/gpu_bench.py --quick      # Llama-7B layers only, M in 16, 1024

Each contender is timed with CUDA graphs (triton.testing.do_bench_cudagraph, median), after one
untimed call that lets autotuners pick their config, so Python launch overhead is excluded
alike. The requantizing GEMM runs under both of its plans ("store", "recompute";
``runtime.requant_plan`` picks one from the shape by arithmetic, which this run can check), and
on SwiGLU layers gate + up run as two launches (fuse_swiglu) and as one kernel (fuse_gate_up). Columns: microseconds, TOPS (2 M N K / t) for GEMMs, GB/s (bytes that must move / t) for
every kernel; for memory-bound cases (small M, the row kernels) GB/s against the HBM peak is the
figure of merit. Targets from the issue (H100): W8A8 >= 1.6x over fp16 cuBLAS at M >= 1024, and
norm + quantize at >= 80% of memory bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shapes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def timer(use_graphs: bool):
    import triton.testing

    def run(fn) -> float:
        fn()  # autotune / compile outside the timed region
        torch.cuda.synchronize()
        ms = triton.testing.do_bench_cudagraph(fn) if use_graphs else triton.testing.do_bench(fn)
        return ms * 1e3

    return run


def gemm_contenders(m, k, n):
    """name -> (callable, bytes that must move); all produce y = x W^T + b in fp16."""
    from zq_compile.codegen.triton import gemm_a8, gemm_a16, quantize
    from zq_compile.codegen.triton.runtime import REQUANT_PLANS
    from zq_compile.quant import quantize_weight
    from zq_compile.quant.kgroups import quantize_kgroups

    dev = "cuda"
    x = torch.randn(m, k, device=dev, dtype=torch.float16)
    w = torch.randn(n, k, device=dev, dtype=torch.float16) / k**0.5
    b = torch.randn(n, device=dev, dtype=torch.float16)
    q8 = quantize_weight(w.float())
    q4 = quantize_weight(w.float(), bits=4)
    q4k = quantize_kgroups(w.float(), group_size=128 if k % 128 == 0 else 32)
    x_q, x_s = quantize.quantize_per_token(x)
    w_rows = q8.row_scale()
    out = {
        "cublas_fp16 torch.mm": (lambda: torch.addmm(b, x, w.t()), 2 * (m * k + n * k + m * n)),
        "triton w8a8 gemm (x pre-quantized)": (
            lambda: gemm_a8.gemm_a8(x_q, x_s, q8.qdata, q8.scale, None, b, out_dtype=torch.float16),
            m * k + n * k + 2 * m * n),
        "triton w8a8 quantize + gemm": (
            lambda: gemm_a8.gemm_a8(*quantize.quantize_per_token(x), q8.qdata, q8.scale, None, b,
                                    out_dtype=torch.float16),
            2 * m * k + n * k + 2 * m * n),
        # the two plans of a requantizing GEMM (runtime.requant_plan): the int8 rows for the next
        # linear; the bytes that must move are the same minimum for both
        **{f"triton w8a8 gemm + gelu, requantized ({plan})": (
            lambda plan=plan: gemm_a8.gemm_a8(x_q, x_s, q8.qdata, q8.scale, None, b, out_dtype=torch.float16,
                                              activation="gelu_erf", requant=True, plan=plan),
            m * k + n * k + m * n + 4 * m) for plan in REQUANT_PLANS},
        "triton w4a8 gemm (x pre-quantized)": (
            lambda: gemm_a8.gemm_a8(x_q, x_s, q4.qdata, q4.scale, None, b, out_dtype=torch.float16, w_bits=4),
            m * k + n * k // 2 + 2 * m * n),
        "triton w8a16 gemm": (lambda: gemm_a16.gemm_a16(x, q8.qdata, q8.scale, None, b), 2 * m * k + n * k + 2 * m * n),
        "triton w4a16 gemm": (lambda: gemm_a16.gemm_a16(x, q4.qdata, q4.scale, None, b, w_bits=4),
                              2 * m * k + n * k // 2 + 2 * m * n),
        # the INT4 presets' own layout: blocks of 128 inputs along K (K_GROUP), scale table N x K/128
        "triton w4a8 gemm, K groups of 128 (x pre-quantized)": (
            lambda: gemm_a8.gemm_a8(x_q, x_s, q4k.qdata, q4k.scale, None, b, out_dtype=torch.float16, w_bits=4),
            m * k + n * k // 2 + n * k // 32 + 2 * m * n),
        "triton w4a16 gemm, K groups of 128": (
            lambda: gemm_a16.gemm_a16(x, q4k.qdata, q4k.scale, None, b, w_bits=4),
            2 * m * k + n * k // 2 + n * k // 32 + 2 * m * n),
    }
    w_t = q8.qdata.t()

    def int_mm():
        acc = torch._int_mm(x_q, w_t)
        return (acc.float() * x_s * w_rows + b.float()).half()

    out["torch._int_mm + separate scaling"] = (int_mm, m * k + n * k + 4 * m * n * 2 + 2 * m * n)
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        lin = torch.nn.Linear(k, n, device=dev, dtype=torch.float16)
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        quantize_(lin, Int8DynamicActivationInt8WeightConfig())
        compiled = torch.compile(lin, mode="max-autotune-no-cudagraphs")
        out["torchao int8 dynamic (compiled)"] = (lambda: compiled(x), 2 * m * k + n * k + 2 * m * n)
    except Exception as e:  # not installed, or this version rejects the shape
        out["torchao int8 dynamic (compiled)"] = (None, f"{type(e).__name__}: {e}")
    return out


def swiglu_contenders(m, k, n):
    """SwiGLU's gate and up, requantized for down: the two-launch fold against one kernel."""
    from zq_compile.codegen.triton import gemm_a8, quantize
    from zq_compile.quant import quantize_weight
    from zq_compile.quant.kgroups import quantize_kgroups

    dev = "cuda"
    x_q, x_s = quantize.quantize_per_token(torch.randn(m, k, device=dev, dtype=torch.float16))
    qg, qu = (quantize_weight(torch.randn(n, k, device=dev) / k**0.5) for _ in "gu")
    kw = dict(out_dtype=torch.float16, requant=True)

    def two_launches():
        gate = gemm_a8.gemm_a8(x_q, x_s, qg.qdata, qg.scale, out_dtype=torch.float16, activation="silu")
        return gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, gate=gate, **kw)

    least = m * k + 2 * n * k + m * n + 4 * m  # x once, both weights, int8 rows + scales
    return {"triton swiglu gate, up: two launches (fuse_swiglu)": (two_launches, least),
            "triton swiglu gate + up: one kernel (fuse_gate_up)": (
                lambda: gemm_a8.gemm_a8(x_q, x_s, qu.qdata, qu.scale, gate_weight=(qg.qdata, qg.scale, None, None),
                                        **kw), least)}


def row_contenders(m, width):
    from zq_compile.codegen.triton import norm_quantize, quantize

    x = torch.randn(m, width, device="cuda", dtype=torch.float16)
    g = torch.rand(width, device="cuda", dtype=torch.float16)
    beta = torch.randn(width, device="cuda", dtype=torch.float16)
    return {
        "triton per-token quantize": (lambda: quantize.quantize_per_token(x), m * width * 3 + 4 * m),
        "triton layernorm + quantize (+ float out)": (
            lambda: norm_quantize.norm_quantize(x, g, beta, 1e-5, rms=False, emit_float=True), m * width * 5 + 4 * m),
        "torch layer_norm + amax + round (eager)": (
            lambda: _torch_ln_quant(x, g, beta), m * width * 5 + 4 * m),
    }


def _torch_ln_quant(x, g, b):
    y = torch.nn.functional.layer_norm(x, (x.shape[1],), g, b)
    s = y.float().abs().amax(1, keepdim=True) / 127
    return torch.round(y.float() / s).clamp(-127, 127).to(torch.int8), s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-graphs", action="store_true", help="time with do_bench instead of CUDA graphs")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_bench.py: no CUDA device here; nothing was measured (static figures: static_report.py)")
    run = timer(not args.no_graphs)
    ms = (16, 1024) if args.quick else shapes.M_VALUES
    rows = []
    for model, layer, k, n in shapes.gemm_shapes():
        if args.quick and model != "llama-7b":
            continue
        for m in ms:
            contenders = gemm_contenders(m, k, n)
            if layer == "gate_up":
                contenders.update(swiglu_contenders(m, k, n))
            for name, (fn, nbytes) in contenders.items():
                row = {"kind": "gemm", "model": model, "layer": layer, "M": m, "K": k, "N": n, "contender": name}
                if fn is None:
                    row["error"] = nbytes
                else:
                    try:
                        us = run(fn)
                        row.update(us=round(us, 2), tops=round(2 * m * n * k / us / 1e6, 1),
                                   gbps=round(nbytes / us / 1e3, 1))
                    except Exception as e:  # e.g. torch._int_mm wants M > 16
                        row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                print(row)
    for model, width in shapes.NORM_WIDTHS.items():
        for m in ms:
            for name, (fn, nbytes) in row_contenders(m, width).items():
                us = run(fn)
                rows.append({"kind": "rows", "model": model, "M": m, "N": width, "contender": name,
                             "us": round(us, 2), "gbps": round(nbytes / us / 1e3, 1)})
                print(rows[-1])
    props = torch.cuda.get_device_properties(0)
    meta = {"date": datetime.date.today().isoformat(), "gpu": props.name,
            "capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
            "triton": __import__("triton").__version__, "cuda_graphs": not args.no_graphs}
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"triton_gpu_{props.name.replace(' ', '_')}.json")
    with open(path, "w") as f:
        json.dump({"machine": meta, "rows": rows}, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
