"""kept_decode_w8a16: in a decode step (or under release), a linear the policy keeps float reads int8 weights.

A decode step's GEMMs are one row against the whole weight, so their time is the weight's bytes.
A linear ``keep_float`` leaves float (``calibrate/policy.py``; by default SmolLM2's tied
576 x 49152 head, 113 MiB in fp32) then costs four times a quantized one every token: on
SmolLM2 the policy row decoded 26.7 tokens/s against 36.8 for plain w8a8 (bench, 2026-12-02).
The policy keeps those linears float because their *activations* quantize badly; their weights
do not: per-channel INT8 weights with float activations (the w8a16 scheme) cost SmolLM2's head
+0.1% perplexity alone (23.806 against 23.780, eager simulation) where int8 activations cost
+1.0%. So in graphs whose kept linears see at most ``select.SMALL_M`` rows, they become w8a16
(the weight-only kernels race per M regime, ``codegen/cpu/weight_only.py``); at prefill sizes
they stay float (``kept_linear_bf16`` runs them in bf16), as the policy measured them.

Before (decode step, x [1, K]):      x ──► linear(x, W fp32 [N, K]) ──► y
After:                               x ──► zq.linear_wo(x, Wq int8 [N, K], W scales) ──► y

The INT8 copy is made once per weight (``zq_compile.store``; 28 MiB for SmolLM2's head, held
beside the float weight, which prefill graphs still read). Under ``release_float_weights`` the
kept linears become w8a16 at every size, prefill included, so nothing reads their float weights
and they are freed like any quantized linear's: a kept float weight would otherwise stay, at
four bytes a value (SmolLM2's tied head under w4a16: 108 MiB in fp32 against 27 MiB INT8). It
runs before ``quantize_embedding``, so a tied table is then gathered from the head's int8 rows.
Cpu target, float inputs only; the reason is on the linear's line of the report. Returns the
number of linears moved to w8a16.
"""

from __future__ import annotations

import math

import torch

from zq_compile import store
from zq_compile.codegen.cpu import select
from zq_compile.passes import rewrite_linear as rl
from zq_compile.passes.graph_utils import fake_value, size_hint

NAME = "kept_decode_w8a16"


def _rows(m) -> int | None:
    x = fake_value(m.x)
    if x is None or not x.is_floating_point() or x.dim() < 2:
        return None
    return math.prod(size_hint(d) for d in x.shape[:-1])


def run(ctx) -> int:
    kept = ctx.memo.get("kept_weights", {})
    if not kept or ctx.target != "cpu":
        return 0
    scheme = ctx.config.scheme_named("w8a16")
    release = ctx.config.release_float_weights
    decisions = {d.node: d for d in ctx.report.decisions}
    moved = 0
    for node in [n for n in ctx.gm.graph.nodes if n in kept]:
        m = rl.match(node)
        rows = _rows(m) if m is not None and not m.problem else None
        if rows is None or (rows > select.SMALL_M and not release):
            continue
        w_nk, cache = kept[node]
        groups, _ = rl.groups_for(scheme, w_nk.shape[0])
        decision = decisions[node.name]
        decision.reason += f"; {NAME}: " + (
            f"{rows} row(s), a decode step reads the weight: INT8 weights, float activations"
            if rows <= select.SMALL_M else
            "release_float_weights: INT8 weights, float activations in every graph, so the float weight is freed")
        y = rl.quantize_and_emit(ctx, m, w_nk, scheme, groups, decision, cache)
        if not release:
            # Kept float by the policy: prefill graphs read it in float, whichever graph compiles
            # first, so its float weight is never freed.
            for root in rl.constant_roots(m.weight):
                value = ctx.input_value(root)
                if isinstance(value, torch.Tensor):
                    store.note_float_reader(value)
        ctx.memo.setdefault("decision_of", {})[y] = decision
        moved += 1
    return moved
