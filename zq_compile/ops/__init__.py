"""torch.library ops in the ``zq`` namespace. Importing this package registers them."""

from zq_compile.ops import linear, quantize  # noqa: F401  (registration)
from zq_compile.codegen.cpu import kernels  # noqa: F401  (registers zq::int8_mm_ref, zq::onednn_*)

__all__ = ["linear", "quantize", "kernels"]
