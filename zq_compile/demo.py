"""``make demo`` / ``zeroquant demo``: MiniLM-L6 (real weights) through backend="zeroquant".

Prints one table: sentence-embedding cosine vs fp32 eager on real sentences, latency of eager
fp32, torch.compile fp32 (Inductor) and zeroquant measured side by side in this process, and the
bytes of the linear weights before and after quantization.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from zq_compile.codegen.cpu.select import cpu_description
from zq_compile.data import polarity_sentences
from zq_compile.models import load_minilm, mean_pool
from zq_compile.timing import interleaved_medians


def run_demo(batch: int = 32, seq: int = 128, runs: int = 7, preset: str = "w8a8") -> dict:
    model, tokenizer = load_minilm()
    sentences = [s for s, _ in polarity_sentences()]
    texts = (sentences * (batch // len(sentences) + 1))[:batch]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    reports: list = []
    contenders = {
        "eager fp32": model,
        "torch.compile fp32": torch.compile(model),
        f"zeroquant {preset}": torch.compile(model, backend="zeroquant", options={"preset": preset}),
    }
    embeddings = {}
    with torch.inference_mode():
        for name, fn in tqdm(contenders.items(), desc="compiling", unit="model"):
            out = fn(**inputs).last_hidden_state
            embeddings[name] = mean_pool(out, inputs["attention_mask"])
        from zq_compile.report import recent_reports

        reports = [r for r in recent_reports() if r.quantized]
        calls = {name: (lambda fn=fn: fn(**inputs)) for name, fn in contenders.items()}
        ms = interleaved_medians(calls, runs=runs)

    ref = embeddings["eager fp32"]
    report = reports[-1]
    result = {
        "machine": cpu_description(),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "seq": seq,
        "rows": [
            {
                "contender": name,
                "ms": ms[name],
                "speedup_vs_eager": ms["eager fp32"] / ms[name],
                "speedup_vs_inductor": ms["torch.compile fp32"] / ms[name],
                "cosine": torch.nn.functional.cosine_similarity(embeddings[name], ref).mean().item(),
            }
            for name in contenders
        ],
        "linear_weight_bytes_fp32": report.float_bytes,
        "linear_weight_bytes_quantized": report.quant_bytes,
        "linears_quantized": f"{len(report.quantized)}/{len(report.decisions)}",
        "kernel": report.kernel,
    }
    return result


def format_table(r: dict) -> str:
    lines = [
        f"MiniLM-L6 (all-MiniLM-L6-v2, real weights), batch {r['batch']} x seq {r['seq']}, "
        f"{r['threads']} threads, CPU {r['machine']}",
        f"{'contender':22s} {'ms':>9s} {'vs eager':>9s} {'vs compile':>11s} {'cosine vs fp32':>15s}",
    ]
    for row in r["rows"]:
        lines.append(
            f"{row['contender']:22s} {row['ms']:9.1f} {row['speedup_vs_eager']:8.2f}x "
            f"{row['speedup_vs_inductor']:10.2f}x {row['cosine']:15.5f}"
        )
    mib = 2**20
    lines.append(
        f"linear weights: {r['linear_weight_bytes_fp32'] / mib:.2f} MiB fp32 -> "
        f"{r['linear_weight_bytes_quantized'] / mib:.2f} MiB int8 + scales "
        f"({r['linear_weight_bytes_fp32'] / r['linear_weight_bytes_quantized']:.2f}x smaller); "
        f"{r['linears_quantized']} linears quantized, int8 GEMM: {r['kernel']}"
    )
    return "\n".join(lines)
