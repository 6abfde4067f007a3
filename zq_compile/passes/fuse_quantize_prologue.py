"""fuse_quantize_prologue (target "triton"): a per-token quantize that feeds one fused GEMM goes
into that GEMM's prologue.

After ``fuse_gemm_epilogue`` and ``fuse_norm_quantize``, the quantizes left standalone read
tensors no fused producer writes: attention outputs (the input of the output projection) and
BERT's pooler input. Each is a kernel that reads the float rows and writes int8 rows + scales,
which the GEMM then reads. The GEMM kernel can quantize its own input instead
(``gemm_a8.py``, ``QUANTIZE_X``: one pass over each row block for the absmax, then the main loop
quantizes every tile it loads), so the int8 copy never exists.

Before (the GEMM as fuse_gemm_epilogue left it: any residual / activation / gate epilogue, or
a plain zq.linear_w8a8 where it fused nothing):

    x ─► quantize_per_token ─► (q, s) ─► triton_linear_a8(q, s, W, ..., residual, act) ─► y

After:

    x ─► triton_quantize_linear_a8(x, W, ..., residual, act) ─► y

Bit for bit the same int8 values and scales (the prologue is ``quantize.py``'s arithmetic).
Only a quantize whose two outputs are read by exactly one such GEMM (as its x_q and x_scale)
is fused: with more readers each GEMM would read the float rows again, and the requantizing
GEMM and the weight-only ones have no such prologue. Left alone, with the reason
in ``report.fusion_fallbacks``: those cases and non-float inputs. Returns the number fused.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from zq_compile.passes.fusion_common import carry_decision, gemm_args, is_gemm, record_fallback, record_fusion, \
    run_on_triton
from zq_compile.passes.graph_utils import annotate, fake_value, module_path

NAME = "fuse_quantize_prologue"
QUANTIZE = torch.ops.zq.quantize_per_token.default
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _reader(quantize: fx.Node, ops) -> tuple[fx.Node | None, str | None]:
    """The one fused GEMM reading (q, s) as its first two arguments, or why there is none."""
    outs = {}
    for user in quantize.users:
        if user.op != "call_function" or user.target is not operator.getitem or user.args[1] not in (0, 1):
            return None, f"its result is read by {user.name} as a tuple"
        outs.setdefault(user.args[1], []).append(user)
    readers = {r for getters in outs.values() for g in getters for r in g.users}
    if len(readers) != 1:
        return None, f"{len(readers)} readers (each would read the float rows again)"
    (gemm,) = readers
    if gemm.target is not ops.triton_linear_a8.default and not is_gemm(gemm):
        return None, f"read by {getattr(gemm.target, '__name__', gemm.target)}, which has no quantizing prologue"
    q, s = outs.get(0, []), outs.get(1, [])
    if len(q) != 1 or len(s) != 1 or gemm.args[0] is not q[0] or gemm.args[1] is not s[0] \
            or len(q[0].users) != 1 or len(s[0].users) != 1 or q[0] in gemm.args[2:] or s[0] in gemm.args[2:]:
        return None, "q and scale are not just the GEMM's activation and its scale"
    return gemm, None


def _fuse_one(ctx, quantize: fx.Node, ops) -> bool:
    graph = ctx.gm.graph
    where = module_path(quantize) or quantize.name
    x, bits = quantize.args[0], quantize.args[1] if len(quantize.args) > 1 else 8
    val = fake_value(x)
    if bits != 8 or val is None or val.dtype not in FLOAT_DTYPES:
        record_fallback(ctx, NAME, where, f"input {None if val is None else val.dtype}, {bits} bits "
                                          "(the prologue quantizes fp32/fp16/bf16 to int8)")
        return False
    gemm, why = _reader(quantize, ops)
    if gemm is None:
        record_fallback(ctx, NAME, where, why)
        return False
    if is_gemm(gemm):  # a quantized linear that fused nothing after it
        _x_q, _x_s, w_q, w_s, w_z, bias, out_dtype, w_bits = gemm_args(gemm)
        args, kwargs = (x, w_q, w_s, w_z, bias, None, out_dtype, w_bits, "none"), {}
    else:
        args, kwargs = (x, *gemm.args[2:]), dict(gemm.kwargs)
    with graph.inserting_before(gemm):
        fused = graph.call_function(ops.triton_quantize_linear_a8.default, args, kwargs)
        annotate(fused, ctx.fake_mode)
    gemm.replace_all_uses_with(fused)
    carry_decision(ctx, gemm, fused)
    getters = list(quantize.users)
    graph.erase_node(gemm)
    for g in getters:
        graph.erase_node(g)
    graph.erase_node(quantize)
    record_fusion(ctx, "quantize+gemm", [fused])
    return True


def run(ctx) -> int:
    return run_on_triton(ctx, lambda graph: graph.find_nodes(op="call_function", target=QUANTIZE), _fuse_one)
