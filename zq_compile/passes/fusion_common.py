"""What the Triton fusion passes (``fuse_swiglu``, ``fuse_gate_up``, ``fuse_gemm_epilogue``,
``fuse_norm_quantize``, ``fuse_quantize_prologue``) share: which nodes between two fused ops only
relabel data, and how a fusion or its fallback is recorded.

A fusion moves work into a kernel that sees its operands as [rows, features]: the ops that may
sit between the fused producer and consumer are those that change neither values nor the last
(feature) dimension, nor the order of elements (views and reshapes that keep the last dim,
``contiguous``, dropout in eval mode).
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.passes.graph_utils import fake_value

RESHAPE_METHODS = {"view", "reshape", "contiguous"}
RESHAPE_FUNCTIONS = {torch.reshape}
DROPOUT = {F.dropout, torch.dropout, torch.nn.functional.dropout}


def _is_eval_dropout(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in DROPOUT:
        return False
    training = node.args[2] if len(node.args) > 2 else node.kwargs.get("training", node.kwargs.get("train", True))
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
    return training is False or p == 0


def is_relabel(node: fx.Node) -> bool:
    """True for an op whose output holds its first input's values in the same row-major order,
    with the same last dimension."""
    if not isinstance(node, fx.Node):
        return False
    if _is_eval_dropout(node):
        return True
    reshape = (node.op == "call_method" and node.target in RESHAPE_METHODS) or (
        node.op == "call_function" and node.target in RESHAPE_FUNCTIONS)
    if not reshape or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    src, out = fake_value(node.args[0]), fake_value(node)
    if src is None or out is None or src.dim() == 0 or out.dim() == 0:
        return False
    # a view of a non-contiguous tensor would reorder elements; the fused kernels write rows
    return src.is_contiguous() and out.shape[-1] == src.shape[-1]


def follow_relabels(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """From ``node``, walk forward while the only user relabels: (last node, relabels walked)."""
    walked = []
    while len(node.users) == 1:
        (user,) = node.users
        if not is_relabel(user) or user.args[0] is not node:
            break
        walked.append(user)
        node = user
    return node, walked


def static_shape(node: fx.Node) -> tuple[int, ...] | None:
    """The node's shape if every size is a plain int (None for symbolic sizes)."""
    val = fake_value(node)
    if val is None or not all(isinstance(d, int) for d in val.shape):
        return None
    return tuple(val.shape)


def rows(shape) -> int:
    return math.prod(shape[:-1])


LINEAR = torch.ops.zq.linear_w8a8.default
LINEAR_W4A8 = torch.ops.zq.linear_w4a8.default
WEIGHT_ONLY = torch.ops.zq.linear_wo.default


def gemm_args(node) -> tuple | None:
    """(x_q, x_s, w_q, w_s, w_z, bias, out_dtype, w_bits) of a quantized linear the fusions take
    (None for anything else): zq.linear_w8a8, or zq.linear_w4a8 on the Triton kernel (the same
    ``gemm_a8`` on the packed INT4 weight, its K-group scales as w_s)."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target is LINEAR:
        return (*node.args[:7], 8)
    if node.target is LINEAR_W4A8 and node.args[8] == "triton":
        x_q, x_s, w, w_s, w_z, bias, _group_size, _k, _kernel, out_dtype = node.args
        return (x_q, x_s, w, w_s, w_z, bias, out_dtype, 4)
    return None


def weight_only_args(node) -> tuple | None:
    """(x, w, w_s, w_z, bias, bits, out_dtype) of a zq.linear_wo on the Triton kernel (gemm_a16),
    else None."""
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target is WEIGHT_ONLY \
            and node.args[8] == "triton":
        x, w, w_s, w_z, bias, bits, _group_size, _k, _kernel, out_dtype = node.args
        return x, w, w_s, w_z, bias, bits, out_dtype
    return None


def is_gemm(node) -> bool:
    return gemm_args(node) is not None


def record_fusion(ctx, kind: str, linears: list[fx.Node] = (), count: bool = True) -> None:
    """Count one fusion of ``kind`` (unless ``count`` is False) and name it on the decisions of
    the linears it serves."""
    if count:
        ctx.report.fusions[kind] = ctx.report.fusions.get(kind, 0) + 1
    decision_of = ctx.memo.get("decision_of", {})
    for node in linears:
        decision = decision_of.get(node)
        if decision is not None and kind not in decision.fused:
            decision.fused.append(kind)


def record_fallback(ctx, pass_name: str, where: str, reason: str) -> None:
    ctx.report.fusion_fallbacks.append(f"{pass_name}: {where}: {reason}")


def carry_decision(ctx, old: fx.Node, new: fx.Node) -> None:
    """A fused node replaces the quantized linear ``old`` (``gemm_args``): its decision follows."""
    decision_of = ctx.memo.setdefault("decision_of", {})
    if old in decision_of:
        decision_of[new] = decision_of[old]


def triton_ops():
    """The zq::triton_* ops, registered on first use (as select_triton_kernel does)."""
    import zq_compile.codegen.triton.ops  # noqa: F401

    return torch.ops.zq


def plan_kwargs(ctx) -> dict:
    """The requantizing GEMM's ``plan`` keyword when the config forces one (none for "auto")."""
    plan = ctx.config.requant_plan
    return {} if plan == "auto" else {"plan": plan}


def run_on_triton(ctx, candidates, fuse_one) -> int:
    """The driver of each Triton fusion pass: nothing off target "triton"; else
    ``fuse_one(ctx, node, ops)`` over ``candidates(graph)`` (listed before any rewrite), the
    number that fused. The ops are registered only when there is something to fuse."""
    if ctx.target != "triton":
        return 0
    nodes = list(candidates(ctx.gm.graph))
    if not nodes:
        return 0
    ops = triton_ops()
    return sum(fuse_one(ctx, node, ops) for node in nodes)
