"""Calibration statistics of the quantized linears, and where they live between calls.

Per linear: max |X_j| of its input over every calibration token, per input channel j (what
smoothing needs), plus the decisions the accuracy policy took from them. They are kept per
*weight tensor* (``remember`` / ``lookup``), because that is what both routes share: hooks of
``zq_compile.calibrate(model, ...)`` see ``module.weight``, and the graph pass sees the same
tensor as the real value of a placeholder. Module paths would not do: a compiled sub-module or a
wrapper changes them. Entries die with their weight (weak keys).

A weight holds one entry per config ``signature`` (the fields that decide what calibration
finds): one model compiled under two configs in one process (a user comparing settings, the
bench) keeps both calibrations, so a later recompile of either finds its own, not the other's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch.utils.weak import WeakIdKeyDictionary

#: weight tensor -> {signature: LinearCalibration} (process-wide; weak keys: nothing outlives the model)
_REGISTRY: WeakIdKeyDictionary = WeakIdKeyDictionary()


@dataclass
class LinearCalibration:
    """What calibration found for one linear (one weight tensor)."""

    module: str
    act_absmax: torch.Tensor  # fp32 [K]: max |X_j| over the calibration tokens
    alpha: float | None  # smoothing strength chosen (None: no smoothing)
    keep_float: str | None  # reason the policy keeps this linear in float, or None
    sqnr_db: float  # output SQNR of the quantized linear vs float, on the calibration data
    signature: tuple  # ``signature(config)`` of the config it was decided under
    report: object = None  # the CalibrationReport it belongs to


@dataclass
class AbsMax:
    """Running per-channel max |x| over the rows of every call."""

    values: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)

    def update(self, key, x: torch.Tensor) -> None:
        rows = finite_rows(x.detach().reshape(-1, x.shape[-1]))
        self.rows[key] = self.rows.get(key, 0) + rows.shape[0]
        if rows.shape[0] == 0:
            return
        m = rows.abs().amax(dim=0).float()
        old = self.values.get(key)
        self.values[key] = m if old is None else torch.maximum(old, m)


def finite_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rows (tokens) of ``rows`` [M, K] without NaN or Inf. A first call's inputs may hold
    such rows (padding garbage, a diverged sample): they stay confined to their rows at run time,
    so they must not set a channel's max |X| or an error figure for every other token."""
    ok = torch.isfinite(rows).all(dim=-1)
    return rows if bool(ok.all()) else rows[ok]


#: The config fields calibration's decisions depend on: which scheme each linear gets and on what
#: grid (preset, its overrides, groupings and skips, target), smoothing, the accuracy policy and
#: the heads' treatment. Missing the preset once let a w4a16 compile of a model reuse the w8a8
#: decisions taken before it in the same process (INT4 lm_head, w8a8's smoothing strengths:
#: SmolLM2 perplexity 50.6 against 35.8 on its own).
SIGNATURE_FIELDS = ("preset", "weight_groups", "symmetric", "group_size", "overrides", "module_types",
                    "roles", "skip", "target", "smooth", "keep_float", "heads")


def signature(config) -> tuple:
    """The config fields a calibration depends on, as hashable (field, JSON value) pairs."""
    return signature_from_fields(config.to_dict())


def signature_fields(sig: tuple) -> dict:
    """``signature``'s pairs back as a dict of field values (what ``zq_compile.save`` writes)."""
    return {f: json.loads(v) for f, v in sig}


def signature_from_fields(fields: dict) -> tuple:
    """The inverse of ``signature_fields``; ValueError if a field is missing."""
    missing = [f for f in SIGNATURE_FIELDS if f not in fields]
    if missing:
        raise ValueError(f"calibration signature lacks {missing}")
    return tuple((f, json.dumps(fields[f], sort_keys=True)) for f in SIGNATURE_FIELDS)


def remember(weight: torch.Tensor, entry: LinearCalibration) -> None:
    by_signature = _REGISTRY.get(weight)
    if by_signature is None:
        _REGISTRY[weight] = by_signature = {}
    by_signature[entry.signature] = entry


def lookup(weight: torch.Tensor, config_signature: tuple) -> LinearCalibration | None:
    return _REGISTRY.get(weight, {}).get(config_signature)


def entries(weight: torch.Tensor) -> list[LinearCalibration]:
    return list(_REGISTRY.get(weight, {}).values())


def forget(weight: torch.Tensor) -> None:
    _REGISTRY.pop(weight, None)


def check_finite(data, name: str = "data") -> None:
    """ValueError naming the argument (and where inside it) if a float tensor holds NaN or Inf."""

    def walk(obj, where):
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not torch.isfinite(obj).all():
                raise ValueError(f"{where} holds NaN or Inf: calibration data must be finite")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(data, name)


def float_leaves(out) -> list[torch.Tensor]:
    """The floating tensors of a model's output (tensors, tuples, dicts, ModelOutput); caches
    and other objects are ignored."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        return [t for v in out.values() for t in float_leaves(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in float_leaves(v)]
    return []
