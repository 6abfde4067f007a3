"""Inline SVG drawings for the HTML page: a graph in a simple layered layout (each node one row
below its deepest input, ordered within its row by where its inputs sit) and a bar chart of the
per-layer SQNR. Hand-written so the page needs no Graphviz and no script."""

from __future__ import annotations

import hashlib
import math
from html import escape

from zq_compile.inspect.schema import Fusion, GraphNode, LinearRow

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 150, 22, 14, 16, 12
SCHEME_COLOURS = {"w8a8": "#2f9e44", "w4a8": "#1971c2", "w8a16": "#e8590c", "w4a16": "#9c36b5"}
FLOAT_FILL, ATTENTION_FILL = "#e9ecef", "#fab005"


def scheme_colour(scheme: str | None) -> str:
    if not scheme:
        return FLOAT_FILL
    if scheme in SCHEME_COLOURS:
        return SCHEME_COLOURS[scheme]
    h = int(hashlib.sha1(scheme.encode()).hexdigest()[:6], 16)
    return f"hsl({h % 360}, 55%, 42%)"


def layout(nodes: list[GraphNode]) -> dict[str, tuple[float, float]]:
    """Top-left corner of each node's box."""
    depth: dict[str, int] = {}
    for n in nodes:  # nodes come in topological (graph) order
        depth[n.name] = 1 + max((depth[i] for i in n.inputs if i in depth), default=-1)
    rows: dict[int, list[GraphNode]] = {}
    for n in nodes:
        rows.setdefault(depth[n.name], []).append(n)
    col: dict[str, float] = {}
    pos = {}
    for d in sorted(rows):
        row = rows[d]
        wanted = {n.name: (sum(col[i] for i in n.inputs if i in col) / max(1, sum(i in col for i in n.inputs))
                           if any(i in col for i in n.inputs) else k) for k, n in enumerate(row)}
        row.sort(key=lambda n: wanted[n.name])
        taken, placed = -1, []
        for n in row:
            taken = max(round(wanted[n.name]), taken + 1)
            placed.append(taken)
        # centre the row on where its nodes want to be: fan-outs otherwise drift right row by row
        shift = round(sum(wanted.values()) / len(row) - sum(placed) / len(row))
        taken = -1
        for n, c in zip(row, placed):
            col[n.name] = taken = max(c + shift, taken + 1, 0)
    for n in nodes:
        pos[n.name] = (PAD + col[n.name] * (NODE_W + COL_GAP), PAD + depth[n.name] * (NODE_H + ROW_GAP))
    return pos


def _fill(n: GraphNode) -> tuple[str, str, str]:
    """(fill, text colour, stroke)"""
    if n.kind == "quantized":
        return scheme_colour(n.scheme), "#fff", "#222"
    if n.kind == "quantize":
        return scheme_colour(n.scheme), "#fff", "#fff"
    if n.kind == "attention":
        return ATTENTION_FILL, "#222", "#222"
    linear_left_float = n.reason and not n.reason.startswith("not a linear")
    return FLOAT_FILL, "#222", "#e03131" if linear_left_float else "#adb5bd"


def graph_svg(nodes: list[GraphNode], title: str, fusions: list[Fusion] | None = None) -> str:
    pos = layout(nodes)
    width = max((x for x, _ in pos.values()), default=0) + NODE_W + 2 * PAD
    height = max((y for _, y in pos.values()), default=0) + NODE_H + 2 * PAD + 18
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(title)}">']
    for i, f in enumerate(fusions or []):
        boxes = [pos[n] for n in f.nodes if n in pos]
        if not boxes:
            continue
        x0 = min(x for x, _ in boxes) - 5
        y0 = min(y for _, y in boxes) - 5
        x1 = max(x for x, _ in boxes) + NODE_W + 5
        y1 = max(y for _, y in boxes) + NODE_H + 5
        out.append(f'<g class="fusion" data-kernel="{escape(f.kernel)}"><title>fused kernel {escape(f.kernel)}: '
                   f'{escape(f.describe())}</title><rect x="{x0:.0f}" y="{y0:.0f}" width="{x1 - x0:.0f}" '
                   f'height="{y1 - y0:.0f}" rx="6" fill="#fff3bf" fill-opacity="0.45" stroke="#f08c00" '
                   f'stroke-dasharray="5 3"/></g>')
    for n in nodes:
        x2, y2 = pos[n.name]
        for i in n.inputs:
            if i not in pos:
                continue
            x1, y1 = pos[i]
            ax, ay, bx, by = x1 + NODE_W / 2, y1 + NODE_H, x2 + NODE_W / 2, y2
            bend = max(8.0, (by - ay) / 2)
            out.append(f'<path class="edge" d="M{ax:.0f},{ay:.0f} C{ax:.0f},{ay + bend:.0f} {bx:.0f},{by - bend:.0f} '
                       f'{bx:.0f},{by:.0f}" fill="none" stroke="#868e96" stroke-opacity="0.55"/>')
    for n in nodes:
        x, y = pos[n.name]
        fill, ink, stroke = _fill(n)
        tip = "\n".join(t for t in (f"{n.name}: {n.label}", n.module, n.shape, n.reason) if t)
        text = n.label if len(n.label) <= 24 else n.label[:22] + "…"
        out.append(f'<g class="node" data-node="{escape(n.name)}" data-kind="{n.kind}"><title>{escape(tip)}</title>'
                   f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_W}" height="{NODE_H}" rx="4" fill="{fill}" '
                   f'stroke="{stroke}"/><text x="{x + NODE_W / 2:.0f}" y="{y + 15:.0f}" text-anchor="middle" '
                   f'font-size="10.5" fill="{ink}">{escape(text)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def sqnr_chart(rows: list[LinearRow], label_w: int = 330, bar_w: int = 420, row_h: int = 16) -> str:
    """Horizontal bars: each linear's SQNR in the model (a kept-float one too: the rounding of the
    layers before it); a tick marks a quantized one alone."""
    rows = [r for r in rows if r.scheme or r.sqnr_db is not None]
    finite = [v for r in rows for v in (r.sqnr_db, r.local_sqnr_db) if isinstance(v, (int, float)) and math.isfinite(v)]
    top = max([40.0] + finite) * 1.05
    width, height = label_w + bar_w + 200, 28 + row_h * len(rows) + 36
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="SQNR per layer">']
    for db in range(0, int(top) + 1, 10):
        x = label_w + bar_w * db / top
        out.append(f'<line x1="{x:.0f}" y1="20" x2="{x:.0f}" y2="{height - 20}" stroke="#dee2e6"/>'
                   f'<text x="{x:.0f}" y="14" font-size="10" text-anchor="middle" fill="#495057">{db} dB</text>')
    for k, r in enumerate(rows):
        y = 24 + k * row_h
        v = r.sqnr_db
        ok = isinstance(v, (int, float)) and not math.isnan(v)
        value = min(v, top) if ok else 0
        colour = "#2f9e44" if ok and v >= 30 else ("#f59f00" if ok and v >= 20 else "#e03131")
        name = r.module or r.node
        name = name if len(name) <= 52 else "…" + name[-51:]
        label = "inf" if ok and math.isinf(v) else (f"{v:.1f} dB" if ok else "not measured")
        tip = (f"{r.module}: {r.scheme or 'float'}; in the model {label}, max abs error {r.max_abs_err}; alone "
               f"{r.local_sqnr_db if r.local_sqnr_db is not None else '-'} dB")
        out.append(f'<g class="bar"><title>{escape(tip)}</title>'
                   f'<text x="{label_w - 6}" y="{y + 11}" font-size="10.5" text-anchor="end" fill="#212529">{escape(name)}</text>'
                   f'<rect x="{label_w}" y="{y + 2}" width="{bar_w * value / top:.1f}" height="{row_h - 4}" fill="{colour}"/>')
        lv = r.local_sqnr_db
        end = label_w + bar_w * value / top
        if isinstance(lv, (int, float)) and math.isfinite(lv):
            lx = label_w + bar_w * min(lv, top) / top
            end = max(end, lx)
            out.append(f'<line x1="{lx:.1f}" y1="{y + 1}" x2="{lx:.1f}" y2="{y + row_h - 1}" stroke="#212529" stroke-width="2"/>')
        out.append(f'<text x="{end + 4:.1f}" y="{y + 11}" font-size="10" fill="#495057">{label}</text></g>')
    out.append(f'<text x="{label_w}" y="{height - 18}" font-size="10" fill="#495057">bar: SQNR of the layer\'s output '
               'in the quantized model vs float; tick: the layer alone on the float input</text>'
               f'<text x="{label_w}" y="{height - 6}" font-size="10" fill="#495057">green &gt;= 30 dB, amber &gt;= 20 dB, '
               'red below</text></svg>')
    return "".join(out)
