"""Compile a kernel ahead of time for a GPU this machine does not have, and read what came out.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", 80 | 90, 32))`` runs the whole
pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin via the ptxas shipped in the triton wheel) on a
CPU-only machine. From the result we read:
- the PTX, to prove the int8 dot became tensor-core instructions (``mma.sync ... .s8`` on sm_80,
  ``wgmma.mma_async ... .s32.s8.s8`` on sm_90) and that the quantize numerics survived codegen
  (correctly rounded divisions, the round-to-even constant);
- the shared memory the launch needs (``metadata.shared``), against the per-block maximum;
- registers, stack and local memory per thread from ``cuobjdump --dump-resource-usage`` (the
  cuobjdump in the triton wheel): a non-zero STACK or LOCAL means ptxas spilled registers.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

#: Largest dynamic shared memory one block may opt into: A100 (sm_80) 163 KiB of its 164 KiB,
#: H100 (sm_90) 227 KiB of its 228 KiB (CUDA C programming guide, compute capabilities table).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@dataclass
class Build:
    """One kernel compiled for one target, and what the checks read from it."""

    name: str
    arch: int
    ptx: str
    shared: int
    regs: int
    stack: int
    local: int
    num_warps: int
    extra: dict = field(default_factory=dict)

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0

    @property
    def smem_fits(self) -> bool:
        return self.shared <= SMEM_LIMIT[self.arch]

    def tensor_core_ops(self) -> list[str]:
        """The distinct mma / wgmma instruction forms in the PTX."""
        return sorted(set(re.findall(r"\b((?:wgmma\.mma_async|mma\.sync)[\w.]*)", self.ptx)))

    def has_int8_tensor_core(self) -> bool:
        ops = self.tensor_core_ops()
        if self.arch >= 90 and any(op.startswith("wgmma") for op in ops):
            return any(op.startswith("wgmma") and ".s32.s8.s8" in op for op in ops)
        return any(op.startswith("mma.sync") and ".s8" in op for op in ops)


def cuobjdump_path() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG / STACK / SHARED / LOCAL of the (single) function in a cubin, via cuobjdump."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump_path(), "--dump-resource-usage", path],
                             capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if "REG" not in found:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{out}")
    return {k: int(v) for k, v in found.items()}


def compile_for(fn, arch: int, signature: dict, constexprs: dict, divisible: tuple[str, ...] = (),
                num_warps: int = 4, num_stages: int = 3, name: str = "") -> Build:
    """Compile the JITFunction ``fn`` for sm_<arch>.

    ``signature`` maps every runtime argument to its Triton type ("*i8", "i32", "fp32", ...),
    ``constexprs`` every constexpr argument to its value (an int stride of 1 belongs here, as the
    JIT specialises it), ``divisible`` names the arguments a real launch sees as multiples of 16
    (aligned pointers, row strides, N and K of real layers), as the JIT would specialise them.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    full = {name_: signature.get(name_, "constexpr") for name_ in fn.arg_names}
    missing = [a for a in fn.arg_names if a not in signature and a not in constexprs]
    if missing:
        raise ValueError(f"{fn.__name__}: no type or value for {missing}")
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in divisible}
    src = ASTSource(fn=fn, signature=full, constexprs=constexprs, attrs=attrs)
    # FP fusion on, as a Triton 3.9 launch has it by default: the quantize numerics must
    # survive FMA contraction (common.py), so they are checked where contraction is allowed.
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": True})
    usage = resource_usage(compiled.asm["cubin"])
    return Build(name=name or fn.__name__, arch=arch, ptx=compiled.asm["ptx"],
                 shared=compiled.metadata.shared, regs=usage["REG"], stack=usage.get("STACK", 0),
                 local=usage.get("LOCAL", 0), num_warps=num_warps)
