"""``zeroquant bench`` / ``make bench`` / ``python bench/run.py``: run the bench, print the tables,
write ``<out>/<mode>.json``, ``<out>/<mode>.md`` and the PNG plots.

Modes (times on 2 cores in bench/README.md, what each measures too):
- ``--quick``: MiniLM-L6 (accuracy + batch 32 x seq 128 latency) and the linear microbenchmark at
  three M, for the contenders of ``contenders.QUICK`` unless others are named; no memory probes
  (they need one process per contender).
- full (default): adds a batch x sequence sweep on MiniLM, prefill of BERT-base and GPT-2-124M
  (random weights), SmolLM2-135M perplexity on Wikipedia prose + prefill + greedy decode on the
  dynamic KV cache, more M in the microbenchmark, and the memory probes.

Each timed section runs in its own process (``_section_in_child``) when a run has more than one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

QUICK = {
    "minilm_shapes": [(32, 128)],
    "bert_shapes": [],
    "linear": (2048, 2048, [1, 32, 512]),
    "smollm2": None,
    "gpt2_shapes": [],
    "big_model_runs": 3,
    "memory_models": [],  # a fresh process per contender costs ~15 s each: full run only
    "weight_models": ["minilm"],  # linear-weight bytes per preset (prepare only, no compile)
    "runs": 5,
    "warmup": 1,
}
FULL = {
    # Every torch.compile contender compiles the first shape statically and recompiles once with
    # dynamic shapes at the second; a batch of 1 would cost one more compile each (Dynamo always
    # specialises size-1 dims), hence no batch-1 row here (the decode section is batch 1).
    "minilm_shapes": [(32, 128), (8, 512), (8, 32)],
    "bert_shapes": [(8, 128)],
    "linear": (2048, 2048, [1, 8, 32, 128, 512, 2048]),
    "smollm2": {"window": 256, "windows": 6, "new_tokens": 24},
    "gpt2_shapes": [(4, 128)],
    "memory_models": ["minilm"],
    "weight_models": ["minilm", "smollm2"],
    "runs": 5,
    "big_model_runs": 3,  # BERT-base, GPT-2, SmolLM2: fewer timed rounds to fit the time budget
    "warmup": 1,
}
SECTIONS = ("minilm", "linear", "bert", "smollm2", "gpt2", "memory", "weights")
MODEL_SECTIONS = SECTIONS[:5]  # the timed ones, each on its own model (memory and weights read them)


# A section's child process logs on the parent's clock (its start time comes in the environment).
_T0 = time.perf_counter() - float(os.environ.get("ZQ_BENCH_ELAPSED", "0"))


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.0f}s] {msg}", flush=True)


def _plan(mode: str, runs: int | None) -> dict:
    plan = dict(QUICK if mode == "quick" else FULL)
    if runs:
        plan["runs"] = plan["big_model_runs"] = runs
    return plan


def _planned(plan: dict, name: str) -> bool:
    return {"minilm": True, "linear": True, "bert": bool(plan["bert_shapes"]), "smollm2": bool(plan["smollm2"]),
            "gpt2": bool(plan["gpt2_shapes"])}[name]


def _section(name: str, plan: dict, contenders, log) -> dict:
    """One timed section, in this process."""
    import torch

    from zq_compile.benchmarks import harness, models
    from zq_compile.data import polarity_sentences, wikipedia_prose

    R, W, RB = plan["runs"], plan["warmup"], plan["big_model_runs"]
    with torch.inference_mode(), harness.dynamo_settings():
        try:
            if name == "minilm":
                bm, tok = models.minilm()
                return harness.encoder_section(bm, contenders, plan["minilm_shapes"], R, W, log, tokenizer=tok,
                                               labelled=polarity_sentences())
            if name == "linear":
                k, n, ms = plan["linear"]
                return harness.linear_section(models.linear_layer(k, n), contenders, ms, R, W, log)
            if name == "bert":
                return harness.encoder_section(models.bert_base_random(), contenders, plan["bert_shapes"], RB, W, log)
            if name == "gpt2":
                return harness.encoder_section(models.gpt2_random(), contenders, plan["gpt2_shapes"], RB, W, log)
            if name == "smollm2":
                from zq_compile.benchmarks.accuracy import token_windows

                p = plan["smollm2"]
                bm, tok = models.smollm2()
                ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids
                windows = token_windows(ids, p["window"], p["windows"])
                # PT2E static calibrates on the windows after the measured ones
                calibration_ids = token_windows(ids, p["window"], p["windows"] + 4)[p["windows"]:]
                note = (f"English Wikipedia prose from the gensim wheel (markup stripped): first {p['windows']} "
                        f"windows of {p['window']} tokens ({windows.numel()} tokens)")
                return harness.causal_section(bm, contenders, windows, p["new_tokens"], RB, W, log,
                                              text_note=note, calibration_ids=calibration_ids)
        finally:
            _reset()
    raise ValueError(f"no timed section {name!r}: one of {', '.join(MODEL_SECTIONS)}")


def _section_in_child(name: str, mode: str, names: list[str] | None, runs: int | None) -> tuple[dict | None, str]:
    """``_section(name)`` in a fresh interpreter (its log lines go to this process's stdout):
    (the section's dict with the child's peak resident memory, "") or (None, why it failed) when
    the child died (the OOM killer, say), so that the run goes on with the next section."""
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "section.json")
        cmd = [sys.executable, "-m", "zq_compile.benchmarks.run", "--section-child", name, "--section-out", out]
        cmd += ["--quick"] if mode == "quick" else []
        cmd += ["--contenders", *names] if names else []
        cmd += ["--runs", str(runs)] if runs else []
        env = dict(os.environ, ZQ_BENCH_ELAPSED=f"{time.perf_counter() - _T0:.3f}")
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            if proc.returncode < 0:
                how = f"was killed by {signal.Signals(-proc.returncode).name}"
                how += " (the OOM killer, most likely)" if proc.returncode == -signal.SIGKILL else ""
            else:
                how = f"exited {proc.returncode}"
            return None, f"the section's process {how}; its log above says how far it got"
        with open(out) as f:
            return json.load(f), ""


def _child_main(args) -> int:
    import resource

    from zq_compile.benchmarks.contenders import select

    sec = _section(args.section_child, _plan("quick" if args.quick else "full", args.runs),
                   select(args.contenders, quick=args.quick), _log)
    sec["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(args.section_out, "w") as f:
        json.dump(sec, f)
    return 0


def run(mode: str, sections: tuple[str, ...] = SECTIONS, names: list[str] | None = None, runs: int | None = None,
        log=_log) -> dict:
    from zq_compile.benchmarks import machine
    from zq_compile.benchmarks.contenders import select

    plan = _plan(mode, runs)
    contenders = select(names, quick=mode == "quick")
    started = time.perf_counter()
    info = machine.machine_info()
    log(f"zeroquant bench ({mode}) on {machine.describe(info)}")
    result = {
        "mode": mode,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        # Other work on the machine skews every figure (ratios less so: contenders are interleaved).
        "load_average_start": os.getloadavg(),
        "plan": {k: v for k, v in plan.items()},
        "contenders": [{"name": c.name, "family": c.family, "how": c.how} for c in contenders],
        "sections": {},
    }
    model_sections = [s for s in MODEL_SECTIONS if s in sections and _planned(plan, s)]
    # Each model section in its own process when there are several: what a section compiled is
    # returned to the system when it ends (in one process the full run grew to 24 GiB by the GPT-2
    # section and the OOM killer ended it), and a section that dies costs only itself.
    isolate = len(model_sections) > 1
    for name in model_sections:
        if not isolate:
            result["sections"][name] = _section(name, plan, contenders, log)
            continue
        sec, error = _section_in_child(name, mode, names, runs)
        if error:
            result.setdefault("failed_sections", {})[name] = error
            log(f"section {name} FAILED: {error}")
        else:
            result["sections"][name] = sec
    if "memory" in sections:
        result["sections"]["memory"] = _memory(result, plan, log)
    if "weights" in sections:
        result["sections"]["weights"] = _weights(plan["weight_models"], log)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["load_average_end"] = os.getloadavg()
    log(f"bench finished in {result['wall_s']:.0f}s")
    return result


def _memory(result: dict, plan: dict, log) -> dict:
    """One probe process per contender that built on the model in the main run."""
    from zq_compile.benchmarks.memory import run_probe

    keys = {"minilm": "minilm", "bert-base": "bert"}
    out = {}
    for model in plan["memory_models"]:
        sec = result["sections"].get(keys[model])
        if not sec:
            continue
        batch, seq = sec["latency"][0]["batch"], sec["latency"][0]["seq"]
        per = {}
        for name, status in sec["contenders"].items():
            if not status.get("ok"):
                per[name] = {"error": "not probed: the contender failed in the main run"}
                continue
            per[name] = run_probe(model, name, batch, seq)
            m = per[name]
            log(f"  memory {model} {name:22s} " + (f"steady {m['steady_mib']:7.1f} MiB, peak {m['peak_mib']:7.1f} MiB"
                                                   if "error" not in m else m["error"]))
        out[model] = {"batch": batch, "seq": seq, "per_contender": per}
    return out


def weight_inputs(name: str) -> tuple[object, dict]:
    """(model, the inputs of one traced forward) for the linear-weight bytes table: a prefill of
    the size the bench measures, since the accuracy policy's choices depend on the graph (a
    linear it keeps float in a 32 x 128 graph runs weight-only INT8 in a decode-sized one)."""
    from zq_compile.benchmarks import models
    from zq_compile.data import polarity_sentences, wikipedia_prose

    if name == "minilm":
        bm, tok = models.minilm()
        sentences = [s for s, _ in polarity_sentences()[:32]]
        return bm.model, dict(tok(sentences, padding="max_length", truncation=True, max_length=128,
                                  return_tensors="pt"))
    if name == "smollm2":
        bm, tok = models.smollm2()
        ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids[:, :256]
        return bm.model, {"input_ids": ids, "use_cache": False}
    raise ValueError(f"no weight-bytes model {name!r} (minilm, smollm2)")


def _weights(names: list[str], log) -> dict:
    from zq_compile.benchmarks.weight_bytes import table_rows

    out = {}
    for name in names:
        log(f"linear-weight bytes per preset, {name}")
        model, inputs = weight_inputs(name)
        out[name] = table_rows(model, inputs, log=log)
        del model
        _reset()
    return out


def _reset() -> None:
    import gc

    import torch._dynamo

    torch._dynamo.reset()
    gc.collect()


def write_outputs(result: dict, out_dir: str) -> list[str]:
    from zq_compile.benchmarks import render

    os.makedirs(out_dir, exist_ok=True)
    mode = result["mode"]
    paths = []
    path = os.path.join(out_dir, f"{mode}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    paths.append(path)
    md = os.path.join(out_dir, f"{mode}.md")
    with open(md, "w") as f:
        f.write(render.markdown(result))
    paths.append(md)
    paths += render.plots(result, out_dir)
    return paths


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="zeroquant bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="MiniLM + linear microbenchmark, fewer contenders (contenders.QUICK), no memory probes")
    p.add_argument("--out", default=os.path.join("bench", "results"), help="where the JSON, tables and plots go")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--contenders", nargs="+", help="run only these contenders (Inductor fp32 always runs)")
    p.add_argument("--runs", type=int, help="timed rounds per measurement (median reported)")
    p.add_argument("--section-child", choices=MODEL_SECTIONS, help=argparse.SUPPRESS)  # _section_in_child
    p.add_argument("--section-out", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None, args=None) -> int:
    if args is None:
        args = build_parser().parse_args(argv)
    from zq_compile.benchmarks import render

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.section_child:
        return _child_main(args)
    result = run("quick" if args.quick else "full", tuple(args.only or SECTIONS), args.contenders, args.runs)
    # the JSON first: an hour of measurements must not hang on a table that fails to render
    paths = write_outputs(result, args.out)
    print()
    print(render.text(result))
    for path in paths:
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
