"""attention_bf16: fp32 scaled-dot-product attention -> bf16 matmuls with an fp32 softmax (cpu).

Before (``F.scaled_dot_product_attention``, as Hugging Face's "sdpa" attention calls it):

    q, k, v [B, H, L|S, D] fp32 ──► scaled_dot_product_attention(q, k, v, mask, scale=..) ──► o fp32
                                                                 ▲
    mask [B, 1, L, S] bool (True = attend) ──────────────────────┘   (the same mask node in every layer)

After (``attention="bf16"``, or the race's pick under ``"auto"``: ATen's flash attention on bf16 inputs):

    q, k, v ──► to(bf16) ──► scaled_dot_product_attention(.., mask (fp32 masks to bf16), scale=..) ──► to(fp32) ──► o

After (``attention="bf16_matmul"``, or the race's pick: our own lowering, ``codegen/cpu/attention.py``):

    mask ──► mask_to_bias ──► bias [B, 1, L, S] fp32 (0 / -inf; once per mask, shared by the layers)
    q, k, v, bias ──► zq.attention_bf16(q, k, v, bias, scale, is_causal, gqa) ──► o fp32

Why a race under "auto" (``codegen/cpu/attention_race.py``): which variant wins moved from day to
day on this project's own 2-core Zen 5 (avx512_bf16, no AMX). On 2026-11-2x flash beat our
lowering (MiniLM 32x12x128x32: 52 vs 62 ms, BERT-base 8x12x128x64: 28 vs 44); on 2026-12-01 and
12-02, quiet machine, our lowering won in the model (MiniLM forward 288 ms against 325 with
flash, three rounds) and alone (12.4 ms per call against 13.6 bf16 flash and 13.4 fp32 flash;
BERT-base 3.2 against 5.3 and 4.9). So each problem of at least ``RACE_MIN_SCORES_MIB`` of scores
is timed at compile time, the three variants on its own shapes; the most exact variant is kept
unless a less exact one is at least 10% faster (``attention_race.choose``: the variants round
differently, and near-ties flip from run to run), and fp32 flash means the node is left as
written; smaller problems get bf16 flash unraced.

Left alone, with the reason recorded: targets other than "cpu", ``attention="fp32"``, inputs that
are not fp32 CPU tensors, dropout, a scale or flag computed at run time, masks that are neither
bool nor fp32; and under ``attention="auto"``: CPUs without native bf16, queries of at most 16 rows
(a decode step: little to gain, and the whole K/V cache would be converted every step), a dynamic
sequence length (the stored scores would have no bound), and problems where fp32 flash won the
race. Past ``SCORES_BUDGET_MIB`` of scores per call our lowering (which stores them) is not raced.
Returns the number of attention nodes rewritten.
"""

from __future__ import annotations


import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.codegen.cpu import attention_race, select
from zq_compile.codegen.cpu.attention import mask_to_bias
from zq_compile.passes.graph_utils import annotate, fake_value, module_path, size_hint
from zq_compile.report import AttentionDecision

SDPA = {F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention.default}
SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
#: The bf16 path stores the [B, H, L, S] scores (and the probabilities) in bf16; flash attention
#: streams them. Measured on this project's 2-core Zen 5 (bench/README.md): bf16 wins 1.45x to 2.1x
#: up to 24 MiB of scores (MiniLM 32x128: 12 MiB), loses 9% to 13% at 48 MiB (8x512, head size 32).
SCORES_BUDGET_MIB = 32


def sdpa_arguments(node: fx.Node) -> dict:
    args = dict(SDPA_DEFAULTS)
    args.update(zip(SDPA_ARGS, node.args))
    args.update(node.kwargs)
    return args


def _problem(ctx, a: dict) -> str | None:
    """Why this attention stays as written, or None."""
    config = ctx.config
    if config.attention == "fp32":
        return "attention='fp32' in the config"
    if ctx.target != "cpu":
        return f"target {ctx.target!r}: bf16 attention is a cpu-target rewrite"
    tensors = [fake_value(a[name]) for name in ("query", "key", "value")]
    if any(t is None for t in tensors):
        return "query, key or value is not a traced tensor"
    if any(t.dtype != torch.float32 for t in tensors):
        return f"dtype {tensors[0].dtype}: only fp32 attention is rewritten"
    if any(t.device.type != "cpu" for t in tensors):
        return f"device {tensors[0].device}: bf16 attention runs on CPU tensors"
    if a["dropout_p"] != 0:
        return f"dropout_p={a['dropout_p']}: dropout is left to scaled_dot_product_attention"
    if not isinstance(a["is_causal"], bool) or not isinstance(a["enable_gqa"], bool):
        return "is_causal or enable_gqa is computed at run time"
    if a["scale"] is not None and not isinstance(a["scale"], (int, float)):
        return "scale is computed at run time"
    if a["scale"] is None and not isinstance(tensors[0].shape[-1], int):
        return "head size is symbolic: the default scale is not known at compile time"
    mask = a["attn_mask"]
    if mask is not None:
        m = fake_value(mask)
        if m is None or m.dtype not in (torch.bool, torch.float32):
            return f"mask of dtype {None if m is None else m.dtype}: only bool and fp32 masks are rewritten"
        if a["is_causal"]:
            return "both a mask and is_causal=True (scaled_dot_product_attention rejects this)"
    if config.attention == "auto":
        if not select.has_bf16():
            return "this CPU has no native bf16 dot product (avx512_bf16 / amx_bf16): fp32 is faster"
        rows, keys = tensors[0].shape[-2], tensors[1].shape[-2]
        if not isinstance(rows, int) or not isinstance(keys, int):
            return ("sequence length is dynamic: the bf16 path stores the [L, S] scores, which could "
                    "grow without bound; flash attention streams them")
        if rows <= select.SMALL_M:  # a decode step, as the int8 GEMM's regime counts it
            return f"query of {rows} row(s), a decode step: too small to gain from bf16"
    return None


def _bias_for(ctx, mask: fx.Node | None, reader: fx.Node) -> fx.Node | None:
    """The additive fp32 bias of ``mask``, made once per mask node (before its first reader, as
    the mask may be a graph input) and shared by its readers."""
    if mask is None or fake_value(mask).dtype != torch.bool:
        return mask
    made = ctx.memo.setdefault("attention_bias", {})
    if mask not in made:
        with ctx.gm.graph.inserting_before(reader):
            bias = ctx.gm.graph.call_function(mask_to_bias, (mask,))
        annotate(bias, ctx.fake_mode)
        made[mask] = bias
    return made[mask]


def _flash_bf16(ctx, node: fx.Node, a: dict, scale: float) -> fx.Node:
    """q, k, v (and an fp32 mask) cast to bf16, ATen's SDPA, the result cast back to fp32.
    Inductor lowers it to the CPU flash kernel, which streams the scores (never stored)."""
    graph = ctx.gm.graph
    with graph.inserting_before(node):
        low = []
        for name in ("query", "key", "value"):
            cast = graph.call_method("to", (a[name], torch.bfloat16))
            annotate(cast, ctx.fake_mode)
            low.append(cast)
        mask = a["attn_mask"]
        if mask is not None and fake_value(mask).dtype == torch.float32:
            mask = graph.call_method("to", (mask, torch.bfloat16))
            annotate(mask, ctx.fake_mode)
        out = graph.call_function(F.scaled_dot_product_attention, tuple(low), {
            "attn_mask": mask, "dropout_p": 0.0, "is_causal": a["is_causal"], "scale": scale,
            "enable_gqa": a["enable_gqa"]})
        out.meta.update({k: v for k, v in node.meta.items() if k not in ("example_value", "val")})
        annotate(out, ctx.fake_mode)
        back = graph.call_method("to", (out, torch.float32))
        annotate(back, ctx.fake_mode)
    return back


def _hint_shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(size_hint(d) for d in fake_value(node).shape)


def _auto_variant(a: dict, scale: float, races: dict) -> tuple[str, str]:
    """(variant, reason) under attention="auto": the race's winner on this problem's shapes, or
    bf16 flash for problems too small to be worth an Inductor compile to race."""
    q, k, v = (_hint_shape(a[name]) for name in ("query", "key", "value"))
    mib = attention_race.scores_mib(q, k)
    variants = attention_race.VARIANTS
    over = ""
    if mib > SCORES_BUDGET_MIB:  # the batch may be dynamic: its size at compile time counts
        variants = tuple(n for n in variants if n != "bf16_matmul")
        over = f"; bf16_matmul not raced: {mib:.1f} MiB of stored scores per call (budget {SCORES_BUDGET_MIB} MiB)"
    if mib < attention_race.RACE_MIN_SCORES_MIB:
        return "bf16_flash", (f"the default, not raced ({mib:.2f} MiB of scores per call, under "
                              f"{attention_race.RACE_MIN_SCORES_MIB} MiB: too small to pay for the race)")
    mask = a["attn_mask"]
    mask_key = None if mask is None else (_hint_shape(mask), fake_value(mask).dtype)
    key = (q, k, v, mask_key, a["is_causal"], a["enable_gqa"], scale, variants)
    try:
        times = attention_race.race_attention(*key)
    except Exception as e:  # a race that cannot run must not fail the user's compile
        return "bf16_flash", f"the default: the race failed ({type(e).__name__}: {e})"
    winner = attention_race.choose(times)
    races.setdefault(key, [q, times, winner, 0])[3] += 1  # one report line per distinct problem
    return winner, f"raced at this problem's shapes ({attention_race.ranked(times, winner)}){over}"


def run(ctx) -> int:
    graph = ctx.gm.graph
    rewritten = 0
    races: dict = {}
    for node in [n for n in graph.nodes if n.op == "call_function" and n.target in SDPA]:
        a = sdpa_arguments(node)
        problem = _problem(ctx, a)
        decision = AttentionDecision(node=node.name, module=module_path(node), dtype="fp32",
                                     reason=problem or "bf16 matmuls, fp32 softmax")
        ctx.report.attention.append(decision)
        if problem:
            continue
        q = a["query"]
        scale = float(a["scale"] if a["scale"] is not None else fake_value(q).shape[-1] ** -0.5)
        variant = {"bf16": "bf16_flash", "bf16_matmul": "bf16_matmul"}.get(ctx.config.attention)
        why = None
        if variant is None:  # "auto"
            variant, why = _auto_variant(a, scale, races)
            if variant == "fp32_flash":
                decision.reason = f"fp32 flash attention: {why}"
                continue
        if variant == "bf16_matmul":
            with graph.inserting_before(node):
                new = graph.call_function(
                    torch.ops.zq.attention_bf16.default,
                    (q, a["key"], a["value"], _bias_for(ctx, a["attn_mask"], node), scale, a["is_causal"],
                     a["enable_gqa"]),
                )
            new.meta.update({k: v for k, v in node.meta.items() if k not in ("example_value", "val")})
            annotate(new, ctx.fake_mode)
            decision.reason = why or "bf16 matmuls, fp32 softmax (attention='bf16_matmul')"
        else:
            new = _flash_bf16(ctx, node, a, scale)
            decision.reason = why or "bf16 flash attention (ATen's fused kernel on bf16 q/k/v, fp32 softmax statistics)"
        decision.reason = f"{_LABEL[variant]}: {decision.reason}" if why else decision.reason
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        decision.dtype = "bf16"
        rewritten += 1
    for q, times, winner, count in races.values():
        ctx.report.races.append(attention_race.race_line(q, count, times, winner))
    return rewritten


_LABEL = {"bf16_matmul": "bf16 matmuls, fp32 softmax", "bf16_flash": "bf16 flash attention"}
