"""``zeroquant inspect MODEL [--preset P] [--json out.json] [--html out.html]``."""

from __future__ import annotations

import os
import sys

from zq_compile import debug


def add_parser(sub):
    p = sub.add_parser("inspect", help="what zeroquant does to a model: per-layer error, fusions, graphs (text, JSON, HTML)")
    p.add_argument("model", metavar="MODEL",
                   help="a bundled model (minilm, smollm2), a Hugging Face model directory, module:factory "
                        "returning (model, example_inputs), or a report saved with --json (rendered again)")
    p.add_argument("--preset", default=None, help="quantization preset (default: the config's, w8a8)")
    p.add_argument("--json", metavar="OUT.json", help="write the report as JSON (schema: docs/inspect.md)")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page")
    p.add_argument("--runs", type=int, default=3, help="timed forward passes, eager and compiled (0: no timing)")
    return p


class _Progress:
    """A progress bar on stderr (a terminal only) over the stages explain reports; graphs are counted
    as they come."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=6, desc="zeroquant inspect", unit="step", file=sys.stderr, leave=False,
                        bar_format="{desc}: {n}/{total} |{bar:24}| {elapsed} {postfix}",
                        disable=not sys.stderr.isatty())
        self.graphs = 0

    def __call__(self, stage: str) -> None:
        if stage.startswith("graph "):
            self.graphs += 1
            self.bar.total += 1
        self.bar.set_postfix_str(stage)
        self.bar.update()

    def close(self):
        self.bar.close()


def run_inspect(args) -> int:
    from zq_compile.config import ZeroQuantConfig
    from zq_compile.inspect.sources import ModelSourceError, load

    def fail(msg: str) -> int:
        print(f"zeroquant inspect: error: {msg}", file=sys.stderr)
        return 2

    try:
        config = ZeroQuantConfig(**({"preset": args.preset} if args.preset else {}))
    except ValueError as exc:
        return fail(str(exc))
    if args.model.endswith(".json") and os.path.isfile(args.model):
        return _rerender(args, fail)
    progress = _Progress()
    try:
        progress("load model")
        name, model, inputs = load(args.model)
    except ModelSourceError as exc:
        progress.close()
        if debug.level():
            raise
        return fail(str(exc))
    from zq_compile.inspect import explain

    try:
        report = explain(model, inputs, config, name=name, runs=args.runs, progress=progress)
    finally:
        progress.close()
    _write(report, args)
    return 0


def _rerender(args, fail) -> int:
    """MODEL is a report saved with --json: print and render it again, compiling nothing."""
    import json

    from zq_compile.inspect.schema import from_dict

    try:
        with open(args.model) as f:
            report = from_dict(json.load(f))
    except (ValueError, KeyError, TypeError) as exc:
        if debug.level():
            raise
        return fail(f"{args.model}: not a zeroquant inspect report ({exc})")
    _write(report, args)
    return 0


def _write(report, args) -> None:
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            f.write(report.to_json())
        print(f"wrote {args.json}")
    if args.html:
        from zq_compile.inspect.html import render_html

        with open(args.html, "w") as f:
            f.write(render_html(report))
        print(f"wrote {args.html}")
