"""``make demo`` / ``zeroquant demo``: MiniLM-L6 (real weights) through backend="zeroquant".

Prints one table: sentence-embedding cosine vs fp32 eager on real sentences, latency of eager
fp32, torch.compile fp32 (Inductor), the strongest float alternative of the CPU (torch.compile bf16 +
freezing where it has native bf16, else fp32 + freezing), and zeroquant, measured side by side in this process;
the CPU class; the fastest float contender and zeroquant's speed relative to it; the pipeline
race's line (where the float pipeline won it, a row for the int8 pipeline forced); and the bytes of
the linear weights before and after quantization.
"""

from __future__ import annotations

import copy

import torch
from tqdm import tqdm

from zq_compile.codegen.cpu.select import cpu_description, has_bf16
from zq_compile.cpu_class import cpu_class_label
from zq_compile.data import polarity_sentences
from zq_compile.models import load_minilm, mean_pool
from zq_compile.timing import interleaved_medians

EAGER = "eager fp32"
COMPILE_FP32 = "torch.compile fp32"
BF16_FREEZING = "torch.compile bf16+freezing"
FP32_FREEZING = "torch.compile fp32+freezing"


def _float_contenders(model: torch.nn.Module) -> dict:
    from zq_compile.benchmarks.contenders import FREEZING_PATCH, compile_float

    out = {EAGER: model, COMPILE_FP32: compile_float(model, COMPILE_FP32)}
    if has_bf16():
        out[BF16_FREEZING] = compile_float(copy.deepcopy(model).to(torch.bfloat16), BF16_FREEZING, torch.bfloat16,
                                           FREEZING_PATCH)
    else:  # bf16 without native dot products ran 10x slower than fp32 (AVX2 EPYC): fp32 it is
        out[FP32_FREEZING] = compile_float(copy.deepcopy(model), FP32_FREEZING, torch.float32, FREEZING_PATCH)
    return out


def run_demo(batch: int = 32, seq: int = 128, runs: int = 7, preset: str = "w8a8") -> dict:
    model, tokenizer = load_minilm()
    sentences = [s for s, _ in polarity_sentences()]
    texts = (sentences * (batch // len(sentences) + 1))[:batch]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    reports: list = []
    floats = _float_contenders(model)
    contenders = {
        **floats,
        f"zeroquant {preset}": torch.compile(model, backend="zeroquant", options={"preset": preset}),
    }
    embeddings = {}
    with torch.inference_mode():
        for name, fn in tqdm(contenders.items(), desc="compiling", unit="model"):
            out = fn(**inputs).last_hidden_state.float()
            embeddings[name] = mean_pool(out, inputs["attention_mask"])
        from zq_compile.report import recent_reports

        reports = [r for r in recent_reports() if r.quantized]
        pipeline = reports[-1].pipeline if reports else ""
        if reports and reports[-1].runs != "int8":
            # The pipeline race ran the float pipeline: show what the int8 one does here too.
            forced = f"zeroquant {preset}, int8 forced"
            contenders[forced] = torch.compile(copy.deepcopy(model), backend="zeroquant",
                                               options={"preset": preset, "pipeline_race": "off"})
            out = contenders[forced](**inputs).last_hidden_state.float()
            embeddings[forced] = mean_pool(out, inputs["attention_mask"])
            reports = [r for r in recent_reports() if r.quantized]
        calls = {name: (lambda fn=fn: fn(**inputs)) for name, fn in contenders.items()}
        ms = interleaved_medians(calls, runs=runs)

    ref = embeddings[EAGER]
    report = reports[-1]
    fastest_float = min(floats, key=ms.get)
    result = {
        "machine": cpu_description(),
        "cpu_class": cpu_class_label(),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "seq": seq,
        "rows": [
            {
                "contender": name,
                "ms": ms[name],
                "speedup_vs_eager": ms[EAGER] / ms[name],
                "speedup_vs_inductor": ms[COMPILE_FP32] / ms[name],
                "cosine": torch.nn.functional.cosine_similarity(embeddings[name], ref).mean().item(),
            }
            for name in contenders
        ],
        "fastest_float": fastest_float,
        "zeroquant_vs_fastest_float": ms[fastest_float] / ms[f"zeroquant {preset}"],
        "zeroquant": f"zeroquant {preset}",
        "linear_weight_bytes_fp32": report.float_bytes,
        "linear_weight_bytes_quantized": report.quant_bytes,
        "linears_quantized": f"{len(report.quantized)}/{len(report.decisions)}",
        "kernel": report.kernel,
        "pipeline": pipeline,
        "pipeline_race": next((line for line in reports[0].races if line.startswith("pipeline:")), ""),
    }
    return result


def format_table(r: dict) -> str:
    width = max(22, *(len(row["contender"]) for row in r["rows"]))
    lines = [
        f"MiniLM-L6 (all-MiniLM-L6-v2, real weights), batch {r['batch']} x seq {r['seq']}, "
        f"{r['threads']} threads, CPU {r['machine']}, CPU class {r['cpu_class']}",
        f"{'contender':{width}s} {'ms':>9s} {'vs eager':>9s} {'vs compile':>11s} {'cosine vs fp32':>15s}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['contender']:{width}s} {row['ms']:9.1f} {row['speedup_vs_eager']:8.2f}x "
            f"{row['speedup_vs_inductor']:10.2f}x {row['cosine']:15.5f}"
        )
    lines.append(f"fastest float contender: {r['fastest_float']}; {r['zeroquant']} runs at "
                 f"{r['zeroquant_vs_fastest_float']:.2f}x its speed")
    if r.get("pipeline_race"):
        lines.append(f"{r['zeroquant']} pipeline race: {r['pipeline_race'].removeprefix('pipeline: ')}")
    if r.get("pipeline") and not r["pipeline"].startswith("int8"):
        lines.append(f"so {r['zeroquant']} ran as {r['pipeline']}: no int8 variant wins on this CPU at "
                     "this shape (options={'pipeline_race': 'report'} keeps int8; the 'int8 forced' row)")
    mib = 2**20
    lines.append(
        f"linear weights: {r['linear_weight_bytes_fp32'] / mib:.2f} MiB fp32 -> "
        f"{r['linear_weight_bytes_quantized'] / mib:.2f} MiB int8 + scales "
        f"({r['linear_weight_bytes_fp32'] / r['linear_weight_bytes_quantized']:.2f}x smaller); "
        f"{r['linears_quantized']} linears quantized, int8 GEMM: {r['kernel']}"
    )
    return "\n".join(lines)
