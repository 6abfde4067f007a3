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


#: Without VNNI, x86 int8 GEMMs multiply with vpmaddubsw, which adds two uint8 x int8 products
#: into an int16 and saturates: 255 * 127 * 2 > 32767 (oneDNN u8s8 on an AVX2 EPYC: errors of 3e4
#: on the self-test). Weights within +-64 keep every pair inside int16 (255 * 64 * 2 = 32640), so
#: on such CPUs the int8 GEMMs' weights are quantized on that narrower grid. PyTorch's fbgemm
#: path narrows the activations instead (``reduce_range``); here the weights are narrowed, because
#: they are quantized once from float at compile time and the fused per-token quantize kernels
#: stay as they are on every CPU.
NO_VNNI_WEIGHT_QMAX = 64


def int8_weight_qmax() -> int:
    """The largest |w_q| the int8 GEMMs of this CPU take exactly (127: the full int8 grid)."""
    return 127 if has_vnni() else NO_VNNI_WEIGHT_QMAX


def deployed_weight_qmax(target: str) -> int | None:
    """The narrower grid int8-GEMM weights get on ``target`` on this CPU, or None for the full
    one. Targets "cpu" and "reference" (its exact twin) share it, so graphs running different
    kernels share one set of constants and agree with the reference; "triton" runs on a GPU."""
    if target not in ("cpu", "reference"):
        return None
    qmax = int8_weight_qmax()
    return qmax if qmax < 127 else None


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
    lim = int8_weight_qmax()
    w_q = torch.randint(-lim, lim + 1, (24, 67), generator=g, dtype=torch.int8)
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
    w_q = torch.randint(-int8_weight_qmax(), int8_weight_qmax() + 1, (k, k), generator=g, dtype=torch.int8)
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


#: Rows the shape race times at most: past this, time grows linearly with M and the ranking of
#: the kernels no longer changes, so larger graphs are raced at this M (the report says so).
RACE_MAX_M = 4096


def time_variants(fns: dict, rounds: int) -> dict[str, float]:
    """Fastest ms of each zero-argument callable, taking turns (see ``_race``)."""
    import time

    times = {name: float("inf") for name in fns}
    for i in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if i >= 1:  # the first round packs weights and creates primitives
                times[name] = min(times[name], (time.perf_counter() - start) * 1e3)
    return times


@functools.cache
def race_shapes(shapes: tuple[tuple[int, int, int, int], ...], kernels: tuple[str, ...], gemm_bf16: bool,
                rounds: int = 5, weight_only: str | None = None) -> dict[str, float]:
    """ms per forward of the graph's GEMMs, per variant: ``shapes`` are (M, K, N, count).

    Variants: each int8 kernel in ``kernels`` as the pipeline would call it (oneDNN writing bf16
    when ``gemm_bf16``, else fp32; ``_int_mm`` writing int32), oneDNN writing fp32 as well when
    the pipeline is bf16 (what the fp32 pipeline would pay), and the best float alternative the
    CPU has: ``F.linear`` in bf16 where it has native bf16, else in fp32. GEMMs alone: the
    epilogues are fused into Inductor's kernels, whose bytes the report counts. ``weight_only``
    names a kernel of ``weight_only.py`` to time as well on the same int8 weights with float
    activations (``passes/decode_weight_only.py`` asks for it in decode-sized graphs).
    """
    import torch.nn.functional as F

    from zq_compile.codegen.cpu.kernels import onednn_packed

    g = torch.Generator().manual_seed(0)
    float_dtype = torch.bfloat16 if has_bf16() else torch.float32
    totals: dict[str, float] = {}
    for m, k, n, count in shapes:
        m = min(m, RACE_MAX_M)
        x_q = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
        x_u8 = (x_q.to(torch.int32) + 128).to(torch.uint8)
        w_q = torch.randint(-int8_weight_qmax(), int8_weight_qmax() + 1, (n, k), generator=g, dtype=torch.int8)
        w_s = torch.rand(n, generator=g)
        x_f = torch.randn(m, k, generator=g).to(float_dtype)
        w_f = torch.randn(n, k, generator=g).to(float_dtype)
        fns = {}
        if "onednn" in kernels:
            onednn_packed(w_q, w_s)
            out = [torch.bfloat16, torch.float32] if gemm_bf16 else [torch.float32]
            for dt in out:
                name = f"onednn->{'bf16' if dt == torch.bfloat16 else 'fp32'}"
                fns[name] = lambda dt=dt: torch.ops.zq.onednn_u8s8_mm(x_u8, w_q, w_s, dt)
        if "int_mm" in kernels:
            w_t = w_q.t()
            fns["int_mm->int32"] = lambda: torch._int_mm(x_q, w_t)
        fns[f"{'bf16' if float_dtype == torch.bfloat16 else 'fp32'} F.linear"] = lambda: F.linear(x_f, w_f)
        if weight_only is not None:
            from zq_compile.codegen.cpu.weight_only import WO_KERNELS

            wo = WO_KERNELS[weight_only]
            if wo.unavailable_reason(8, n, k, 0):  # what the pass then emits for this shape
                wo = WO_KERNELS["dequant"]
            if wo.name == "aten":  # the opaque GEMM alone, as for oneDNN: its casts fuse into neighbours
                x_b, s_b = x_f.to(torch.bfloat16), w_s.to(torch.bfloat16)
                fns[f"weight-only {weight_only}"] = lambda: torch.ops.aten._weight_int8pack_mm(x_b, w_q, s_b)
            else:  # Inductor fuses the dequantize: timed unfused, an upper bound
                x_wo = x_f.to(torch.bfloat16 if gemm_bf16 else torch.float32)  # the graph's activations
                fns[f"weight-only {weight_only}"] = lambda: wo.linear(x_wo, w_q, w_s, None, None, 8, 0, k,
                                                                      x_wo.dtype)
        for name, ms in time_variants(fns, rounds).items():
            totals[name] = totals.get(name, 0.0) + ms * count
    return totals


def own_variant(kernel: str, gemm_bf16: bool) -> str:
    """The ``race_shapes`` variant that times ``kernel`` as the pipeline calls it."""
    if kernel == "int_mm":
        return "int_mm->int32"
    return "onednn->bf16" if gemm_bf16 else "onednn->fp32"


def describe_shapes(shapes) -> str:
    """(M, K, N, count) shapes as the race lines of the report print them."""
    return ", ".join(f"{m}x{k}x{n}" + (f" (x{c})" if c > 1 else "") for m, k, n, c in shapes)


def choose_for_shapes(shapes, gemm_bf16: bool) -> tuple[KernelChoice, str, str | None]:
    """The int8 kernel for a graph with these GEMM shapes, raced on them (KERNEL-NOTES.md: a
    proxy problem saw oneDNN and _int_mm within 1% where the graph's own shapes put oneDNN 3x
    ahead). Returns the choice, the race line for the report, and a note when the float
    alternative beat every int8 variant. With one int8 kernel (CPUs without VNNI) it is still
    raced against the float alternative, so that the report says where float would be faster."""
    ready, rejected = _candidates()
    if not ready:
        choice = select_cpu_kernel("auto", "large")
        return choice, "", None
    times = race_shapes(tuple(shapes), tuple(ready), gemm_bf16)
    own = {name: own_variant(name, gemm_bf16) for name in ready}
    best = ready[0]
    for name in ready[1:]:
        if times[own[name]] < RACE_MARGIN * times[own[best]]:
            best = name
    where = describe_shapes(shapes)
    capped = " (M capped at %d)" % RACE_MAX_M if any(m > RACE_MAX_M for m, *_ in shapes) else ""
    line = (f"GEMMs per forward at this graph's shapes {where}{capped}: "
            + ", ".join(f"{v} {t:.2f} ms" for v, t in sorted(times.items(), key=lambda kv: kv[1]))
            + f" -> {best}")
    losers = tuple((n, f"slower than {best} at this graph's shapes ({line})") for n in ready if n != best)
    choice = KernelChoice(KERNELS[best], f"raced at this graph's shapes on {cpu_description()}", rejected + losers)
    float_name = next(v for v in times if v.endswith("F.linear"))
    note = None
    if times[float_name] < min(times[own[n]] for n in ready):
        note = (f"no int8 variant beats {float_name} on this CPU at these shapes "
                f"({float_name} {times[float_name]:.2f} ms vs {best} {times[own[best]]:.2f} ms for the GEMMs)")
    return choice, line, note
