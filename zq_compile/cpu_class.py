"""The CPU class a figure was measured on, from the CPU's feature flags.

Which pipeline is fastest depends more on the class than on the vendor: with AMX the int8 and
bf16 arithmetic is nearly free and the bytes moved between ops set the time; with AVX-512 VNNI
int8 dot products are fast; AVX-512 without VNNI and AVX2 have no int8 dot-product instruction.
So every table the bench and the demo print names the class, and code that picks a variant per
class (bench, backend) asks here. Native bf16 (avx512_bf16 / amx_bf16) is a separate question
(``zq_compile.codegen.cpu.select.has_bf16``): AVX-512 VNNI CPUs exist with and without it.
"""

from __future__ import annotations

from collections.abc import Iterable

AMX = "AMX"
AVX512_VNNI = "AVX-512 VNNI"
AVX512 = "AVX-512 without VNNI"
AVX2 = "AVX2"
OLDER = "older than AVX2"
#: fastest first
CPU_CLASSES = (AMX, AVX512_VNNI, AVX512, AVX2, OLDER)

_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _flags(flags: Iterable[str] | None) -> frozenset[str]:
    if flags is None:
        from zq_compile.codegen.cpu.select import cpu_flags

        return cpu_flags()
    return frozenset(flags)


def cpu_class(flags: Iterable[str] | None = None) -> str:
    """One of ``CPU_CLASSES`` for these /proc/cpuinfo flags (default: this CPU's)."""
    f = _flags(flags)
    if "amx_int8" in f:
        return AMX
    if "avx512_vnni" in f:
        return AVX512_VNNI
    if "avx512f" in f:
        return AVX512
    if "avx2" in f:
        return AVX2
    return OLDER


def cpu_class_label(flags: Iterable[str] | None = None) -> str:
    """The class with native bf16 noted, e.g. "AVX-512 VNNI, native bf16", as tables print it."""
    f = _flags(flags)
    return cpu_class(f) + (", native bf16" if _BF16_FLAGS & f else ", no native bf16")
