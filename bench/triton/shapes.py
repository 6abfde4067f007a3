"""Benchmark shapes: linear layers (K in, N out) of the models the ZeroQuant paper targets, and the
token counts M (1 = decode, 16 = small batch decode, 128 .. 4096 = prefill / encoder batches)."""

M_VALUES = (1, 16, 128, 1024, 4096)

#: model -> {layer: (K, N)}; GPT-2 small shares BERT-base's widths but fuses Q, K, V.
LAYERS = {
    "bert-base": {"qkv_each": (768, 768), "attn_out": (768, 768), "fc1": (768, 3072), "fc2": (3072, 768)},
    "gpt2": {"c_attn": (768, 2304), "attn_c_proj": (768, 768), "c_fc": (768, 3072), "mlp_c_proj": (3072, 768)},
    "llama-7b": {"q_k_v_o": (4096, 4096), "gate_up": (4096, 11008), "down": (11008, 4096)},
}

#: Row widths of the norm + quantize kernels (hidden sizes) and of the per-token quantize (any
#: GEMM input, FFN widths included).
NORM_WIDTHS = {"bert-base": 768, "gpt2": 768, "llama-7b": 4096}
QUANT_WIDTHS = {"bert-base": (768, 3072), "gpt2": (768, 3072), "llama-7b": (4096, 11008)}


def gemm_shapes():
    """Every (model, layer, K, N), duplicates kept (the table is per model)."""
    for model, layers in LAYERS.items():
        for layer, (k, n) in layers.items():
            yield model, layer, k, n
