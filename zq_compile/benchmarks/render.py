"""Turn a bench result (the JSON dict) into markdown tables and PNG plots.

Tables are markdown, which also reads well printed in a terminal. Failed contenders stay in
every table as "failed", and their errors are listed once under the tables.
"""

from __future__ import annotations

import os

from zq_compile.benchmarks.contenders import BASELINE, TORCHAO_INT8_DYN
from zq_compile.benchmarks.machine import class_of, describe
from zq_compile.benchmarks.weight_bytes import label, target_met


def _load(v) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


def _names(result: dict) -> list[str]:
    return [c["name"] for c in result["contenders"]]


def _on(result: dict) -> str:
    """What every table's caption ends with: the CPU class its figures were measured on."""
    return f" CPU class: {class_of(result['machine'])}."


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _status(sec: dict, name: str) -> str | None:
    """None if the contender is fine in this section, else a short 'failed (stage)'."""
    st = sec.get("contenders", {}).get(name, {})
    if st.get("ok", False):
        return None
    return f"failed ({st.get('stage', '?')})"


def minilm_table(result: dict) -> list[str]:
    sec = result["sections"].get("minilm")
    if not sec:
        return []
    head = sec["latency"][0]
    ms = head["ms"]
    acc = sec.get("accuracy", {}).get("per_contender", {})
    mem = result["sections"].get("memory", {}).get("minilm", {}).get("per_contender", {})
    accuracy = sec.get("accuracy", {})
    if "sentences" in accuracy:
        measured = (f"accuracy on the {accuracy['sentences']} Pang & Lee sentences (sentiment: test split of "
                    f"{accuracy['split']['test']}).")
    else:
        measured = f"accuracy not measured ({accuracy.get('error', 'no labelled sentences')})."
    lines = [f"**MiniLM-L6** ({sec['note']}), batch {head['batch']} x seq {head['seq']}; {measured}" + _on(result), ""]
    rows = []
    for name in _names(result):
        failed = _status(sec, name)
        a, m = acc.get(name, {}), mem.get(name, {})
        if failed and name not in ms:
            rows.append([name, failed, "", "", "", "", "", "", ""])
            continue
        vs_ao = ms[TORCHAO_INT8_DYN] / ms[name] if TORCHAO_INT8_DYN in ms and name in ms else None
        rows.append([
            name,
            _fmt(ms.get(name), ".1f"),
            _fmt(head["speedup_vs_inductor_fp32"].get(name), ".2f") + "x",
            _fmt(vs_ao, ".2f") + ("x" if vs_ao else ""),
            _fmt(a.get("cosine_mean"), ".5f"),
            _fmt(a.get("cosine_min"), ".4f"),
            _fmt(a.get("sentiment_accuracy"), ".3f"),
            _fmt(m.get("steady_mib"), ".0f"),
            _fmt(m.get("peak_mib"), ".0f"),
        ])
    lines += _table(["contender", "ms", f"vs {BASELINE}", f"vs {TORCHAO_INT8_DYN}", "cosine vs fp32",
                     "min cosine", "sentiment acc", "steady MiB", "peak MiB"], rows)
    return lines


def sweep_table(result: dict, key: str) -> list[str]:
    sec = result["sections"].get(key)
    if not sec or len(sec["latency"]) < 1 or (key == "minilm" and len(sec["latency"]) < 2):
        return []
    shapes = sec["latency"]
    lines = [f"**{sec['model']}** prefill latency, ms (speedup vs {BASELINE}), batch x seq." + _on(result), ""]
    rows = []
    for name in _names(result):
        row = [name]
        for s in shapes:
            if name in s["ms"]:
                row.append(f"{s['ms'][name]:.1f} ({s['speedup_vs_inductor_fp32'].get(name, 0):.2f}x)")
            else:
                row.append(_status(sec, name) or "failed")
        rows.append(row)
    lines += _table(["contender"] + [f"{s['batch']}x{s['seq']}" for s in shapes], rows)
    return lines


def linear_table(result: dict) -> list[str]:
    sec = result["sections"].get("linear")
    if not sec:
        return []
    lines = [f"**Linear microbenchmark** K={sec['K']} N={sec['N']}: speedup vs {BASELINE} (its ms in the first row)"
             + (f". Note: {sec['rerun']}" if sec.get("rerun") else "") + "." + _on(result), ""]
    rows = [[f"{BASELINE} (ms)"] + [_fmt(r["ms"].get(BASELINE), ".3f") for r in sec["rows"]]]
    for name in _names(result):
        if name == BASELINE:
            continue
        rows.append([name] + [(f"{r['speedup_vs_inductor_fp32'][name]:.2f}x" if name in r["ms"]
                               else (_status(sec, name) or "failed")) for r in sec["rows"]])
    lines += _table(["contender"] + [f"M={r['M']}" for r in sec["rows"]], rows)
    return lines


def _divergence(d: dict) -> str:
    if not d:
        return "-"
    return "never" if d.get("first_divergence") is None else f"#{d['first_divergence']}"


def causal_table(result: dict, key: str) -> list[str]:
    sec = result["sections"].get(key)
    if not sec:
        return []
    ppl = sec.get("perplexity", {})
    pre = sec.get("prefill", {})
    dec = sec.get("decode", {})
    lines = [f"**{sec['model']}** ({sec['note']}). Prefill: batch 1 x {sec['prefill_tokens']} tokens; decode: "
             f"{sec['decode_tokens']} greedy tokens on transformers' dynamic KV cache; top-1 = fp32: share "
             f"of next-token argmaxes equal to eager fp32's over the perplexity text; greedy differs from "
             f"token: first generated token that differs from eager fp32's (#0 = the first)."
             + (f" Perplexity: {sec['text']}." if sec.get("text") else "") + _on(result), ""]
    header = ["contender"] + (["perplexity", "vs fp32", "top-1 = fp32"] if sec.get("text") else []) + [
        "prefill ms", f"vs {BASELINE}", "decode tok/s", f"vs {BASELINE}", "greedy differs from token"]
    rows = []
    for name in _names(result):
        failed = _status(sec, name)
        if failed and name not in pre.get("ms", {}):
            rows.append([name, failed] + [""] * (len(header) - 2))
            continue
        row = [name]
        if sec.get("text"):
            p = ppl.get(name, {})
            row += [_fmt(p.get("perplexity"), ".3f"), _fmt(p.get("vs_eager_fp32"), ".4f"),
                    _fmt(p.get("top1_agree_fp32"), ".3f")]
        d = dec.get(name, {})
        row += [_fmt(pre.get("ms", {}).get(name), ".1f"),
                _fmt(pre.get("speedup_vs_inductor_fp32", {}).get(name), ".2f"),
                _fmt(d.get("tokens_per_s"), ".1f", failed or "-"),
                _fmt(d.get("speedup_vs_inductor_fp32"), ".2f"),
                _divergence(d)]
        rows.append(row)
    lines += _table(header, rows)
    return lines


def _families(result: dict) -> dict[str, str]:
    return {c["name"]: c.get("family", "") for c in result["contenders"]}


def _measures(result: dict) -> list[tuple[str, str, dict[str, float], bool]]:
    """(model, what, value per contender, higher is better) for every speed figure of the run."""
    out = []
    for key in ("minilm", "bert", "gpt2"):
        sec = result["sections"].get(key)
        for s in (sec or {}).get("latency", []):
            out.append((sec["model"], f"{s['batch']}x{s['seq']} ms", s["ms"], False))
    sec = result["sections"].get("smollm2")
    if sec:
        out.append((sec["model"], f"prefill 1x{sec['prefill_tokens']} ms", sec.get("prefill", {}).get("ms", {}), False))
        out.append((sec["model"], "decode tok/s", {k: v["tokens_per_s"] for k, v in sec.get("decode", {}).items()},
                    True))
    sec = result["sections"].get("linear")
    for r in (sec or {}).get("rows", []):
        out.append((sec.get("model", f"Linear {sec['K']}->{sec['N']}"), f"M={r['M']} ms", r["ms"], False))
    return out


def fastest_peers(result: dict) -> list[dict]:
    """Per speed figure: the fastest contender that is not zeroquant (any float or peer
    contender, the baseline included) and each zeroquant contender's speed relative to it
    (> 1: zeroquant is faster)."""
    families = _families(result)
    rows = []
    for model, what, values, higher in _measures(result):
        peers = {k: v for k, v in values.items() if families.get(k) != "zeroquant" and v}
        if not peers:
            continue
        best = (max if higher else min)(peers, key=peers.get)
        zq = {k: v for k, v in values.items() if families.get(k) == "zeroquant" and v}
        rows.append({
            "model": model, "what": what, "fastest_peer": best, "fastest_peer_value": peers[best],
            "zeroquant": {k: {"value": v, "vs_fastest_peer": (v / peers[best]) if higher else (peers[best] / v)}
                          for k, v in zq.items()},
        })
    return rows


def _val(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def fastest_peer_table(result: dict) -> list[str]:
    rows = fastest_peers(result)
    if not rows:
        return []
    zq_names = [n for n in _names(result) if any(n in r["zeroquant"] for r in rows)]
    lines = ["**Fastest peer per model**: the fastest contender that is not zeroquant (float or quantized), and each "
             "zeroquant contender's speed relative to it (>1.00x: zeroquant is faster)." + _on(result), ""]
    table = []
    for r in rows:
        cells = [r["model"], r["what"], r["fastest_peer"], _val(r["fastest_peer_value"])]
        for n in zq_names:
            z = r["zeroquant"].get(n)
            cells.append(f"{_val(z['value'])} ({z['vs_fastest_peer']:.2f}x)" if z else "failed")
        table.append(cells)
    lines += _table(["model", "figure", "fastest peer", "its value"] + [f"{n} (vs fastest peer)" for n in zq_names],
                    table)
    return lines


def contender_notes(result: dict) -> list[str]:
    notes = [c for c in result["contenders"] if c.get("how")]
    if not notes:
        return []
    return ["How each contender ran:", ""] + [f"- {c['name']}: {c['how']}" for c in notes]


def pipelines(result: dict) -> list[str]:
    """Where the pipeline race ran a zeroquant contender's graphs in float (harness.record_pipelines)."""
    lines = []
    for key, sec in result["sections"].items():
        for name, st in (sec.get("contenders") or {}).items():
            counts = st.get("pipelines") or {}
            if set(counts) - {"int8"}:
                ran = ", ".join(f"{label} {n} graph(s)" for label, n in sorted(counts.items()))
                lines.append(f"- {name} [{key}]: {ran}")
    if not lines:
        return []
    return ["Graphs the pipeline race ran in float (README, \"The pipeline race\"): their figures, accuracy "
            "included, are the float pipeline's, not the preset's; the `zeroquant w8a8 int8` row "
            "(pipeline_race='off') keeps int8:", ""] + lines


def failures(result: dict) -> list[str]:
    by_error: dict[str, list[str]] = {}
    for key, sec in result["sections"].items():
        for name, st in (sec.get("contenders") or {}).items():
            if not st.get("ok", True):
                by_error.setdefault(f"{name}: {st.get('error')}", []).append(key)
    lines = []
    if result.get("failed_sections"):
        lines += ["Failed sections (no table above; each ran in its own process):", ""] + [
            f"- {name}: {error}" for name, error in result["failed_sections"].items()] + [""]
    if by_error:
        lines += ["Failed contenders (error as raised, then the sections where it failed):", ""] + [
            f"- {text} [{', '.join(keys)}]" for text, keys in by_error.items()]
    return lines


def weights_table(result: dict) -> list[str]:
    sec = result["sections"].get("weights")
    if not sec:
        return []
    rows = []
    for model, per in sec.items():
        for r in per:
            target = "" if r["target"] is None else f"<= {r['target']}x: {'met' if target_met(r) else '**not met**'}"
            schemes = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["by_scheme"].items())
            rows.append([model, label(r), r["quantized"], r["kept_float"], f"{r['fp16_bytes'] / 2**20:.1f}",
                         f"{r['quant_bytes'] / 2**20:.1f}", _fmt(r["ratio"], ".3f"), schemes,
                         f"{r['float_bytes'] / 2**20:.1f}", _fmt(r["ratio_all"], ".3f"), target])
    return ["**Linear-weight bytes per preset**: the quantized linears' weights with their scales against "
            "the same weights in fp16, then all linears with those the accuracy policy leaves float at "
            "the bytes they hold (from the compile report)." + _on(result), "",
            *_table(["model", "preset", "quantized", "left float", "fp16 MiB", "quantized MiB", "ratio",
                     "MiB by scheme", "float MiB", "all linears", "target"], rows)]


def _peak_memory(result: dict) -> str:
    peaks = {k: sec["peak_rss_mib"] for k, sec in result["sections"].items() if "peak_rss_mib" in sec}
    if not peaks:
        return ""
    return " Peak resident memory of each section's process: " + ", ".join(
        f"{k} {v / 1024:.1f} GiB" for k, v in peaks.items()) + "."


def markdown(result: dict) -> str:
    info = result["machine"]
    parts = [f"Bench `{result['mode']}` run of {result['date']}, {result.get('wall_s', '?')} s, on "
             f"{describe(info)}. Medians of {result['plan']['runs']} interleaved rounds "
             f"({result['plan'].get('big_model_runs', result['plan']['runs'])} for BERT-base, GPT-2, SmolLM2) after "
             f"{result['plan']['warmup']} warm-up round(s). Load average (1/5/15 min) at start "
             f"{_load(result.get('load_average_start'))}, at end {_load(result.get('load_average_end'))}."
             + _peak_memory(result), ""]
    for block in (fastest_peer_table(result), minilm_table(result), sweep_table(result, "minilm"),
                  sweep_table(result, "bert"), causal_table(result, "smollm2"), sweep_table(result, "gpt2"),
                  linear_table(result), weights_table(result), contender_notes(result), pipelines(result), failures(result)):
        if block:
            parts += block + [""]
    return "\n".join(parts)


text = markdown


def plots(result: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mode, paths = result["mode"], []
    lin = result["sections"].get("linear")
    if lin:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in _names(result):
            pts = [(r["M"], r["speedup_vs_inductor_fp32"][name]) for r in lin["rows"] if name in r["ms"]]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=name, linestyle="--" if name == BASELINE else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("M (rows of the activation)")
        ax.set_ylabel(f"speedup vs {BASELINE}")
        ax.set_title(f"nn.Linear {lin['K']}->{lin['N']}, {result['machine']['torch_threads']} threads")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{mode}_linear_speedup.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    sec = result["sections"].get("minilm", {})
    acc = sec.get("accuracy", {}).get("per_contender", {})
    mem = result["sections"].get("memory", {}).get("minilm", {}).get("per_contender", {})
    pts = [(n, mem[n]["steady_mib"], acc[n]["sentiment_accuracy"], acc[n]["cosine_mean"])
           for n in _names(result) if n in acc and "steady_mib" in mem.get(n, {})]
    if pts:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        markers = "osD^vP*Xh"
        for ax, idx, label in ((axes[0], 2, "sentiment accuracy (test split)"), (axes[1], 3, "mean cosine vs fp32")):
            for i, p in enumerate(pts):
                ax.scatter(p[1], p[idx], marker=markers[i % len(markers)], s=60, label=p[0], alpha=0.8)
            ax.set_xlabel("steady memory over import baseline, MiB")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower left")
        fig.suptitle("MiniLM-L6: accuracy vs memory per contender (memory: one process per contender)")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{mode}_accuracy_memory.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
