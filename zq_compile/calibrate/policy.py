"""The accuracy policy: choose alpha, measure each linear's error, pick the linears kept float.

Works on any way of running the model (``run(sim)``: the float graph through an fx.Interpreter,
or the nn.Module with hooks), which calls ``Simulator.linear`` at every linear it quantizes.
Everything is decided on the calibration data, deterministically (ties broken by name):

1. a float run records max |X_j| per linear input (and the reference outputs);
2. each alpha (smooth="auto": none and ``SMOOTH_ALPHAS``) is scored by the model-level SQNR of
   a run with every linear fake-quantized as the w8a8 kernels quantize it; the best is kept;
3. a float run measures each linear's output SQNR with its input in float (its own error);
4. keep_float: "auto" keeps lm_head / embedding-tied linears float unless ``heads`` treats them
   (``head_columns``: "outliers", the default, or "split", on heads with int8 activations), then,
   among the linears at least ``OUTLIER_DB`` below the median SQNR, the lowest one at a time
   while the model-level SQNR improves by at least ``MIN_GAIN_DB`` (at most
   ``AUTO_MAX_FRACTION`` of the linears); an int keeps that many of the worst; a float keeps
   every linear below that many dB.

With ``heads="split"`` or ``"outliers"`` the heads (with int8 activations) are quantized with their
input's outlier channels split (``split.py``) or computed in float (``outliers.py``) in every run
above, so each figure is the one the compiled model will have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from zq_compile.calibrate.report import CalibrationReport, LayerError
from zq_compile.calibrate.smooth import fake_linear, quantized_weight, smooth_scale, transformed_weight
from zq_compile.calibrate.outliers import Outliers, float_term, outliers_for
from zq_compile.calibrate.split import Split, split_for
from zq_compile.calibrate.stats import AbsMax
from zq_compile.config import SMOOTH_ALPHAS

#: fewer calibration tokens than this get a note in the report
FEW_TOKENS = 64
#: "auto" stops adding float linears when the model-level SQNR gains less than this.
MIN_GAIN_DB = 0.1
#: ... and never keeps more than this fraction of the quantizable linears float (speed).
AUTO_MAX_FRACTION = 0.02
#: ... and considers only linears whose SQNR is this far below the median: an outlier layer,
#: not one of many alike (keeping those float buys little accuracy per unit of speed lost).
OUTLIER_DB = 6.0
#: TODO(schemes): keep them at w8a16 once that scheme is built; float until then.
KEPT_AS = "float"


@dataclass
class Site:
    """One linear the rewrite would quantize."""

    key: str  # unique within one run (node name, or module path)
    module: str
    weight: torch.Tensor  # the float weight tensor the model holds (the registry's key)
    w_nk: torch.Tensor  # W[N, K] as the linear uses it
    group: object  # equal for linears reading one activation
    groups: int  # weight groups of the scheme
    symmetric: bool
    head: bool  # lm_head or tied to an embedding
    columns: str | None = None  # a head's outlier channels: "split" or "outliers" (head_columns)


def head_columns(config, scheme, head: bool) -> str | None:
    """How a head's outlier input channels are treated under ``config.heads``: "split" or
    "outliers" for heads with int8 activations and int8 weights (the calibration simulator
    quantizes weights as INT8), else None."""
    if not head or config.heads == "float" or scheme.act_bits is None or scheme.weight_bits != 8:
        return None
    return config.heads


def columns_for(site: Site, absmax: torch.Tensor, s: torch.Tensor | None) -> Split | Outliers:
    """The head's outlier-channel treatment from its input statistics (smoothed by s)."""
    return split_for(absmax, s) if site.columns == "split" else outliers_for(absmax, s)


class Simulator:
    """What happens at each linear during a calibration run (see the module docstring)."""

    def __init__(self, sites: dict[str, Site]):
        self.sites = sites
        self.mode = "float"
        self.stats = AbsMax()
        self.scales: dict[str, torch.Tensor | None] = {}
        self.quantized: set[str] = set()
        self.errors: dict[str, list[float]] = {}
        self.columns: dict[str, Split | Outliers] = {}
        self._w: dict[str, torch.Tensor] = {}
        self._w_float: dict[str, torch.Tensor] = {}

    def set_plan(self, scales: dict, quantized: set[str]) -> None:
        if scales is not self.scales:
            self._w.clear()
            self._w_float.clear()
            self.columns = {k: columns_for(site, self.stats.values[k], scales.get(k))
                            for k, site in self.sites.items() if site.columns and k in self.stats.values}
        self.scales, self.quantized = scales, quantized

    def _wq(self, key: str) -> torch.Tensor:
        if key not in self._w:
            site, s, columns = self.sites[key], self.scales.get(key), self.columns.get(key)
            self._w[key] = quantized_weight(site.w_nk, s, site.groups, site.symmetric, columns)
        return self._w[key]

    def _fake(self, key: str, x: torch.Tensor, bias) -> torch.Tensor:
        s, columns = self.scales.get(key), self.columns.get(key)
        if columns is None:
            return fake_linear(x, self._wq(key), bias, s)
        xs = x.float() if s is None else x.float() / s
        y = fake_linear(columns.x(xs), self._wq(key), bias, None)
        if isinstance(columns, Outliers):
            if key not in self._w_float:
                self._w_float[key] = columns.w_float(transformed_weight(self.sites[key].w_nk.detach().float(), s))
            y = y + float_term(xs, self._w_float[key], columns.index)
        return y.to(x.dtype)

    def linear(self, key: str, x: torch.Tensor, w_nk: torch.Tensor, bias) -> torch.Tensor:
        if self.mode == "quant" and key in self.quantized:
            return self._fake(key, x, bias)
        y = F.linear(x, w_nk, bias)
        if self.mode == "stats":
            self.stats.update(key, x)
        elif self.mode == "sqnr":
            yq = self._fake(key, x, bias).double()
            ref = y.double()
            finite = torch.isfinite(x).all(dim=-1)  # tokens with NaN/Inf inputs: no error figure
            ref, yq = ref[finite], yq[finite]
            e = self.errors.setdefault(key, [0.0, 0.0])
            e[0] += ref.pow(2).sum().item()
            e[1] += (ref - yq).pow(2).sum().item()
        return y


def _db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def model_sqnr(ref: list[list[torch.Tensor]], out: list[list[torch.Tensor]]) -> float:
    signal = noise = 0.0
    for r_batch, o_batch in zip(ref, out):
        for r, o in zip(r_batch, o_batch):
            finite = torch.isfinite(r)  # where float itself is NaN/Inf there is nothing to compare
            r, o = r.double()[finite], o.double()[finite]
            signal += r.pow(2).sum().item()
            noise += (r - o).pow(2).sum().item()
    return _db(signal, noise)


def group_scales(sites: dict[str, Site], absmax: dict, alpha: float | None) -> dict[str, torch.Tensor | None]:
    """One s per group of linears reading one activation (None everywhere when alpha is None)."""
    if alpha is None:
        return {k: None for k in sites}
    members: dict[object, list[str]] = {}
    for key, site in sites.items():
        members.setdefault(site.group, []).append(key)
    out = {}
    for keys in members.values():
        a = torch.stack([absmax[k] for k in keys]).amax(dim=0)
        s = smooth_scale(a, [sites[k].w_nk for k in keys], alpha)
        out.update({k: s for k in keys})
    return out


def effective_smooth(config):
    """``config.smooth``, except that "auto" is off when the config runs LKD. LKD trains each
    block's weights to make up for the error of the quantization it simulates, which has no
    smoothing; smoothing them afterwards moves every channel's quantization grid and undoes that
    (MiniLM-L6 w4/8a8, cosine vs fp32: 0.964 plain, 0.956 LKD then smoothing, 0.975 LKD alone;
    bench/lkd_smoothing.py, README "Layer-by-layer distillation")."""
    if config.smooth == "auto" and getattr(config, "lkd", None) is not None:
        return False
    return config.smooth


LKD_SMOOTH_NOTE = ("smooth='auto' is off because LKD trained the weights for the unsmoothed quantization "
                   "(smoothing them afterwards undoes LKD's correction); pass smooth={'alpha': a} to force it")


def alpha_candidates(smooth) -> list[float | None]:
    if smooth is False:
        return [None]
    if smooth == "auto":
        return [None, *SMOOTH_ALPHAS]
    return [float(smooth)]


def decide(sites: dict[str, Site], run: Callable[[Simulator], list[list[torch.Tensor]]], config,
           source: str, batches: int) -> tuple[CalibrationReport, dict[str, float | None], Simulator]:
    """Run the calibration and the policy. Returns the report, the alpha per site key (None: not
    smoothed) and the simulator (its ``stats`` hold max |X| per site)."""
    sim = Simulator(sites)
    with torch.no_grad():
        sim.mode = "stats"
        ref = run(sim)
        absmax = sim.stats.values
        missing = [k for k in sites if k not in absmax]
        live = {k: s for k, s in sites.items() if k in absmax}
        tokens = max(sim.stats.rows.values(), default=0)
        smooth = effective_smooth(config)
        report = CalibrationReport(source=source, batches=batches, tokens=tokens, smooth=smooth,
                                   keep_float=config.keep_float)
        if smooth is not config.smooth:
            report.notes.append(LKD_SMOOTH_NOTE)
        if tokens < FEW_TOKENS:
            report.notes.append(f"statistics from {tokens} token(s) only: for steadier choices, call "
                                "zq_compile.calibrate(model, config, data) with representative inputs first")
        if missing:
            report.notes.append(f"{len(missing)} linear(s) never ran on the calibration data: not smoothed")
        # heads="float", or a head its treatment does not fit (weight-only or INT4 schemes)
        heads = {k for k, s in live.items() if s.head and not s.columns} if config.keep_float == "auto" else set()
        quantize = set(live) - heads

        def score(scales, quantized) -> float:
            sim.mode = "quant"
            sim.set_plan(scales, quantized)
            return model_sqnr(ref, run(sim))

        best = None
        for alpha in alpha_candidates(smooth):
            scales = group_scales(live, absmax, alpha)
            value = score(scales, quantize)
            report.alpha_search["off" if alpha is None else f"{alpha:g}"] = value
            if best is None or value > best[0]:
                best = (value, alpha, scales)
        report.model_sqnr_db, report.alpha, scales = best
        sim.mode = "sqnr"
        sim.set_plan(scales, quantize)
        run(sim)
        sqnr = {k: _db(*sim.errors[k]) for k in live}
        kept = _keep(config.keep_float, live, sqnr, heads, scales, score, report)
        report.notes.extend(f"{live[k].module}: {c.describe()}" for k, c in sorted(sim.columns.items())
                            if k not in kept)
        if kept.keys() != heads or report.model_sqnr_db_after_policy is None:
            report.model_sqnr_db_after_policy = score(scales, set(live) - set(kept))
        for key, site in sorted(live.items(), key=lambda kv: kv[1].module):
            report.layers.append(LayerError(site.module, tuple(site.w_nk.shape), sqnr[key], kept.get(key)))
        sim.mode = "float"
        sim.keep_float = kept
    alphas = {k: (report.alpha if k in live and k not in kept else None) for k in sites}
    return report, alphas, sim


def _keep(policy, live, sqnr, heads, scales, score, report) -> dict[str, str]:
    order = sorted((k for k in live if k not in heads), key=lambda k: (sqnr[k], live[k].module, k))
    kept = {k: f"kept {KEPT_AS} by default: lm_head / embedding-tied weight" for k in sorted(heads)}
    if policy == "auto":
        current = report.model_sqnr_db if not heads else score(scales, set(live) - set(heads))
        report.model_sqnr_db_after_policy = current
        limit = max(1, math.floor(AUTO_MAX_FRACTION * len(order)))
        median = sorted(sqnr[k] for k in order)[len(order) // 2] if order else 0.0
        candidates = [k for k in order if sqnr[k] <= median - OUTLIER_DB]
        for key in candidates[:limit]:
            trial = score(scales, set(live) - set(kept) - {key})
            report.policy_steps.append((live[key].module, trial))
            if trial - current < MIN_GAIN_DB:
                break
            kept[key] = (f"kept {KEPT_AS} by keep_float='auto': model SQNR {current:.2f} -> {trial:.2f} dB "
                         "on the calibration data")
            current = trial
        report.model_sqnr_db_after_policy = current
    elif isinstance(policy, int):
        for key in order[:policy]:
            kept[key] = f"kept {KEPT_AS} by keep_float={policy}: one of the {policy} lowest-SQNR linears"
    else:
        for key in order:
            if sqnr[key] < policy:
                kept[key] = f"kept {KEPT_AS} by keep_float={policy}: SQNR below {policy:g} dB"
    return kept
