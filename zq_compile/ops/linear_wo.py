"""zq::linear_wo (weight-only INT8/INT4) and zq::linear_w4a8 (INT4 weights, INT8 activations).

linear_wo:   y = x @ dequant(W)^T + bias, x floating [..., K] (fp32, bf16, fp16).
linear_w4a8: y = (x_q * x_scale) @ dequant(W)^T + bias, x_q int8 [..., K] with one fp32 scale
             per token (from zq::quantize_per_token).
W is int8 [N, K] with w_scale fp32 [G] (G groups of output rows) when bits = 8, or packed INT4
uint8 [N, K/2] with w_scale fp32 [G, K / group_size] (``quant/kgroups.py``) when bits = 4;
w_zero (int32, like w_scale) for asymmetric weights. ``kernel`` names the implementation the
backend chose for the graph's M regime (``codegen/cpu/weight_only.py``, ``codegen/cpu/w4a8.py``);
each kernel's ``linear`` is both the eager body and the decomposition Inductor traces.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.weak import WeakIdKeyDictionary


def check_wo_args(x, w, w_scale, w_zero, bias, bits: int, group_size: int, in_features: int) -> None:
    n = w.shape[0]
    if bits == 8:
        if w.dtype != torch.int8 or w.shape[1] != in_features:
            raise ValueError(f"8-bit weight must be int8 [N, {in_features}], got {w.dtype} {tuple(w.shape)}")
        if w_scale.dim() != 1 or n % w_scale.numel():
            raise ValueError(f"{w_scale.numel()} weight groups do not divide {n} rows")
    elif bits == 4:
        if w.dtype != torch.uint8 or w.shape[1] != (in_features + 1) // 2:
            raise ValueError(f"INT4 weight must be packed uint8 [N, {(in_features + 1) // 2}], "
                             f"got {w.dtype} {tuple(w.shape)}")
        if group_size < 1 or in_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide K={in_features}")
        if w_scale.dim() != 2 or w_scale.shape[1] != in_features // group_size or n % w_scale.shape[0]:
            raise ValueError(f"INT4 scales {tuple(w_scale.shape)} do not fit [G | {n}, {in_features // group_size}]")
    else:
        raise ValueError(f"bits={bits} is not valid; allowed: 8, 4")
    if x.shape[-1] != in_features:
        raise ValueError(f"activation has {x.shape[-1]} features, weight expects {in_features}")
    if w_zero is not None and w_zero.shape != w_scale.shape:
        raise ValueError("w_zero must have one entry per weight scale")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} must be ({n},)")


@torch.library.custom_op("zq::linear_wo", mutates_args=())
def linear_wo(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, w_zero: torch.Tensor | None,
              bias: torch.Tensor | None, bits: int, group_size: int, in_features: int, kernel: str,
              out_dtype: torch.dtype, kernel_scales: torch.Tensor | None = None) -> torch.Tensor:
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS

    if not x.is_floating_point():
        raise TypeError(f"linear_wo wants floating activations, got {x.dtype}")
    check_wo_args(x, w, w_scale, w_zero, bias, bits, group_size, in_features)
    return WO_KERNELS[kernel].linear(x, w, w_scale, w_zero, bias, bits, group_size, in_features, out_dtype,
                                     kernel_scales)


@linear_wo.register_fake
def _(x, w, w_scale, w_zero, bias, bits, group_size, in_features, kernel, out_dtype, kernel_scales=None):
    return x.new_empty((*x.shape[:-1], w.shape[0]), dtype=out_dtype)


@torch.library.custom_op("zq::linear_w4a8", mutates_args=())
def linear_w4a8(x_q: torch.Tensor, x_scale: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                w_zero: torch.Tensor | None, bias: torch.Tensor | None, group_size: int, in_features: int,
                kernel: str, out_dtype: torch.dtype, kernel_scales: torch.Tensor | None = None) -> torch.Tensor:
    from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS

    if x_q.dtype != torch.int8 or x_scale.shape != (*x_q.shape[:-1], 1):
        raise ValueError(f"linear_w4a8 wants int8 x_q and one scale per token, got {x_q.dtype} "
                         f"{tuple(x_q.shape)} / {tuple(x_scale.shape)}")
    check_wo_args(x_q, w, w_scale, w_zero, bias, 4, group_size, in_features)
    return W4A8_KERNELS[kernel].linear(x_q, x_scale, w, w_scale, w_zero, bias, group_size, in_features, out_dtype,
                                       kernel_scales)


@linear_w4a8.register_fake
def _(x_q, x_scale, w, w_scale, w_zero, bias, group_size, in_features, kernel, out_dtype, kernel_scales=None):
    return x_q.new_empty((*x_q.shape[:-1], w.shape[0]), dtype=out_dtype)


def _linear_wo_lowered(x, w, w_scale, w_zero, bias, bits, group_size, in_features, kernel, out_dtype,
                       kernel_scales=None):
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS

    return WO_KERNELS[kernel].linear(x, w, w_scale, w_zero, bias, bits, group_size, in_features, out_dtype,
                                     kernel_scales)


def _linear_w4a8_lowered(x_q, x_scale, w, w_scale, w_zero, bias, group_size, in_features, kernel, out_dtype,
                         kernel_scales=None):
    from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS

    return W4A8_KERNELS[kernel].linear(x_q, x_scale, w, w_scale, w_zero, bias, group_size, in_features, out_dtype,
                                       kernel_scales)


def decompositions() -> dict:
    """What the backend hands Inductor for these ops: the named kernel's torch-op code, so
    unpacking, dequantization, casts and bias fuse and only the GEMM stays opaque."""
    return {torch.ops.zq.linear_wo.default: _linear_wo_lowered,
            torch.ops.zq.linear_w4a8.default: _linear_w4a8_lowered}


def finalize_weights(ctx) -> int:
    """Let each node's kernel swap its weight constant for what it wants the graph to hold
    (ATen INT4 or the int8 copy: a one-byte handle to the kernel's own copy), and make the
    weight's re-quantization (``binding.py``, other float weights at call time) do the same:
    the compiled graph expects the handle's layout. Returns how many were swapped."""
    from zq_compile.codegen.cpu.w4a8 import W4A8_KERNELS
    from zq_compile.codegen.cpu.weight_only import WO_KERNELS

    index = {name: i for i, (name, _) in enumerate(ctx.constants)}
    done = 0
    for node in ctx.gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_wo.default):
        _x, w, ws, wz, _b, bits, gs, k, kernel, _ = node.args
        finalize = functools.partial(_wo_finalize, WO_KERNELS[kernel], bits, gs, k)
        done += _swap(ctx, index, w, ws, wz, finalize)
        _add_kernel_scales(ctx, index, node, w, ws, wz, functools.partial(WO_KERNELS[kernel].kernel_scales, bits=bits))
    for node in ctx.gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w4a8.default):
        _xq, _xs, w, ws, wz, _b, gs, k, kernel, _ = node.args
        finalize = functools.partial(_w4a8_finalize, W4A8_KERNELS[kernel], gs, k)
        done += _swap(ctx, index, w, ws, wz, finalize)
        _add_kernel_scales(ctx, index, node, w, ws, wz, W4A8_KERNELS[kernel].kernel_scales)
    return done


def _constant(ctx, index, node):
    """The value of one of the graph's constants, by its placeholder (None for an absent one)."""
    return None if node is None else ctx.constants[index[node.name]][1]


def _add_kernel_scales(ctx, index, node, w, ws, wz, make) -> None:
    """The kernel's table beside the weight (ATen's INT4 GEMM: bf16 block scales and zeros; the
    per-call W4A8 kernel: int8 row scales, made from the packed weight), made
    once, held by the graph as one more constant and passed as ``kernel_scales``; re-made with
    the weight when the binding re-quantizes it. Not kept in the store: each graph makes its own
    from the store's scales (another graph may run another kernel)."""
    n, k = _constant(ctx, index, w).shape[0], node.args[-3]
    made = ctx.memo.setdefault("kernel_scales", {})
    if ws.name not in made:
        held = _constant(ctx, index, w)
        table = make(_constant(ctx, index, ws), _constant(ctx, index, wz), n=n, k=k, w=_PLAIN.get(held, held))
        if table is None:
            return
        made[ws.name] = ctx.add_constant(f"{w.name}_kernel_scales", table)
        slot = len(ctx.constants) - 1
        for source in ctx.weight_sources:
            if source.slots.get("ws") == index[ws.name]:
                source.slots = {**source.slots, "kernel_scales": slot}
                source.finalize = functools.partial(_with_kernel_scales, source.finalize, make, n, k)
    node.kwargs = {**node.kwargs, "kernel_scales": made[ws.name]}


def _with_kernel_scales(finalize, make, n: int, k: int, made: dict) -> dict:
    made = finalize(made) if finalize is not None else made
    w = made["w"] if "w" in made else made["wq"]  # a w8a8 recipe's weight (decode_weight_only) is "wq"
    return {**made, "kernel_scales": make(made["ws"], made.get("wz"), n=n, k=k, w=_PLAIN.get(w, w))}


def _wo_finalize(kernel, bits, gs, k, w, ws, wz):
    return kernel.finalize_weight(w, ws, wz, bits, gs, k)


def _w4a8_finalize(kernel, gs, k, w, ws, wz):
    return kernel.finalize_weight(w, ws, wz, gs, k)


#: a kernel's form of an INT4 weight (ATen's layout, the W4A8 int8 handle) -> the plain packed
#: weight it was made from (see ``_swap``).
_PLAIN: WeakIdKeyDictionary = WeakIdKeyDictionary()
#: kernel handle -> which finalize made it (kernel and its arguments), so the same kernel given
#: its own handle back (from zq_compile.store) reuses it rather than packing a second copy.
_MADE_BY: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _swap(ctx, index, w, ws, wz, finalize) -> int:
    i = index[w.name]
    if ctx.constants[i][0] in ctx.memo.setdefault("finalized", set()):
        return 0  # a weight shared by several nodes (one kernel per graph regime)
    new = _finalized(finalize, *(_constant(ctx, index, a) for a in (w, ws, wz)))
    ctx.memo["finalized"].add(ctx.constants[i][0])
    # Even when the constant already is this kernel's form (another graph of the same kernel
    # finalized it and kept it in zq_compile.store), the binding must finalize the weights it
    # re-quantizes for other modules: without it a second module reached this graph with the
    # plain packed INT4 (seen: garbage from ATen's INT4 GEMM, a stride assertion for a handle).
    for source in ctx.weight_sources:
        if source.slots.get("w") == i:
            source.finalize = functools.partial(_finalize_made, finalize)
    if new is ctx.constants[i][1]:
        return 0
    ctx.constants[i] = (w.name, new)
    return 1


def plain_constant(t: torch.Tensor) -> torch.Tensor:
    """The plain form of a kept constant, what a weights file holds: an INT4 kernel's form of a
    weight (``_PLAIN``) stands for the packed weight it was made from, an int8 handle for
    oneDNN's copy read back; anything else is itself. Saving the kernel's form wrote a one-byte
    handle's zeros (seen: every INT4 preset's round trip through zq_compile.save / load changed
    the outputs)."""
    from zq_compile.codegen.cpu.kernels import plain_weight

    plain = _PLAIN.get(t)
    return plain if plain is not None else plain_weight(t)


def _finalized(finalize, w, ws, wz):
    """``w`` in this graph's kernel's form. Constants from zq_compile.store may already be another
    graph's kernel handle (the decode graph's kernel can differ from prefill's): finalize from the
    plain packed weight, and remember which plain weight each new handle stands for."""
    made_by = (finalize.func, finalize.args) if isinstance(finalize, functools.partial) else finalize
    if w in _PLAIN and _MADE_BY.get(w) == made_by:
        # This kernel's own handle: after release_float_weights the binding rebuilds every
        # constant from the store at the first call, which packed each W4A8 weight's int8 copy
        # a second time (SmolLM2 w4/8a8: 90 extra oneDNN copies, 76 MiB).
        return w
    plain = _PLAIN.get(w, w)
    new = finalize(plain, ws, wz)
    if new is not plain:
        _PLAIN[new] = plain
        _MADE_BY[new] = made_by
    return new


def _finalize_made(finalize, made: dict) -> dict:
    """Re-quantized constants (``binding.py``) in this graph's kernel's form."""
    return {**made, "w": _finalized(finalize, made["w"], made["ws"], made.get("wz"))}
