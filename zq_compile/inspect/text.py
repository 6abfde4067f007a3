"""The ExplainReport as a terminal table."""

from __future__ import annotations

import math

from zq_compile.inspect.schema import Error, ExplainReport

_KNOWN = {"config", "graph_id", "target", "kernel", "kernel_reason", "decisions", "attention", "pass_counts",
          "disabled_passes", "notes", "requantized"}


def fmt_db(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return "inf" if math.isinf(v) else f"{v:.1f}"


def fmt_err(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def mib(b: int) -> str:
    return f"{b / 2**20:.2f} MiB"


def _error(e: Error | None) -> str:
    if e is None or e.sqnr_db is None:
        return "not measured"
    cos = f", cosine {e.cosine:.5f}" if e.cosine is not None else ""
    return f"SQNR {fmt_db(e.sqnr_db)} dB, max abs error {fmt_err(e.max_abs_err)}{cos}"


def render_text(r: ExplainReport, width: int = 46) -> str:
    w = r.weights
    lines = [
        f"zeroquant explain: {r.model}  (preset {r.config.get('preset')}, {len(r.graphs)} graph(s), schema v{r.schema_version})",
        f"  linears quantized: {w['quantized_linears']}/{w['linears']}; weights {mib(w['float_bytes'])} -> "
        f"{mib(w['quant_bytes'])}" + (f" ({w['float_bytes'] / w['quant_bytes']:.2f}x smaller)" if w["quant_bytes"] else ""),
        f"  model output vs float: {_error(r.model_error)}",
    ]
    t = r.timing
    if "eager_ms" in t:
        lines.append(f"  forward: eager {t['eager_ms']:.1f} ms, compiled {t['compiled_ms']:.1f} ms "
                     f"({t['eager_ms'] / t['compiled_ms']:.2f}x); compile {t['compile_s']:.1f} s")
    d = r.dynamo
    lines.append(f"  dynamo: {d['graphs']} graph(s), {sum(b['count'] for b in d['graph_breaks'])} graph break(s), "
                 f"{len(d['recompiles'])} recompile(s)")
    lines += [f"    break: {b['reason']} (x{b['count']})" for b in d["graph_breaks"]]
    lines += [f"    recompile: {x.splitlines()[0]}" for x in d["recompiles"]]
    for g in r.graphs:
        lines.append("")
        lines.append(f"graph {g.graph_id}: target {g.target!r}, kernel {g.kernel}; output vs float: {_error(g.output_error)}")
        if g.kernel_reason:
            lines.append(f"  kernel: {g.kernel_reason}")
        lines.append(f"  {'module':{width}s} {'scheme':6s} {'weight':>10s} {'SQNR dB':>8s} {'alone':>6s} {'max abs':>9s}")
        for row in g.linears:
            shape = "x".join(map(str, row.weight_shape)) if row.weight_shape else "?"
            mod = row.module or row.node
            mod = mod if len(mod) <= width else "..." + mod[-(width - 3):]
            if row.scheme:
                lines.append(f"  {mod:{width}s} {row.scheme:6s} {shape:>10s} {fmt_db(row.sqnr_db):>8s} "
                             f"{fmt_db(row.local_sqnr_db):>6s} {fmt_err(row.max_abs_err):>9s}")
            else:
                lines.append(f"  {mod:{width}s} {'float':6s} {shape:>10s} {fmt_db(row.sqnr_db):>8s} "
                             f"{'-':>6s} {fmt_err(row.max_abs_err):>9s}  {row.reason}")
        kept = [f for f in g.float_nodes if f.kind != "other"]
        for f in kept:
            lines.append(f"  float {f.kind}: {f.module or f.node}: {f.reason}")
        lines.append(f"  fusions read from the generated code: {len(g.fusions)} "
                     f"(of {len(g.kernels)} kernel/extern calls)" if g.code_captured
                     else "  fusions: no generated code was captured")
        for f in g.fusions:
            lines.append(f"    {f.kernel}: {f.describe()}")
        extra = {k: v for k, v in g.compile_report.items() if k not in _KNOWN and v not in (None, [], {}, "", 0)}
        for k, v in extra.items():
            lines.append(f"  {k}: {_short(v)}")
        for name, count in g.compile_report.get("pass_counts", {}).items():
            lines.append(f"  pass {name}: {count} rewrite(s)")
        lines += [f"  note: {n}" for n in g.compile_report.get("notes", [])]
    return "\n".join(lines)


def _short(v, limit: int = 300) -> str:
    s = str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."
