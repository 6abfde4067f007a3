"""Linear-weight bytes per preset: what issue 11's first target measures.

For each preset, the bytes of the quantized linears' weights and scales (the compile report's
``quant_bytes``: packed INT4 at half a byte, fp32 scales, zero points) against the same weights
in fp16 (2 bytes per element, from each linear's shape). Only the backend's ``prepare`` runs (it
quantizes the graph Dynamo captures); Inductor never compiles, so a preset costs the calibration
forward and the quantization, not a compile. Two ratios: the quantized linears alone, and all
linears with those the accuracy policy leaves float (``keep_float``) at the bytes they hold, so a
preset cannot look small by quantizing less; the target judges the second. The quantized bytes
include whatever a linear's treatment holds beside its weight (an outlier head's float columns).
"""

from __future__ import annotations

import torch

#: The most a preset's linears may weigh against fp16 (issue 11: "w4/8a8 <= 0.35x").
TARGETS = {"w4/8a8": 0.35}


def label(row: dict) -> str:
    """The preset, with the options it was measured under (``release_float_weights`` -> "release")."""
    extra = ["release" if k == "release_float_weights" and v is True else f"{k}={v}"
             for k, v in row.get("options", {}).items()]
    return " + ".join([row["preset"], *extra])


def target_met(row: dict) -> bool:
    """Whether a row with a target meets it, judged on all linears (``ratio_all``)."""
    return row["ratio_all"] <= row["target"]


def _elements(decision) -> int:
    if decision.shape is None:
        raise ValueError(f"linear {decision.module or decision.node} has no weight shape in its report")
    n, k = decision.shape
    return n * k


def preset_bytes(model: torch.nn.Module, inputs: dict, presets=None, log=print, **options) -> list[dict]:
    """One row per preset (``options``: more config fields, the same for every preset): linears
    quantized / left float, their fp16 and held bytes, the ratios, the target where one exists,
    and the quantized bytes by scheme. A weight several linears share counts once; a linear left
    float counts at its held bytes (the model's dtype) in ``ratio_all``, what the target judges."""
    import torch._dynamo

    from zq_compile.backend import prepare
    from zq_compile.config import PRESET_NAMES, ZeroQuantConfig

    float_size = next(model.parameters()).element_size()
    rows = []
    for preset in presets or PRESET_NAMES:
        reports = []

        def backend(gm, example_inputs, preset=preset):
            reports.append(prepare(gm, example_inputs, ZeroQuantConfig(preset=preset, **options)).report)
            return gm.forward

        torch._dynamo.reset()
        with torch.no_grad():
            torch.compile(model, backend=backend)(**inputs)
        decisions = [d for r in reports for d in r.decisions]
        # a weight shared with an earlier linear holds no bytes of its own (quant_bytes 0)
        quantized = [d for d in decisions if d.quantized and d.quant_bytes]
        left = [d for d in decisions if not d.quantized]
        fp16 = sum(2 * _elements(d) for d in quantized)
        quant = sum(d.quant_bytes for d in quantized)
        held_float = sum(float_size * _elements(d) for d in left)
        fp16_all = fp16 + sum(2 * _elements(d) for d in left)
        by_scheme: dict[str, int] = {}
        for d in quantized:
            by_scheme[d.scheme] = by_scheme.get(d.scheme, 0) + d.quant_bytes
        row = dict(preset=preset, options=dict(options), quantized=len(quantized), kept_float=len(left), fp16_bytes=fp16, quant_bytes=quant,
                   ratio=quant / fp16 if fp16 else None, float_bytes=held_float,
                   ratio_all=(quant + held_float) / fp16_all if fp16_all else None,
                   target=TARGETS.get(preset), by_scheme=by_scheme)
        rows.append(row)
        met = "" if row["target"] is None else f" (target <= {row['target']}x: {'met' if target_met(row) else 'NOT met'})"
        log(f"  weights {label(row):7s} {len(quantized)} linears quantized, {len(left)} float: "
            f"{quant / 2**20:.1f} MiB against {fp16 / 2**20:.1f} MiB in fp16 = {row['ratio']:.3f}x; "
            f"all linears {row['ratio_all']:.3f}x{met}")
    torch._dynamo.reset()
    return rows


def table_rows(model: torch.nn.Module, inputs: dict, log=print) -> list[dict]:
    """Every preset at its defaults, then w4/8a8 memory-first (``release_float_weights``: the
    linears the accuracy policy keeps are INT8 too): the rows ``make bench`` prints."""
    return preset_bytes(model, inputs, log=log) + \
        preset_bytes(model, inputs, presets=["w4/8a8"], log=log, release_float_weights=True)
