"""Measurements behind the schemes: kernel times per M, INT4 group-size accuracy, bytes per preset.

    python bench/schemes_kernels.py kernels [--k 1024 --n 1024 --m 1 4 16 64 256]
    python bench/schemes_kernels.py groups      # SQNR of INT4 per group size on MiniLM's weights
    python bench/schemes_kernels.py memory      # linear-weight bytes per preset, MiniLM-L6 and SmolLM2-135M

``kernels`` prints the median ms of every weight-only and W4A8 candidate per M (compiled where
the kernel is Inductor code), the float GEMMs beside them, and which one each M regime's race
would want: the measured ground for select.SMALL_M and the race. Timings on a shared machine are
indicative only; run it on an idle one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zq_compile.ops  # noqa: E402,F401
from zq_compile.timing import interleaved_medians  # noqa: E402


def kernels(args) -> None:
    from zq_compile.codegen.cpu.kernels import KERNELS
    from zq_compile.codegen.cpu.select import SMALL_M
    from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS
    from zq_compile.quant.activation import quantize_per_token_ref
    from zq_compile.quant.kgroups import quantize_kgroups
    from zq_compile.quant.weight import quantize_weight

    k, n, gs = args.k, args.n, 128
    g = torch.Generator().manual_seed(0)
    wf = torch.randn(n, k, generator=g) * 0.05
    q8, q4 = quantize_weight(wf, bits=8), quantize_kgroups(wf, gs)
    w8a8_w = KERNELS["onednn"].finalize_weight(q8.qdata, q8.scale)
    print(f"# {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, K={k} N={n}, "
          f"INT4 group {gs}; median ms; SMALL_M={SMALL_M}")

    def compiled(fn):
        return torch.compile(fn, dynamic=False)

    wo = {name: {bits: compiled(lambda x, bits=bits, name=name: WO_KERNELS[name].linear(
        x, *((q8.qdata, q8.scale) if bits == 8 else (q4.qdata, q4.scale)), None, None, bits,
        0 if bits == 8 else gs, k, x.dtype)) for bits in (8, 4)} for name in ("dequant", "dequant_bf16")}
    aten4 = WO_KERNELS["aten"].finalize_weight(q4.qdata, q4.scale, None, 4, gs, k)
    int8_handles = {name: W4A8_KERNELS[name].finalize_weight(q4.qdata, q4.scale, None, gs, k)
                    for name in ("int8:onednn", "int8:int_mm", "int4pack")}
    for m in args.m:
        x = torch.randn(m, k, generator=g)
        xb = x.to(torch.bfloat16)
        x_q, x_s = quantize_per_token_ref(x)
        fns = {
            "fp32 F.linear": lambda: F.linear(x, wf),
            "bf16 F.linear": lambda: F.linear(xb, wf.to(torch.bfloat16)),
            "w8a8 onednn": lambda: KERNELS["onednn"].linear(x_q, x_s, w8a8_w, q8.scale, None, None, torch.float32),
            "w8a16 aten (bf16 act)": lambda: WO_KERNELS["aten"].linear(x, q8.qdata, q8.scale, None, None, 8, 0, k, torch.float32),
            "w8a16 aten fp32 act": lambda: torch.ops.aten._weight_int8pack_mm(x, q8.qdata, q8.scale),
            "w8a16 dequant": lambda: wo["dequant"][8](x),
            "w8a16 dequant_bf16": lambda: wo["dequant_bf16"][8](x),
            "w4a16 aten (bf16 act)": lambda: WO_KERNELS["aten"].linear(x, aten4, q4.scale, None, None, 4, gs, k, torch.float32),
            "w4a16 dequant": lambda: wo["dequant"][4](x),
            "w4a16 dequant_bf16": lambda: wo["dequant_bf16"][4](x),
        }
        for name, h in int8_handles.items():
            if W4A8_KERNELS[name].unavailable_reason(n, k) is None:
                fns[f"w4a8 {name}"] = lambda h=h, name=name: W4A8_KERNELS[name].linear(
                    x_q, x_s, h, q4.scale, None, None, gs, k, torch.float32)
        times = interleaved_medians(fns, runs=args.runs, warmup=2)
        print(f"\nM={m} ({'small' if m <= SMALL_M else 'large'} regime)")
        for name, ms in times.items():
            print(f"  {name:24s} {ms:9.3f}")
        for prefix in ("w8a16", "w4a16", "w4a8"):
            best = min((t, nm) for nm, t in times.items() if nm.startswith(prefix) and "fp32 act" not in nm)
            print(f"  fastest {prefix}: {best[1]} ({best[0]:.3f} ms)")


def _minilm_linears():
    from zq_compile.models import load_minilm

    model, _ = load_minilm()
    return [(name, mod.weight.detach()) for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)]


def groups(args) -> None:
    from zq_compile.metrics import sqnr_db
    from zq_compile.quant.kgroups import quantize_kgroups
    from zq_compile.quant.weight import quantize_weight

    linears = _minilm_linears()
    print("# SQNR (dB) of the dequantized weight vs fp32, MiniLM-L6 real weights; mean over its linears")
    print("# INT4 per-channel = one scale per row (group = whole K); INT8 per-channel for comparison")
    rows = {"int8 per-channel": lambda w: quantize_weight(w, bits=8).dequantize(),
            "int4 per-channel (no K groups)": lambda w: _int4_per_row(w)}
    for gs in (128, 64, 32):
        rows[f"int4 group {gs}"] = lambda w, gs=gs: quantize_kgroups(w, gs).dequantize()
    ffn = next(w for name, w in linears if name.endswith("intermediate.dense"))
    print(f"{'scheme':32s} {'mean dB':>8s} {'layer-0 FFN up dB':>18s} {'bytes/weight':>12s}")
    for name, fn in rows.items():
        mean = sum(sqnr_db(w, fn(w)) for _, w in linears) / len(linears)
        gs = int(name.rsplit(" ", 1)[-1]) if name.startswith("int4 group") else None
        per = 1 if name.startswith("int8") else 0.5 + (4 / gs if gs else 0)
        print(f"{name:32s} {mean:8.2f} {sqnr_db(ffn, fn(ffn)):18.2f} {per:12.4f}")


def _int4_per_row(w):
    s = w.abs().amax(1, keepdim=True) / 7
    return torch.round(w / s).clamp(-7, 7) * s


def memory(args) -> None:
    """Linear-weight bytes (quantized values + scales) per preset, from the compile report: the
    table ``make bench`` prints (zq_compile/benchmarks/weight_bytes.py)."""
    from zq_compile.benchmarks.run import weight_inputs
    from zq_compile.benchmarks.weight_bytes import table_rows

    for name in args.models:
        print(f"# {name} (real weights): quantized linears' weights + scales vs the same weights in fp16")
        model, inputs = weight_inputs(name)
        table_rows(model, inputs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["kernels", "groups", "memory"])
    p.add_argument("--k", type=int, default=1024)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--m", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"],
                   help="memory: the models whose linear-weight bytes to print")
    args = p.parse_args()
    {"kernels": kernels, "groups": groups, "memory": memory}[args.what](args)


if __name__ == "__main__":
    main()
