"""``zq_compile.calibrate(model, config, data)``: calibration before compiling.

    report = zq_compile.calibrate(model, ZeroQuantConfig(), data=[{"input_ids": ids}, ...])
    compiled = zq_compile.compile(model, ZeroQuantConfig())   # uses what calibrate found

Runs the float model on ``data`` with a forward hook on every ``nn.Linear``, and settles what
the backend would otherwise settle on the first call's inputs: max |X_j| per linear input, the
smoothing alpha, each linear's output SQNR and the linears kept float (``policy.py``). The
results are kept per weight tensor (``stats.py``) and picked up by the ``calibrate_linears``
pass when the model is compiled with the same ``smooth`` / ``keep_float``; the model's
parameters are not changed (LKD, when the config asks for it, is what changes them).
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from typing import Any

import torch

from zq_compile.calibrate import stats
from zq_compile.calibrate.policy import Simulator, Site, decide, effective_smooth, head_columns
from zq_compile.calibrate.report import CalibrationReport
from zq_compile.config import ZeroQuantConfig


def _batches(data) -> list:
    """``data``: one batch (a dict of keyword arguments, a tuple of positional ones, a tensor)
    or a list of batches."""
    if isinstance(data, (dict, torch.Tensor, tuple)):
        return [data]
    if isinstance(data, list):
        if not data:
            raise ValueError("data is an empty list: give at least one batch")
        return data
    raise ValueError(f"data must be a batch (dict, tuple or tensor) or a list of batches, got {type(data).__name__}")


def _call(model, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, tuple):
        return model(*batch)
    return model(batch)


def _sites(model: torch.nn.Module, config: ZeroQuantConfig) -> dict[str, tuple[Site, torch.nn.Module]]:
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    groups = config.scheme.weight_groups
    out = {}
    for name, mod in model.named_modules():
        if type(mod) is not torch.nn.Linear or not mod.weight.is_floating_point():
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in config.skip):
            continue
        n = mod.weight.shape[0]
        g = n if groups is None else (groups if n % groups == 0 else math.gcd(n, groups))
        head = name.rsplit(".", 1)[-1] == "lm_head" or id(mod.weight) in embedding_weights
        columns = head_columns(config, config.scheme, head)
        out[name] = (Site(name, name, mod.weight, mod.weight, None, g, config.scheme.symmetric, head, columns), mod)
    return out


def _module_runner(model, batches, found):
    def run(sim: Simulator) -> list[list[torch.Tensor]]:
        alive: list = []  # inputs held until the batch ends, so id() names one tensor

        def hook_for(key):
            def hook(module, args, output):
                x = args[0]
                if sim.mode == "stats" and sim.sites[key].group is None:
                    alive.append(x)
                    sim.sites[key].group = id(x)
                return sim.linear(key, x, module.weight, module.bias)
            return hook

        handles = [mod.register_forward_hook(hook_for(key)) for key, (_, mod) in found.items()]
        try:
            outs = []
            with torch.no_grad():
                for batch in batches:
                    outs.append(stats.float_leaves(_call(model, batch)))
                    alive.clear()
            return outs
        finally:
            for h in handles:
                h.remove()

    return run


def calibrate(model: torch.nn.Module, config: ZeroQuantConfig | dict[str, Any] | None = None, data=None,
              ) -> CalibrationReport:
    """Collect calibration statistics of ``model`` on ``data`` and decide smoothing and the
    linears kept float; returns the CalibrationReport (also attached to the compile reports).

    With ``data=None`` nothing is collected here: the backend calibrates on the inputs of the
    first call that compiles the model, and says so in its report.
    """
    config = ZeroQuantConfig.from_options(config)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    batches = None if data is None else _batches(data)
    if batches is not None:
        stats.check_finite(batches if isinstance(data, list) else data, "data")

    # Layer-by-layer distillation edits the float weights, so it runs before the statistics are
    # taken on the final weights. It trains on `data` when given (else its own lkd.data).
    lkd_report = None
    if config.lkd is not None:
        from zq_compile.calibrate.lkd import lkd_once

        lkd_report, ran = lkd_once(model, config, data)
        if not ran:
            warnings.warn("calibrate: LKD already ran on this model in this process and is not run again "
                          "(its teacher would be the trained weights, not the original ones); calibrate a "
                          "fresh copy of the model to train it on other data", stacklevel=2)

    if batches is None:
        report = CalibrationReport(source="none given: the first call's inputs will be used", batches=0, tokens=0,
                                   smooth=effective_smooth(config), keep_float=config.keep_float)
        report.lkd = lkd_report
        return report
    found = _sites(model, config)
    sites = {k: site for k, (site, _) in found.items()}
    was_training = model.training
    model.eval()
    try:
        report, alphas, sim = decide(sites, _module_runner(model, batches, found), config,
                                     "calibrate(data)", len(batches))
    finally:
        model.train(was_training)
    sqnr = {la.module: la.sqnr_db for la in report.layers}
    for key, site in sites.items():
        if key in sim.stats.values:
            stats.remember(site.weight, stats.LinearCalibration(
                site.module, sim.stats.values[key], alphas[key], sim.keep_float.get(key), sqnr[key],
                stats.signature(config), report))
    report.lkd = lkd_report
    return report


__all__ = ["CalibrationReport", "calibrate"]
