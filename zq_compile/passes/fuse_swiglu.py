"""fuse_swiglu (target "triton"): SwiGLU's SiLU(gate) * up goes into the two GEMMs' epilogues.

Llama-style MLPs compute down(SiLU(gate(x)) * up(x)); gate and up read one quantized x. Unfused,
the gate GEMM writes its output, a SiLU kernel reads and writes it, the up GEMM writes its own,
a multiply reads both and writes the product, and a quantize reads that for the down
projection. Here the gate GEMM applies SiLU in its epilogue and the up GEMM multiplies by the
gate's result in its own, then requantizes for the down projection when only it reads the
product (with the down projection's smoothing 1/s, if any, as ``fuse_gemm_epilogue`` does).

Before (~ : views / reshapes keeping the last dim; x_q, x_s shared by both linears):

    x_q ─► linear_w8a8(Wg) ─~─► silu ──┐
    x_q ─► linear_w8a8(Wu) ─~──────────┴─► mul ─~─► [mul(·, 1/s)] ─► quantize_per_token ─► linear_w8a8(Wd)

After:

    x_q ─► triton_linear_a8(Wg, activation="silu") ─► g
    x_q ─► triton_linear_a8_requant(Wu, gate=g, out_scale=1/s) ─► (q, s) ─► linear_w8a8(Wd)
           (triton_linear_a8(Wu, gate=g) ─► product, when something else reads the product)

Runs before ``fuse_gemm_epilogue``, which then sees neither GEMM. Left unfused, with the reason
in ``report.fusion_fallbacks``: gate and up reading different activations, shapes or dtypes
that differ, symbolic sizes where a reshape must be rebuilt. Returns the number of SwiGLUs fused.
"""

from __future__ import annotations

import torch.fx as fx

from zq_compile.passes.fuse_gemm_epilogue import FLOAT_DTYPES, MUL, SILU, _erase_dead, _requant_target, \
    _reshaped, _take_quantize_outputs
from zq_compile.passes.fusion_common import carry_decision, follow_relabels, gemm_args, is_gemm, is_relabel, \
    plan_kwargs, record_fallback, record_fusion, run_on_triton, static_shape
from zq_compile.passes.graph_utils import annotate, fake_value

NAME = "fuse_swiglu"


def _back_to_linear(node) -> fx.Node | None:
    """The quantized linear (``gemm_args``) whose output ``node`` is, through single-user relabels."""
    while isinstance(node, fx.Node):
        if is_gemm(node):
            return node
        if len(node.users) != 1 or not is_relabel(node):
            return None
        node = node.args[0]
    return None


def _match(mul: fx.Node):
    """(gate linear, silu node, up linear) when ``mul`` is SiLU(gate) * up, else None."""
    if not (mul.op == "call_function" and mul.target in MUL and len(mul.args) == 2 and not mul.kwargs):
        return None
    for a, b in (mul.args, mul.args[::-1]):
        if not (isinstance(a, fx.Node) and a.op == "call_function" and a.target in SILU and len(a.users) == 1):
            continue
        if a.args[1:2] == (True,) or a.kwargs.get("inplace"):
            continue
        gate, up = _back_to_linear(a.args[0]), _back_to_linear(b)
        if gate is not None and up is not None and gate is not up and follow_relabels(gate)[0] is a.args[0] \
                and follow_relabels(up)[0] is b:
            return gate, a, up
    return None


def _where(ctx, node) -> str:
    decision = ctx.memo.get("decision_of", {}).get(node)
    return (decision.module or decision.node) if decision is not None else node.name


def _fuse_one(ctx, mul: fx.Node, ops) -> bool:
    found = _match(mul)
    if found is None:
        return False
    graph = ctx.gm.graph
    gate, silu, up = found
    where = _where(ctx, up)
    (*g_args, g_dtype, g_bits), (*u_args, out_dtype, u_bits) = gemm_args(gate), gemm_args(up)
    if g_args[:2] != u_args[:2]:
        record_fallback(ctx, NAME, where, "gate and up read different quantized activations")
        return False
    g_val, u_val, m_val = fake_value(gate), fake_value(up), fake_value(mul)
    if g_dtype != out_dtype or out_dtype not in FLOAT_DTYPES or m_val.dtype != out_dtype:
        record_fallback(ctx, NAME, where, f"gate / up / product dtypes {g_dtype}, {out_dtype}, {m_val.dtype}")
        return False
    gemm_shape = static_shape(up)
    if gemm_shape is None or static_shape(gate) != gemm_shape or static_shape(mul) is None or \
            tuple(g_val.shape) != tuple(u_val.shape):
        record_fallback(ctx, NAME, where, "gate and up shapes differ, or are symbolic")
        return False
    quantize, inv_s, why = _requant_target(mul, out_dtype)
    if why:
        record_fallback(ctx, NAME, where, f"not requantized: {why}")
    x_q, x_s = u_args[:2]
    with graph.inserting_before(mul):
        g = graph.call_function(ops.triton_linear_a8.default,
                                (x_q, x_s, *g_args[2:6], None, out_dtype, g_bits, "silu"))
        annotate(g, ctx.fake_mode)
    anchor = quantize if quantize is not None else mul
    with graph.inserting_before(anchor):
        up_args = (x_q, x_s, *u_args[2:6], None, out_dtype, u_bits, "none")
        if quantize is None:
            fused = graph.call_function(ops.triton_linear_a8.default, up_args, {"gate": g})
            annotate(fused, ctx.fake_mode)
            mul.replace_all_uses_with(_reshaped(graph, ctx, fused, static_shape(mul)))
        else:
            fused = graph.call_function(ops.triton_linear_a8_requant.default, up_args,
                                        {"out_scale": inv_s, "gate": g, **plan_kwargs(ctx)})
            annotate(fused, ctx.fake_mode)
            consumers, tail = _take_quantize_outputs(ctx, quantize, fused)
    carry_decision(ctx, gate, g)
    carry_decision(ctx, up, fused)
    # from the product back through both branches: silu, the gate and up GEMMs, their relabels
    _erase_dead(graph, mul if quantize is None else tail, x_q)
    record_fusion(ctx, "gemm+silu", [g])
    record_fusion(ctx, "swiglu", [fused])
    if quantize is not None:
        record_fusion(ctx, "gemm+requant", [fused])
        if inv_s is not None:
            record_fusion(ctx, "gemm+requant_smoothed", [fused])
        record_fusion(ctx, "input:requantized_by_producer", consumers, count=False)
    return True


def run(ctx) -> int:
    return run_on_triton(
        ctx, lambda graph: [n for n in graph.nodes if n.op == "call_function" and n.target in MUL
                            and _match(n) is not None],
        _fuse_one)
