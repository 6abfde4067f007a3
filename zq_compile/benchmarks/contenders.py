"""Every contender the bench runs, as (name, builder) pairs; a builder turns an fp32 model into a
callable ``fn(**inputs)`` that returns what the model returns.

A builder that raises, or whose first call raises, makes that contender *failed*: it stays in
the tables with its error. Nothing here is marked failed by hand: the zeroquant presets come from
``zq_compile.config.PRESETS`` and are built through ``ZeroQuantConfig``, which refuses the ones
that are not built yet; LKD runs through ``zq_compile.calibrate`` once that exists. So a preset or
LKD that lands shows up with numbers on the next run, with no edit here.

How the peers are run (the fair setting, see shared/design/KERNEL-NOTES.md):
- torchao configs get ``set_inductor_config=False`` (it would flip process-wide Inductor flags
  and change every contender compiled after it); instead their calls run under a
  ``torch._inductor.config.patch`` with ``freezing=True`` and torchao's recommended flag, scoped to
  those calls (``PEER_INDUCTOR_PATCH``).
- PT2E: ``torch.export`` (static shapes, one export per input shape) →
  ``prepare_pt2e(X86InductorQuantizer)`` → calibration → ``convert_pt2e`` → ``torch.compile``
  under the same scoped patch. Two variants: dynamic per-tensor activation scales (one call with
  the example is enough: its observers only need to run), and static per-tensor scales calibrated
  on ``BenchModel.calibration_batches``: other text than the measured one, never the measured
  inputs (checked).
- The float contenders "+freezing" run their calls under ``FREEZING_PATCH`` only.
- Models that are mutated (dtype casts, in-place quantizers) get their own deep copy, so the
  float model every other contender uses is never changed.

Every contender gets its own compiled code (``_compile``): Dynamo keeps compiled graphs on the
model's code objects, and two ``torch.compile`` calls with equal backends share them, so a deep
copy of the model with the same dtypes would run the graph compiled for the contender before it
(seen: bf16 under a freezing patch ran the unfrozen bf16 graph). The harness checks at every build
that Dynamo compiled a graph for the contender (``Contender.compiles``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from zq_compile.codegen.cpu.select import has_bf16, has_vnni

#: Inductor config the peers (torchao, PT2E) run under: freezing (weights become constants Inductor
#: can prepack) and torchao's recommended CPU-relevant flag. Applied as a ``config.patch`` around
#: every call of those contenders only (compilation is lazy, so it must cover the calls); passed
#: as ``torch.compile(options=...)`` instead, PT2E fails on this torch with
#: ``UnsupportedOperatorException: onednn.qlinear_prepack.default``.
PEER_INDUCTOR_PATCH = {"freezing": True, "force_fuse_int_mm_with_mul": True}
#: What the float contenders "+freezing" run under (torch's recommended CPU inference setting:
#: weights become constants Inductor prepacks for oneDNN/MKL), scoped to their calls in the same way.
FREEZING_PATCH = {"freezing": True}
#: The contender every ratio is taken against, and the other named reference.
BASELINE = "inductor fp32"
#: What every accuracy figure (cosine, perplexity ratio, greedy agreement) is measured against.
REFERENCE = "eager fp32"
TORCHAO_INT8_DYN = "torchao int8-dyn"
INDUCTOR_BF16_FREEZING = "inductor bf16+freezing"
INDUCTOR_FP32_FREEZING = "inductor fp32+freezing"
PT2E_STATIC = "pt2e x86 static"
#: What ``--quick`` runs when no contender is named: the reference, the baseline, the strongest
#: float and quantized peers, and zeroquant's default and W4/8A8 presets (the whole default set,
#: with LKD and the accuracy ablations, compiles 26 contenders: 15 minutes for MiniLM alone).
QUICK = (REFERENCE, BASELINE, INDUCTOR_BF16_FREEZING, INDUCTOR_FP32_FREEZING, TORCHAO_INT8_DYN, PT2E_STATIC,
         "zeroquant w8a8", "zeroquant w4/8a8", "zeroquant w8a8 int8")


@dataclasses.dataclass
class BenchModel:
    """A model and how to call it. ``call(fn, inputs)`` runs a contender on one input dict and
    returns the tensor the accuracy metrics read (last hidden state or logits)."""

    name: str
    model: torch.nn.Module
    #: "encoder" (BERT-like: input_ids, attention_mask), "causal-lm", or "tensor" (a module that
    #: takes and returns one tensor, e.g. the linear microbenchmark)
    kind: str
    note: str = ""
    #: True in the memory probe: the contender may take the model itself instead of a copy, as a
    #: user quantizing in place would (so the fp32 weights are freed where the method frees them)
    owned: bool = False
    #: ``calibration(inputs)``: batches of the same shapes as ``inputs`` from data that is never
    #: measured (other sentences, later text windows, other random draws), for the contenders
    #: that calibrate static scales. Set by each bench section; None: those contenders fail
    #: saying so (there is no silent fallback to the measured inputs).
    calibration: Callable[[dict], list[dict]] | None = None

    def calibration_batches(self, inputs: dict) -> list[dict]:
        """``calibration(inputs)``, checked: same shapes as ``inputs``, and not the measured data."""
        if self.calibration is None:
            raise RuntimeError(f"{self.name}: no calibration data set (static scales need inputs other than the "
                               "measured ones)")
        batches = self.calibration(inputs)
        if not batches:
            raise RuntimeError(f"{self.name}: the calibration data is empty")
        for batch in batches:
            tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
            for k, v in tensors.items():
                if k not in inputs or tuple(v.shape) != tuple(inputs[k].shape):
                    raise ValueError(f"calibration input {k!r} has shape {tuple(v.shape)}, the measured one "
                                     f"{tuple(inputs[k].shape) if k in inputs else 'does not exist'}")
            if all(torch.equal(v, inputs[k]) for k, v in tensors.items()):
                raise ValueError(f"{self.name}: a calibration batch equals the measured inputs")
        return batches

    def mutable(self) -> torch.nn.Module:
        """The model a contender may change (cast, quantize in place): a copy unless owned."""
        return self.model if self.owned else copy.deepcopy(self.model)

    def call(self, fn, inputs: dict) -> torch.Tensor:
        out = fn(**inputs)
        if self.kind == "tensor":
            return out
        if self.kind == "encoder":
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return out.logits if hasattr(out, "logits") else out[0]


Builder = Callable[[BenchModel, dict], Callable[..., Any]]


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    family: str  # "float", "peer" or "zeroquant"
    build: Builder
    #: what a reader should know about how it ran (dtype, scope of the config patch, ...)
    how: str = ""
    #: False: runs only when named with --contenders (ablations, kept out of the full run's time)
    default: bool = True
    #: True: ``torch.compile`` runs inside it, so its first call must make Dynamo compile at least
    #: one graph of its own; one that compiles none ran a graph compiled for another contender
    #: (or eager code under a compiled name) and is reported failed.
    compiles: bool = True


def _compile(model, name: str):
    """``torch.compile`` for one contender, with its own compiled code. ``name`` is part of the
    equality of the Inductor backend that Dynamo stores with each compiled graph, so a graph
    compiled for one contender never passes another's lookup, not even for a deep copy of the
    same model with the same dtypes (which Dynamo's guards alone do not tell apart)."""
    return torch.compile(model, name=name)


# -- float ---------------------------------------------------------------------------------------
def _eager(bm: BenchModel, example: dict):
    return bm.model


def compile_float(model: torch.nn.Module, name: str, dtype: torch.dtype = torch.float32,
                  patch: dict | None = None):
    """``model`` (already in ``dtype``) through Inductor with its own compiled code, every call under
    ``patch`` (e.g. ``FREEZING_PATCH``), float inputs cast to ``dtype``. Also what ``make demo``
    runs for its bf16 + freezing row."""
    compiled = _compile(model, name)
    if patch:
        return _under_patch(compiled, patch, dtype)
    return _in_dtype(compiled, dtype)


def _inductor(name: str, dtype: torch.dtype, patch: dict | None, bm: BenchModel, example: dict):
    if dtype == torch.bfloat16 and not has_bf16():
        raise RuntimeError("this CPU has no native bf16 (avx512_bf16 / amx_bf16): not run")
    return compile_float(bm.model if dtype == torch.float32 else bm.mutable().to(dtype), name, dtype, patch)


def _cast_floats(inputs: dict, dtype: torch.dtype) -> dict:
    """Float tensor inputs (the microbenchmark's activations) in the model's dtype; ids unchanged."""
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def _in_dtype(fn, dtype: torch.dtype):
    if dtype == torch.float32:
        return fn
    return lambda **inputs: fn(**_cast_floats(inputs, dtype))


# -- peers ---------------------------------------------------------------------------------------
def _under_patch(compiled, patch: dict, dtype: torch.dtype = torch.float32):
    """Every call under ``patch``: compilation is lazy (first call, and every recompile at a new
    shape), so the patch must cover the calls, not the ``torch.compile`` line."""

    def run(**inputs):
        with torch._inductor.config.patch(patch):
            return compiled(**_cast_floats(inputs, dtype) if dtype != torch.float32 else inputs)

    return run


def _quantize_dynamic(bm: BenchModel, example: dict):
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(bm.mutable(), {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _torchao(name: str, config_name: str, dtype: torch.dtype, bm: BenchModel, example: dict):
    import torchao.quantization as tq

    kwargs: dict[str, Any] = {"set_inductor_config": False}
    if config_name == "Int4WeightOnlyConfig":
        kwargs["group_size"] = 128
    config = getattr(tq, config_name)(**kwargs)
    model = bm.mutable().to(dtype)
    tq.quantize_(model, config)
    return _under_patch(_compile(model, name), PEER_INDUCTOR_PATCH, dtype)


#: what the PT2E rows' description adds on CPUs where their activations are narrowed (see _pt2e)
_REDUCED = "" if has_vnni() else "; 7-bit activations (reduce_range), this CPU has no VNNI"


def _pt2e(name: str, static: bool, bm: BenchModel, example: dict):
    """PT2E is exported at static shapes: with dynamic dims (Dim.AUTO) Inductor's freezing pass
    fails on this torch (``UnsupportedOperatorException: onednn.qlinear_prepack``). So, as a user
    of static PT2E would, each new input shape is exported, quantized and compiled anew.

    ``static``: per-tensor activation scales fixed by calibration on ``bm.calibration_batches``
    (X86InductorQuantizer's default static config); else dynamic per-tensor scales. On CPUs
    without VNNI with ``reduce_range`` (7-bit activations), as the quantizer's documentation asks
    there: its full-range uint8 activations saturate oneDNN's int16 pair sums (a tiny model's
    static PT2E output fell to 18 dB SQNR on an AVX2 EPYC)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    source = {"model": bm.model}
    causal = bm.kind == "causal-lm"
    compiled_by_shape: dict[tuple, Any] = {}

    def build(kwargs: dict):
        if source["model"] is None:
            raise RuntimeError("PT2E: a new input shape needs a new export, and the float model was released")
        exported = torch.export.export(source["model"], (), kwargs, strict=False)
        quantizer = X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config(is_dynamic=not static, reduce_range=not has_vnni()))
        prepared = prepare_pt2e(exported.module(), quantizer)
        if static:
            for batch in bm.calibration_batches(kwargs):
                prepared(**{**kwargs, **batch})
        else:
            prepared(**kwargs)  # dynamic activations: the observers only need to run
        return _under_patch(_compile(convert_pt2e(prepared), name), PEER_INDUCTOR_PATCH)

    def run(**inputs):
        # A prefill is the exported cache-less forward (it returns no cache); a decode step is not.
        if inputs.pop("past_key_values", None) is not None:
            raise RuntimeError("the PT2E export has no KV cache: decode steps cannot run")
        inputs.pop("use_cache", None)
        if causal:
            inputs["use_cache"] = False
        key = tuple((k, tuple(v.shape)) for k, v in inputs.items() if isinstance(v, torch.Tensor))
        if key not in compiled_by_shape:
            compiled_by_shape[key] = build(inputs)
        return compiled_by_shape[key](**inputs)

    run(**dict(example))
    if bm.owned:  # memory probe: one shape only, so the float model need not be kept
        source["model"] = None
    return run


# -- zeroquant -----------------------------------------------------------------------------------
def _zeroquant(preset: str, lkd: bool, bm: BenchModel, example: dict, **options):
    import zq_compile
    from zq_compile.config import ZeroQuantConfig

    # calibrate() runs LKD only when the config asks for it: without lkd=True these contenders
    # gathered statistics only and scored exactly as their plain twins (seen 2026-12-01).
    config = ZeroQuantConfig(preset=preset, lkd=True if lkd else None, **options)
    model = bm.model
    if lkd:
        from zq_compile.benchmarks.calibration_text import batches

        # LKD edits the float weights: on a copy, so the other contenders keep the fp32 model.
        model = bm.mutable()
        data, _ = batches(bm, example)  # text the bench never scores
        report = zq_compile.calibrate(model, config, data)
        if report.lkd is None:
            raise RuntimeError("zq_compile.calibrate returned without running LKD")
    return zq_compile.compile(model, config)


def _zeroquant_released(preset: str, bm: BenchModel, example: dict):
    """release_float_weights frees the float weights of the model it compiles: a copy's, so the
    other contenders keep theirs."""
    import zq_compile
    from zq_compile.config import ZeroQuantConfig

    return zq_compile.compile(bm.mutable(), ZeroQuantConfig(preset=preset, release_float_weights=True))


def all_contenders() -> list[Contender]:
    from zq_compile.config import PRESET_NAMES

    def inductor(name, dtype, patch, how, default=True):
        return Contender(name, "float", functools.partial(_inductor, name, dtype, patch), how, default)

    def torchao(name, config_name, dtype, how):
        return Contender(name, "peer", functools.partial(_torchao, name, config_name, dtype), how)

    out = [
        Contender("eager fp32", "float", _eager, "the fp32 model, no compile", compiles=False),
        inductor(BASELINE, torch.float32, None, "torch.compile, default Inductor settings"),
        # Where the CPU has native bf16, bf16 + freezing is the strongest float contender and fp32
        # + freezing only costs bench time; elsewhere fp32 + freezing is the float one to beat.
        inductor(INDUCTOR_FP32_FREEZING, torch.float32, FREEZING_PATCH,
                 "torch.compile under Inductor freezing (config.patch around its calls)", default=not has_bf16()),
        inductor("inductor bf16", torch.bfloat16, None, "model cast to bf16, torch.compile (no freezing)"),
        inductor(INDUCTOR_BF16_FREEZING, torch.bfloat16, FREEZING_PATCH,
                 "model cast to bf16, torch.compile under Inductor freezing (config.patch around its calls)"),
        Contender("ao quantize_dynamic", "peer", _quantize_dynamic,
                  "torch.ao.quantization.quantize_dynamic (qint8, per-tensor dynamic act), eager", compiles=False),
        torchao(TORCHAO_INT8_DYN, "Int8DynamicActivationInt8WeightConfig", torch.float32,
                "torchao Int8DynamicActivationInt8WeightConfig + torch.compile(freezing)"),
        torchao("torchao int8-wo", "Int8WeightOnlyConfig", torch.float32,
                "torchao Int8WeightOnlyConfig + torch.compile(freezing)"),
        torchao("torchao int4-wo", "Int4WeightOnlyConfig", torch.bfloat16,
                "torchao Int4WeightOnlyConfig(group_size=128), model in bf16, + torch.compile(freezing)"),
        Contender("pt2e x86 dyn", "peer", functools.partial(_pt2e, "pt2e x86 dyn", False),
                  "torch.export + PT2E X86InductorQuantizer (dynamic per-tensor act" + _REDUCED
                  + ") + torch.compile(freezing)"),
        Contender(PT2E_STATIC, "peer", functools.partial(_pt2e, PT2E_STATIC, True),
                  "torch.export + PT2E X86InductorQuantizer (static per-tensor act, calibrated on other text than "
                  "the measured" + _REDUCED + ") + torch.compile(freezing)"),
    ]
    for preset in PRESET_NAMES:
        for lkd in (False, True):
            name = f"zeroquant {preset}" + ("+lkd" if lkd else "")
            how = f"zq_compile.compile(model, ZeroQuantConfig(preset={preset!r}))"
            if lkd:
                how = ("zq_compile.calibrate(model_copy, config with lkd=True, calibration text the bench "
                       "never scores) (LKD), then " + how)
            out.append(Contender(name, "zeroquant", functools.partial(_zeroquant, preset, lkd), how))
    # issue 12, each step's effect; calibrated on text the bench does not score (calibration_text.py)
    from zq_compile.benchmarks.calibration_text import zeroquant_calibrated

    # "plain" and "+smooth" quantize the head like any linear (heads="float", keep_float=0);
    # the policy row is the default config (outlier head); then the other head treatments
    for name, options in (("zeroquant w8a8 plain", dict(smooth=False, keep_float=0, heads="float")),
                          ("zeroquant w8a8+smooth", dict(keep_float=0, heads="float")),
                          ("zeroquant w8a8+smooth+policy", {}),
                          ("zeroquant w8a8+smooth+policy+float-head", dict(heads="float")),
                          ("zeroquant w8a8+smooth+policy+split", dict(heads="split"))):
        out.append(Contender(name, "zeroquant", functools.partial(zeroquant_calibrated, options),
                             f"zq_compile.calibrate on held-out text, then zq_compile.compile, options {options}"))
    out.append(Contender("zeroquant w4/8a8 release", "zeroquant", functools.partial(_zeroquant_released, "w4/8a8"),
                         "zq_compile.compile(model copy, ZeroQuantConfig(preset='w4/8a8', release_float_weights=True)): "
                         "memory first, the W4A8 GEMMs unpack INT4 per call", default=False))
    # Where the pipeline race picks the float pipeline (bf16 CPUs, prefill graphs), this row keeps
    # the int8 one in the tables.
    out.append(Contender("zeroquant w8a8 int8", "zeroquant",
                         functools.partial(_zeroquant, "w8a8", False, pipeline_race="off"),
                         "as zeroquant w8a8 with pipeline_race='off': the int8 pipeline even where the "
                         "race would run the float one", default=has_bf16()))
    out.append(Contender("zeroquant w8a8 fp32-attn", "zeroquant",
                         functools.partial(_zeroquant, "w8a8", False, attention="fp32"),
                         "as zeroquant w8a8 with attention='fp32' (ablation: what bf16 attention adds)",
                         default=False))
    return out


def select(names: list[str] | None, quick: bool = False) -> list[Contender]:
    """The default contenders (those of ``QUICK`` among them if ``quick``), or those named (an
    unknown name is an error listing the known ones)."""
    everything = all_contenders()
    if not names:
        return [c for c in everything if c.default and (not quick or c.name in QUICK)]
    by_name = {c.name: c for c in everything}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"unknown contender(s) {unknown}; known: {', '.join(by_name)}")
    # ratios need the baseline; accuracy needs the reference (without it a filtered run printed
    # "accuracy on the ? sentences" and no cosine at all)
    keep = set(names) | {BASELINE, REFERENCE}
    return [c for c in everything if c.name in keep]
