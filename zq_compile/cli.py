"""The ``zeroquant`` command."""

from __future__ import annotations

import argparse
import json
import sys


def _demo(args) -> int:
    from zq_compile.demo import format_table, run_demo

    result = run_demo(batch=args.batch, seq=args.seq, runs=args.runs, preset=args.preset)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def _bench(args) -> int:
    from zq_compile.benchmarks.run import main as bench_main

    return bench_main(args=args)


def _inspect(args) -> int:
    from zq_compile.inspect.cli import run_inspect

    return run_inspect(args)


def main(argv: list[str] | None = None) -> int:
    from zq_compile.config import IMPLEMENTED_SCHEMES

    parser = argparse.ArgumentParser(prog="zeroquant", description="ZeroQuant as a torch.compile backend")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compile MiniLM-L6 with backend='zeroquant'; accuracy, speed, memory vs fp32")
    demo.add_argument("--batch", type=int, default=32)
    demo.add_argument("--seq", type=int, default=128)
    demo.add_argument("--runs", type=int, default=7, help="timed runs per contender (median reported)")
    demo.add_argument("--preset", default="w8a8", choices=IMPLEMENTED_SCHEMES)
    demo.add_argument("--json", help="also write the figures to this JSON file")
    demo.set_defaults(func=_demo)
    from zq_compile.benchmarks.run import build_parser as bench_parser

    bench = sub.add_parser("bench", help="every contender on real models: accuracy, speed, memory (bench/README.md)")
    bench_parser(bench).set_defaults(func=_bench)
    from zq_compile.inspect.cli import add_parser as inspect_parser

    inspect_parser(sub).set_defaults(func=_inspect)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
