"""Peak and steady memory of one contender, each in a fresh process.

Why a subprocess per contender: in one process the contenders share the fp32 model, the
allocator keeps freed pages, and ``ru_maxrss`` only ever grows, so per-contender figures would
be meaningless. Each probe process imports everything, notes its RSS, loads the model, builds
one contender *in place* (``BenchModel.owned``: torchao / quantize_dynamic / the bf16 cast change
the loaded model itself, as a user would, instead of a copy), drops its own reference to the
model, runs two forwards at the headline shape, collects garbage, returns freed heap to the OS
(``malloc_trim``), and reports, relative to the RSS after imports:

- ``steady_mib``: resident memory then: weights as the contender keeps them (plus the fp32 ones
  where it still holds them), compiled code, allocator caches;
- ``peak_mib``: the process's high-water mark (VmHWM) over that: loading, quantizing, compiling
  (Python side; Inductor's C++ compiler runs in other processes and is not counted) and running.

The compiled code comes from Inductor's on-disk cache filled by the main bench process, which
makes the probes cheap. It also changes what stays resident: code generation churns through
Python's object arenas and the objects that outlive it keep many half-empty (SmolLM2: ~70 MiB
for torch.compile fp32, ~120 MiB for zeroquant), so these are warm-cache figures, as a served
model restarted on one machine sees; ``bench/memory_release.py`` prints cold and warm side by
side. (Until 2026-12-05 zeroquant graphs never hit that cache, so in these probes they paid the
cold figure while the float contenders paid the warm one.)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys

MIB = 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def probe(model_name: str, contender: str, batch: int, seq: int) -> dict:
    import torch

    import zq_compile  # noqa: F401
    from zq_compile import data  # noqa: F401  (models.encoder's imports, kept out of the figures)
    from zq_compile.benchmarks import calibration, models  # noqa: F401
    from zq_compile.benchmarks import contenders as C
    from zq_compile.benchmarks.harness import encoder_inputs

    try:  # import the peers now so their import cost is in the baseline, not in the contender
        import torchao.quantization  # noqa: F401
    except ImportError:
        pass
    _trim()
    base = _status_kib("VmRSS")
    bm, tok, texts = models.encoder(model_name)
    bm.owned = True
    loaded = _status_kib("VmRSS")
    inputs = encoder_inputs(tok, texts, batch, seq, bm.model.config.vocab_size)
    (c,) = [c for c in C.all_contenders() if c.name == contender]
    with torch.inference_mode():
        fn = c.build(bm, inputs)
        bm.model = None  # the contender keeps what it needs; the probe keeps nothing
        for _ in range(2):
            fn(**inputs)
    _trim()
    steady = _status_kib("VmRSS")
    peak = _status_kib("VmHWM")
    return {
        "model_loaded_mib": (loaded - base) / 1024,
        "steady_mib": (steady - base) / 1024,
        "peak_mib": (peak - base) / 1024,
    }


def run_probe(model_name: str, contender: str, batch: int, seq: int, timeout: float = 600) -> dict:
    """Run ``probe`` in a fresh interpreter; {"error": ...} if it fails."""
    from zq_compile.benchmarks.fresh_process import json_line

    cmd = [sys.executable, "-m", "zq_compile.benchmarks.memory", "--model", model_name, "--contender", contender,
           "--batch", str(batch), "--seq", str(seq)]
    try:
        return json_line(cmd, "ZQ_MEMORY", timeout, what="memory probe")
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f}s"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--contender", required=True)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    a = p.parse_args(argv)
    print("ZQ_MEMORY " + json.dumps(probe(a.model, a.contender, a.batch, a.seq)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
