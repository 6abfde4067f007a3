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
    graphs compiled for it (filled on the first call, as compilation is lazy). With
    ``config.lkd`` set, LKD runs on ``model`` here, once, and its report is ``zq_lkd_report``.
    """
    config = ZeroQuantConfig.from_options(config)  # validate now, not at the first call
    lkd_report = None
    if config.lkd is not None and isinstance(model, torch.nn.Module):
        # LKD trains the float weights in place, so it runs before anything is traced.
        from zq_compile.calibrate.lkd import lkd_once

        lkd_report, _ = lkd_once(model, config)
    reports: list = []
    backend = functools.partial(zeroquant_backend, options=config, mode=mode, report_sink=reports)
    backend.__name__ = "zeroquant"
    compiled = torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=fullgraph)
    if isinstance(compiled, torch.nn.Module):
        # OptimizedModule forwards attribute writes to the user's module: keep ours on the wrapper.
        object.__setattr__(compiled, "zq_reports", reports)
        object.__setattr__(compiled, "zq_lkd_report", lkd_report)
    else:
        compiled.zq_reports = reports
        compiled.zq_lkd_report = lkd_report
    return compiled
