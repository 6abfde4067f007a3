"""Launch configurations: GEMM autotune configs keyed by M bucket, row-kernel heuristics.

GEMM configs live in one table per kernel, one list per M bucket (``runtime.m_bucket``: <=16,
<=64, <=256, larger). The autotuner's key is the bucket, not M, so a new sequence length reuses
its bucket's tuned choice; its ``early_config_prune`` hands it only the bucket's configs.

Every config here passed the static checks (``checks.py``; tests/triton/test_static_checks.py
in CI) for sm_80 and sm_90, for int8 and int4 weights, with the lightest and the heaviest
epilogue: the dot lowers to tensor-core instructions, shared memory fits, and ptxas reports no
spills. Candidates that failed are in ``DROPPED`` with the measured reason; the whole sweep is
bench/results/triton_static_sweep.json. Which passing tile is fastest is for a GPU to say: the
autotuner times the bucket's configs on first use.
"""

from __future__ import annotations

import math

import torch
import triton

from zq_compile.codegen.triton.runtime import interpreting, m_bucket

#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); GROUP_M (L2 swizzle) is 8 throughout.
#: The first tile of a bucket is the one the interpreter runs.
Tile = tuple[int, int, int, int, int]

A8_TILES: dict[int, list[Tile]] = {
    0: [(16, 64, 256, 4, 3), (16, 128, 128, 4, 4), (16, 32, 256, 4, 4), (16, 64, 128, 2, 4)],
    1: [(32, 64, 128, 4, 4), (32, 128, 128, 4, 4), (64, 64, 128, 4, 4), (64, 128, 64, 4, 4)],
    2: [(64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (128, 128, 64, 8, 3), (64, 256, 64, 8, 3)],
    3: [(128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (128, 128, 64, 8, 3), (64, 256, 64, 8, 3)],
}

#: gemm_a8 with GATE_GEMM (SwiGLU's gate and up in one kernel, passes/fuse_gate_up.py): two int32
#: accumulators and two weight tiles per K step, so each tile holds half the columns of the plain
#: GEMM's at the same rows. Kept only what the static checks pass (``DROPPED``, "a8_dual").
A8_DUAL_TILES: dict[int, list[Tile]] = {
    0: [(16, 64, 128, 4, 3), (16, 32, 256, 4, 4), (16, 128, 128, 4, 4)],
    1: [(32, 64, 128, 4, 4), (64, 64, 128, 4, 4), (32, 128, 64, 4, 4)],
    2: [(64, 64, 128, 4, 4), (64, 128, 64, 8, 3), (128, 64, 64, 8, 3)],
    3: [(128, 64, 64, 8, 4), (64, 128, 64, 8, 3), (64, 256, 64, 8, 3)],
}

#: Weight-only GEMMs are for small M (decode); larger M should quantize activations instead,
#: but every bucket has configs so the op is correct at any M.
A16_TILES: dict[int, list[Tile]] = {
    0: [(16, 64, 128, 4, 4), (16, 32, 256, 4, 4), (16, 64, 64, 4, 4)],
    1: [(32, 64, 64, 4, 4), (64, 64, 64, 4, 4), (32, 128, 64, 4, 4)],
    2: [(64, 128, 32, 4, 4), (128, 64, 64, 8, 3), (64, 64, 64, 4, 4)],
    3: [(128, 128, 64, 8, 3), (128, 128, 32, 8, 3), (128, 64, 64, 8, 3)],
}

#: Candidates the sweep (bench/triton/static_report.py --sweep) rejected, with what ptxas /
#: cuobjdump reported. Variants: w8/w4 weights, "bias" = the backend's scale + bias epilogue,
#: "all" = zero point + bias + GeLU + residual + requantize. Notable: the issue's 128x128x64 tile
#: at 4 warps spills on both targets; 128x256x64 at 8 warps (a usual H100 choice) fits sm_90 with
#: the light epilogue (REG 172) but spills with the full one and on sm_80, so it waits for a
#: per-target, per-epilogue table once a GPU can measure whether it is worth one.
DROPPED: dict[tuple[str, Tile], str] = {
    ("a8", (16, 64, 128, 4, 4)): "sm_90 w4-bias: REG 64 STACK 8",
    ("a8", (16, 128, 256, 4, 3)): "w4-all: REG 32 STACK 3096 (sm_80), 2952 (sm_90)",
    ("a8", (16, 256, 128, 4, 3)): "w4-all: REG 32 STACK 3304 (sm_80), 3144 (sm_90)",
    ("a8", (64, 256, 64, 4, 3)): "sm_80 w8-bias: REG 255 STACK 584",
    ("a8", (128, 64, 128, 4, 4)): "sm_80 w4-all: REG 255 STACK 40",
    ("a8", (128, 128, 64, 4, 4)): "sm_80 w8-bias: REG 255 STACK 568; sm_90 w4-all: REG 255 STACK 552",
    ("a8", (128, 128, 256, 8, 3)): "sm_80 w4-all: REG 255 STACK 432 (sm_90 passes all variants, 192 KB smem)",
    ("a8", (128, 256, 64, 8, 3)): "sm_80 w8-bias: REG 255 STACK 552; sm_90 w4-all: REG 255 STACK 464",
    ("a8", (128, 256, 128, 8, 3)): "sm_80 w8-bias: REG 255 STACK 648; sm_90 w4-all: REG 255 STACK 472",
    ("a8", (256, 128, 64, 8, 3)): "sm_80 w8-bias: REG 255 STACK 536; sm_90 w4-all: REG 255 STACK 496",
    ("a8", (256, 128, 128, 8, 3)): "sm_80 w8-bias: REG 255 STACK 648; sm_90 w4-all: REG 255 STACK 576",
    ("a8_dual", (128, 128, 64, 8, 3)): "sm_80 gate_up: REG 255 STACK 112; gate_up-requant-smoothed: STACK 136",
    ("a8_dual", (128, 128, 64, 8, 4)): "sm_80 gate_up: REG 255 STACK 112; gate_up-requant-smoothed: STACK 136",
    ("a16", (16, 32, 128, 4, 4)): "sm_90 w4-all: REG 96 STACK 8",
    ("a16", (16, 64, 256, 4, 3)): "sm_90 w8-bias: REG 96 STACK 8",
    ("a16", (16, 128, 64, 4, 4)): "sm_80 w8-all: REG 80 STACK 16",
    ("a16", (64, 128, 64, 4, 3)): "sm_80 w8-bias: REG 168 STACK 8",
    ("a16", (128, 128, 64, 4, 3)): "sm_80 w8-bias: REG 255 STACK 24; w4-all: STACK 424",
    ("a16", (128, 256, 32, 8, 3)): "w4-all: REG 255 STACK 376 (sm_80), 528 (sm_90)",
    # gemm_a8 on INT4 K groups (W4A8), tiles with BLOCK_K cut to 128: an fp32 accumulator scaled
    # per K step, zero points, GeLU and residual
    ("a8_kgroup", (64, 128, 128, 4, 3)): "sm_80 w4-kgroup-all: REG 255 STACK 88",
    ("a8_kgroup", (128, 128, 128, 8, 3)): "sm_80 w4-kgroup-all: REG 255 STACK 24",
    # ... and with the fused epilogues the fusion passes give W4A8 GEMMs (the slow full matrix)
    ("a8_kgroup", (16, 128, 128, 4, 4)): "sm_90 kgroup+gelu_tanh, kgroup+tanh: REG 128 STACK 8",
    ("a8_kgroup", (64, 128, 32, 4, 4)): "sm_80 kgroup+gelu_tanh: REG 168 STACK 8",
    ("a8_kgroup", (64, 128, 32, 4, 3)): "sm_80 kgroup+gelu_tanh: REG 168 STACK 8",
    ("a8_kgroup", (32, 128, 64, 4, 4)): "sm_90 kgroup+quantize_x-residual: REG 128 STACK 8",
    ("a8_kgroup", (32, 128, 32, 4, 4)): "sm_80 kgroup+swiglu-recompute-quantize: REG 128 STACK 8",
    ("a8_kgroup", (128, 128, 64, 8, 3)): "sm_90 kgroup+quantize_x-residual: REG 255 STACK 16",
    ("a8_kgroup", (128, 128, 64, 8, 4)): "sm_90 kgroup+quantize_x-residual: REG 255 STACK 16",
    ("a8_kgroup", (128, 128, 32, 8, 3)): "sm_90 kgroup+quantize_x-residual: REG 255 STACK 8",
    ("a8_kgroup", (128, 128, 32, 8, 4)): "sm_90 kgroup+quantize_x-residual: REG 255 STACK 8",
    # the gate + up kernel on K groups: two fp32 accumulators of block-scaled dots
    ("a8_dual_kgroup", (16, 128, 128, 4, 4)): "kgroup+gate_up: REG 255 STACK 680-832 (sm_80, sm_90); "
                                              "kgroup+quantize_x-gate_up: STACK 1392",
    ("a8_dual_kgroup", (32, 128, 32, 4, 4)): "sm_80 kgroup+gate_up: REG 168 STACK 8",
    ("a8_dual_kgroup", (32, 64, 64, 4, 4)): "sm_80 kgroup+gate_up-recompute-quantize: REG 128 STACK 8",
    ("a8_dual_kgroup", (64, 64, 64, 4, 4)): "sm_80 kgroup+quantize_x-gate_up: REG 255 STACK 16",
    ("a8_dual_kgroup", (64, 256, 32, 8, 3)): "kgroup+gate_up: REG 255 STACK 16 (sm_80), 64 (sm_90)",
    ("a8_dual_kgroup", (64, 256, 64, 8, 3)): "kgroup+gate_up: REG 255 STACK 8 (sm_80), 56 (sm_90)",
    ("a8_dual_kgroup", (128, 64, 64, 8, 3)): "sm_80 kgroup+quantize_x-gate_up: REG 255 STACK 8",
    ("a8_dual_kgroup", (128, 64, 64, 8, 4)): "sm_80 kgroup+quantize_x-gate_up: REG 255 STACK 8",
}

GROUP_M = 8
TABLES = {"a8": A8_TILES, "a8_dual": A8_DUAL_TILES, "a16": A16_TILES}
#: The tables each kernel's autotuner holds (gemm_a8 serves both of its own; the call picks one).
KERNEL_TABLES = {"a8": ("a8", "a8_dual"), "a16": ("a16",)}


def to_config(tile: Tile) -> triton.Config:
    bm, bn, bk, warps, stages = tile
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M},
                         num_warps=warps, num_stages=stages)


def tile_of(config: triton.Config) -> Tile:
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_warps, config.num_stages)


def gemm_tiles(kind: str) -> list[Tile]:
    """Every tile of one table ("a8", "a8_dual", "a16"), each once, bucket order."""
    return list(dict.fromkeys(t for tiles in TABLES[kind].values() for t in tiles))


def gemm_configs(kernel: str) -> list[triton.Config]:
    """The autotune config list of one GEMM kernel ("a8" or "a16"): its tables' tiles, each once."""
    return [to_config(t) for t in dict.fromkeys(t for kind in KERNEL_TABLES[kernel] for t in gemm_tiles(kind))]


#: Shared memory a float-input tile's pipeline may take (below sm_80's 163 KiB per block).
FLOAT_X_SMEM = 160 * 1024


def float_x_fits(tile: Tile, x_bytes: int, weights: int = 1) -> bool:
    """Whether an int8-GEMM tile still fits shared memory when its activation arrives as float
    (``gemm_a8``'s QUANTIZE_X prologue: x_bytes per element instead of 1), estimated as the
    stages' x and weight tiles. The static check builds only the tiles this keeps: the one it
    drops, 128x128x128 at 3 stages with fp32 x, took 176 KiB on sm_80. ``weights``: weight
    tiles per K step (2 with GATE_GEMM)."""
    bm, bn, bk, _, stages = tile
    return stages * (bm * bk * x_bytes + weights * bk * bn) <= FLOAT_X_SMEM


#: The K-group sizes the static checks build both GEMMs for (the INT4 sizes the backend uses,
#: ``quant.kgroups.INT4_GROUP_SIZES``); gemm_a16 runs any multiple of 16, gemm_a8 of 32.
KGROUP_SIZES = (128, 64, 32)


def kgroup_tile(tile: Tile, k_group: int) -> Tile:
    """A GEMM's tile for INT4 blocks of ``k_group`` inputs: BLOCK_K cut to divide the group
    (one block scale per K step; a power of two, so the gcd)."""
    if not k_group:
        return tile
    bm, bn, bk, warps, stages = tile
    return (bm, bn, math.gcd(bk, k_group), warps, stages)


def kgroup_config(config: triton.Config, k_group: int) -> triton.Config:
    return config if not k_group else to_config(kgroup_tile(tile_of(config), k_group))


def bucket_pruner(kind: str):
    """``early_config_prune`` for the autotuner: only the configs of the call's M bucket, from
    the dual table when the call computes the gate too (GATE_GEMM; for a float activation
    quantized in the kernel, only those that fit shared memory with it); on INT4 K groups
    (K_GROUP), with BLOCK_K cut by ``kgroup_tile`` and the cut tiles that spilled left out.

    Under the interpreter only the bucket's first config is kept: timing numpy says nothing about
    a GPU, and one config means the autotuner runs the kernel once instead of benchmarking.
    """
    def prune(configs, named_args, **kwargs):
        dual = bool(kwargs.get("GATE_GEMM"))
        table = TABLES["a8_dual" if dual else kind]
        by_tile = {tile_of(c): c for c in configs}
        x = named_args.get("x_ptr")
        x_bytes = x.element_size() if kind == "a8" and isinstance(x, torch.Tensor) else 1
        chosen = [by_tile[t] for t in table[m_bucket(named_args["M"])]  # bucket order
                  if t in by_tile and (x_bytes == 1 or float_x_fits(t, x_bytes, 1 + dual))]
        k_group = kwargs.get("K_GROUP", 0)
        if k_group:  # cut BLOCK_K to the group; two tiles may become one; a cut tile may spill
            cut = {}
            for c in chosen:
                tile = kgroup_tile(tile_of(c), k_group)
                if (f"{'a8_dual' if dual else kind}_kgroup", tile) not in DROPPED:
                    cut.setdefault(tile, kgroup_config(c, k_group))
            chosen = list(cut.values())
        return chosen[:1] if interpreting() else chosen

    return prune


# -- row kernels (quantize, norm + quantize): memory bound, one heuristic instead of tuning ----

MAX_NORM_N = 16384


def row_launch(k: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_K, num_warps) for the per-token quantize: chunks of <= 1024 columns,
    rows stacked so a program handles >= 1024 elements even for narrow rows."""
    block_k = min(triton.next_power_of_2(max(k, 1)), 1024)
    block_m = max(1, min(16, 1024 // block_k))
    return block_m, block_k, 4


def norm_launch(n: int, rms: bool = False, emit_float: bool = True) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps) for norm + quantize: the whole row in registers (one read),
    about 16 elements per thread."""
    if n > MAX_NORM_N:
        raise ValueError(f"norm + quantize holds a row in registers: N={n} > {MAX_NORM_N}")
    block_n = triton.next_power_of_2(max(n, 1))
    block_m = max(1, min(16, 2048 // block_n))
    warps = min(16, max(4, block_m * block_n // 512))
    if rms and not emit_float and block_n == 4096:
        # the static check found ptxas giving this variant (the one the fusion pass emits for
        # Llama-sized pre-norm blocks) an 8-byte stack frame on sm_90 at 8 warps (REG 48, STACK 8);
        # 16 warps: REG 32, no stack; with the float output, or LayerNorm, 8 warps do not spill
        warps = 16
    return block_m, block_n, warps
