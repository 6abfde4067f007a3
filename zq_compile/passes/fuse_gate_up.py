"""fuse_gate_up (target "triton"): SwiGLU's gate and up GEMMs become one kernel.

``fuse_swiglu`` leaves two launches per Llama-style MLP: the gate GEMM writes SiLU(gate) in
float, and the up GEMM reads the same int8 x again plus that float tensor, multiplies, and
(usually) requantizes for the down projection. One kernel can do both (``gemm_a8``'s
``GATE_GEMM``): each K step loads the x tile once and runs two dots, one per weight, into two
int32 accumulators; the epilogue applies SiLU to the gate tile and multiplies, so SiLU(gate)
never reaches memory and x is read once. Per MLP that saves writing and reading the
[tokens, intermediate] gate tensor and one read of x (SmolLM2 prefill at 256 tokens, fp16:
1.6 MB of 4.3 MB the two launches moved beside their weights).

Before (what fuse_swiglu emitted; g read only by the up GEMM):

    x_q ─► triton_linear_a8(Wg, activation="silu") ─► g
    x_q ─► triton_linear_a8_requant(Wu, gate=g, out_scale=1/s) ─► (q, s) ─► linear_w8a8(Wd)

After:

    x_q ─► triton_linear_a8_requant(Wu, gate_w_q=Wg, gate_w_scale=.., gate_bias=.., out_scale=1/s) ─► (q, s)

(the same with ``triton_linear_a8`` when the product is read as float). Bit for bit the output of
the two launches (the kernel rounds SiLU(gate) to the float dtype as the gate GEMM stored it).
Each pair is counted as ``gate+up`` in ``report.fusions``; left as two launches, with the reason
in ``report.fusion_fallbacks``: a gate read by anything else, different float dtypes, and what
the kernel's own ``gemm_a8.check_gate_weight`` refuses on the traced weights (its message: shape,
dtype, strides, group count or K-group table, zero points). A requantizing
dual kernel picks its plan as the single one does, counting both GEMMs when recomputing
(``runtime.requant_plan``'s ``gemms``). Returns the number of pairs merged.
"""

from __future__ import annotations

import torch.fx as fx

from zq_compile.passes.fusion_common import record_fallback, record_fusion, run_on_triton
from zq_compile.passes.graph_utils import fake_value, module_path

NAME = "fuse_gate_up"
GATE_KWARGS = ("gate_w_q", "gate_w_scale", "gate_w_zero", "gate_bias")


def _targets(ops):
    return (ops.triton_linear_a8.default, ops.triton_linear_a8_requant.default)


def _layout_problem(gate: fx.Node, up: fx.Node) -> str | None:
    """Why the gate weight cannot ride in the up GEMM's kernel, or None: the kernel's own check
    (``gemm_a8.check_gate_weight``) on the traced values, so the pass and the kernel agree."""
    from zq_compile.codegen.triton.gemm_a8 import check_gate_weight

    if gate.args[8] != up.args[8] or gate.args[7] != up.args[7]:
        return f"w_bits {gate.args[8]} / {up.args[8]}, dtypes {gate.args[7]} / {up.args[7]} differ"
    (gq, gs, gz, gb), (uq, us, uz) = ([fake_value(a) if isinstance(a, fx.Node) else a for a in n.args[2:stop]]
                                      for n, stop in ((gate, 6), (up, 5)))
    if any(v is None for v in (gq, gs, uq, us)):
        return "a weight without a traced value"
    try:
        check_gate_weight((gq, gs, gz, gb), uq, us, uz, uq.shape[0])
    except ValueError as e:
        return str(e)
    return None


def _fuse_one(ctx, up: fx.Node, ops) -> bool:
    gate = up.kwargs["gate"]
    where = module_path(up) or up.name
    if len(gate.users) != 1:
        record_fallback(ctx, NAME, where, f"SiLU(gate) is read by {len(gate.users)} nodes (kept in memory)")
        return False
    if gate.args[:2] != up.args[:2]:
        record_fallback(ctx, NAME, where, "gate and up read different activations")
        return False
    why = _layout_problem(gate, up)
    if why:
        record_fallback(ctx, NAME, where, why)
        return False
    kwargs = {k: v for k, v in up.kwargs.items() if k != "gate"}
    kwargs.update(zip(GATE_KWARGS, gate.args[2:6]))  # the gate's w_q, w_scale, w_zero, bias
    up.kwargs = kwargs
    record_fusion(ctx, "gate+up", [gate, up])
    ctx.gm.graph.erase_node(gate)
    return True


def _is_pair(node: fx.Node, ops) -> bool:
    gate = node.kwargs.get("gate") if node.op == "call_function" and node.target in _targets(ops) else None
    # fuse_swiglu's gate GEMM: SiLU epilogue, no residual, no gate of its own
    return isinstance(gate, fx.Node) and gate.target is ops.triton_linear_a8.default and \
        gate.args[6] is None and gate.args[9] == "silu" and not gate.kwargs


def run(ctx) -> int:
    from zq_compile.passes.fusion_common import triton_ops

    return run_on_triton(ctx, lambda graph: [n for n in graph.nodes if _is_pair(n, triton_ops())], _fuse_one)
