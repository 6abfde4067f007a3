"""Does outlier smoothing stack with LKD? MiniLM-L6 deployed end to end (real kernels through
zq_compile.compile, pipeline race off so every row is the int8 pipeline), cosine of mean-pooled
sentence embeddings vs fp32 on the 200 polarity sentences (seq 128, never seen by calibration).

Rows: the model as loaded, and the model after one LKD run (``zq_compile.calibrate`` with
``lkd=True`` at LkdConfig's defaults on 32 Wikipedia paragraphs). Columns: how the compile
smooths the weights it is given (the trained copies are compiled without ``lkd``, so "smooth
auto" there is what the backend did before smoothing was switched off under LKD). The last line
is what a user gets today from ``calibrate(m, ZeroQuantConfig(preset, lkd=True), data)`` and
``compile(m, same config)``: it should equal the "LKD, smooth off" cell.

    python bench/lkd_smoothing.py [--preset w4/8a8]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import zq_compile
from zq_compile.config import ZeroQuantConfig

COLUMNS = {
    "smooth auto": {},
    "smooth off": {"smooth": False},
    "smooth auto, keep_float=0": {"keep_float": 0},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="w4/8a8")
    args = p.parse_args()
    from zq_compile.data import polarity_sentences, wikipedia_prose
    from zq_compile.metrics import mean_cosine
    from zq_compile.models import load_minilm, mean_pool

    torch.manual_seed(0)
    model, tok = load_minilm()
    batch = dict(tok([s for s, _ in polarity_sentences()], padding="max_length", truncation=True,
                     max_length=128, return_tensors="pt"))
    calibration = [dict(tok(wikipedia_prose()[:32], padding="max_length", truncation=True, max_length=128,
                            return_tensors="pt"))]

    def emb(fn):
        with torch.no_grad():
            return mean_pool(fn(**batch).last_hidden_state, batch["attention_mask"])

    ref = emb(model)

    def deployed(m, config) -> float:
        torch._dynamo.reset()
        zq_compile.calibrate(m, config, calibration)
        return mean_cosine(ref, emb(zq_compile.compile(m, config)))

    trained = copy.deepcopy(model)
    t = time.time()
    report = zq_compile.calibrate(trained, ZeroQuantConfig(preset=args.preset, lkd=True), calibration)
    print(report.lkd.summary(), f"[{time.time() - t:.0f}s]", flush=True)

    table = {}
    for row, source in (("without LKD", model), ("with LKD", trained)):
        for col, options in COLUMNS.items():
            config = ZeroQuantConfig(preset=args.preset, pipeline_race="off", **options)
            table[f"{row}, {col}"] = value = deployed(copy.deepcopy(source), config)
            print(f"{args.preset} {row}, {col}: cosine {value:.5f}", flush=True)
    config = ZeroQuantConfig(preset=args.preset, pipeline_race="off", lkd=True)
    table["calibrate + compile with lkd=True (defaults)"] = value = deployed(copy.deepcopy(model), config)
    print(f"{args.preset} calibrate + compile with lkd=True: cosine {value:.5f}", flush=True)
    print(json.dumps({"preset": args.preset, "cosine vs fp32, 200 polarity sentences": table}, indent=1))


if __name__ == "__main__":
    main()
