"""Choose the int8 GEMM for this CPU and M regime, once per process, and say why.

"auto" self-tests each fast kernel (oneDNN u8s8, torch._int_mm) against the exact reference on a
small awkward problem; a kernel that fails is skipped with its reason recorded, never silently.
When more than one passes, they are raced on a problem of the graph's M regime (decode-sized or
prefill-sized), because which one wins depends on the CPU and on M, not only on the ISA.
``torch._int_mm`` is only considered on CPUs with VNNI: on AVX2-only machines it was measured
~100x slower than fp32 (KERNEL-NOTES.md).
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


def has_bf16() -> bool:
    """Native bf16 dot products (what makes bf16 matmuls faster than fp32 ones)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


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


#: Graphs whose linears all see at most this many rows (tokens) at a time, with a static count,
#: are "small" (decode steps); every other graph is "large" (prefill, encoders).
SMALL_M = 16
#: The problem each regime is raced on: rows, and the K = N of a mid-sized transformer layer.
#: Decode steps are raced at M = 1, the common case, where per-call overheads differ most.
RACE_SHAPES = {"small": (1, 1024), "large": (256, 1024)}
#: A kernel later in AUTO_ORDER must beat the earlier ones by this factor to be chosen: kernels
#: within a few percent of each other would otherwise be picked by the machine's noise.
RACE_MARGIN = 0.9


def _race(names: list[str], regime: str, rounds: int = 20) -> dict[str, float]:
    """Fastest microseconds of each kernel's zq::linear_w8a8 on one problem of this regime.

    Which int8 GEMM is faster is a property of the CPU, not only of its ISA: on a Zen 5 EPYC
    torch._int_mm matched oneDNN at large M and was 3x faster per decode step of a 135M-parameter
    LLM (oneDNN's per-call overhead at M = 1), while on an Intel VNNI machine oneDNN was the faster
    at M = 128 (KERNEL-NOTES.md). So it is measured, once per process and regime, in about 20 ms.
    The kernels take turns and the minimum is kept, so a burst of load from other processes on a
    shared machine hits both alike and cannot decide the race on its own.
    """
    import time

    m, k = RACE_SHAPES[regime]
    g = torch.Generator().manual_seed(0)
    x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
    x_s = torch.rand(m, 1, generator=g)
    w_q = torch.randint(-127, 128, (k, k), generator=g, dtype=torch.int8)
    w_s = torch.rand(k, generator=g)
    weights = {name: KERNELS[name].finalize_weight(w_q, w_s) for name in names}
    times = {name: float("inf") for name in names}
    for i in range(rounds + 2):
        for name in names:
            start = time.perf_counter()
            KERNELS[name].linear(x_q, x_s, weights[name], w_s, None, None, torch.float32)
            if i >= 2:  # warm-up: packing, primitive creation
                times[name] = min(times[name], (time.perf_counter() - start) * 1e6)
    return times


@functools.cache
def _candidates() -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The fast kernels that may run here (AUTO_ORDER order), and why the others may not;
    self-tested once per process, whatever the regimes asked for later."""
    ready, rejected = [], []
    for name in AUTO_ORDER:
        if name == "int_mm" and not has_vnni():
            rejected.append((name, "no VNNI: torch._int_mm is far slower than fp32 without it"))
            continue
        why = _self_test(KERNELS[name])
        if why is None:
            ready.append(name)
        else:
            rejected.append((name, why))
    return tuple(ready), tuple(rejected)


@functools.cache
def select_cpu_kernel(requested: str = "auto", regime: str = "large") -> KernelChoice:
    """The int8 GEMM for graphs of this M regime ("small" or "large", see SMALL_M)."""
    if requested == "reference":
        return KernelChoice(KERNELS["reference"], "requested: target 'reference'")
    if requested != "auto":
        why = _self_test(KERNELS[requested])
        if why:
            raise RuntimeError(f"cpu_kernel={requested!r} cannot run here: {why}")
        return KernelChoice(KERNELS[requested], f"requested: cpu_kernel={requested!r}")
    ready, rejected = _candidates()
    rejected = list(rejected)  # the raced losers are added below
    if not ready:
        return KernelChoice(KERNELS["reference"], "no fast int8 GEMM passed its self-test here", tuple(rejected))
    if len(ready) == 1:
        return KernelChoice(KERNELS[ready[0]], f"the only fast int8 GEMM that passed its self-test on "
                            f"{cpu_description()}", tuple(rejected))
    times = _race(ready, regime)
    best = ready[0]
    for name in ready[1:]:
        if times[name] < RACE_MARGIN * times[best]:
            best = name
    m, k = RACE_SHAPES[regime]
    raced = f"{', '.join(f'{n} {times[n]:.0f} us' for n in ready)} at {m}x{k}x{k}"
    for name in ready:
        if name == best:
            continue
        if times[name] >= times[best]:
            rejected.append((name, f"slower on this CPU for {regime} M ({raced})"))
        else:
            rejected.append((name, f"not {1 - RACE_MARGIN:.0%} faster than {best} for {regime} M ({raced}), "
                                   f"which comes first in the preference order"))
    return KernelChoice(KERNELS[best], f"raced for {regime} M on {cpu_description()}: {raced}", tuple(rejected))


def default_cpu_kernel() -> CpuKernel:
    return select_cpu_kernel("auto").kernel
