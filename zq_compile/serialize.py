"""``zq_compile.save`` / ``zq_compile.load``: a model's quantized weights in one safetensors file.

The file holds, for every float weight a compiled graph quantized, the constants the scheme
handler made (``wq``, ``ws``, ``wz``, ...: plain tensors, oneDNN's packed copies read back to
int8), keyed by the weight's name in the user's module. The safetensors metadata holds one JSON
document (key ``zeroquant``): the format and its version, the configs that made the constants,
each weight's recipe (``zq_compile.store.recipe``), the name, shape and dtype of every parameter
and buffer of the module (to refuse a file from another model) and a CRC-32 of every tensor (to
refuse a corrupt one). Loading reads nothing but that JSON and raw tensor bytes: no pickle.

Since format version 2 the file also holds each weight's calibration (``calibrate/stats.py``:
max |X_j| of its input, the alpha and the policy's decision), because the recipe of a smoothed
weight depends on it: without it the next compile would calibrate on its own first call, find
another s, and quantize again with other results. Version 3 keeps one per config the weight was
calibrated under (a list). Version 4 writes each config signature as the fields calibration
depends on (``stats.SIGNATURE_FIELDS``; version 3 wrote three of them, so two configs differing
only in the preset shared one calibration). Files of versions 1 to 3 still load.

``load`` puts the constants into ``zq_compile.store`` beside the module's parameters, where the
next compile finds them instead of quantizing; the module itself is not modified. Everything is
checked before anything is kept, so a bad file leaves no trace.
"""

from __future__ import annotations

import json
import os
import zlib

import torch

from zq_compile import store
from zq_compile.calibrate import stats
from zq_compile.config import CONFIG_VERSION, ZeroQuantConfig

FORMAT = "zeroquant-quantized-weights"
FORMAT_VERSION = 4
READS_VERSIONS = (1, 2, 3, 4)
METADATA_KEY = "zeroquant"


class WeightsFileError(ValueError):
    """A zeroquant weights file that cannot be loaded into this model (nothing was changed)."""


def _module(model) -> torch.nn.Module:
    """The user's module: ``model`` itself, or the one a torch.compile wrapper holds."""
    inner = getattr(model, "_orig_mod", None)
    module = inner if isinstance(inner, torch.nn.Module) else model
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected an nn.Module or its torch.compile wrapper, got {type(model).__name__}")
    return module


def _named_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = dict(module.named_parameters())
    named.update({n: b for n, b in module.named_buffers() if n not in named})
    return named


def _fingerprint(named: dict[str, torch.Tensor]) -> dict[str, list]:
    return {n: [list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in named.items()}


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _portable(t: torch.Tensor) -> torch.Tensor:
    """A kept constant as plain bytes on the CPU (a kernel's packed handle read back)."""
    from zq_compile.ops.linear_wo import plain_constant

    return plain_constant(t).detach().cpu().contiguous()


def save(model, path: str | os.PathLike) -> None:
    """Write the quantized weights of ``model`` to ``path`` (safetensors).

    ``model`` is the compiled module (what ``torch.compile`` / ``zq_compile.compile`` return) or
    the original module; either way it must have run once compiled with the zeroquant backend
    (compilation is lazy), since the constants are made then. Every graph compiled for it so far
    contributes (a prefill and a decode graph share their constants).
    """
    from safetensors.torch import save_file

    named = _named_tensors(_module(model))
    tensors: dict[str, torch.Tensor] = {}
    weights: dict[str, list] = {}
    configs: list[str] = []
    for name, t in named.items():
        for i, (recipe, entry) in enumerate(store.entries(t).items()):
            files = {}
            for cname, value in entry.tensors.items():
                files[cname] = None if value is None else f"{name}:{i}:{cname}"
                if value is not None:
                    tensors[files[cname]] = _portable(value)
            if entry.config not in configs:
                configs.append(entry.config)
            weights.setdefault(name, []).append(
                {"recipe": recipe, "tensors": files, "config": configs.index(entry.config)})
    calibration = {}
    for name, t in named.items():
        # kept-float linears too (the next compile needs every entry), under every config the
        # weight was calibrated for
        for i, entry in enumerate(stats.entries(t)):
            key = f"{name}:calibration:{i}:act_absmax"
            tensors[key] = entry.act_absmax.detach().float().cpu().contiguous()
            calibration.setdefault(name, []).append(
                {"module": entry.module, "act_absmax": key, "alpha": entry.alpha, "keep_float": entry.keep_float,
                 "sqnr_db": _finite_or_none(entry.sqnr_db), "signature": stats.signature_fields(entry.signature)})
    if not weights:
        raise ValueError(
            "nothing to save: no quantized weights are kept for this model. Compile it with the "
            "zeroquant backend and run it once (compilation happens at the first call), then save")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "configs": [json.loads(c) for c in configs],
        "parameters": _fingerprint(named),
        "weights": weights,
        "calibration": calibration,
        "crc32": {k: _crc(v) for k, v in tensors.items()},
    }
    path = os.fspath(path)
    partial = f"{path}.partial"
    save_file(tensors, partial, metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    os.replace(partial, path)  # a crash mid-write never leaves a half file under the real name


def load(path: str | os.PathLike, model) -> ZeroQuantConfig:
    """Restore the quantized weights saved by ``save`` for ``model`` (the same architecture and
    parameter names), so that compiling it quantizes nothing and gives the outputs it gave before
    saving. Returns the config they were made with: compile with it. Raises ``WeightsFileError``
    (a ValueError) for a corrupt, truncated or foreign file and then keeps nothing."""
    path = os.fspath(path)
    named = _named_tensors(_module(model))
    meta, raw = _read(path)
    try:
        configs = [ZeroQuantConfig.from_dict(c) for c in meta["configs"]]
        plan = _match(meta, named, raw)
        calibrated = _calibration(meta, named, raw, path)
    except WeightsFileError:
        raise
    except ValueError as e:
        raise WeightsFileError(f"{path}: {e}") from None
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise WeightsFileError(f"{path}: malformed zeroquant metadata ({type(e).__name__}: {e})") from None
    for name, recipe, tensors, config in plan:  # every check passed: keep them all
        store.put(named[name], recipe, tensors, configs[config].to_json())
    for name, listed in calibrated.items():
        for entry in listed:
            stats.remember(named[name], entry)
    return configs[0]


def _finite_or_none(x: float):
    return x if isinstance(x, (int, float)) and x == x and abs(x) != float("inf") else None


def _calibration_items(meta: dict):
    """(weight name, entry) of every saved calibration: version 3 lists one per config the weight
    was calibrated under, version 2 held one."""
    for name, listed in meta.get("calibration", {}).items():
        for c in listed if isinstance(listed, list) else [listed]:
            yield name, c


def _calibration(meta: dict, named: dict[str, torch.Tensor], raw: dict[str, torch.Tensor], path: str) -> dict:
    """The saved calibrations of each weight (checked like the constants), as stats entries; the
    entries of one config share one report naming the file."""
    from zq_compile.calibrate.report import CalibrationReport

    out, reports = {}, {}
    for name, c in _calibration_items(meta):
        if name not in named or c["act_absmax"] not in raw:
            raise WeightsFileError(f"calibration for {name!r} refers to a missing weight or tensor")
        absmax = raw[c["act_absmax"]]
        if absmax.dim() != 1 or absmax.dtype != torch.float32:
            raise WeightsFileError(f"calibration for {name!r}: max |X| must be a 1-D fp32 tensor")
        sqnr = c["sqnr_db"]
        for signature in _signatures(c["signature"], meta, name):
            if signature not in reports:
                fields = stats.signature_fields(signature)
                reports[signature] = CalibrationReport(source=f"zq_compile.load({os.path.basename(path)!r})",
                                                       batches=0, tokens=0, smooth=fields["smooth"],
                                                       keep_float=fields["keep_float"])
            out.setdefault(name, []).append(stats.LinearCalibration(
                str(c["module"]), absmax, c["alpha"], c["keep_float"], float("nan") if sqnr is None else float(sqnr),
                signature, reports[signature]))
    return out


def _signatures(saved, meta: dict, name: str) -> list[tuple]:
    """The config signatures a saved calibration entry belongs to. Format 4 writes the fields;
    versions 1-3 wrote only (smooth, keep_float, heads): such an entry belongs to each saved
    config with those three values (what those versions matched it against)."""
    try:
        if isinstance(saved, dict):
            return [stats.signature_from_fields(saved)]
        if isinstance(saved, list) and len(saved) == 3:
            configs = [ZeroQuantConfig.from_dict(c) for c in meta["configs"]]
            return list(dict.fromkeys(stats.signature(c) for c in configs
                                      if [c.smooth, c.keep_float, c.heads] == saved))
    except (TypeError, ValueError) as e:
        raise WeightsFileError(f"calibration for {name!r}: bad config signature {saved!r}: {e}") from None
    raise WeightsFileError(f"calibration for {name!r}: bad config signature {saved!r}")


def _read(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            text = (f.metadata() or {}).get(METADATA_KEY)
            if text is None:
                raise WeightsFileError(f"{path}: not a zeroquant weights file (no {METADATA_KEY!r} metadata)")
            meta = json.loads(text)
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except WeightsFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsFileError(f"{path}: unreadable, corrupt or truncated safetensors file: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise WeightsFileError(f"{path}: not a zeroquant weights file (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("format_version") not in READS_VERSIONS:
        raise WeightsFileError(
            f"{path}: format version {meta.get('format_version')!r}; this zeroquant reads versions "
            f"{', '.join(map(str, READS_VERSIONS))}")
    versions = {c.get("version") for c in meta.get("configs", []) if isinstance(c, dict)}
    if versions - {CONFIG_VERSION}:
        raise WeightsFileError(
            f"{path}: saved with config version {sorted(versions - {CONFIG_VERSION})}; this zeroquant reads "
            f"config version {CONFIG_VERSION}: quantize the model again and save it with this version")
    return meta, raw


def _checked(raw: dict[str, torch.Tensor], crc: dict, key: str) -> torch.Tensor:
    if key not in raw:
        raise WeightsFileError(f"tensor {key!r} is listed but missing from the file")
    if _crc(raw[key]) != crc[key]:
        raise WeightsFileError(f"tensor {key!r} is corrupt (CRC-32 differs from the one saved)")
    return raw[key]


def _match(meta: dict, named: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]) -> list:
    """Check the file against the model; the (name, recipe, tensors, config index) to keep."""
    saved, have = meta["parameters"], _fingerprint(named)
    missing = sorted(set(saved) - set(have))
    extra = sorted(set(have) - set(saved))
    differ = sorted(n for n in set(saved) & set(have) if saved[n] != have[n])
    if missing or extra or differ:
        parts = []
        for what, names in (("the model has no", missing), ("the file does not know", extra)):
            if names:
                parts.append(f"{what} {len(names)} name(s): {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}")
        parts += [f"{n} is {have[n]} in the model, {saved[n]} in the file" for n in differ[:5]]
        raise WeightsFileError("this file was saved from another model: " + "; ".join(parts))
    crc, used, plan = meta["crc32"], set(), []
    for name, sets in meta["weights"].items():
        if name not in named:
            raise WeightsFileError(f"weights for {name!r}, which the parameter list does not name")
        for s in sets:
            tensors = {}
            for cname, key in s["tensors"].items():
                if key is None:
                    tensors[cname] = None
                    continue
                tensors[cname] = _checked(raw, crc, key)
                used.add(key)
            if not isinstance(s["recipe"], str) or not 0 <= s["config"] < len(meta["configs"]):
                raise WeightsFileError(f"malformed entry for {name!r}")
            plan.append((name, s["recipe"], tensors, s["config"]))
    for _, c in _calibration_items(meta):
        _checked(raw, crc, c["act_absmax"])
        used.add(c["act_absmax"])
    if set(raw) - used:
        raise WeightsFileError(f"tensors no weight refers to: {sorted(set(raw) - used)[:5]}")
    return plan
