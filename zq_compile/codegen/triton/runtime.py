"""Where the Triton kernels can run, decided per call (never cached at import).

Two ways to run them:
- on a CUDA device with compute capability >= 8.0 (the int8 tensor-core paths are checked
  ahead of time for sm_80 and sm_90 only, see ``aot.py``);
- on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` in the environment when
  the process starts): numpy executes every kernel program, slowly, with the same numerics. This
  is how CI, which has no GPU, runs them. Triton reads the variable when a ``@triton.jit``
  kernel is defined, so it must be set before this package's kernel modules are imported.
"""

from __future__ import annotations

import functools
import os

import torch

#: The int8 tensor-core instructions the kernels rely on exist from Ampere on (mma.sync s8 on
#: sm_80, wgmma s8 on sm_90); those are the targets the static checks compile for.
MIN_CAPABILITY = (8, 0)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def triton_import_problem() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # a broken install raises ImportError, OSError, RuntimeError ...
        return f"triton cannot be imported ({type(e).__name__}: {e})"
    return None


def device_problem(device: torch.device) -> str | None:
    """None if the Triton kernels can run on tensors of ``device`` in this process, else why not."""
    why = triton_import_problem()
    if why:
        return why
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA tensors, but torch.cuda is not available in this process"
        cap = torch.cuda.get_device_capability(device)
        if cap < MIN_CAPABILITY:
            return (f"compute capability {cap[0]}.{cap[1]} < {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}: "
                    "the int8 tensor-core kernels are built and checked for sm_80 and sm_90")
        return None
    if device.type == "cpu":
        if interpreting():
            return None
        return ("target 'triton' runs CPU tensors only under the Triton interpreter "
                "(TRITON_INTERPRET=1, for tests); use target 'cpu' for CPU speed")
    return f"device {device.type}: target 'triton' runs on CUDA (or CPU under TRITON_INTERPRET=1)"


def m_bucket(m: int) -> int:
    """The autotune bucket of a GEMM's row count: 0 (<=16), 1 (<=64), 2 (<=256), 3 (larger).

    Autotuning is keyed by this bucket rather than by M, so a new batch or sequence length
    reuses the configuration tuned for its bucket instead of tuning (and compiling) again.
    """
    if m <= 16:
        return 0
    if m <= 64:
        return 1
    if m <= 256:
        return 2
    return 3


def identity_launcher(kernel):
    """How the wrappers launch a kernel when no tracing wrapper is needed (custom_op, eager)."""
    return kernel


#: int8 tensor-core operations a GPU does in the time its DRAM moves one byte, rounded down from
#: the A100's ~312 (624 dense TOPS / 2.0 TB/s; the H100 SXM's is ~590), so that recomputing is
#: chosen only where it wins on both.
INT8_OPS_PER_BYTE = 256
REQUANT_PLANS = ("store", "recompute")


def requant_plan(m: int, n: int, k: int, float_bytes: int, gate_bytes: int = 0, gemms: int = 1) -> str:
    """How a requantizing GEMM (``gemm_a8.py``) gets each row's absmax before quantizing it:
    "store" (write the float rows, read them back once) or "recompute" (run the int8 GEMM twice,
    the second time quantizing in the epilogue, no float rows in memory).

    Per output value, recomputing saves the float write and read (2 * float_bytes) and costs 2K
    more int8 operations, plus a second read of the SwiGLU gate (gate_bytes) if there is one;
    the activation and weight tiles, read again right after, are taken to come from L2. A kernel
    that also computes SwiGLU's gate (``gemms=2``) recomputes both GEMMs: 4K operations. Small
    M keeps "store": there the second pass would be a second read of the whole weight. M enters
    by its autotune bucket only (``m_bucket``), so the choice adds no guard of its own on M.
    """
    saved = 2 * float_bytes - gate_bytes
    if m_bucket(m) < 2 or saved <= 0:
        return "store"
    return "recompute" if 2 * k * gemms <= INT8_OPS_PER_BYTE * saved else "store"
