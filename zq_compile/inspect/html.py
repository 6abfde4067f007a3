"""The ExplainReport as one self-contained HTML page (inline CSS and SVG, no script, nothing
fetched): summary, per-layer error chart, fusions, and each graph before and after."""

from __future__ import annotations

import json
from html import escape

from zq_compile.inspect.schema import ExplainReport
from zq_compile.inspect.svg import ATTENTION_FILL, FLOAT_FILL, graph_svg, scheme_colour, sqnr_chart
from zq_compile.inspect.text import _KNOWN, fmt_db, fmt_err, mib

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#212529;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dee2e6}
h3{font-size:15px;margin:16px 0 6px} .sub{color:#495057;margin-bottom:14px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}
.card{border:1px solid #dee2e6;border-radius:8px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:19px} .card span{color:#495057;font-size:12px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0} td,th{border-bottom:1px solid #e9ecef;padding:3px 8px;text-align:left}
th{background:#f8f9fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:14px;height:11px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.pair{display:flex;gap:24px;align-items:flex-start;overflow-x:auto;border:1px solid #e9ecef;padding:8px}
.pair>div{flex:1 1 0;min-width:0;overflow:auto;max-height:1600px} .pair h4{margin:0 0 4px;font-size:13px;position:sticky;left:0}
code{font-size:12px;background:#f1f3f5;padding:0 3px;border-radius:3px}
td code{word-break:break-all} table.fusions td:first-child{max-width:460px}
"""


def render_html(r: ExplainReport) -> str:
    w = r.weights
    t = r.timing
    me = r.model_error
    cards = [
        (f"{w['quantized_linears']}/{w['linears']}", "linears quantized"),
        (f"{mib(w['float_bytes'])} → {mib(w['quant_bytes'])}", "linear weights"),
        (f"{fmt_db(me.sqnr_db)} dB" if me else "-", "model output SQNR vs float"),
        (f"{me.cosine:.5f}" if me and me.cosine is not None else "-", "output cosine vs float"),
        (str(sum(len(g.fusions) for g in r.graphs)), "fused kernels with a quantized op"),
    ]
    if "eager_ms" in t:
        cards += [(f"{t['eager_ms']:.1f} → {t['compiled_ms']:.1f} ms", "forward, eager → compiled"),
                  (f"{t['compile_s']:.1f} s", "compile time")]
    d = r.dynamo
    cards.append((f"{d['graphs']} / {sum(b['count'] for b in d['graph_breaks'])} / {len(d['recompiles'])}",
                  "graphs / breaks / recompiles"))
    schemes = sorted({n.scheme for g in r.graphs for n in g.after if n.scheme})
    legend = "".join(f'<span><i style="background:{scheme_colour(s)}"></i>{escape(s)} (GEMM, quantize)</span>' for s in schemes)
    legend += (f'<span><i style="background:{ATTENTION_FILL}"></i>bf16 attention</span>'
               f'<span><i style="background:{FLOAT_FILL};border:1px solid #adb5bd"></i>float (reason on hover)</span>'
               f'<span><i style="background:{FLOAT_FILL};border:1px solid #e03131"></i>linear or attention left float</span>'
               '<span><i style="background:#fff3bf;border:1px dashed #f08c00"></i>one fused kernel</span>')
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>zeroquant explain: {escape(r.model)}</title><style>{_CSS}</style></head><body>",
        f"<h1>zeroquant explain: {escape(r.model)}</h1>",
        f"<div class='sub'>preset <code>{escape(str(r.config.get('preset')))}</code> · "
        f"{len(r.graphs)} graph(s) · torch {escape(r.environment.get('torch', ''))} · "
        f"{escape(r.environment.get('machine', ''))} · schema v{r.schema_version}</div>",
        "<div class='cards'>" + "".join(f"<div class='card'><b>{escape(v)}</b><span>{escape(k)}</span></div>"
                                        for v, k in cards) + "</div>",
        "<h2>Per-layer error on the example inputs</h2>",
        sqnr_chart(r.linears),
    ]
    if d["graph_breaks"] or d["recompiles"]:
        parts.append("<h3>Dynamo</h3><table><tr><th>what</th><th>reason</th></tr>")
        parts += [f"<tr><td>graph break ×{b['count']}</td><td>{escape(b['reason'])}</td></tr>" for b in d["graph_breaks"]]
        parts += [f"<tr><td>recompile</td><td>{escape(x)}</td></tr>" for x in d["recompiles"]]
        parts.append("</table>")
    for g in r.graphs:
        parts.append(f"<h2>Graph {g.graph_id}: target <code>{escape(g.target)}</code>, kernel <code>{escape(g.kernel)}</code></h2>")
        if g.kernel_reason:
            parts.append(f"<div class='sub'>{escape(g.kernel_reason)}</div>")
        parts.append("<table><tr><th>module</th><th>op</th><th>weight</th><th>input</th><th>scheme</th>"
                     "<th>SQNR dB</th><th>alone dB</th><th>max abs err</th><th>bytes fp → q</th><th>reason</th></tr>")
        for row in g.linears:
            shape = "×".join(map(str, row.weight_shape)) if row.weight_shape else "?"
            inp = "×".join(map(str, row.input_shape)) if row.input_shape else "?"
            colour = scheme_colour(row.scheme)
            parts.append(
                f"<tr><td>{escape(row.module or row.node)}</td><td>{escape(row.op)}</td><td>{shape}</td><td>{inp}</td>"
                f"<td><i style='display:inline-block;width:9px;height:9px;background:{colour}'></i> "
                f"{escape(row.scheme or 'float')}</td><td class='num'>{fmt_db(row.sqnr_db)}</td>"
                f"<td class='num'>{fmt_db(row.local_sqnr_db)}</td><td class='num'>{fmt_err(row.max_abs_err)}</td>"
                f"<td class='num'>{row.float_bytes} → {row.quant_bytes}</td><td>{escape(row.reason)}</td></tr>")
        parts.append("</table>")
        kept = [f for f in g.float_nodes if f.kind != "other"]
        if kept:
            parts.append("<h3>Left in float</h3><table><tr><th>node</th><th>kind</th><th>reason</th></tr>")
            parts += [f"<tr><td>{escape(f.module or f.node)}</td><td>{f.kind}</td><td>{escape(f.reason)}</td></tr>" for f in kept]
            parts.append("</table>")
        parts.append(f"<h3>Fused kernels read from the generated code ({len(g.fusions)} of {len(g.kernels)} calls)</h3>")
        if g.fusions:
            parts.append("<table class='fusions'><tr><th>kernel</th><th>what it runs</th></tr>")
            parts += [f"<tr><td><code>{escape(f.kernel)}</code></td><td>{escape(f.describe())}</td></tr>" for f in g.fusions]
            parts.append("</table>")
        extra = {k: v for k, v in g.compile_report.items() if k not in _KNOWN and v not in (None, [], {}, "", 0)}
        rows = [(f"pass {k}", f"{v} rewrite(s)") for k, v in g.compile_report.get("pass_counts", {}).items()]
        rows += [(k, json.dumps(v, default=str)[:600]) for k, v in extra.items()]
        rows += [("note", n) for n in g.compile_report.get("notes", [])]
        if rows:
            parts.append("<h3>Compile report</h3><table>" + "".join(
                f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in rows) + "</table>")
        parts.append(f"<h3>Graph before and after</h3><div class='legend'>{legend}</div><div class='pair'>")
        parts.append(f"<div><h4>before: Dynamo's graph ({len(g.before)} ops)</h4>"
                     f"{graph_svg(g.before, f'graph {g.graph_id} before')}</div>")
        parts.append(f"<div><h4>after: rewritten for Inductor ({len(g.after)} ops)</h4>"
                     f"{graph_svg(g.after, f'graph {g.graph_id} after', g.fusions)}</div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)
