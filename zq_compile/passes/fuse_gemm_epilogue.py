"""fuse_gemm_epilogue (target "triton"): activation, residual add and requantize go into the GEMM.

Each zq.linear_w8a8 lowers on target "triton" to the W8A8 GEMM whose epilogue applies only the
scales and the bias (and each zq.linear_w4a8 to the same GEMM on its INT4 weight: the fusion
passes take both, ``fusion_common.gemm_args``); whatever reads its output is another pass over
the [M, N] float result. The GEMM's epilogue can do more (``codegen/triton/epilogue.py``), so
this pass moves it there.

Before (r: any tensor of the output's shape and dtype; ~ : views / reshapes keeping the last dim,
contiguous, dropout in eval mode, in any number; act: gelu (erf or tanh, also GPT-2's written-out
tanh form), silu, or tanh (BERT's pooler)):

    x_q ─► linear_w8a8 ─~─► act ─~─► add(·, r) ─~─► [mul(·, 1/s)] ─► quantize_per_token ─► (q, s) ─► ...

After (each of act, residual and requantize only where it was there before):

    x_q ─► triton_linear_a8_requant(·, bias, residual=r, activation=act, out_scale=1/s) ─► (q, s) ─► ...
    x_q ─► triton_linear_a8(·, bias, residual=r, activation=act) ─► y           (other readers)

On the weight-only GEMM (zq.linear_wo on the Triton kernel: ``gemm_a16``, W8A16 / W4A16) the
activation and the residual add go into its epilogue the same way, for 16-bit activations (an
fp32 model's run in bf16 inside the op, so its epilogue stays outside, with the reason); there is
no requantize: its readers take float.

Requantize is chosen only when every reader of the result is a quantized linear (through one
zq.quantize_per_token): nobody needs the float result. A smoothing multiply by the next linear's
1/s (``smooth_outliers``) before that quantize goes into the epilogue too (``out_scale``). A
linear with nothing to fuse keeps its zq.linear_w8a8 / linear_w4a8 node (the kernel's plain lowering).

Left unfused, with the reason in ``report.fusion_fallbacks``: activations the epilogue has no form
of (relu, ...), residuals that broadcast or change dtype, a smoothing scale that is not one value
per feature, sizes that are symbolic where a reshape must be rebuilt. Returns the number of linears whose epilogue grew.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.codegen.triton.weight_only import HALF
from zq_compile.passes.fusion_common import (
    carry_decision, follow_relabels, gemm_args, is_gemm, plan_kwargs, record_fallback, record_fusion, rows,
    run_on_triton, static_shape, weight_only_args,
)
from zq_compile.passes.graph_utils import annotate, fake_value, module_path
from zq_compile.schemes.base import inference_only

NAME = "fuse_gemm_epilogue"
aten = torch.ops.aten
QUANTIZE = torch.ops.zq.quantize_per_token.default
GELU = {F.gelu, aten.gelu.default}
SILU = {F.silu, aten.silu.default}
ADD = {operator.add, torch.add, aten.add.Tensor}
MUL = {operator.mul, torch.mul, aten.mul.Tensor}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Activations a model may apply that the epilogue has no form of: named in the fallback reason.
OTHER_ACTIVATIONS = {"relu", "relu6", "leaky_relu", "elu", "selu", "celu", "mish", "hardswish", "hardsigmoid",
                     "sigmoid", "softplus", "softsign", "hardtanh", "logsigmoid", "glu", "prelu"}


def _name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _scalar_mul_of(node, x, value) -> bool:
    """node == value * x (either order)."""
    if not (isinstance(node, fx.Node) and node.op == "call_function" and node.target in MUL and len(node.args) == 2):
        return False
    a, b = node.args
    return (a is x and _close(b, value)) or (b is x and _close(a, value))


def _close(v, want) -> bool:
    return isinstance(v, (int, float)) and abs(v - want) <= 1e-6 * abs(want)


def _add_parts(node):
    if isinstance(node, fx.Node) and node.op == "call_function" and node.target in ADD and len(node.args) == 2 \
            and not node.kwargs:
        return node.args
    return None


def _written_out_gelu_tanh(x: fx.Node) -> fx.Node | None:
    """The output node of 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3))) (Hugging
    Face's NewGELUActivation, GPT-2's "gelu_new") when every reader of x is part of it."""
    users = list(x.users)
    if len(users) != 3:
        return None
    half = next((u for u in users if _scalar_mul_of(u, x, 0.5)), None)
    cube = next((u for u in users if _name(u) == "pow" and u.args[0] is x and _close(u.args[1], 3.0)), None)
    if half is None or cube is None or len(half.users) != 1 or len(cube.users) != 1:
        return None
    (scaled_cube,) = cube.users
    if not _scalar_mul_of(scaled_cube, cube, 0.044715) or len(scaled_cube.users) != 1:
        return None
    (inner,) = scaled_cube.users
    parts = _add_parts(inner)
    if parts is None or set(parts) != {x, scaled_cube} or inner not in users or len(inner.users) != 1:
        return None
    (arg,) = inner.users
    if not _scalar_mul_of(arg, inner, 0.7978845608028654) or len(arg.users) != 1:
        return None
    (tanh,) = arg.users
    if _name(tanh) != "tanh" or len(tanh.users) != 1:
        return None
    (one_plus,) = tanh.users
    parts = _add_parts(one_plus)
    if parts is None or not any(p is tanh for p in parts) or not any(_close(p, 1.0) for p in parts) \
            or len(one_plus.users) != 1:
        return None
    (out,) = one_plus.users
    if not (out.op == "call_function" and out.target in MUL and set(out.args) == {half, one_plus}):
        return None
    return out


def _activation(node: fx.Node) -> tuple[str | None, fx.Node | None, str | None]:
    """(epilogue activation, the node computing it, why not) for what reads ``node``."""
    tanh_out = _written_out_gelu_tanh(node)
    if tanh_out is not None:
        return "gelu_tanh", tanh_out, None
    if len(node.users) != 1:
        return None, None, None
    (user,) = node.users
    if user.op == "call_function" and user.target in GELU and user.args[0] is node:
        approximate = user.args[1] if len(user.args) > 1 else user.kwargs.get("approximate", "none")
        if approximate in ("none", "tanh"):
            return ("gelu_erf" if approximate == "none" else "gelu_tanh"), user, None
        return None, None, f"gelu approximate={approximate!r} has no epilogue form"
    if user.op == "call_function" and user.target in SILU and user.args[0] is node:
        if user.args[1:2] == (True,) or user.kwargs.get("inplace"):
            return None, None, "in-place silu"
        return "silu", user, None
    name = _name(user).rstrip("_")
    if user.op in ("call_function", "call_method") and name == "tanh" and user.args[0] is node and \
            len(user.args) == 1 and not user.kwargs:
        return "tanh", user, None
    if user.op in ("call_function", "call_method") and name in OTHER_ACTIVATIONS:
        return None, None, f"activation {name!r} has no epilogue form (none, gelu erf/tanh, silu, tanh)"
    return None, None, None


def _residual(ctx, node: fx.Node, out_dtype) -> tuple[fx.Node | None, fx.Node | None, str | None]:
    """(residual operand, the add node, why not) when the only reader of ``node`` adds a tensor."""
    if len(node.users) != 1:
        return None, None, None
    (user,) = node.users
    parts = _add_parts(user)
    if parts is None:
        return None, None, None
    other = parts[1] if parts[0] is node else parts[0]
    if other is node or not isinstance(other, fx.Node):
        return None, None, None  # y + y or y + scalar: not a residual
    r, y, out = fake_value(other), fake_value(node), fake_value(user)
    if r is None or y is None or out is None:
        return None, None, "no shape metadata on the residual"
    if tuple(r.shape) != tuple(y.shape) or tuple(out.shape) != tuple(y.shape):
        return None, None, f"residual {tuple(r.shape)} broadcasts against the output {tuple(y.shape)}"
    if r.dtype != out_dtype or out.dtype != out_dtype:
        return None, None, f"residual dtype {r.dtype} differs from the output dtype {out_dtype}"
    return other, user, None


def _requant_target(node: fx.Node, out_dtype) -> tuple[fx.Node | None, fx.Node | None, str | None]:
    """(the zq.quantize_per_token that alone reads ``node`` through relabels and feeds only
    quantized linears, the smoothing 1/s met on the way or None, why not); (None, None, None):
    nothing of the kind there."""
    end, _ = follow_relabels(node)
    if len(end.users) != 1:
        return None, None, None
    (user,) = end.users
    inv_s = None
    if user.op == "call_function" and user.target in MUL and len(user.args) == 2 and \
            any(_is_inv_smooth(a) for a in user.args) and end in user.args and len(user.users) == 1:
        # smooth_outliers' x * 1/s before the next linear's quantize: the epilogue applies it
        inv_s = next(a for a in user.args if _is_inv_smooth(a))
        s_val, y_val = fake_value(inv_s), fake_value(end)
        if s_val is None or tuple(s_val.shape) != (y_val.shape[-1],) or s_val.dtype != out_dtype:
            return None, None, "the smoothing scale before the quantize is not one value per feature"
        (user,) = user.users
    if not (user.op == "call_function" and user.target is QUANTIZE and user.args[1] == 8):
        return None, None, None
    readers = [r for g in user.users for r in g.users]
    if not all(g.target is operator.getitem for g in user.users) or not readers or \
            not all(is_gemm(r) for r in readers):
        return None, None, "the quantized result is read by other ops than quantized linears"
    return user, inv_s, None


def _is_inv_smooth(a) -> bool:
    # smooth_outliers' 1/s constant (its name is part of that pass's contract with this one)
    return isinstance(a, fx.Node) and a.op == "placeholder" and a.name.endswith("inv_smooth")


def _reshaped(graph, ctx, node: fx.Node, shape: tuple[int, ...]) -> fx.Node:
    if tuple(fake_value(node).shape) == shape:
        return node
    out = graph.call_method("reshape", (node, shape))
    annotate(out, ctx.fake_mode)
    return out


def _take_quantize_outputs(ctx, quantize: fx.Node, fused: fx.Node) -> tuple[list[fx.Node], fx.Node]:
    """The readers of ``quantize``'s (q, scale) read the requantizing ``fused`` node's instead
    (shaped like the quantize's input) and ``quantize`` is erased. Returns the linears that read
    it and its former input."""
    graph = ctx.gm.graph
    q_shape = static_shape(quantize.args[0])
    q, s = (graph.call_function(operator.getitem, (fused, i)) for i in (0, 1))
    for n in (q, s):
        annotate(n, ctx.fake_mode)
    if q_shape is not None:
        q = _reshaped(graph, ctx, q, q_shape)
        s = _reshaped(graph, ctx, s, (*q_shape[:-1], 1))
    consumers = [r for g in quantize.users for r in g.users]
    for g in list(quantize.users):
        g.replace_all_uses_with(q if g.args[1] == 0 else s)
        graph.erase_node(g)
    tail = quantize.args[0]
    graph.erase_node(quantize)
    return consumers, tail


def _fuse_one(ctx, linear: fx.Node, ops) -> bool:
    graph = ctx.gm.graph
    wo = weight_only_args(linear)
    if wo is None:
        x_q, x_s, w_q, w_s, w_z, bias, out_dtype, w_bits = gemm_args(linear)
    else:
        x, w_q, w_s, w_z, bias, w_bits, out_dtype = wo
    where = module_path(linear) or linear.name
    decision = ctx.memo.get("decision_of", {}).get(linear)
    if decision is not None:
        where = decision.module or decision.node
    if out_dtype not in FLOAT_DTYPES:
        record_fallback(ctx, NAME, where, f"output dtype {out_dtype} (the epilogue writes fp32/fp16/bf16)")
        return False
    gemm_shape = static_shape(linear)
    end, relabels = follow_relabels(linear)
    act, act_node, why = _activation(end)
    if why:
        record_fallback(ctx, NAME, where, why)
    if act_node is not None:
        end, more = follow_relabels(act_node)
        relabels += more
    residual, add_node, why = _residual(ctx, end, out_dtype)
    if why:
        record_fallback(ctx, NAME, where, why)
    if add_node is not None:
        end = add_node
    last = end  # the last node the fused kernel computes
    quantize, inv_s = None, None
    if wo is None:  # a weight-only GEMM's readers take float: nothing to requantize for
        quantize, inv_s, why = _requant_target(last, out_dtype)
        if why:
            record_fallback(ctx, NAME, where, f"not requantized: {why}")
    if act is None and residual is None and quantize is None:
        return False
    x_dtype = fake_value(x).dtype if wo is not None else None
    if wo is not None and (x_dtype not in HALF or x_dtype != out_dtype):
        # fp32 activations run gemm_a16 in bf16 inside the op (codegen/triton/weight_only.py)
        record_fallback(ctx, NAME, where, f"weight-only GEMM on {x_dtype} activations (computed in "
                                          "bf16 inside its op): its epilogue stays outside")
        return False

    out_shape = static_shape(last)
    if gemm_shape is None or out_shape is None or rows(out_shape) != rows(gemm_shape):
        # relabels with symbolic sizes would have to be rebuilt from size nodes: not done
        if relabels or (residual is not None and static_shape(residual) != gemm_shape):
            record_fallback(ctx, NAME, where, "symbolic sizes between the GEMM and what it would fuse")
            return False
    with graph.inserting_before(quantize if quantize is not None else last):
        res = None
        if residual is not None:
            res = inference_only(ctx, residual)
            if gemm_shape is not None and static_shape(res) != gemm_shape:
                res = _reshaped(graph, ctx, res, gemm_shape)
        if wo is not None:  # gemm_a16: the float activation, output in its dtype
            op, args = ops.triton_linear_a16.default, (x, w_q, w_s, w_z, bias, res, w_bits, act or "none")
        else:
            op, args = ops.triton_linear_a8.default, (x_q, x_s, w_q, w_s, w_z, bias, res, out_dtype, w_bits,
                                                      act or "none")
        if quantize is None:
            fused = graph.call_function(op, args)
            annotate(fused, ctx.fake_mode)
            last.replace_all_uses_with(_reshaped(graph, ctx, fused, out_shape) if out_shape else fused)
        else:
            fused = graph.call_function(ops.triton_linear_a8_requant.default, (*args, inv_s), plan_kwargs(ctx))
            annotate(fused, ctx.fake_mode)
            consumers, tail = _take_quantize_outputs(ctx, quantize, fused)
    carry_decision(ctx, linear, fused)
    _erase_dead(graph, last if quantize is None else tail, linear)
    kinds = [k for k, on in ((act, act), ("residual", residual is not None), ("requant", quantize is not None),
                             ("requant_smoothed", inv_s is not None)) if on]
    for kind in kinds:
        record_fusion(ctx, f"gemm+{kind}", [fused])
    if quantize is not None:
        record_fusion(ctx, "input:requantized_by_producer", consumers, count=False)
    return True


def _erase_dead(graph: fx.Graph, last: fx.Node, first: fx.Node) -> None:
    """Erase the nodes from ``last`` back to ``first`` that nothing reads any more."""
    stack = [last]
    while stack:
        node = stack.pop()
        if node.users or node.op in ("placeholder", "output"):
            continue
        inputs = node.all_input_nodes
        graph.erase_node(node)
        if node is not first:
            stack.extend(inputs)


def run(ctx) -> int:
    return run_on_triton(ctx, lambda graph: [n for n in graph.nodes if is_gemm(n) or weight_only_args(n)], _fuse_one)
