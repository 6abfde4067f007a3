"""erf_without_exp (post-grad, Inductor's aten graph): erf as a rational function, no exp.

Exact GeLU is ``0.5 x (1 + erf(x / sqrt 2))``; on a BERT FFN1 epilogue (per-token scale, bias,
GeLU, the next quantize) erf is most of the arithmetic. Inductor's CPU code calls ATen's
vectorized ``erf``, which is Abramowitz & Stegun 7.1.26: a division *and* a SLEEF ``exp(-z^2)``
per element. The exp underflows into denormals for |z| > ~9.4, and denormal arithmetic takes
microcode assists: on the AMX Xeon of 2026-12-06, GeLU over a 1024 x 3072 fp32 tensor written
as bf16 took 2.5 ms at standard deviation 1 and 13.9 ms at 10 (``bench/ffn1_epilogue_options.py``).

A&S 7.1.28 has no exp: for z >= 0,

    erf(z) ~= 1 - 1 / (1 + a1 z + a2 z^2 + ... + a6 z^6)^16,   |error| <= 3e-7 in exact arithmetic

(the sixteenth power is four squarings), with erf(-z) = -erf(z). That is six FMAs, four
multiplies and one division, about half of 7.1.26's instructions on any SIMD width, and z is
clamped to [0, 4] first (erf(4) is 1 - 1.5e-8, which rounds to 1.0 in fp32) so no intermediate
overflows or goes denormal. In fp32 the sixteenth power multiplies the rounding error of t by
16: the computed erf is within 2e-6 of the true one (1.8e-6 seen on a grid of 200k points over
[-6, 6]; ATen's eager erf 6e-8 there, the A&S 7.1.26 Inductor runs 1.5e-7 by its bound), and
exact GeLU within 5e-7 at |x| <= 1 (4.2e-7 seen). That is far below what the value is stored
with next: a bf16 ulp at 1 is 7.8e-3, and an int8 step of a row is larger still.

Before:

    z ─► erf ─► ...

After (all in fp32; a bf16/fp16 z is converted in and the result back):

    z ─► abs ─► clamp_max(4) ─► t = 1 + z P(z) ─► t^16 ─► r = 1 / t^16
    z ─► ge(0) ──────────────────────────────────────────────────────┐
                                       where(z >= 0, 1 - r, r - 1) ◄─┘ ─► ...

NaN stays NaN (every step propagates it, and ``where`` takes ``r - 1`` for it); +-inf gives
+-1. Only CPU tensors of fp32, bf16 or fp16 are rewritten (float64 keeps ATen's erf).

Where it runs: only when Inductor generates vectors of at most ``MAX_VECTOR_BITS`` (256: AVX2
and narrower). Where the int8 pipeline computes GeLU, the FFN1 epilogue kernel (per-token scale,
bias, GeLU, the next quantize), the two forms are within a few percent: on the AMX Xeon of
2026-12-06 the rewrite was 3% slower with 512-bit code and 3.5% faster with 256-bit code at
pre-activation standard deviations 1 and 3 (``bench/gelu_erf_forms.py``), while GeLU alone was
1.13x to 1.36x faster, and 4x to 7x at standard deviation 10, in two runs. So 512-bit code
keeps ATen's erf, whose denormal cliff needs |x| > 13 in the FFN (not seen in the models we
measured), and the pass then counts 0. Returns the number of erf nodes rewritten; switch off with
``disable_passes=("erf_without_exp",)``.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.passes.graph_utils import annotate

aten, prims = torch.ops.aten, torch.ops.prims

NAME = "erf_without_exp"

#: Abramowitz & Stegun 7.1.28, coefficients a1..a6.
A = (0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638)
#: erf(4) = 1 - 1.5e-8: 1.0 in fp32, so clamping there changes no result.
CLAMP = 4.0
#: The widest vectors Inductor may generate for the rewrite to run (None: any width).
MAX_VECTOR_BITS: int | None = 256


def vector_bits() -> int:
    """The width of the vectors Inductor's CPU code uses now (its ``cpp.simdlen`` included)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return pick_vec_isa().bit_width()


def erf_reference(z: torch.Tensor) -> torch.Tensor:
    """The rewrite's arithmetic in eager torch ops (fp32): what the tests judge the pass by."""
    x = z.float()
    a = x.abs().clamp_max(CLAMP)
    p = A[5]
    for c in reversed(A[:5]):
        p = a * p + c
    t = 1.0 + a * p
    t = t * t
    t = t * t
    t = t * t
    r = 1.0 / (t * t)
    return torch.where(x >= 0, 1.0 - r, r - 1.0).to(z.dtype)


def run(graph: fx.Graph) -> int:
    if MAX_VECTOR_BITS is not None and vector_bits() > MAX_VECTOR_BITS:
        return 0
    rewritten = 0
    for erf in list(graph.find_nodes(op="call_function", target=aten.erf.default)):
        z = erf.args[0]
        val = z.meta.get("val") if isinstance(z, fx.Node) else None
        if not isinstance(val, torch.Tensor) or val.dtype not in (torch.float32, torch.bfloat16, torch.float16) \
                or val.device.type != "cpu":  # GPU code calls libdevice's erf, which has no such cost
            continue
        with graph.inserting_before(erf):
            out = _emit(graph, z, val.dtype)
        erf.replace_all_uses_with(out)
        graph.erase_node(erf)
        rewritten += 1
    return rewritten


def _emit(graph: fx.Graph, z: fx.Node, dtype: torch.dtype) -> fx.Node:
    """Insert ``erf_reference``'s arithmetic as aten nodes (with fake values for Inductor)."""
    fake_mode = z.meta["val"].fake_mode

    def node(target, *args):
        n = graph.call_function(target, args)
        annotate(n, fake_mode)
        return n

    x = z if dtype == torch.float32 else node(prims.convert_element_type.default, z, torch.float32)
    a = node(aten.clamp_max.default, node(aten.abs.default, x), CLAMP)
    p = A[5]
    for c in reversed(A[:5]):
        p = node(aten.add.Tensor, node(aten.mul.Tensor, a, p), c)
    t = node(aten.add.Tensor, node(aten.mul.Tensor, a, p), 1.0)
    for _ in range(3):
        t = node(aten.mul.Tensor, t, t)
    r = node(aten.reciprocal.default, node(aten.mul.Tensor, t, t))
    pos = node(aten.add.Tensor, node(aten.neg.default, r), 1.0)
    neg = node(aten.sub.Tensor, r, 1.0)
    out = node(aten.where.self, node(aten.ge.Scalar, x, 0), pos, neg)
    return out if dtype == torch.float32 else node(prims.convert_element_type.default, out, dtype)
