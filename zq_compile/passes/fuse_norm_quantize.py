"""fuse_norm_quantize (target "triton"): a LayerNorm / RMSNorm and the per-token quantize that
reads it become one kernel, ``zq.triton_norm_quantize``: one read of each row instead of a norm
kernel writing the float rows and a quantize kernel reading them back.

Before (~ : views / reshapes keeping the last dim, contiguous, eval dropout; the norm is
``F.layer_norm``, ``F.rms_norm``, or Hugging Face's written-out RMSNorm with its casts:
x.to(f32) ─► pow(2) ─► mean(-1, keepdim) ─► + eps ─► rsqrt ─► mul ─► .to(dtype) ─► weight * ·):

    x ─► norm(x, w, b, eps) ──~──► [mul(·, 1/s)] ─► quantize_per_token ─► (q, s) ─► linear_w8a8 ...
                            └────► other readers (a residual branch), if any

After:

    x ─► triton_norm_quantize(x, w, b, eps, rms, emit_float, quant_scale=1/s or None) ─► (q, s, y)
                                  (q, s) ─► linear_w8a8 ...
                                  y ─► other readers      (emit_float=True only if there are any)

A residual add before the norm stays a separate op (the kernel reads one input); on BERT- and
GPT-style blocks ``fuse_gemm_epilogue`` has already put it into the GEMM that produces it.

A smoothing multiply (``smooth_outliers``: x * 1/s per feature) between norm and quantize, where
it could not be folded into the norm's weight (the float output has other readers, or a reshape
sits between), goes into the kernel as its ``quant_scale``: applied to what is quantized, not to
the float output it writes.

Left unfused, with the reason in ``report.fusion_fallbacks``: norms over more than the last
dimension; rows wider than 16384; non-float inputs; intermediates of a written-out norm read
elsewhere; a smoothing scale that is not one value per feature.
Returns the number of norms fused.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.passes.fusion_common import is_relabel, record_fallback, record_fusion, run_on_triton, static_shape
from zq_compile.passes.graph_utils import annotate, fake_value, module_path

NAME = "fuse_norm_quantize"
aten = torch.ops.aten
QUANTIZE = torch.ops.zq.quantize_per_token.default
LAYER_NORM = {F.layer_norm, torch.layer_norm, aten.layer_norm.default}
RMS_NORM = {getattr(F, "rms_norm", None), getattr(torch, "rms_norm", None)} - {None}
MUL = {operator.mul, torch.mul, aten.mul.Tensor}
ADD = {operator.add, torch.add, aten.add.Tensor}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_ROW = 16384  # norm_quantize.py holds a row in registers


class Norm:
    """A matched norm: its input, parameters, and the nodes that compute it (output last)."""

    def __init__(self, x, weight, bias, eps, rms, nodes):
        self.x, self.weight, self.bias, self.eps, self.rms, self.nodes = x, weight, bias, eps, rms, nodes

    @property
    def out(self) -> fx.Node:
        return self.nodes[-1]


def _name(node) -> str:
    if not isinstance(node, fx.Node):
        return ""
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _arg(node: fx.Node, pos: int, name: str, default=None):
    return node.args[pos] if len(node.args) > pos else node.kwargs.get(name, default)


def _strip_cast(node) -> tuple[fx.Node, list[fx.Node]]:
    """Through ``.to(float dtype)`` / ``.float()`` casts: (source, casts)."""
    casts = []
    while isinstance(node, fx.Node) and node.op == "call_method" and node.target in ("to", "float") \
            and len(node.args) <= 2 and not node.kwargs.keys() - {"dtype"}:
        dtype = node.args[1] if len(node.args) > 1 else node.kwargs.get("dtype", torch.float32)
        if node.target == "to" and dtype not in FLOAT_DTYPES:
            break
        casts.append(node)
        node = node.args[0]
    return node, casts


def _is_vector(node, k: int) -> bool:
    val = fake_value(node)
    return val is not None and tuple(val.shape) == (k,) and val.dtype in FLOAT_DTYPES


def _written_out_rms(out: fx.Node, k: int) -> Norm | None:
    """weight * (h * rsqrt(mean(h^2, -1, keepdim) + eps)).to(dtype), h = x.to(f32); weight optional."""
    weight, core = None, out
    if out.op == "call_function" and out.target in MUL and len(out.args) == 2:
        a, b = out.args
        if _is_vector(a, k) or _is_vector(b, k):
            weight, core = (a, b) if _is_vector(a, k) else (b, a)
    core_src, out_casts = _strip_cast(core)
    if not (isinstance(core_src, fx.Node) and core_src.op == "call_function" and core_src.target in MUL
            and len(core_src.args) == 2):
        return None
    for h, r in (core_src.args, core_src.args[::-1]):
        if _name(r) != "rsqrt" or not isinstance(h, fx.Node):
            continue
        add = r.args[0]
        if not (isinstance(add, fx.Node) and add.target in ADD and len(add.args) == 2):
            continue
        mean, eps = add.args if isinstance(add.args[0], fx.Node) else add.args[::-1]
        if _name(mean) != "mean" or not isinstance(eps, (int, float)):
            continue
        dim = _arg(mean, 1, "dim")
        if dim not in (-1, (-1,), [-1]) or not _arg(mean, 2, "keepdim", False):
            continue
        sq = mean.args[0]
        if not (_name(sq) == "pow" and sq.args[0] is h and sq.args[1] == 2):
            continue
        x, in_casts = _strip_cast(h)
        nodes = [*reversed(in_casts), sq, mean, add, r, core_src, *reversed(out_casts)]
        if weight is not None:
            nodes.append(out)
        return Norm(x, weight, None, float(eps), True, nodes)
    return None


def match_norm(node: fx.Node) -> tuple[Norm | None, str | None]:
    """(the norm whose output is ``node``, why it cannot be fused) — (None, None): not a norm."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return None, None
    val = fake_value(node)
    if val is None:
        return None, None
    k = val.shape[-1]
    if node.target in LAYER_NORM or node.target in RMS_NORM:
        rms = node.target in RMS_NORM
        x, shape = node.args[0], _arg(node, 1, "normalized_shape")
        weight = _arg(node, 2, "weight")
        bias = None if rms else _arg(node, 3, "bias")
        eps = _arg(node, 3 if rms else 4, "eps", None if rms else 1e-5)
        if list(shape) != [k]:
            return None, f"normalized_shape {tuple(shape)} spans more than the last dimension"
        if eps is None:
            eps = torch.finfo(fake_value(x).dtype).eps
        if not isinstance(eps, (int, float)):
            return None, "eps is not a constant"
        norm = Norm(x, weight, bias, float(eps), rms, [node])
    else:
        norm = _written_out_rms(node, k)
        if norm is None:
            return None, None
    x_val = fake_value(norm.x)
    if x_val is None or x_val.dtype not in FLOAT_DTYPES or val.dtype != x_val.dtype:
        return None, f"input dtype {None if x_val is None else x_val.dtype} / output {val.dtype} (want one of fp32/fp16/bf16)"
    if not isinstance(k, int) or k > MAX_ROW:
        return None, f"row width {k} (the kernel holds rows of at most {MAX_ROW} in registers)"
    for what, p in (("weight", norm.weight), ("bias", norm.bias)):
        if p is not None and not _is_vector(p, k):
            return None, f"{what} is not a float vector of {k}"
    inner = set(norm.nodes)
    if any(u not in inner for n in norm.nodes[:-1] for u in n.users):
        return None, "an intermediate of the written-out norm is read elsewhere"
    return norm, None


def _source(quantize: fx.Node) -> tuple[fx.Node, list[fx.Node], fx.Node | None]:
    """Walk back from the quantize's input through relabels and at most one smoothing multiply:
    (node reached, nodes walked in order, the smoothing multiply or None)."""
    node, walked, smooth = quantize.args[0], [], None
    while True:
        if is_relabel(node):
            walked.append(node)
            node = node.args[0]
        elif smooth is None and _is_smoothing(node):
            smooth = node
            walked.append(node)
            node = next(a for a in node.args if not _is_inv_smooth(a))
        else:
            return node, walked, smooth


def _is_inv_smooth(a) -> bool:
    # smooth_outliers' 1/s constant (its name is part of that pass's contract with this one)
    return isinstance(a, fx.Node) and a.op == "placeholder" and a.name.endswith("inv_smooth")


def _is_smoothing(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in MUL and len(node.args) == 2 and \
        sum(map(_is_inv_smooth, node.args)) == 1 and all(isinstance(a, fx.Node) for a in node.args)


def _fuse_one(ctx, quantize: fx.Node, ops) -> bool:
    graph = ctx.gm.graph
    source, walked, smooth = _source(quantize)
    relabels = [n for n in walked if n is not smooth]
    norm, why = match_norm(source)
    if norm is None:
        if why:
            record_fallback(ctx, NAME, module_path(source) or source.name, why)
        return False
    where = module_path(norm.out) or norm.out.name
    # what reads the norm's output besides the path to this quantize
    path = set(walked) | {quantize}
    cut = walked.index(smooth) + 1 if smooth is not None else 0
    if any(u not in path for n in walked[:cut] for u in n.users):
        record_fallback(ctx, NAME, where, "the smoothed activation is read by other ops than the quantize")
        return False
    # readers of the unsmoothed float output: the kernel writes it for them
    others = [u for n in [norm.out, *walked[cut:]] for u in n.users if u not in path]
    quant_scale = None
    if smooth is not None:
        # the kernel multiplies what it quantizes (not what it writes) by 1/s, as the graph did
        quant_scale = next(a for a in smooth.args if _is_inv_smooth(a))
        s_val, x_val = fake_value(quant_scale), fake_value(norm.x)
        if s_val is None or tuple(s_val.shape) != (x_val.shape[-1],) or s_val.dtype != x_val.dtype:
            record_fallback(ctx, NAME, where, "the smoothing scale between norm and quantize is not one value "
                            "per feature in the activation's dtype")
            return False
    q_shape = static_shape(quantize.args[0])
    if relabels and q_shape is None:
        record_fallback(ctx, NAME, where, "symbolic sizes in the reshape between norm and quantize")
        return False
    emit_float = bool(others)
    with graph.inserting_before(norm.out):
        fused = graph.call_function(ops.triton_norm_quantize.default,
                                    (norm.x, norm.weight, norm.bias, norm.eps, norm.rms, emit_float, quant_scale))
        annotate(fused, ctx.fake_mode)
        q, s, y = (graph.call_function(operator.getitem, (fused, i)) for i in range(3))
        for n in (q, s, y):
            annotate(n, ctx.fake_mode)
    with graph.inserting_before(quantize):
        if relabels and tuple(fake_value(q).shape) != q_shape:
            q = graph.call_method("reshape", (q, q_shape))
            s = graph.call_method("reshape", (s, (*q_shape[:-1], 1)))
            annotate(q, ctx.fake_mode)
            annotate(s, ctx.fake_mode)
    consumers = [r for g in quantize.users for r in g.users]
    for g in list(quantize.users):
        g.replace_all_uses_with(q if g.args[1] == 0 else s)
        graph.erase_node(g)
    graph.erase_node(quantize)
    for n in walked:  # from the quantize back towards the norm
        if not n.users:
            graph.erase_node(n)
    if emit_float:
        norm.out.replace_all_uses_with(y)
    else:
        graph.erase_node(y)
    for n in reversed(norm.nodes):
        graph.erase_node(n)
    kind = "norm_quantize" + ("+float" if emit_float else "") + ("+smoothed" if quant_scale is not None else "")
    record_fusion(ctx, f"{'rms' if norm.rms else 'layer'}_{kind}", [])
    record_fusion(ctx, "input:norm_quantize", consumers, count=False)
    return True


def run(ctx) -> int:
    return run_on_triton(
        ctx, lambda graph: [n for n in graph.find_nodes(op="call_function", target=QUANTIZE) if n.args[1] == 8],
        _fuse_one)
