"""Tile bookkeeping shared by the GEMM kernels (``gemm_a8``, ``gemm_a16``): which output tile a
program owns, where its activation and weight tiles start, and how an int4 weight tile is
unpacked. Both GEMMs read the same weight layouts, so these must not drift apart.

- Program order is grouped by GROUP_M rows of tiles, so consecutive programs share weight tiles
  in L2.
- Rows past M and columns past N read row / column 0 instead of being masked: the loads stay
  unconditional (better pipelining) and the epilogue's store mask drops those results.
- int4 weights are packed two per byte along K, low nibble first (``quant.pack_int4``): K row k
  of a tile loads byte k // 2, shifts it by 4 * (k % 2) and sign-extends the nibble.
"""

import triton
import triton.language as tl


@triton.jit
def tile_offsets(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr):
    """(offs_m, offs_n, offs_k, rows, cols) of this program's output tile; rows/cols wrap."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = (offs_m % M).to(tl.int64)
    cols = offs_n % N
    return offs_m, offs_n, offs_k, rows, cols


@triton.jit
def weight_tile_ptrs(w_ptr, cols, offs_k, stride_wn, stride_wk, W_BITS: tl.constexpr):
    """Pointers of a [BLOCK_K, BLOCK_N] weight tile (W is [N, K] int8 or [N, ceil(K/2)] packed)
    and the nibble shift of each K row (unused for int8). A K step of BLOCK_K advances them by
    BLOCK_K * W_BITS // 8 bytes."""
    w_ptrs = w_ptr + cols[None, :] * stride_wn + (offs_k[:, None] // (8 // W_BITS)) * stride_wk
    shifts = (offs_k[:, None] % 2) * 4
    return w_ptrs, shifts


@triton.jit
def load_weight_tile(w_ptrs, shifts, k_ok, W_BITS: tl.constexpr):
    """The weight tile as int8 values; K rows past the end (``k_ok`` false) read as 0."""
    if W_BITS == 8:
        q = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
    else:
        packed = tl.load(w_ptrs, mask=k_ok[:, None], other=0)
        nibble = (packed.to(tl.int32) >> shifts) & 0xF
        q = ((nibble ^ 8) - 8).to(tl.int8)
    return q
