"""torch.library ops in the ``zq`` namespace. Importing this package registers them."""

from zq_compile.ops import attention, linear, quantize  # noqa: F401  (registration)
from zq_compile.codegen.cpu import kernels  # noqa: F401  (registers zq::int8_mm_ref, zq::onednn_*)

__all__ = ["attention", "linear", "quantize", "kernels"]
