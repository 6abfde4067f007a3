"""bf16_activations: fp32 models store bf16 between the int8 GEMMs (cpu target, native bf16).

What costs time on CPU between two int8 GEMMs is bytes: every tensor written there is read
again. ZeroQuant keeps the arithmetic in fp32 and the storage in 16 bits. Inductor stores a
value where it has more than one reader (or a layout op needs a copy), so this pass makes the
stored node a bf16 one and gives every reader its own ``.float()``, which Inductor fuses into
the reader's kernel.

Before (fp32 everywhere; (*) = stored by Inductor in fp32):

    x_q ─► linear_w8a8(.., fp32) (*) ─► add (*) ─► layer_norm (*) ─┬─► quantize_per_token ─► ...
                                                                   └─► add (residual, later)
    attention (*) ─► transpose ─► reshape (*) ─► quantize_per_token
    x_q ─► linear_w8a8(.., fp32) (*) ─► gelu (*) ─► quantize_per_token

After ((*) = stored in bf16; the GEMM writes bf16 itself):

    x_q ─► linear_w8a8(.., bf16) (*) ─► float ─► add ─► to(bf16) (*) ─► layer_norm_bf16 (*)
                                                            ─┬─► quantize_per_token
                                                             └─► float ─► add
    attention ─► to(bf16) ─► transpose ─► reshape (*) ─► quantize_per_token
    x_q ─► linear_w8a8(.., bf16) (*) ─► float ─► gelu ─► to(bf16) (*) ─► quantize_per_token

- every ``zq.linear_w8a8`` with an fp32 result returns bf16 (oneDNN then writes its GEMM output
  in bf16; the epilogue computes in fp32), and each reader gets a ``.float()``;
- the producer of every LayerNorm input and of every quantize's input (found by walking back
  over layout ops: view, transpose, reshape, ...) is rounded to bf16: Inductor stores it (a norm
  reads it for its statistics, then normalises; the quantize reads it for the row max, then
  scales). Layout ops after it move bf16; a LayerNorm becomes ``codegen/cpu/norm.py``'s
  ``layer_norm_bf16`` (bf16 in and out, fp32 arithmetic: handing F.layer_norm a ``.float()``
  made Inductor store that fp32 copy, as the norm reads its input twice);
- the quantize reads bf16 (it computes in fp32) and writes the uint8 the GEMM wants, in the
  producer's kernel.

Left alone, with the reason in the report: ``activations="fp32"``; ``"auto"`` on a CPU without
native bf16 (bf16 stores would cost conversions and save less); targets other than "cpu"; graphs
with no fp32 quantized linear (bf16 and fp16 models keep their own dtype end to end); graph inputs
(rounding one would add a write). Returns the number of nodes turned bf16.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.codegen.cpu import select
from zq_compile.codegen.cpu.norm import layer_norm_bf16
from zq_compile.passes.graph_utils import annotate, fake_value

LINEAR = torch.ops.zq.linear_w8a8.default
QUANTIZE = torch.ops.zq.quantize_per_token.default
#: Ops that only move or reshape data: they may carry bf16 as well as fp32.
LAYOUT_METHODS = {"view", "reshape", "transpose", "permute", "contiguous", "flatten", "unflatten",
                  "squeeze", "unsqueeze", "clone"}
LAYOUT_FUNCTIONS = {torch.transpose, torch.reshape, torch.permute, torch.flatten, torch.squeeze,
                    torch.unsqueeze, torch.clone}
#: LayerNorm calls (input, normalized_shape, weight, bias, eps) that read bf16 after the pass
#: (``codegen/cpu/norm.py``). RMSNorm is not among them: Hugging Face writes it out in ops.
NORMS = {F.layer_norm}


def wanted(ctx) -> str | None:
    """Why the graph keeps fp32 storage, or None if the pass applies."""
    mode = ctx.config.activations
    if mode == "fp32":
        return "activations='fp32' in the config"
    if ctx.target != "cpu":
        return f"target {ctx.target!r}: bf16 activations are a cpu-target rewrite"
    if mode == "auto" and not select.has_bf16():
        return "this CPU has no native bf16 (avx512_bf16 / amx_bf16): activations stay fp32"
    if mode == "bf16" and not select.has_bf16():  # the config refuses this; a changed CPU does not
        raise ValueError(f"activations='bf16' is not valid on this CPU ({select.cpu_description()}); "
                         "allowed: auto, fp32")
    return None


def _is_layout(node: fx.Node, source: fx.Node) -> bool:
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_method" and node.target in LAYOUT_METHODS:
        # view(dtype) reinterprets bits: not a layout op
        return not any(isinstance(a, torch.dtype) for a in node.args[1:])
    return node.op == "call_function" and node.target in LAYOUT_FUNCTIONS


def _is_fp32(node) -> bool:
    val = fake_value(node)
    return val is not None and val.dtype == torch.float32 and val.device.type == "cpu"


def _to_float_for_readers(ctx, node: fx.Node, skip: fx.Node | None = None) -> None:
    """``node`` now holds bf16: layout readers carry bf16 on, quantize reads it as it is, and
    every other reader gets its own ``.float()`` (one per reader, so none is stored twice)."""
    graph = ctx.gm.graph
    for user in list(node.users):
        if user is skip:
            continue
        if _is_layout(user, node):
            annotate(user, ctx.fake_mode)
            _to_float_for_readers(ctx, user)
            continue
        if user.op == "call_function" and user.target is QUANTIZE:
            continue  # computes in fp32 from any float dtype
        if user.op == "call_function" and user.target in NORMS and user.args[0] is node:
            # fp32 arithmetic, bf16 in and out, each read of x converting on its own
            user.args, user.kwargs = _norm_arguments(user), {}
            user.target = layer_norm_bf16
            annotate(user, ctx.fake_mode)
            _to_float_for_readers(ctx, user)
            continue
        with graph.inserting_before(user):
            back = graph.call_method("float", (node,))
        annotate(back, ctx.fake_mode)
        user.replace_input_with(node, back)


def _norm_arguments(node: fx.Node) -> tuple:
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    args = dict(zip(names, node.args))
    args.update(node.kwargs)
    return tuple(args.get(n, d) for n, d in zip(names, (None, None, None, None, 1e-5)))


def _is_smoothing(node: fx.Node) -> bool:
    """The per-channel ``x * (1/s)`` of ``smooth_outliers`` (its input may have other readers)."""
    other = node.args[1] if node.op == "call_function" and node.target is operator.mul and len(node.args) == 2 else None
    return isinstance(other, fx.Node) and other.op == "placeholder" and other.name.endswith("_inv_smooth")


def _producer(x: fx.Node) -> fx.Node:
    """The node computing ``x``, past layout ops."""
    while x.op in ("call_method", "call_function") and x.args and isinstance(x.args[0], fx.Node) \
            and _is_layout(x, x.args[0]):
        x = x.args[0]
    return x


def run(ctx) -> int:
    why = wanted(ctx)
    graph = ctx.gm.graph
    linears = [n for n in graph.find_nodes(op="call_function", target=LINEAR) if n.args[6] == torch.float32]
    if why is None and not linears:
        why = "no fp32 quantized linear in this graph (bf16/fp16 models keep their dtype)"
    if why:
        ctx.report.activations = f"fp32: {why}" if linears else why
        return 0
    rewritten = 0
    done: set[fx.Node] = set()
    for node in linears:
        node.args = (*node.args[:6], torch.bfloat16)
        annotate(node, ctx.fake_mode)
        _to_float_for_readers(ctx, node)
        done.add(node)
        rewritten += 1
    # What Inductor stores in fp32 between the GEMMs: a norm's input (read for the statistics,
    # then normalised) and a quantize's input (read for the row max, then scaled). Norms first:
    # a norm that reads bf16 returns bf16, so the quantize after it needs nothing more.
    norms = [n for n in graph.nodes if n.op == "call_function" and n.target in NORMS and n.args]
    quantizes = list(graph.find_nodes(op="call_function", target=QUANTIZE))
    # A smoothing multiply's input with other readers too (post-LN BERT: the residual) is stored
    # as well: in bf16, like the multiply itself (which the quantize reads twice).
    smoothed = [n.args[0] for n in graph.nodes if _is_smoothing(n) and len(n.args[0].users) > 1]
    for x in [n.args[0] for n in norms] + [q.args[0] for q in quantizes] + smoothed:
        if not isinstance(x, fx.Node) or not _is_fp32(x):
            continue
        producer = _producer(x)
        if producer in done or producer.op in ("placeholder", "get_attr") or not _is_fp32(producer):
            continue
        with graph.inserting_after(producer):
            low = graph.call_method("to", (producer, torch.bfloat16))
        annotate(low, ctx.fake_mode)
        producer.replace_all_uses_with(low, delete_user_cb=lambda user: user is not low)
        _to_float_for_readers(ctx, low)
        done.add(producer)
        rewritten += 1
    ctx.report.activations = (f"bf16 storage between the int8 GEMMs ({rewritten} node(s) rounded to bf16), "
                              "fp32 arithmetic")
    return rewritten
