"""``zq_compile.explain``: compile a model with the zeroquant backend and say what happened to it.

For every graph Dynamo captures, the backend runs as usual; beside it this records Dynamo's float
graph and the rewritten one, measures each quantized linear's error on the real example inputs
(measure.py), and keeps the code Inductor generated, from which the fused kernels are read
(kernels.py). Dynamo's graph breaks and recompiles, the weights' bytes and the forward times of
eager and compiled runs complete the ExplainReport (schema.py).
"""

from __future__ import annotations

import collections
import dataclasses
import platform
import time
from collections.abc import Callable
from unittest import mock

import torch
import torch._inductor.config

from zq_compile.backend import zeroquant_backend
from zq_compile.config import ZeroQuantConfig
from zq_compile.inspect import graphs as G
from zq_compile.inspect.kernels import parse_calls
from zq_compile.inspect.measure import error, measure
from zq_compile.inspect.schema import ExplainReport, GraphExplain, LinearRow
from zq_compile.passes.graph_utils import clone_graph_module, fake_value
from zq_compile.report import log


def explain(
    model,
    example_inputs,
    config: ZeroQuantConfig | dict | None = None,
    *,
    name: str | None = None,
    runs: int = 3,
    progress: Callable[[str], None] | None = None,
) -> ExplainReport:
    """Compile ``model`` with zeroquant, run it on ``example_inputs`` (a tuple of positional
    arguments, a dict of keyword arguments, or one tensor) and explain every captured graph.

    ``runs``: timed forward passes of the eager and the compiled model (medians; 0 skips timing).
    ``progress(stage)`` is called as each stage starts (the CLI draws its progress bar with it).
    """
    config = ZeroQuantConfig.from_options(config)
    args, kwargs = _as_call(example_inputs)
    step = progress or (lambda stage: None)
    captures: list[GraphExplain] = []
    measuring = [0.0]

    def backend(gm, graph_inputs):
        step(f"graph {len(captures)}: quantize, measure, compile")
        state = {}

        def on_prepared(float_gm, ex, prepared):
            start = time.perf_counter()
            state["graph"] = _explain_graph(float_gm, ex, prepared)
            state["after_gm"] = clone_graph_module(prepared.gm)  # Inductor may edit prepared.gm
            state["report"] = prepared.report
            measuring[0] += time.perf_counter() - start

        codes: list[str] = []
        from torch._inductor.graph import GraphLowering

        previous = GraphLowering.save_output_code  # run_and_get_code's, in tests: keep feeding it

        def save(code: str) -> None:
            codes.append(code)
            if previous is not None:
                previous(code)

        # Code-generated even when Inductor's FX graph cache holds this graph: a cache hit has no
        # generated code to read fusions from, no byte count and no post-grad pass counts.
        with mock.patch.object(GraphLowering, "save_output_code", save), \
                torch._inductor.config.patch(fx_graph_cache=False):
            compiled = zeroquant_backend(gm, graph_inputs, options=config, on_prepared=on_prepared)
        graph = state["graph"]
        _add_fusions(graph, state, codes)
        captures.append(graph)
        return compiled

    counters = torch._dynamo.utils.counters
    breaks_before = collections.Counter(counters["graph_break"])
    failures = torch._dynamo.utils.guard_failures
    failures_before = {k: len(v) for k, v in failures.items()}
    compiled = torch.compile(model, backend=backend)
    with torch.inference_mode():
        step("eager float run")
        reference = model(*args, **kwargs)
        step("compile (Dynamo, zeroquant, Inductor)")
        start = time.perf_counter()
        out = compiled(*args, **kwargs)
        compile_s = time.perf_counter() - start - measuring[0]
        timing = {"compile_s": compile_s, "measure_s": measuring[0]}
        if runs > 0:
            step(f"time eager and compiled ({runs} runs each)")
            from zq_compile.timing import interleaved_medians

            ms = interleaved_medians({"eager": lambda: model(*args, **kwargs),
                                      "compiled": lambda: compiled(*args, **kwargs)}, runs=runs, warmup=1)
            timing.update(eager_ms=ms["eager"], compiled_ms=ms["compiled"])
    breaks = collections.Counter(counters["graph_break"]) - breaks_before
    recompiles = [r for k, v in failures.items() for r in v[failures_before.get(k, 0):]]
    step("done")
    return ExplainReport(
        model=name or type(model).__name__,
        config=config.to_dict(),
        graphs=captures,
        model_error=error(reference, out),
        timing=timing,
        dynamo={
            "graphs": len(captures),
            "graph_breaks": [{"reason": str(r), "count": c} for r, c in breaks.items()],
            "recompiles": [str(r) for r in recompiles],
        },
        environment={"torch": torch.__version__, "python": platform.python_version(),
                     "machine": f"{platform.machine()} {platform.processor()}".strip()},
    )


def _as_call(example_inputs):
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if hasattr(example_inputs, "keys"):  # a tokenizer's BatchEncoding
        return (), dict(example_inputs)
    raise TypeError(f"example_inputs must be a tuple, a dict or a tensor, not {type(example_inputs).__name__}")


def _explain_graph(float_gm, example_inputs, prepared) -> GraphExplain:
    report = prepared.report
    links = G.link_linears(report, prepared.gm)
    decisions = {d.node: d for d in report.decisions}
    float_nodes = {n.name: n for n in float_gm.graph.nodes}
    # A linear kept in float is still in the rewritten graph under its own name: its output there
    # carries the rounding of every quantized layer before it (what the model sees), so it gets
    # an in-model error too; alone it rounds nothing.
    after_nodes = {n.name: n for n in prepared.gm.graph.nodes}
    kept = {d.node: after_nodes[d.node] for d in report.decisions
            if not d.quantized and d.node in after_nodes and d.node in float_nodes}
    try:
        errors, out_err = measure(float_gm, prepared, example_inputs, {**links, **kept}, in_model_only=set(kept))
    except Exception as exc:  # noqa: BLE001  (the graph still compiles; say why there are no figures)
        log.warning("zeroquant explain: graph %d: errors not measured: %s", report.graph_id, exc)
        report.note(f"explain: per-layer errors not measured ({type(exc).__name__}: {exc})")
        errors, out_err = {}, None
    rows = []
    for d in report.decisions:
        node = float_nodes.get(d.node)
        x = fake_value(node.args[1] if node is not None and d.op == "addmm" else (node.args[0] if node is not None and node.args else None))
        in_model, alone = errors.get(d.node, (None, None))
        if d.reason.endswith("smoothed"):
            # Its weight is W * s and it reads X / s (smooth_outliers): fed the float graph's X,
            # the op alone would be compared with the wrong input, so only the in-model error counts.
            alone = None
        rows.append(LinearRow(
            node=d.node, module=d.module, op=d.op,
            weight_shape=list(d.shape) if d.shape else None,
            input_shape=[int(s) if isinstance(s, int) else str(s) for s in x.shape] if x is not None else None,
            scheme=d.scheme, reason=d.reason, kernel=report.kernel if d.quantized else None,
            target=report.target, float_bytes=d.float_bytes, quant_bytes=d.quant_bytes,
            zq_node=links[d.node].name if d.node in links else None,
            sqnr_db=in_model.sqnr_db if in_model else None, max_abs_err=in_model.max_abs_err if in_model else None,
            local_sqnr_db=alone.sqnr_db if alone else None, local_max_abs_err=alone.max_abs_err if alone else None,
        ))
    floats = G.float_reasons(report, float_gm)
    zq_info = {zq.name: (decisions[name].module, decisions[name].scheme) for name, zq in links.items()}
    for n in prepared.gm.graph.nodes:  # a merged GEMM (passes/merge_sibling_gemms.py): all its linears
        members = [decisions[m] for m in n.meta.get("zq_members", ()) if m in decisions]
        if members:
            zq_info[n.name] = (", ".join(d.module for d in members), members[0].scheme)
    return GraphExplain(
        graph_id=report.graph_id, target=report.target, kernel=report.kernel, kernel_reason=report.kernel_reason,
        linears=rows, float_nodes=list(floats.values()), fusions=[], kernels=[], output_error=out_err,
        before=G.draw_nodes(float_gm, report, floats),
        after=G.draw_nodes(prepared.gm, report, None, zq_info),
        compile_report={},
        code_captured=False,
    )


def _add_fusions(graph: GraphExplain, state: dict, codes: list[str]) -> None:
    report = state["report"]  # complete now: Inductor has run
    graph.compile_report = dataclasses.asdict(report)
    graph.kernel, graph.kernel_reason = report.kernel, report.kernel_reason
    if not codes:
        return
    calls = [c for code in codes for c in parse_calls(code)]
    graph.code_captured = True
    graph.kernels = [c.name for c in calls]
    module_of = {r.zq_node: [r.module] for r in graph.linears if r.zq_node}
    after_gm = state.get("after_gm")
    if after_gm is None:
        return
    modules = {r.node: r.module for r in graph.linears}
    for n in after_gm.graph.nodes:  # one GEMM for several linears: it computes all their modules
        if n.meta.get("zq_members"):
            module_of[n.name] = [modules[m] for m in n.meta["zq_members"] if m in modules]
    graph.fusions = G.fusions(calls, after_gm, module_of)
    index = {n.name: n for n in graph.after}
    for i, f in enumerate(graph.fusions):
        for name in f.nodes:
            if name in index and index[name].group is None:
                index[name].group = i

