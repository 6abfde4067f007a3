"""H100 roofline estimates from the static build data: what each kernel could reach, not what it
does. No GPU was used; every figure here is arithmetic on datasheet peaks.

Peaks (NVIDIA H100 SXM5 datasheet, dense, no sparsity): int8 tensor core 1979 TOPS, fp16/bf16
tensor core 989.4 TFLOPS, HBM3 3.35 TB/s, 132 SMs, 64 K 32-bit registers and 228 KB shared memory
per SM. The model:
    time = max(padded_ops / peak * wave_factor, bytes / bandwidth)
- padded_ops counts the work of whole tiles (M and N rounded up to the tile), since a 16-row
  tile does 16 rows of work for M = 1;
- wave_factor = ceil(tiles / 132) * 132 / tiles: an SM's tensor cores are shared by the CTAs
  resident on it, so throughput is per SM, and a last partial wave (or fewer tiles than SMs, as
  at small M) leaves SMs idle. Resident CTAs per SM (from the registers and shared memory the
  build reported) are recorded beside it: they hide latency, which this model does not price;
- bytes are each operand read once and the output written once (L2 reuse assumed perfect).
"""

from __future__ import annotations

import math

H100 = {"name": "H100 SXM5 (datasheet)", "int8_tops": 1979e12, "fp16_tflops": 989.4e12, "hbm_bps": 3.35e12,
        "sms": 132, "regs_per_sm": 65536, "smem_per_sm": 228 * 1024, "max_threads_per_sm": 2048,
        "max_ctas_per_sm": 32}


def ctas_per_sm(regs: int, num_warps: int, shared: int, gpu=H100) -> int:
    threads = 32 * num_warps
    by_regs = gpu["regs_per_sm"] // max(1, regs * threads)
    by_smem = gpu["smem_per_sm"] // shared if shared else gpu["max_ctas_per_sm"]
    by_threads = gpu["max_threads_per_sm"] // threads
    return max(0, min(by_regs, by_smem, by_threads, gpu["max_ctas_per_sm"]))


def gemm_estimate(m, n, k, *, act_bytes, w_bits, out_bytes, peak, tile=None, gpu=H100) -> dict:
    """Roofline of one GEMM; with ``tile`` (BLOCK_M, BLOCK_N, ...) the tile padding and wave
    quantization of that config are included."""
    ops = 2 * m * n * k
    bytes_ = m * k * act_bytes + n * k * w_bits / 8 + m * n * out_bytes + 4 * (m + n)
    padded, wave = ops, 1.0
    if tile is not None:
        bm, bn = tile[0], tile[1]
        tiles = math.ceil(m / bm) * math.ceil(n / bn)
        padded = 2 * math.ceil(m / bm) * bm * math.ceil(n / bn) * bn * k
        wave = math.ceil(tiles / gpu["sms"]) * gpu["sms"] / tiles
    t_compute = padded / peak * wave
    t_memory = bytes_ / gpu["hbm_bps"]
    t = max(t_compute, t_memory)
    return {"us": t * 1e6, "bound": "compute" if t_compute >= t_memory else "memory",
            "tops": ops / t / 1e12, "gbps": bytes_ / t / 1e9}


def fp16_baseline(m, n, k, gpu=H100) -> dict:
    """cuBLAS fp16 at its roofline: the speedup bound our kernels are compared against."""
    return gemm_estimate(m, n, k, act_bytes=2, w_bits=16, out_bytes=2, peak=gpu["fp16_tflops"], gpu=gpu)


def rows_estimate(m, n, *, read_bytes, write_bytes, gpu=H100) -> dict:
    """A memory-bound row kernel (quantize, norm + quantize): bytes moved / bandwidth."""
    bytes_ = m * n * (read_bytes + write_bytes) + 4 * m
    t = bytes_ / gpu["hbm_bps"]
    return {"us": t * 1e6, "bound": "memory", "gbps": bytes_ / t / 1e9}
