"""kept_linear_bf16: linears the accuracy policy keeps float run in bf16 on the bf16 pipeline (cpu).

``keep_float`` leaves the linears whose int8 error hurts the model most in floating point
(``calibrate/policy.py``). Left as written, such a linear is an fp32 GEMM in the middle of a
pipeline that stores bf16 anyway, and an fp32 GEMM is the slowest GEMM the CPU has: MiniLM's
kept ``encoder.layer.3.output.dense`` (4096 x 1536 -> 384) took 35 ms of a 290 ms forward in
fp32, where bf16 does it about 2.9x faster (and int8 faster still) on this project's Zen 5.
A bf16 GEMM accumulates in fp32; its output is rounded to bf16, as every activation between the
int8 GEMMs already is, so the kept linear keeps far more accuracy than its int8 version would.

Before (x fp32, read from bf16 storage; W, b the module's fp32 parameters):

    x ─► linear(x, W, b) ─► y fp32

After:

    x ─► to(bf16) ─┐
    W ─► to(bf16) ─┼─► linear ─► to(fp32) ─► y
    b ─► to(bf16) ─┘

The weight is cast inside the graph, every call: the module's parameter stays the one source
(an in-place change to it is seen at once, nothing extra is held in memory), and the cast reads
the weight once per call, which at prefill sizes is a small fraction of the GEMM's own bytes.

Kept heads (``lm_head`` / embedding-tied weights) are included: SmolLM2's tied 576 x 49152
head in fp32 made a 256-token prefill 297 ms against 204 with the head in int8 (the policy's
other kept linears were already bf16); its logits then carry bf16 rounding, as those of a bf16
model do (Inductor bf16 perplexity 23.750 against fp32 23.780 there). With ``heads="split"``
they are quantized instead (``calibrate/split.py``).

Left alone, with the reason in the report: graphs whose activations stay fp32
(``bf16_activations.wanted``), non-fp32 inputs, and linears seeing at most ``select.SMALL_M``
rows (a decode step reads the weight, so casting it each call would cost more bytes than the
bf16 GEMM saves; ``kept_decode_w8a16``, which runs first, gives those INT8 weights unless it is
switched off). Returns the number of linears moved to bf16.
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from zq_compile.codegen.cpu import select
from zq_compile.passes import bf16_activations
from zq_compile.passes.graph_utils import annotate, fake_value, size_hint

NAME = "kept_linear_bf16"


def _problem(node: fx.Node) -> str | None:
    from zq_compile.passes.rewrite_linear import match

    m = match(node)
    if m is None or m.problem:
        return "not a linear this pass knows how to rewrite"
    x = fake_value(m.x)
    if x is None or x.dtype != torch.float32 or any(
            fake_value(t) is None or fake_value(t).dtype != torch.float32 for t in (m.weight, m.bias) if t is not None):
        return "input, weight or bias is not an fp32 tensor"
    rows = math.prod(size_hint(d) for d in x.shape[:-1])
    if rows <= select.SMALL_M:
        return f"{rows} row(s), a decode step: casting the weight each call costs more than bf16 saves"
    return None


def _cast(graph: fx.Graph, node: fx.Node, dtype, fake_mode) -> fx.Node:
    cast = graph.call_method("to", (node, dtype))
    annotate(cast, fake_mode)
    return cast


def run(ctx) -> int:
    kept = ctx.memo.get("keep_float", {})
    if not kept:
        return 0
    why_not = bf16_activations.wanted(ctx)
    decisions = {d.node: d for d in ctx.report.decisions}
    graph = ctx.gm.graph
    moved = 0
    for node in [n for n in graph.nodes if n in kept]:
        decision = decisions.get(node.name)
        problem = why_not or _problem(node)
        if problem:
            if decision is not None:
                decision.reason += f"; runs in fp32 ({NAME}: {problem})"
            continue
        with graph.inserting_before(node):
            low = {a: _cast(graph, a, torch.bfloat16, ctx.fake_mode)
                   for a in node.all_input_nodes if fake_value(a) is not None and fake_value(a).dtype == torch.float32}
            new = graph.node_copy(node, lambda a: low.get(a, a))
            annotate(new, ctx.fake_mode)
        # The original node becomes the cast back to fp32, so the linear's output keeps its name
        # (explain finds a kept linear in the rewritten graph by it).
        node.op, node.target, node.args, node.kwargs = "call_method", "to", (new, torch.float32), {}
        annotate(node, ctx.fake_mode)
        if decision is not None:
            decision.reason += f"; runs in bf16 ({NAME}: bf16 GEMM, fp32 accumulation)"
        moved += 1
    return moved
