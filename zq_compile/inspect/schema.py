"""The ExplainReport: what ``zq_compile.explain`` found, as plain dataclasses with a versioned
dict/JSON form (documented in docs/inspect.md; bump SCHEMA_VERSION when a key changes meaning or
goes away; adding a key is compatible)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class LinearRow:
    """One linear-like node of a captured graph: rewritten (scheme set) or left in float."""

    node: str  # name in Dynamo's graph
    module: str
    op: str  # linear | matmul | addmm
    weight_shape: list[int] | None  # [N, K]
    input_shape: list[int] | None
    scheme: str | None
    reason: str
    kernel: str | None  # the int8 GEMM chosen for the graph (None when left float)
    target: str
    float_bytes: int = 0
    quant_bytes: int = 0
    zq_node: str | None = None  # the quantized op that replaced it
    #: this linear's output in the quantized graph against the float graph, both on the example
    #: inputs: what the rest of the model sees (errors of earlier layers included)
    sqnr_db: float | None = None
    max_abs_err: float | None = None
    #: this linear alone: the quantized op fed the float graph's own input to it
    local_sqnr_db: float | None = None
    local_max_abs_err: float | None = None


@dataclass
class FloatNode:
    node: str
    op: str
    module: str
    kind: str  # linear | attention | other
    reason: str


@dataclass
class Fusion:
    """One kernel Inductor generated that runs a quantized linear's neighbours with it."""

    kernel: str
    ops: list[str]
    epilogue_of: list[str]  # modules whose GEMM output this kernel reads (scales, bias, ...)
    quantizes_for: list[str]  # modules whose int8 input this kernel writes
    nodes: list[str] = field(default_factory=list)  # nodes of the rewritten graph it covers

    @property
    def float_ops(self) -> list[str]:
        return [o for o in self.ops if o not in ZQ_PARTS]

    def describe(self) -> str:
        parts = []
        if self.epilogue_of:
            parts.append("epilogue of " + ", ".join(self.epilogue_of))
        if self.float_ops:
            parts.append(" + ".join(self.float_ops))
        if self.quantizes_for:
            parts.append("quantize for " + ", ".join(self.quantizes_for))
        return " -> ".join(parts)


#: op names in kernel names that are pieces of our own ops, not the model's
ZQ_PARTS = ("quantize_per_token", "linear_w8a8", "linear_w8a16", "linear_w4a8", "linear_w4a16", "attention_bf16")


@dataclass
class Error:
    sqnr_db: float | None
    max_abs_err: float | None
    cosine: float | None = None


@dataclass
class GraphNode:
    name: str
    label: str
    kind: str  # quantized | quantize | attention | float | input
    scheme: str | None
    module: str
    shape: str
    reason: str
    inputs: list[str]
    group: int | None = None  # index into GraphExplain.fusions


@dataclass
class GraphExplain:
    graph_id: int
    target: str
    kernel: str
    kernel_reason: str
    linears: list[LinearRow]
    float_nodes: list[FloatNode]
    fusions: list[Fusion]
    kernels: list[str]  # every kernel and extern call of the generated code, in order
    output_error: Error | None
    before: list[GraphNode]
    after: list[GraphNode]
    #: the CompileReport as a dict, whatever fields it has (other features add theirs)
    compile_report: dict[str, Any]
    code_captured: bool = True

    @property
    def quantized(self) -> list[LinearRow]:
        return [r for r in self.linears if r.scheme]


@dataclass
class ExplainReport:
    model: str
    config: dict[str, Any]
    graphs: list[GraphExplain]
    model_error: Error | None
    timing: dict[str, float]
    dynamo: dict[str, Any]
    environment: dict[str, str]
    schema_version: int = SCHEMA_VERSION

    @property
    def linears(self) -> list[LinearRow]:
        return [r for g in self.graphs for r in g.linears]

    @property
    def fusions(self) -> list[Fusion]:
        return [f for g in self.graphs for f in g.fusions]

    @property
    def weights(self) -> dict[str, int]:
        q = [r for r in self.linears if r.scheme]
        return {
            "quantized_linears": len(q),
            "linears": len(self.linears),
            "float_bytes": sum(r.float_bytes for r in q),
            "quant_bytes": sum(r.quant_bytes for r in q),
        }

    def to_dict(self) -> dict[str, Any]:
        d = _clean(dataclasses.asdict(self))
        d["weights"] = self.weights
        for g, gd in zip(self.graphs, d["graphs"]):
            for f, fd in zip(g.fusions, gd["fusions"]):
                fd["describe"] = f.describe()
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)  # pass order kept

    def __str__(self) -> str:
        from zq_compile.inspect.text import render_text

        return render_text(self)


def _clean(value):
    """JSON has no inf/nan: SQNR of an exact result is +inf, written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _number(v):
    return float(v) if v in ("inf", "-inf", "nan") else v


def _build(cls, data: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def from_dict(data: dict[str, Any]) -> ExplainReport:
    """An ExplainReport back from its JSON form (to render a saved report again)."""
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")

    def error(e):
        return None if e is None else _build(Error, {k: _number(v) for k, v in e.items()})

    graphs = []
    for g in data["graphs"]:
        g = dict(g)
        g["linears"] = [_build(LinearRow, {k: _number(v) for k, v in r.items()}) for r in g["linears"]]
        g["float_nodes"] = [_build(FloatNode, f) for f in g["float_nodes"]]
        g["fusions"] = [_build(Fusion, f) for f in g["fusions"]]
        g["before"] = [_build(GraphNode, n) for n in g["before"]]
        g["after"] = [_build(GraphNode, n) for n in g["after"]]
        g["output_error"] = error(g["output_error"])
        graphs.append(_build(GraphExplain, g))
    top = dict(data, graphs=graphs, model_error=error(data["model_error"]))
    return _build(ExplainReport, top)
