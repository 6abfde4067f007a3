"""What a W4A8 linear at prefill sizes costs per call with each way of holding its INT4 weight.

Issue 11 asks w4/8a8 + release_float_weights for <= 0.5x the memory of torch.compile fp32. At
large M our W4A8 kernel multiplies an int8 copy of each INT4 weight (N * K bytes, kept inside
oneDNN) beside the packed INT4 one (N * K / 2): 1.5 bytes per FFN weight. The alternatives that
hold only the INT4 bytes, timed here on SmolLM2-135M's FFN shapes:

- ``int8 copy``: today's kernel (``codegen/cpu/w4a8.py`` int8:onednn), the copy made once.
- ``ATen INT4``: ATen's INT4 GEMM on the dequantized int8 activations (the small-M winner).
- ``per call``: the int8 copy made on every call (unpack + re-round in one Inductor kernel,
  exact against the kept copy, then oneDNN's weight reorder and GEMM); the parts timed apart too.

    .venv/bin/python bench/w4a8_large_m_options.py
"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [(128, 576, 1536, 64), (128, 1536, 576, 128), (512, 576, 1536, 64)]  # M, K, N, group size


def best_ms(fn, rounds: int = 40) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def int8_rows(packed: torch.Tensor, ratio: torch.Tensor, shift: torch.Tensor, k: int, gs: int) -> torch.Tensor:
    """INT4 [N, K/2] -> the int8 [N, K] copy: nibble * (block scale / row scale), rounded."""
    n = packed.shape[0]
    nib = (packed.unsqueeze(-1) >> shift) & 0xF
    q = ((nib.to(torch.int16) ^ 8) - 8).reshape(n, k // gs, gs).float()
    return torch.round(q * ratio[..., None]).to(torch.int8).reshape(n, k)


def main() -> int:
    import zq_compile.ops  # noqa: F401  (registers the ops)
    from zq_compile.codegen.cpu.kernels import KERNELS
    from zq_compile.codegen.cpu.select import cpu_description, int8_weight_qmax
    from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS
    from zq_compile.quant.kgroups import quantize_kgroups, to_int8_per_row

    if KERNELS["onednn"].unavailable_reason():
        print("oneDNN's int8 GEMM is not available here:", KERNELS["onednn"].unavailable_reason())
        return 1
    unpack = torch.compile(int8_rows, dynamic=False)
    shift = torch.tensor([0, 4], dtype=torch.uint8)
    print(f"{cpu_description()}, {torch.get_num_threads()} threads; best of 40 calls, ms")
    print(f"{'M x K x N':16s} {'int8 copy':>10s} {'ATen INT4':>10s} {'per call':>10s}  (unpack, reorder)")
    g = torch.Generator().manual_seed(0)
    for m, k, n, gs in SHAPES:
        qw = quantize_kgroups(torch.randn(n, k, generator=g) * 0.05, group_size=gs)
        w8, s8 = to_int8_per_row(qw.qdata, qw.scale, None, gs, k, int8_weight_qmax())
        ratio = (qw.scale.float() / s8[:, None]).contiguous()
        if not torch.equal(unpack(qw.qdata, ratio, shift, k, gs), w8):
            raise AssertionError("the per-call unpack does not reproduce the kept int8 copy")
        x_q = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        x_s = torch.rand(m, 1, generator=g)
        x_u8 = (x_q.to(torch.int32) + 128).to(torch.uint8)
        handle = KERNELS["onednn"].finalize_weight(w8, s8)
        zero = torch.zeros(n, dtype=torch.int64)

        def per_call():
            packed = torch.ops.onednn.qlinear_prepack(unpack(qw.qdata, ratio, shift, k, gs), None)
            return torch.ops.onednn.qlinear_pointwise(x_u8, 1.0, 128, packed, s8, zero, None, 1.0, 0,
                                                      torch.float32, "none", [], "")

        aten = W4A8_KERNELS["int4pack"]
        held = aten.finalize_weight(qw.qdata, qw.scale, None, gs, k)
        t_copy = best_ms(lambda: torch.ops.zq.onednn_u8s8_mm(x_u8, handle, s8))
        t_aten = best_ms(lambda: aten.linear(x_q, x_s, held, qw.scale, None, None, gs, k, torch.float32))
        t_call = best_ms(per_call)
        t_unpack = best_ms(lambda: unpack(qw.qdata, ratio, shift, k, gs))
        t_reorder = best_ms(lambda: torch.ops.onednn.qlinear_prepack(w8, None))
        print(f"{m}x{k}x{n:<9d} {t_copy:10.3f} {t_aten:10.3f} {t_call:10.3f}  ({t_unpack:.3f}, {t_reorder:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
