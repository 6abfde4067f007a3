"""What the backend did to one captured graph, and why: the record behind every summary.

Every linear-like node gets a ``LinearDecision`` (quantized with which scheme, or left in float
with the reason). Pass counts, the kernel chosen and any fallback are kept beside them. Reports of
the graphs compiled in this process are kept (the most recent 64) and returned by
``zq_compile.recent_reports()``; ``zq_compile.compile`` also hangs its own on the module it returns.
"""

from __future__ import annotations

import collections
import itertools
import logging
from dataclasses import dataclass, field

#: Users route our messages like torch's: logging.getLogger("zeroquant").setLevel(logging.INFO).
log = logging.getLogger("zeroquant")

_RECENT: collections.deque[CompileReport] = collections.deque(maxlen=64)
_GRAPH_IDS = itertools.count()


@dataclass
class LinearDecision:
    node: str
    module: str
    op: str
    shape: tuple[int, int] | None  # (N, K) of the weight, when known
    scheme: str | None  # None: left in floating point
    reason: str
    float_bytes: int = 0
    quant_bytes: int = 0
    role: str = ""  # "attention" | "ffn" | "other", from the graph (schemes/policy.py)
    #: what the Triton fusion passes fused into this linear's kernels ("gelu_erf", "residual",
    #: "requant", "input:norm_quantize", ...); empty: the standalone quantize + GEMM
    fused: list[str] = field(default_factory=list)

    @property
    def quantized(self) -> bool:
        return self.scheme is not None


@dataclass
class AttentionDecision:
    node: str
    module: str
    dtype: str  # what its matmuls run in: "bf16" (rewritten) or the dtype it kept
    reason: str


@dataclass
class CompileReport:
    config: dict
    graph_id: int = field(default_factory=lambda: next(_GRAPH_IDS))
    target: str = ""
    kernel: str = ""
    kernel_reason: str = ""
    decisions: list[LinearDecision] = field(default_factory=list)
    attention: list[AttentionDecision] = field(default_factory=list)
    pass_counts: dict[str, int] = field(default_factory=dict)
    disabled_passes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what is stored between the int8 GEMMs and why (passes/bf16_activations.py)
    activations: str = ""
    #: bytes per forward at the traced shapes (bytes_moved.py): Inductor's generated kernels
    #: (None: not code-generated in this call, e.g. served by the FX graph cache) and the GEMMs
    inductor_bytes: int | None = None
    inductor_kernels: int = 0
    gemm_bytes: int = 0
    #: the compile-time races (codegen/cpu/select.py): lines of "what, times, choice"
    races: list[str] = field(default_factory=list)
    #: what runs and why: "int8", "int8 (not raced: ...)", or the float pipeline that won the
    #: pipeline race with its margin (pipeline_race.py)
    pipeline: str = ""
    #: where Inductor generated this graph's code and why (codegen_child.py, isolate_codegen)
    codegen: str = ""
    #: the pipeline's name alone: "int8", or the float pipeline's label ("bf16+freezing", ...)
    runs: str = "int8"
    #: times the graph met float weights it was not compiled with and quantized them (binding.py)
    requantized: int = 0
    #: calibration statistics and accuracy-policy decisions (calibrate/report.py), when run
    calibration: object = None
    #: Triton fusions applied, per kind (passes/fuse_swiglu.py, fuse_gate_up.py, fuse_gemm_epilogue.py, ...)
    fusions: dict[str, int] = field(default_factory=dict)
    #: "pass: where: why" for each fusion candidate left unfused
    fusion_fallbacks: list[str] = field(default_factory=list)
    #: why Dynamo ended this graph early (a graph break: "reason (file:line)"), else None
    graph_break: str | None = None

    @property
    def quantized(self) -> list[LinearDecision]:
        return [d for d in self.decisions if d.quantized]

    @property
    def skipped(self) -> list[LinearDecision]:
        return [d for d in self.decisions if not d.quantized]

    @property
    def float_bytes(self) -> int:
        return sum(d.float_bytes for d in self.quantized)

    @property
    def quant_bytes(self) -> int:
        return sum(d.quant_bytes for d in self.quantized)

    def bytes_text(self) -> str:
        mib = lambda b: f"{b / 2**20:.2f} MiB"  # noqa: E731
        gemms = f"quantized GEMMs {mib(self.gemm_bytes)} (from their shapes)"
        if self.inductor_bytes is None:
            return f"{gemms}; Inductor's kernels not counted (graph not code-generated in this call: FX graph cache)"
        return (f"{mib(self.inductor_bytes + self.gemm_bytes)} = Inductor's {self.inductor_kernels} kernels "
                f"{mib(self.inductor_bytes)} + {gemms}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.info("zeroquant graph %d: %s", self.graph_id, text)

    def headline(self) -> str:
        if not self.decisions:
            return f"graph {self.graph_id}: no linear layers found; the graph runs unchanged in float"
        mb = lambda b: b / 2**20  # noqa: E731
        text = (
            f"graph {self.graph_id}: {len(self.quantized)}/{len(self.decisions)} linear layers quantized "
            f"on target {self.target!r} (kernel {self.kernel})"
        )
        if self.quantized:
            text += f", weights {mb(self.float_bytes):.2f} MiB -> {mb(self.quant_bytes):.2f} MiB"
        return text

    def summary(self) -> str:
        lines = [self.headline()]
        if self.kernel_reason:
            lines.append(f"  kernel: {self.kernel_reason}")
        for d in self.decisions:
            what = d.scheme if d.quantized else "float"
            shape = "x".join(map(str, d.shape)) if d.shape else "?"
            fused = f"; fused: {', '.join(d.fused)}" if d.fused else ""
            lines.append(f"  {what:6s} {d.module or '<top>'} [{d.op} {shape}] {d.reason}{fused}")
        for a in self.attention:
            lines.append(f"  {a.dtype:6s} {a.module or '<top>'} [attention] {a.reason}")
        if self.activations:
            lines.append(f"  activations: {self.activations}")
        if self.pipeline:
            lines.append(f"  pipeline: {self.pipeline}")
        if self.codegen:
            lines.append(f"  codegen: {self.codegen}")
        lines.extend(f"  race: {r}" for r in self.races)
        if self.decisions or self.inductor_bytes:
            lines.append(f"  bytes per forward: {self.bytes_text()}")
        for name, count in self.pass_counts.items():
            lines.append(f"  pass {name}: {count} rewrite(s)")
        if self.fusions:
            lines.append("  fusions: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.fusions.items())))
        lines.extend(f"  not fused: {f}" for f in self.fusion_fallbacks)
        for name in self.disabled_passes:
            lines.append(f"  pass {name}: disabled by config")
        if self.requantized:
            lines.append(f"  weights re-quantized {self.requantized} time(s): the graph was called with "
                         "other or edited float weights")
        if self.calibration is not None:
            lines.extend("  " + line for line in self.calibration.summary_lines())
        if self.graph_break:
            lines.append(f"  graph break after this graph: {self.graph_break}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def record(report: CompileReport) -> None:
    _RECENT.append(report)
    log.info("zeroquant %s", report.headline())
    for d in report.skipped:
        log.info("zeroquant graph %d: %s stays float: %s", report.graph_id, d.module or d.node, d.reason)


def recent_reports() -> list[CompileReport]:
    """Reports of the graphs compiled by the zeroquant backend in this process, oldest first."""
    return list(_RECENT)
