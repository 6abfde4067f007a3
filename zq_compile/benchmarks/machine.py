"""What the figures were measured on: CPU model and flags, threads, library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

_INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                      "amx_tile", "amx_int8", "amx_bf16", "avx512_fp16")


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    from zq_compile.codegen.cpu.select import cpu_flags
    from zq_compile.cpu_class import cpu_class_label

    flags = cpu_flags()
    return {
        "cpu_model": _cpuinfo_field("model name") or platform.processor(),
        "cpu_flags": [f for f in _INTERESTING_FLAGS if f in flags],
        "cpu_class": cpu_class_label(flags),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("torch", "torchao", "transformers", "zq_compile", "gguf")},
    }


def class_of(info: dict) -> str:
    """The CPU class of a recorded result (results from before the field existed: from its flags,
    which include every flag the class reads)."""
    from zq_compile.cpu_class import cpu_class_label

    return info.get("cpu_class") or cpu_class_label(info.get("cpu_flags", ()))


def describe(info: dict) -> str:
    v = info["versions"]
    return (
        f"{info['cpu_model']}, CPU class {class_of(info)} ({info['logical_cpus']} logical CPUs, "
        f"{info['torch_threads']} torch threads, "
        f"{' '.join(info['cpu_flags'])}), torch {v['torch']}, torchao {v['torchao']}, "
        f"transformers {v['transformers']}"
    )


def targeted_bench_start(doc: str, rounds: int):
    """The command line and header shared by the targeted scripts in ``bench/``: ``--rounds``
    and ``--json``; prints this machine's line. Returns (args, machine info, start time)."""
    import argparse
    import time

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    info = machine_info()
    print(describe(info))
    return args, info, time.time()


def targeted_bench_end(args, started: float, result: dict) -> None:
    """The footer of a targeted script: elapsed time and rounds; the figures to ``--json``."""
    import json
    import time

    print(f"\n({time.time() - started:.0f} s; medians of {args.rounds} interleaved rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
