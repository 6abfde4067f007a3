"""Apply the passes in ``PASS_ORDER``: count rewrites, honour ``disable_passes``, dump graphs
(``dump_graphs``, or ZQ_DEBUG=2: see ``zq_compile/debug.py``)."""

from __future__ import annotations

import importlib
import os

from zq_compile import debug
from zq_compile.passes import PASS_ORDER
from zq_compile.passes.context import PassContext


def run_passes(ctx: PassContext) -> None:
    for index, name in enumerate(PASS_ORDER):
        if name in ctx.config.disable_passes:
            ctx.report.disabled_passes.append(name)
            continue
        module = importlib.import_module(f"zq_compile.passes.{name}")
        _dump(ctx, index, name, "before")
        count = module.run(ctx)
        # No eliminate_dead_code here: on this pre-grad graph FX deems in-place methods such as
        # a KV cache's index_copy_ pure, and would delete them. Inductor prunes dead code later.
        ctx.gm.graph.lint()
        ctx.gm.recompile()
        ctx.report.pass_counts[name] = count
        _dump(ctx, index, name, "after")


def _dump(ctx: PassContext, index: int, name: str, when: str) -> None:
    folder = debug.dump_folder(ctx.config.dump_graphs)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"graph{ctx.report.graph_id}_{index:02d}_{name}_{when}.py")
    with open(path, "w") as f:
        f.write(ctx.gm.print_readable(print_output=False))
