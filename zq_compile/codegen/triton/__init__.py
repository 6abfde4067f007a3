"""Triton kernels for CUDA (and for CPU tensors under ``TRITON_INTERPRET=1``, for tests).

One kernel per file, each beside its pure-PyTorch reference:

    quantize.py        per-token int8 quantize (optionally from a precomputed row absmax)
    norm_quantize.py   LayerNorm / RMSNorm + per-token quantize in one pass over the row
    gemm_a8.py         int8-activation GEMM, int8 or packed int4 weights (W8A8, W4A8)
    gemm_a16.py        weight-only GEMM, float activations, int8 or int4 weights (W8A16, W4A16)
    epilogue.py        the GEMM epilogue shared by both GEMMs (scales, bias, activation,
                       residual, float or requantized int8 output) and its reference
    common.py          rounding and absmax helpers every quantizing kernel uses
    configs.py         autotune configs, keyed by M bucket, and the row-kernel launch heuristics
    ops.py             the ``zq::triton_*`` torch ops (triton_op on CUDA, custom_op under the
                       interpreter)
    kernel.py          the kernel object the backend lowers ``zq::`` ops to (target "triton")
    weight_only.py     zq::linear_wo's kernel "triton" (gemm_a16: W8A16, W4A16)
    w4a8.py            zq::linear_w4a8's kernel "triton" (gemm_a8 on the INT4 weight)
    aot.py             ahead-of-time compilation for sm_80 / sm_90 without a GPU (static checks)
    runtime.py         where the kernels can run, and why not

Importing this package imports nothing heavy; ``ops`` registers the ops when first imported.
"""
