"""torch.library ops in the ``zq`` namespace. Importing this package registers them."""

from zq_compile.ops import attention, linear, linear_wo, quantize  # noqa: F401  (registration)
from zq_compile.codegen.cpu import kernels  # noqa: F401  (registers zq::int8_mm_ref, zq::onednn_*)
from zq_compile.codegen.cpu import w4a8, weight_only  # noqa: F401  (registers zq::int8pack_mm, zq::w4a8_int8_mm)

__all__ = ["attention", "linear", "linear_wo", "quantize", "kernels", "w4a8", "weight_only"]
