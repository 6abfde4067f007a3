"""The pipeline race: the int8 graph against the best float pipeline of this CPU, at compile time.

Where int8 arithmetic is nearly free (AMX Xeons), a model cast to bf16 and compiled with
Inductor freezing (packed bf16 linears with their bias and activation inside oneDNN's call) can
beat an int8 pipeline whose quantize and dequantize steps move bytes between the GEMMs. Issue
10 asks that zeroquant never be slower than that float pipeline, and that the report say so when
no int8 variant wins. So, for a graph big enough to matter, the backend also compiles Dynamo's
float graph as that CPU's strongest float pipeline (autocast bf16 + freezing where the CPU has
native bf16 dot products, fp32 + freezing elsewhere), times both on the graph's own inputs and
keeps the faster:

    Dynamo graph ──► zeroquant passes ──► Inductor ──────────────► int8 callable ─┐
          └───────► autocast bf16 (fp32 elsewhere) ──► Inductor (freezing) ─► float callable ─┴─► race ─► winner

The float pipeline wins only by ``FLOAT_MARGIN`` or more (the int8 one saves memory, so a tie
goes to it). The statistic is the median of per-round ratios (int8 time / float time, the two
calls of a round back to back, under the same load of a shared machine). Five rounds decide a
clear race; one whose ratio lands within ``UNDECIDED`` of the margin runs more rounds (up to
``RACE_MAX_RUNS``, within ``RACE_BUDGET_S``): on a shared 2-core Xeon, five rounds of SmolLM2's
prefill graph once picked a float pipeline that the bench then measured 3% slower than int8.
The float pipeline is never chosen under ``release_float_weights`` (its weights are the float
ones) and ``pipeline_race="report"`` only reports. A float winner holds the weights as they were
when it compiled (freezing makes them constants): if a parameter is replaced or edited in place
afterwards, the graph switches to its int8 callable, which re-quantizes edited weights
(``binding.py``), and says so once.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any, Callable, NamedTuple

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from zq_compile import store
from zq_compile.passes.graph_utils import size_hint

#: A float pipeline must be this much faster (median per-round time ratio) to replace the int8 one.
FLOAT_MARGIN = 1.05
#: Timed rounds per contender in each batch (after 1 warm-up call each), interleaved.
RACE_RUNS = 5
#: A ratio within this factor of FLOAT_MARGIN (either side) is undecided: another batch runs ...
UNDECIDED = 1.10
#: ... until the race has this many rounds, or has taken this many seconds.
RACE_MAX_RUNS = 25
RACE_BUDGET_S = 30.0


class Race(NamedTuple):
    """A race's outcome: median times (ms), the median per-round ratio that decides, the rounds run."""
    int8_ms: float
    float_ms: float
    ratio: float
    rounds: int


def float_pipeline_label() -> str:
    from zq_compile.codegen.cpu.select import has_bf16

    return "bf16+freezing" if has_bf16() else "fp32+freezing"


def gemm_gflop(gm: fx.GraphModule) -> float:
    """GFLOP per call of the graph's linears with a 2-D weight (2 M K N each), at the traced
    shapes: ``F.linear`` (weight [N, K]), ``addmm`` (GPT-2's Conv1D, weight [K, N]) and
    ``matmul`` / ``mm`` / ``@`` with a 2-D right operand."""
    import operator

    total = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in (torch._C._nn.linear, torch.nn.functional.linear):
            x, w, transposed = node.args[0], node.args[1], True
        elif node.target is torch.addmm and len(node.args) >= 3:
            x, w, transposed = node.args[1], node.args[2], False
        elif node.target in (torch.matmul, torch.mm, operator.matmul) and len(node.args) >= 2:
            x, w, transposed = node.args[0], node.args[1], False
        else:
            continue
        xv = x.meta.get("example_value") if isinstance(x, fx.Node) else None
        wv = w.meta.get("example_value") if isinstance(w, fx.Node) else None
        if not isinstance(xv, torch.Tensor) or not isinstance(wv, torch.Tensor) or wv.dim() != 2:
            continue
        k_index = 1 if transposed else 0
        sizes = [size_hint(s, exact=True) for s in (*xv.shape[:-1], xv.shape[-1], wv.shape[1 - k_index])]
        if None not in sizes:
            total += 2 * math.prod(sizes)
    return total / 1e9


def why_not_raced(config, target: str, regime: str, example_inputs: list, gm: fx.GraphModule,
                  quantized: bool) -> str | None:
    """None when the graph is raced, else the reason it is not (for the report)."""
    if config.pipeline_race == "off":
        return "pipeline_race='off'"
    if target != "cpu":
        return f"target {target!r} (the race runs on the cpu target)"
    if not quantized:
        return "no quantized linear in this graph"
    if regime != "large":
        return "a decode-sized graph (its kernels are raced per GEMM instead)"
    if torch.is_grad_enabled():
        return "grad mode on (Inductor freezes weights only under no_grad)"
    if any(not isinstance(t, torch.Tensor) and size_hint(t, exact=True) is None for t in example_inputs):
        return "an input that is neither a tensor nor a size"
    gflop = gemm_gflop(gm)
    if gflop < config.pipeline_race_min_gflop:
        return (f"{gflop:.2f} GFLOP of linears per call, under pipeline_race_min_gflop="
                f"{config.pipeline_race_min_gflop:g}")
    if config.release_float_weights:
        return "release_float_weights (the float pipeline would need the float weights it frees)"
    return None


def concrete(example_inputs: list) -> list:
    """The inputs with a dynamic graph's symbolic sizes replaced by their values in this call."""
    return [t if isinstance(t, torch.Tensor) else size_hint(t, exact=True) for t in example_inputs]


def compile_float_pipeline(gm: fx.GraphModule, example_inputs: list) -> tuple[Callable, list[int]]:
    """Dynamo's float graph as this CPU's strongest float pipeline, and the input positions it
    takes: the tensors that are not ``nn.Parameter`` (the parameters are frozen in, and the ints a
    dynamic graph takes for its sizes are fixed at this call's values).

    The graph is traced once on the real inputs under ``torch.autocast`` (bf16 where the CPU has
    native bf16: linears, matmuls and attention in bf16, LayerNorm and softmax in fp32), with
    every ``nn.Parameter`` input captured as a constant; Inductor then compiles it with freezing,
    which folds the weight casts and packs the linears for oneDNN. The result serves this call's
    shapes only (``FloatWinner`` checks)."""
    from torch._inductor.compile_fx import compile_fx
    from torch.fx.experimental.proxy_tensor import make_fx

    from zq_compile.codegen.cpu.select import has_bf16

    fixed = {i: t for i, t in enumerate(example_inputs)
             if isinstance(t, torch.nn.Parameter) or not isinstance(t, torch.Tensor)}
    taken = [i for i in range(len(example_inputs)) if i not in fixed]
    bf16 = has_bf16()

    dtypes = _output_dtypes(gm)

    def run(*args):
        it = iter(args)
        full = [fixed[i] if i in fixed else next(it) for i in range(len(example_inputs))]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outs = gm(*full)
        flat, spec = pytree.tree_flatten(outs)
        flat = [_as_dtype(o, dtypes[i] if i < len(dtypes) else None) for i, o in enumerate(flat)]
        return pytree.tree_unflatten(flat, spec)

    inputs = [example_inputs[i] for i in taken]
    with torch.no_grad():
        traced = make_fx(run, tracing_mode="real")(*inputs)
        with torch._inductor.config.patch(freezing=True):
            compiled = compile_fx(traced, inputs)
    return compiled, taken


def _output_dtypes(gm: fx.GraphModule) -> list[torch.dtype | None]:
    """The dtype of each (flattened) output of Dynamo's graph as the model computes it, so that
    autocast's bf16 results go back to what the model returns (fp32, bf16 or fp16)."""
    out = gm.graph.find_nodes(op="output")[0]
    leaves = pytree.tree_leaves(out.args[0])
    return [getattr(n.meta.get("example_value"), "dtype", None) if isinstance(n, fx.Node) else None
            for n in leaves]


def _as_dtype(o, dtype: torch.dtype | None):
    if not isinstance(o, torch.Tensor) or not o.is_floating_point():
        return o
    if dtype is None:  # no record of the model's dtype: autocast's bf16 goes back to fp32
        return o.float() if o.dtype == torch.bfloat16 else o
    return o.to(dtype)


def undecided(ratio: float) -> bool:
    return FLOAT_MARGIN / UNDECIDED < ratio < FLOAT_MARGIN * UNDECIDED


def race(int8_fn: Callable[[], Any], float_fn: Callable[[], Any]) -> Race:
    """Interleaved calls on the graph's own inputs, in batches of ``RACE_RUNS`` rounds while the
    ratio is ``undecided`` and the round and time limits allow."""
    from zq_compile.timing import interleaved_times

    times: dict[str, list[float]] = {"int8": [], "float": []}
    start = time.perf_counter()
    with torch.no_grad():
        while True:
            batch = interleaved_times({"int8": int8_fn, "float": float_fn}, runs=RACE_RUNS,
                                      warmup=0 if times["int8"] else 1)
            for name, ts in batch.items():
                times[name] += ts
            ratio = statistics.median(a / b for a, b in zip(times["int8"], times["float"]))
            rounds = len(times["int8"])
            if (not undecided(ratio) or rounds + RACE_RUNS > RACE_MAX_RUNS
                    or time.perf_counter() - start > RACE_BUDGET_S):
                break
    return Race(statistics.median(times["int8"]), statistics.median(times["float"]), ratio, rounds)


class FloatWinner:
    """The float pipeline's callable, guarded. It serves a call while every parameter it froze is
    the same tensor at the same version as when it compiled and the other inputs have the shapes
    (and, for a dynamic graph's size ints, the values) it was traced with; other shapes run the
    int8 callable. After a parameter changes, the int8 one serves every call."""

    def __init__(self, float_fn: Callable, taken: list[int], int8_fn: Callable, example_inputs: list, report):
        self.float_fn, self.taken, self.int8_fn, self.report = float_fn, taken, int8_fn, report
        self.frozen = [(i, t, store.version(t)) for i, t in enumerate(example_inputs)
                       if isinstance(t, torch.nn.Parameter)]
        self.shapes = [(i, example_inputs[i].shape) for i in taken]
        self.ints = [(i, v) for i, v in enumerate(example_inputs) if not isinstance(v, torch.Tensor)]
        self.switched = False

    def _same_weights(self, args) -> bool:
        return all(i < len(args) and args[i] is t and store.version(t) == v for i, t, v in self.frozen)

    def _same_shapes(self, args) -> bool:
        return (all(args[i].shape == shape for i, shape in self.shapes)
                and all(args[i] == v for i, v in self.ints))

    def __call__(self, *args):
        if not self.switched and not self._same_weights(args):
            self.switched = True
            msg = ("pipeline race: a parameter changed after compiling, so this graph now runs its "
                   "int8 pipeline (the float one holds the weights it froze)")
            self.report.note(msg)
            warnings.warn(f"zeroquant: {msg}", stacklevel=2)
        if not self.switched and self._same_shapes(args):
            return self.float_fn(*[args[i] for i in self.taken])
        return self.int8_fn(*args)
