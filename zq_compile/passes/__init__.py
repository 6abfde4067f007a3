"""FX passes over the graph Dynamo captured, one concern per file (see README.md here).

``PASS_ORDER`` is the order the runner applies them in; each name is a module of this package
exposing ``run(ctx: PassContext) -> int`` (the number of rewrites it made) and can be switched off
with ``ZeroQuantConfig(disable_passes=(name,))``.
"""

PASS_ORDER: tuple[str, ...] = ("calibrate_linears", "smooth_outliers", "rewrite_linear", "decode_weight_only", "kept_decode_w8a16",
                               "quantize_embedding", "merge_sibling_gemms", "fuse_swiglu", "fuse_gate_up", "fuse_gemm_epilogue", "fuse_norm_quantize", "fuse_quantize_prologue", "attention_bf16", "kept_linear_bf16",
                               "bf16_activations")
