"""Numerics: pure-PyTorch reference quantizers. Every kernel is tested against these."""

from zq_compile.quant.activation import dequantize_per_token_ref, quantize_per_token_ref
from zq_compile.quant.int4 import pack_int4, unpack_int4
from zq_compile.quant.weight import QuantizedWeight, quantize_weight

__all__ = [
    "QuantizedWeight",
    "dequantize_per_token_ref",
    "pack_int4",
    "quantize_per_token_ref",
    "quantize_weight",
    "unpack_int4",
]
