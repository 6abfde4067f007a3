"""The ``zeroquant`` torch.compile backend: policy -> passes -> lowering -> Inductor.

Dynamo hands us one FX graph per captured region with the real tensors of its inputs (parameters
included). ``prepare`` rewrites eligible linears into zq ops whose quantized weights become extra
graph inputs; the graph then goes to Inductor with a decomposition table that lowers the zq ops
for the chosen kernel, so the quantize step and the GEMM epilogue are ordinary aten code Inductor
fuses with their neighbours and only the int8 GEMM stays an opaque call.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

import zq_compile.ops  # noqa: F401  (registers the zq ops before any graph uses them)
from zq_compile import codegen_child, debug, store
from zq_compile.binding import WeightBinding, keep_merged_rows
from zq_compile.bytes_moved import counting_inductor_bytes, gemm_bytes
from zq_compile.config import ZeroQuantConfig
from zq_compile.lowering import PostGradPasses, decompositions_for
from zq_compile.ops.linear_wo import finalize_weights as finalize_scheme_weights
from zq_compile.passes.context import PassContext
from zq_compile.passes import rewrite_linear as rl
from zq_compile.passes.graph_utils import clone_graph_module, gemm_bf16, gemm_shapes
from zq_compile.passes.runner import run_passes
from zq_compile.report import CompileReport, record

#: Inductor settings for our compile call only (never set globally).
#: realize_reads_threshold=0 stores a reused pointwise result instead of recomputing it per
#: reader. The per-token quantize reads its input twice (row max, then the scaling), so without
#: this Inductor evaluated a GeLU's erf twice per element: MiniLM's FFN kernel went from 7.7 ms
#: to 2.5 ms per layer with it (bench/README.md has the whole-model figures).
INDUCTOR_PATCHES = {"realize_reads_threshold": 0}


@dataclass
class Prepared:
    """A rewritten copy of Dynamo's graph; call ``gm(*example_inputs, *constants)``."""

    gm: fx.GraphModule
    constants: list[torch.Tensor]
    report: CompileReport
    kernel: Any
    binding: WeightBinding
    #: (placeholder, float weight, module path) of the weights this graph quantized
    releasable: list = field(default_factory=list)


def prepare(gm: fx.GraphModule, example_inputs: list, config: ZeroQuantConfig) -> Prepared:
    """Policy, quantization and rewrite passes; no Inductor. Dynamo's ``gm`` is not modified."""
    target = resolve_target(config, example_inputs)
    report = CompileReport(config=config.to_dict(), target=target, graph_break=graph_break_of(gm))
    gm = clone_graph_module(gm)
    ctx = PassContext(gm, list(example_inputs), config, report, target)
    run_passes(ctx)
    kernel = _choose_kernel(target, config, report, m_regime(gm), gm)
    if ctx.gradients_stopped:
        msg = (
            "grad mode was on while compiling: quantized linears are inference-only, so no "
            "gradient flows through them (run under torch.no_grad() or torch.inference_mode())"
        )
        report.note(msg)
        warnings.warn(f"zeroquant: {msg}", stacklevel=2)
    _finalize_weights(ctx, kernel)
    finalize_scheme_weights(ctx)  # INT4 / weight-only constants: the kernels' own copies
    gm.recompile()  # their kernel tables are new placeholders (as after each pass in passes/runner.py)
    releasable = _keep_in_store(ctx)
    if not report.decisions:
        report.note("no linear layers in this graph: it is compiled by Inductor unchanged")
    elif not report.quantized:
        report.note("no linear layer was eligible: the graph runs in float (reasons above)")
    constants = [t for _, t in ctx.constants]
    # Only int8 GEMMs take the kernel's form of a "wq" weight; with none left in the graph
    # (decode_weight_only), its weight-only kernels read the plain int8 values.
    has_gemm = bool(gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default))
    finalize = kernel.finalize_weight if has_gemm else _plain_finalize
    binding = WeightBinding(ctx.weight_sources, constants, list(example_inputs), finalize, report)
    return Prepared(gm, constants, report, kernel, binding, releasable)


def _plain_finalize(w_q: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    from zq_compile.codegen.cpu.kernels import plain_weight

    return plain_weight(w_q)


def zeroquant_backend(
    gm: fx.GraphModule,
    example_inputs: list,
    options: ZeroQuantConfig | dict[str, Any] | None = None,
    mode: str | None = None,
    report_sink: list | None = None,
    on_prepared: Callable | None = None,
):
    """torch.compile backend. ``options`` is a ZeroQuantConfig or its dict form; ``mode`` is
    forwarded to Inductor (e.g. "max-autotune"). ``report_sink`` collects this graph's report.
    ``on_prepared(gm, example_inputs, prepared)`` is called before Inductor sees the rewritten
    graph, with Dynamo's float graph beside it (``zq_compile.explain`` measures errors there)."""
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    config = ZeroQuantConfig.from_options(options)
    lkd_note = None
    if config.lkd is not None:  # trains the float weights in place, before they are quantized
        from zq_compile.calibrate.lkd import lkd_for_graph

        lkd_note = lkd_for_graph(config, example_inputs)
    prepared = prepare(gm, example_inputs, config)
    if lkd_note:
        prepared.report.note(lkd_note)
    if on_prepared is not None:
        on_prepared(gm, example_inputs, prepared)
    report = prepared.report
    report.gemm_bytes = gemm_bytes(prepared.gm, prepared.kernel.name)
    inputs = list(example_inputs) + _static_fakes(prepared.constants)

    def inductor(counted_report, pass_counts, **patches):
        with counting_inductor_bytes(counted_report):
            return compile_fx(
                prepared.gm, inputs,
                config_patches={**INDUCTOR_PATCHES, "post_grad_custom_pre_pass": PostGradPasses(
                                    config.disable_passes, pass_counts),
                                **(list_mode_options(mode) if mode else {}), **patches},
                decompositions=decompositions_for(prepared.kernel),
            )

    why_not = codegen_child.why_not(config, report.target, list_mode_options(mode) if mode else None)
    if why_not is None:
        compiled = codegen_child.compile_isolated(
            lambda: _child_compile(inductor), lambda: inductor(report, report.pass_counts), report)
    else:
        report.codegen = f"in this process ({why_not})"
        compiled = inductor(report, report.pass_counts)
    if config.release_float_weights:  # only now: a failed compile must leave the model whole
        _release_float_weights(prepared)
    result = _append_constants(compiled, prepared)
    result = _race_float_pipeline(gm, example_inputs, config, prepared, result)
    record(prepared.report)
    debug.on_compiled(prepared.report)
    if report_sink is not None:
        report_sink.append(prepared.report)
    return result


def _child_compile(inductor) -> dict:
    """The forked child's compile (``codegen_child.py``): Inductor in-process, what only a
    code-generating compile measures sent back."""
    scratch = CompileReport(config={})
    counts: dict = {}
    inductor(scratch, counts, compile_threads=1)
    return {"inductor_bytes": scratch.inductor_bytes, "inductor_kernels": scratch.inductor_kernels,
            "pass_counts": counts}


def _race_float_pipeline(gm, example_inputs: list, config: ZeroQuantConfig, prepared: Prepared, int8_fn):
    """``pipeline_race.py``: time the int8 graph against this CPU's best float pipeline and run
    the float one where it is ``FLOAT_MARGIN`` faster (``pipeline_race="auto"``)."""
    from zq_compile import pipeline_race as pr

    report = prepared.report
    why = pr.why_not_raced(config, report.target, m_regime(prepared.gm), example_inputs, gm,
                           bool(report.quantized))
    if why is not None:
        report.pipeline = f"int8 (not raced: {why})"
        return int8_fn
    label = pr.float_pipeline_label()
    args = pr.concrete(example_inputs)
    try:
        float_fn, taken = pr.compile_float_pipeline(gm, args)
        timed = pr.race(lambda: int8_fn(*args), lambda: float_fn(*[args[i] for i in taken]))
    except Exception as e:  # the int8 graph is compiled and correct: a failed race must not lose it
        report.pipeline = f"int8 (not raced: the {label} pipeline failed: {type(e).__name__}: {e})"
        report.note(f"pipeline race: the {label} pipeline failed to compile or run "
                    f"({type(e).__name__}: {e}); this graph runs int8")
        return int8_fn
    speedup = timed.ratio
    wins = speedup >= pr.FLOAT_MARGIN
    line = (f"pipeline: int8 {timed.int8_ms:.2f} ms, {label} {timed.float_ms:.2f} ms "
            f"({speedup:.2f}x, median of {timed.rounds} paired rounds) -> ")
    if wins and config.pipeline_race == "auto":
        report.races.append(line + f"{label}: no int8 variant wins on this CPU for this graph")
        report.runs = label
        report.pipeline = f"{label} (faster than int8 by {speedup:.2f}x; weights not quantized)"
        if any(not isinstance(a, torch.Tensor) for a in args):
            report.pipeline += "; a dynamic graph: the float pipeline serves this call's shapes, others run int8"
        msg = (f"this graph runs as {label}: the float pipeline was {speedup:.2f}x faster than the int8 "
               f"one on this CPU (quantized weights are kept for a fallback; pipeline_race='report' keeps int8)")
        report.note(msg)
        warnings.warn(f"zeroquant: {msg}", stacklevel=2)
        return pr.FloatWinner(float_fn, taken, int8_fn, args, report)
    if wins:
        report.races.append(line + f"int8 (pipeline_race='report'; {label} would be faster)")
    else:
        report.races.append(line + "int8")
    report.pipeline = "int8"
    return int8_fn


def _static_fakes(constants: list[torch.Tensor]) -> list:
    """Our constants as fake tensors of fixed shape, in the fake mode AOT autograd traces with.

    Given as real tensors, AOT would fakify them with symbolic sizes once Dynamo has turned
    dynamic shapes on, and any guard on such a size (a bias broadcast against the weight's row
    count) has no source Dynamo can check: guard creation fails. Their shapes never change.
    """
    from torch._guards import TracingContext

    ctx = TracingContext.try_get()
    if ctx is None or ctx.fake_mode is None:
        return list(constants)
    return [ctx.fake_mode.from_tensor(t, static_shapes=True) for t in constants]


def _finalize_weights(ctx: PassContext, kernel) -> None:
    """Let the kernel swap each int8 weight for what it wants the graph to hold (oneDNN: a
    one-byte handle to its own reordered copy, so the weight is not held twice). A weight the
    graph also gathers rows from (a tied embedding table, ``passes/quantize_embedding.py``)
    stays plain int8, here and when the binding re-quantizes it."""
    index = {name: i for i, (name, _) in enumerate(ctx.constants)}
    gathered = {index[g.args[0].name] for g in ctx.gm.graph.find_nodes(
        op="call_function", target=torch.ops.aten.embedding.default) if g.args[0].name in index}
    done = set()
    for node in ctx.gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default):
        w_q, w_s = node.args[2], node.args[3]
        if w_q.name in done:
            continue
        done.add(w_q.name)
        i = index[w_q.name]
        finalize = kernel.finalize_shared if i in gathered else kernel.finalize_weight
        ctx.constants[i] = (w_q.name, finalize(ctx.constants[i][1], ctx.constants[index[w_s.name]][1]))
    # Whatever kernel reads a gathered weight (an int8 GEMM, or weight-only in a decode graph whose
    # other linears run one), the binding must keep it plain when it re-quantizes it.
    for source in ctx.weight_sources:
        if source.slots.get("wq") in gathered:
            source.int8_finalize = kernel.finalize_shared


def _keep_in_store(ctx: PassContext) -> list:
    """Write the kernel's form of each weight back to ``zq_compile.store`` (one copy shared by
    every graph), note the inputs this graph still reads in float (never released), and return
    the stored weights, candidates for release_float_weights."""
    for root_node, root, key, slots, _ in ctx.memo.get("stored", []):
        for name, index in slots.items():
            store.set_tensor(root, key, name, ctx.constants[index][1])
    for source, members in ctx.memo.get("merged", []):  # passes/merge_sibling_gemms.py
        keep_merged_rows(ctx.constants[source.slots["wq"]][1], ctx.constants[source.slots["ws"]][1],
                         [(root, key, (start, end)) for root, key, start, end in members])
    for node in ctx.gm.graph.find_nodes(op="placeholder"):
        value = ctx.input_value(node)
        if isinstance(value, torch.Tensor) and rl.read_in_float(node):
            if store.is_released(value):
                raise store.ReleasedWeightError(
                    f"this graph reads {node.name} in floating point, but that weight was freed by "
                    f"{store.OPTION} when another graph was compiled (graph {ctx.report.graph_id}: "
                    "it is used here by an op zeroquant does not quantize, or with another config). "
                    f"Compile without {store.OPTION}")
            store.note_float_reader(value)
    seen, releasable = set(), []
    for root_node, root, _, _, module in ctx.memo.get("stored", []):
        if id(root) not in seen:
            seen.add(id(root))
            releasable.append((root_node, root, module))
    return releasable


def _release_float_weights(prepared: Prepared) -> None:
    """``release_float_weights=True``: free the float weights of this graph's quantized linears
    (``zq_compile/store.py`` says how, and why the Parameter objects stay); those some compiled
    graph still reads in float are kept, with the reason in the report."""
    freed, kept = 0, {}
    for node, weight, module in prepared.releasable:
        if store.is_released(weight):
            continue
        # a linear called in its parent's forward (F.linear on another module's weight) has no module path
        label = f"{module}.weight" if module else node.name
        problem = store.release_problem(weight)
        if problem:
            kept.setdefault(problem, []).append(label)
            continue
        nbytes = weight.numel() * weight.element_size()
        store.release(weight, label, store.owner_modules(node, weight))
        freed += nbytes
    report = prepared.report
    if freed:
        report.note(f"release_float_weights: freed {freed / 2**20:.2f} MiB of float weights")
    for problem, modules in kept.items():
        report.note(f"release_float_weights: kept the float weight of {', '.join(modules)}: {problem}")


def graph_break_of(gm: fx.GraphModule) -> str | None:
    """Why Dynamo ended this graph, when a graph break did (Dynamo sets the reason on the
    module it hands a backend); the code after the break runs eagerly or in the next graph."""
    why = getattr(gm, "compile_subgraph_reason", None)
    if why is None or not getattr(why, "graph_break", False):
        return None
    text = " ".join(str(why.reason).split()).split(" Hint:")[0]  # what and why; hints are Dynamo's
    stack = getattr(why, "user_stack", None) or []
    if stack:
        text += f" ({stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno})"
    return text


def resolve_target(config: ZeroQuantConfig, example_inputs: list) -> str:
    """The concrete target: "auto" means the Triton kernels for CUDA inputs (when they can run
    there), else the CPU kernels."""
    if config.target != "auto":
        return config.target
    cuda = next((t.device for t in example_inputs if isinstance(t, torch.Tensor) and t.is_cuda), None)
    if cuda is not None:
        from zq_compile.codegen.triton.runtime import device_problem

        if device_problem(cuda) is None:
            return "triton"
    return "cpu"


def m_regime(gm: fx.GraphModule) -> str:
    """"small" if every quantized linear of the graph sees a fixed, small number of rows (a
    decode step), else "large". Kernels are chosen per regime (codegen/cpu/select.py)."""
    from zq_compile.codegen.cpu.select import SMALL_M

    targets = (torch.ops.zq.linear_w8a8.default, torch.ops.zq.linear_wo.default, torch.ops.zq.linear_w4a8.default)
    for node in (n for t in targets for n in gm.graph.find_nodes(op="call_function", target=t)):
        rows = math.prod(node.args[0].meta["example_value"].shape[:-1])
        if not isinstance(rows, int) or rows > SMALL_M:
            return "large"
    return "small"


def _choose_kernel(target: str, config: ZeroQuantConfig, report: CompileReport, regime: str, gm=None):
    from zq_compile.codegen.cpu.select import choose_for_shapes, select_cpu_kernel

    if target == "triton":
        from zq_compile.codegen.triton.kernel import select_triton_kernel

        choice = select_triton_kernel()
    elif target == "cpu" and config.cpu_kernel == "auto" and gm is not None and gemm_shapes(gm):
        choice, line, float_note = choose_for_shapes(gemm_shapes(gm), gemm_bf16(gm))
        if line:
            report.races.append(line)
        if float_note:
            report.note(float_note)
    else:
        choice = select_cpu_kernel("reference" if target == "reference" else config.cpu_kernel, regime)
    report.kernel = choice.kernel.name
    report.kernel_reason = f"{choice.kernel.description}: {choice.reason}"
    for name, why in choice.rejected:
        report.note(f"kernel {name} not used: {why}")
    return choice.kernel


def _append_constants(compiled, prepared: Prepared):
    """Call ``compiled`` with Dynamo's inputs followed by the quantized constants of the float
    weights in those inputs (``binding.py``: usually the ones made at compile time).

    Dynamo calls a backend's result with positional tensors (what aot_module_simplified returns
    takes ``*args`` too), so the constants are appended to those.
    """
    if not prepared.constants:
        return compiled
    binding, template = prepared.binding, prepared.constants

    def run(*args):
        return compiled(*args, *binding.constants_for(args, template))

    run.zq_binding = binding
    return run
