"""End to end on a CUDA GPU: zeroquant's target "triton" against fp16 `torch.compile` and torchao,
on MiniLM-L6 (batch 32 x seq 128, real sentences) and SmolLM2-135M (prefill 1 x 256, real text).
No GPU was available when this was written; a run writes bench/results/triton_gpu_models_<gpu>.json.

    python bench/triton/gpu_models.py [--models minilm smollm2] [--runs 20]
    python bench/triton/gpu_models.py --smoke    # CPU, Triton interpreter, fp32, MiniLM 2 x 8 and
                                                 # SmolLM2 1 x 8: checks that the script runs end to
                                                 # end (~6 min); its times mean nothing

Contenders, each its own deep copy of the fp16 model: eager fp16; `torch.compile` fp16 (Inductor);
torchao `Int8DynamicActivationInt8WeightConfig` + `torch.compile` (if torchao imports); zeroquant
w8a8 with `target="triton"` (the fused kernels: norm + quantize, GEMM epilogues, quantizing
prologues). Latency: median of interleaved rounds, each call followed by a device synchronize.
Accuracy against fp32 eager on the same inputs: MiniLM mean-pooled embedding cosine, SmolLM2
next-token perplexity over the window. The issue's target (H100/H200): zeroquant >= 1.5x fp16
`torch.compile` on MiniLM 32 x 128.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "bench", "results")


def contenders(model: torch.nn.Module, dtype: torch.dtype, device: str) -> dict:
    """name -> callable model (or the reason it could not be built)."""
    base = copy.deepcopy(model).to(device=device, dtype=dtype)
    out = {"eager": base, "inductor": torch.compile(copy.deepcopy(base))}
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        ao = copy.deepcopy(base)
        quantize_(ao, Int8DynamicActivationInt8WeightConfig())
        out["torchao int8 dynamic"] = torch.compile(ao)
    except Exception as e:  # not installed, or this version refuses the model
        out["torchao int8 dynamic"] = f"{type(e).__name__}: {e}"
    out["zeroquant w8a8 triton"] = torch.compile(copy.deepcopy(base), backend="zeroquant",
                                                 options={"target": "triton"})
    return out


def measure(models: dict, accuracy, call, runs: int, device: str, time_key: str) -> dict:
    """Per contender: its accuracy row (``accuracy(model)``, or the error that kept it from being
    built) and the median ms of ``call(model)``, interleaved with the others (``zq_compile.timing``),
    each call followed by a device synchronize; two untimed calls first compile and autotune."""
    from zq_compile.timing import interleaved_medians

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rows, fns = {}, {}
    for name, m in models.items():
        if isinstance(m, str):
            rows[name] = {"error": m}
            continue
        rows[name] = accuracy(m)
        fns[name] = lambda m=m: (call(m), sync())
    for name, ms in interleaved_medians(fns, runs=runs, warmup=2).items():
        rows[name][time_key] = round(ms, 3)
    return rows


def run_minilm(batch: int, seq: int, runs: int, dtype, device: str) -> dict:
    from zq_compile.data import polarity_sentences
    from zq_compile.metrics import mean_cosine
    from zq_compile.models import load_minilm, mean_pool

    model, tok = load_minilm()
    texts = [s for s, _ in polarity_sentences()][:batch]
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    with torch.inference_mode():
        ref = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])
        inputs = {k: v.to(device) for k, v in enc.items()}

        def cosine(m):
            emb = mean_pool(m(**inputs).last_hidden_state.float(), inputs["attention_mask"]).cpu()
            return {"cosine_vs_fp32": round(mean_cosine(ref, emb), 5)}

        rows = measure(contenders(model, dtype, device), cosine, lambda m: m(**inputs), runs, device, "ms")
    return {"model": "MiniLM-L6 (all-MiniLM-L6-v2, real weights)", "batch": batch, "seq": seq, "rows": rows}


def run_smollm2(seq: int, runs: int, dtype, device: str) -> dict:
    from zq_compile.benchmarks.models import smollm2
    from zq_compile.data import wikipedia_prose

    bm, tok = smollm2()
    ids = tok(" ".join(wikipedia_prose()), return_tensors="pt")["input_ids"][:, :seq]

    def perplexity(logits):
        return round(float(torch.nn.functional.cross_entropy(logits[0, :-1].float().cpu(), ids[0, 1:]).exp()), 3)

    with torch.inference_mode():
        dev_ids = ids.to(device)

        def prefill(m):
            return m(input_ids=dev_ids, use_cache=False)

        rows = {"eager fp32": {"perplexity": perplexity(bm.model(input_ids=ids).logits)},
                **measure(contenders(bm.model, dtype, device), lambda m: {"perplexity": perplexity(prefill(m).logits)},
                          prefill, runs, device, "prefill_ms")}
    return {"model": bm.note, "seq": seq, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", choices=("minilm", "smollm2"), default=["minilm", "smollm2"])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, fp32, tiny shapes")
    args = ap.parse_args()
    if args.smoke:
        device, dtype, runs, models = "cpu", torch.float32, 1, args.models
    elif not torch.cuda.is_available():
        sys.exit("gpu_models.py: no CUDA device here; nothing was measured (--smoke checks the script on CPU)")
    else:
        device, dtype, runs, models = "cuda", torch.float16, args.runs, args.models
    result = {"date": datetime.date.today().isoformat(), "device": device, "dtype": str(dtype), "runs": runs}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        result.update(gpu=props.name, capability=f"{props.major}.{props.minor}")
    if "minilm" in models:
        result["minilm"] = run_minilm(*((2, 8) if args.smoke else (32, 128)), runs, dtype, device)
        print(json.dumps(result["minilm"], indent=1))
    if "smollm2" in models:
        result["smollm2"] = run_smollm2(8 if args.smoke else 256, runs, dtype, device)
        print(json.dumps(result["smollm2"], indent=1))
    if args.smoke:
        return  # interpreter times are not results
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"triton_gpu_models_{result['gpu'].replace(' ', '_')}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
