"""uint8_shift_in_float (post-grad, Inductor's aten graph): oneDNN's x + 128 computed in float.

oneDNN's u8s8 GEMM reads the quantized activation as uint8 with zero point 128. The quantize
decomposition produces int8 and the oneDNN kernel shifts it (``codegen/cpu/kernels.py``,
``shifted_uint8``), which Inductor's CPU codegen turns into a chain of vector conversions per
element: float -> int8 -> int32, + 128, int32 -> uint8. Those conversions cost more than the
rest of the quantize together: on this project's Zen 5 (avx512, 2 threads) quantizing a bf16
4096 x 1536 activation took 5.72 ms with the chain and 1.53 ms with the shift added in float and
one float -> uint8 conversion (a bf16 -> bf16 copy of it: 0.89 ms), side by side in one process.
The two are equal bit for bit: the float value is an integer in [-127, 127] (rounded, NaN
zeroed, clamped), so the int8 round trip is exact and x + 128 lies in [1, 255] either way.

Before (~ : reshapes/views):

    F = clamp(where(x == x, round(x * inv), 0), -127, 127)   (float, integral)
    F ─► to(int8) ─~─► to(int32) ─► add(128) ─► to(uint8) ─► onednn_u8s8_mm

After:

    F ─~─► add(128.0) ─► to(uint8) ─► onednn_u8s8_mm           (the int8 chain, now unread, is dropped)

Runs after ``merge_duplicate_casts`` (so Q, K and V, which read one activation, share one chain
and get one uint8 copy). Only this exact pattern is rewritten: a float source that is not a
clamp to [-128, 127] of a rounded value is left alone. Returns the number of chains rewritten.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from zq_compile.passes.graph_utils import annotate

aten, prims = torch.ops.aten, torch.ops.prims

NAME = "uint8_shift_in_float"
CONVERT = prims.convert_element_type.default
VIEWS = {aten.view.default, aten._unsafe_view.default, aten.reshape.default}


def _convert_to(node, dtype) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is CONVERT \
        and node.args[1] == dtype


def _is_integral(node) -> bool:
    """A float node whose values are integers (or NaN-free zeros): round(), or where(c, round(), 0)."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target is aten.round.default:
        return True
    if node.target is aten.where.self:
        _, a, b = node.args
        zero = isinstance(b, fx.Node) and b.target is aten.full.default and b.args[1] == 0
        return _is_integral(a) and (zero or b == 0)
    return False


def _clamped_source(node) -> fx.Node | None:
    """F's producer chain is clamp_max(clamp_min(integral, lo), hi) (or clamp) within int8's range."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None
    if node.target is aten.clamp.default and len(node.args) == 3:
        inner, lo, hi = node.args
    elif node.target is aten.clamp_max.default and isinstance(node.args[0], fx.Node) \
            and node.args[0].target is aten.clamp_min.default:
        hi, (inner, lo) = node.args[1], node.args[0].args
    else:
        return None
    if not all(isinstance(v, (int, float)) for v in (lo, hi)) or lo < -128 or hi > 127:
        return None
    return node if _is_integral(inner) else None


def _match(u8: fx.Node):
    """(float source F, [view nodes from the int8 value to the int32 convert]) or None."""
    if not _convert_to(u8, torch.uint8):
        return None
    add = u8.args[0]
    if not (isinstance(add, fx.Node) and add.target in (aten.add.Tensor, aten.add.Scalar) and add.args[1] == 128):
        return None
    to_i32 = add.args[0]
    if not _convert_to(to_i32, torch.int32):
        return None
    views, node = [], to_i32.args[0]
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEWS:
        views.append(node)
        node = node.args[0]
    if not _convert_to(node, torch.int8):
        return None
    source = _clamped_source(node.args[0])
    return None if source is None else (source, views[::-1])


def run(graph: fx.Graph) -> int:
    rewritten = 0
    for u8 in list(graph.find_nodes(op="call_function", target=CONVERT)):
        found = _match(u8)
        if found is None:
            continue
        source, views = found
        fake_mode = source.meta["val"].fake_mode
        with graph.inserting_before(u8):
            x = source
            for view in views:
                x = graph.call_function(view.target, (x, *view.args[1:]), dict(view.kwargs))
                annotate(x, fake_mode)
            x = graph.call_function(aten.add.Tensor, (x, 128.0))
            annotate(x, fake_mode)
            out = graph.call_function(CONVERT, (x, torch.uint8))
            annotate(out, fake_mode)
        u8.replace_all_uses_with(out)
        _erase_unread(graph, u8)
        rewritten += 1
    return rewritten


def _erase_unread(graph: fx.Graph, node: fx.Node) -> None:
    """Drop ``node`` and the producers only it read (the int8 chain), stopping at the float source."""
    while isinstance(node, fx.Node) and not node.users and node.op == "call_function" and (
            node.target in VIEWS or node.target in (CONVERT, aten.add.Tensor, aten.add.Scalar)):
        producer = node.args[0]
        graph.erase_node(node)
        node = producer
