"""``zq_compile.compile``: the function form of ``torch.compile(m, backend="zeroquant")``."""

from __future__ import annotations

import functools
from typing import Any

import torch

from zq_compile.backend import zeroquant_backend
from zq_compile.config import ZeroQuantConfig


def compile(  # noqa: A001  (mirrors torch.compile on purpose)
    model,
    config: ZeroQuantConfig | dict[str, Any] | None = None,
    *,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    mode: str | None = None,
):
    """Quantize and compile ``model`` (an nn.Module or a function).

    Returns what torch.compile returns, with ``zq_reports``: the list of CompileReports of the
    graphs compiled for it (filled on the first call, as compilation is lazy).
    """
    config = ZeroQuantConfig.from_options(config)  # validate now, not at the first call
    reports: list = []
    backend = functools.partial(zeroquant_backend, options=config, mode=mode, report_sink=reports)
    backend.__name__ = "zeroquant"
    compiled = torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
    if isinstance(compiled, torch.nn.Module):
        # OptimizedModule forwards attribute writes to the user's module: keep ours on the wrapper.
        object.__setattr__(compiled, "zq_reports", reports)
    else:
        compiled.zq_reports = reports
    return compiled
