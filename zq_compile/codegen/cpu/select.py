"""Choose the int8 GEMM for this CPU, once per process, and say why.

"auto" tries the kernels fastest-first (oneDNN u8s8, then torch._int_mm) and takes the first one
that is present and passes a small self-test against the exact reference; a kernel that fails is
skipped with its reason recorded, never silently. ``torch._int_mm`` is only auto-picked on CPUs
with VNNI: on AVX2-only machines it was measured ~100x slower than fp32 (KERNEL-NOTES.md).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import torch

from zq_compile.codegen.cpu.kernels import KERNELS, CpuKernel

AUTO_ORDER = ("onednn", "int_mm")


@functools.cache
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def cpu_description() -> str:
    flags = cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8") if f in flags]
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()} [{' '.join(shown)}]"


@dataclass(frozen=True)
class KernelChoice:
    kernel: CpuKernel
    reason: str
    rejected: tuple[tuple[str, str], ...] = ()  # (kernel name, why it was not used)


def _self_test(kernel: CpuKernel) -> str | None:
    """Run the kernel on a small awkward problem; None if it matches the reference."""
    why = kernel.unavailable_reason()
    if why:
        return why
    g = torch.Generator().manual_seed(0)
    x_q = torch.randint(-127, 128, (13, 67), generator=g, dtype=torch.int8)
    x_s = torch.rand(13, 1, generator=g) + 0.01
    w_q = torch.randint(-127, 128, (24, 67), generator=g, dtype=torch.int8)
    w_s = torch.rand(3, generator=g) + 0.01
    try:
        got = kernel.linear(x_q, x_s, w_q, w_s, None, None, torch.float32)
    except Exception as e:  # a broken build raises all sorts; we report it verbatim
        return f"self-test raised {type(e).__name__}: {e}"
    want = KERNELS["reference"].linear(x_q, x_s, w_q, w_s, None, None, torch.float32)
    if not torch.allclose(got, want, rtol=1e-5, atol=1e-5):
        return f"self-test mismatch vs reference (max err {(got - want).abs().max().item():.3g})"
    return None


@functools.cache
def select_cpu_kernel(requested: str = "auto") -> KernelChoice:
    if requested == "reference":
        return KernelChoice(KERNELS["reference"], "requested: target 'reference'")
    if requested != "auto":
        why = _self_test(KERNELS[requested])
        if why:
            raise RuntimeError(f"cpu_kernel={requested!r} cannot run here: {why}")
        return KernelChoice(KERNELS[requested], f"requested: cpu_kernel={requested!r}")
    rejected = []
    for name in AUTO_ORDER:
        if name == "int_mm" and not has_vnni():
            rejected.append((name, "no VNNI: torch._int_mm is far slower than fp32 without it"))
            continue
        why = _self_test(KERNELS[name])
        if why is None:
            return KernelChoice(KERNELS[name], f"fastest int8 GEMM that passed its self-test on {cpu_description()}",
                                tuple(rejected))
        rejected.append((name, why))
    return KernelChoice(KERNELS["reference"], "no fast int8 GEMM passed its self-test here", tuple(rejected))


def default_cpu_kernel() -> CpuKernel:
    return select_cpu_kernel("auto").kernel
