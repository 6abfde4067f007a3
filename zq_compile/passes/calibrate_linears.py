"""calibrate_linears: calibration statistics and the accuracy policy for the linears
``rewrite_linear`` will quantize. The graph is not changed:

    x ──► linear(x, W, b) ──► y          (as before; decisions go to ctx.memo and the report)

For each eligible linear it settles (``zq_compile/calibrate/policy.py``):
- max |X_j| of its input per channel, and the smoothing alpha (read by ``smooth_outliers``);
- whether it stays float (``keep_float``; read by ``rewrite_linear``, reason in the report);
- its output SQNR on the calibration data (the report's per-layer error).

The statistics come from ``zq_compile.calibrate(model, config, data)`` when it ran for these
weights under the same ``smooth`` / ``keep_float``; else from this call's own inputs, by running
the float graph once per candidate plan (an fx.Interpreter), and are then kept for the other
graphs of the same weights (decode steps reuse the prefill's). The report says which.
``smooth=False, keep_float=0`` skips calibration entirely. Returns the number of linears kept float.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F

from zq_compile.calibrate import stats
from zq_compile.calibrate.graph_run import graph_runner
from zq_compile.calibrate.policy import Site, decide, effective_smooth, head_columns
from zq_compile.passes.graph_utils import module_path
from zq_compile.passes import rewrite_linear as rl

EMBEDDING = {F.embedding, torch.embedding, torch.ops.aten.embedding.default}


def eligible(ctx) -> tuple[dict[str, Site], dict[fx.Node, tuple[str, rl.LinearMatch]]]:
    """The linears rewrite_linear would quantize, as calibration sites, keyed by node name."""
    from zq_compile import store
    from zq_compile.schemes.policy import classify

    sites, linears = {}, {}
    candidates = [n for n in ctx.gm.graph.nodes if rl.match(n) is not None]
    roles = classify(ctx.gm.graph, candidates)
    # rewrite_linear takes these from here: smooth_outliers, the only pass between the two,
    # changes activations, never the weights or shapes the decisions depend on.
    ctx.memo["roles"] = roles
    decided = ctx.memo["decided"] = {}
    for node in candidates:
        m = rl.match(node)
        module = module_path(node)
        decided[node] = rl._decide(ctx, m, module, roles[node])
        w_nk, scheme, groups, _ = decided[node]
        roots = rl.constant_roots(m.weight) if w_nk is not None else []
        if w_nk is None or len(roots) != 1:
            continue
        weight = ctx.input_value(roots[0])
        if store.is_released(weight) and stats.lookup(weight, stats.signature(ctx.config)) is None:
            # Its float values are gone (release_float_weights): only statistics kept from the
            # compile that released it can be used; without them it is not smoothed.
            ctx.report.note(f"calibrate_linears: {module or node.name} was released uncalibrated: not smoothed")
            continue
        head = module.rsplit(".", 1)[-1] == "lm_head" or any(
            u.op == "call_function" and u.target in EMBEDDING for u in roots[0].users)
        sites[node.name] = Site(node.name, module or node.name, weight, w_nk, m.x, groups,
                                scheme.symmetric, head,
                                # the triton target has no fused kernel for a masked or split head
                                # input yet: its heads stay float (policy) or plain (keep_float=0)
                                columns=head_columns(ctx.config, scheme, head) if ctx.target != "triton" else None)
        linears[node] = (node.name, m)
    return sites, linears


def run(ctx) -> int:
    config = ctx.config
    if effective_smooth(config) is False and config.keep_float == 0 and config.heads == "float":
        return 0
    if "rewrite_linear" in config.disable_passes:
        ctx.report.note("calibrate_linears: rewrite_linear is disabled, nothing to calibrate")
        return 0
    sites, linears = eligible(ctx)
    if not sites:
        return 0
    entries = {k: stats.lookup(s.weight, stats.signature(config)) for k, s in sites.items()}
    if all(e is not None for e in entries.values()):
        report = next(iter(entries.values())).report
        absmax = {k: e.act_absmax for k, e in entries.items()}
        alphas = {k: e.alpha for k, e in entries.items()}
        keep = {k: e.keep_float for k, e in entries.items() if e.keep_float}
    else:
        run_graph = graph_runner(ctx.gm, ctx.example_inputs, linears)
        report, alphas, sim = decide(sites, run_graph, config, "first call inputs", 1)
        absmax, keep = sim.stats.values, sim.keep_float
        sqnr = {la.module: la.sqnr_db for la in report.layers}
        for k, site in sites.items():
            if k in absmax:
                stats.remember(site.weight, stats.LinearCalibration(
                    site.module, absmax[k], alphas[k], keep.get(k), sqnr.get(site.module, float("nan")),
                    stats.signature(config), report))
    by_name = {n.name: n for n in linears}
    ctx.memo["keep_float"] = {by_name[k]: reason for k, reason in keep.items() if k in by_name}
    ctx.memo["smooth_plan"] = {by_name[k]: (sites[k], absmax.get(k), alphas.get(k)) for k in sites}
    ctx.report.calibration = report
    return len(ctx.memo["keep_float"])
