"""User-facing configuration: frozen dataclasses, validated on construction, JSON round-trip.

A ``QuantScheme`` says how one linear is quantized; a preset is a named scheme; a
``ZeroQuantConfig`` says which scheme every linear of a model gets and how the backend runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

CONFIG_VERSION = 1

WEIGHT_BITS = (8, 4)
ACT_BITS = (8, None)  # None: activations stay in floating point (weight-only)
TARGETS = ("auto", "cpu", "triton", "reference")
CPU_KERNELS = ("auto", "onednn", "int_mm")
ATTENTION = ("auto", "bf16", "bf16_matmul", "fp32")
#: How a requantizing Triton GEMM gets its rows' absmax (codegen/triton/runtime.requant_plan).
REQUANT_PLANS = ("auto", "store", "recompute")
ACTIVATIONS = ("auto", "bf16", "fp32")
HEADS = ("float", "split", "outliers")
PIPELINE_RACE = ("auto", "report", "off")
#: Group sizes along the input dimension for INT4 weights (what INT4 kernels take).
INT4_GROUP_SIZES = (32, 64, 128)
#: What the attention/FFN classification (``schemes/policy.py``) can say of a linear.
ROLES = ("attention", "ffn", "other")
#: smooth=: "auto" searches these alphas (and no smoothing) on the calibration data.
SMOOTH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7)


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field_name}={value!r} is not valid; allowed: {allowed}")


@dataclass(frozen=True)
class QuantScheme:
    """How one linear layer is quantized.

    weight_bits: 8 or 4. act_bits: 8 (dynamic per-token int8) or None (weight-only).
    weight_groups: number of groups along the output rows; None means one group per row
    (per-channel). symmetric: symmetric weight quantization (no zero point).
    group_size: INT4 only: inputs per group along K (32, 64, 128), each block of
    (row group, K group) has its own scale; None for 8-bit weights.
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    weight_groups: int | None = None
    symmetric: bool = True
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS:
            _fail("weight_bits", self.weight_bits, "8, 4")
        if self.act_bits not in ACT_BITS:
            _fail("act_bits", self.act_bits, "8, None (weight-only)")
        if self.weight_groups is not None and (
            not isinstance(self.weight_groups, int)
            or isinstance(self.weight_groups, bool)
            or self.weight_groups < 1
        ):
            _fail("weight_groups", self.weight_groups, "a positive int, or None for per-channel")
        if not isinstance(self.symmetric, bool):
            _fail("symmetric", self.symmetric, "True, False")
        if self.weight_bits == 4 and self.group_size not in INT4_GROUP_SIZES:
            _fail("group_size", self.group_size, ", ".join(map(str, INT4_GROUP_SIZES)) + " (INT4 weights)")
        if self.weight_bits == 8 and self.group_size is not None:
            _fail("group_size", self.group_size, "None for 8-bit weights (groups along K are INT4's)")

    @property
    def name(self) -> str:
        act = f"a{self.act_bits}" if self.act_bits else "a16"
        return f"w{self.weight_bits}{act}"


PRESETS: dict[str, QuantScheme] = {
    "w8a8": QuantScheme(weight_bits=8, act_bits=8),
    "w4a8": QuantScheme(weight_bits=4, act_bits=8, group_size=128),
    "w8a16": QuantScheme(weight_bits=8, act_bits=None),
    "w4a16": QuantScheme(weight_bits=4, act_bits=None, group_size=128),
}
#: Presets that give each linear a scheme by its role in the graph (``schemes/policy.py``).
#: w4/8a8 is the paper's W4/8-A8: INT4 feed-forward weights, INT8 attention weights, INT8
#: activations; linears that are neither (LM head, pooler, classifier) keep INT8.
MIXED_PRESETS: dict[str, dict[str, str]] = {
    "w4/8a8": {"attention": "w8a8", "ffn": "w4a8", "other": "w8a8"},
}
PRESET_NAMES: tuple[str, ...] = ("w8a8", "w4/8a8", "w4a8", "w8a16", "w4a16")
#: Presets whose rewrite and kernels exist in this release (all of them now).
IMPLEMENTED_SCHEMES = PRESET_NAMES


def _pairs(field_name: str, value: Any, allowed_values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """A {key: value} mapping from users or JSON as a hashable tuple of pairs, validated."""
    if isinstance(value, dict):
        value = tuple(value.items())
    try:
        pairs = tuple((k, v) for k, v in value)
    except (TypeError, ValueError):
        _fail(field_name, value, "a dict {glob or type name: value}")
    for k, v in pairs:
        if not isinstance(k, str) or not k:
            _fail(field_name, value, "a dict with non-empty string keys")
        if v not in allowed_values:
            _fail(f"{field_name}[{k!r}]", v, ", ".join(allowed_values))
    # Stored sorted: which glob wins never depends on the order a dict or JSON file had.
    return tuple(sorted(pairs))


def _check_smooth(value: Any) -> Any:
    """"auto", False, or an alpha in [0, 1] given as {"alpha": a} or a; returns the stored form."""
    allowed = '"auto", False, {"alpha": a} with 0 <= a <= 1'
    if value == "auto" or value is False:
        return value
    if isinstance(value, dict):
        if set(value) != {"alpha"}:
            _fail("smooth", value, allowed)
        value = value["alpha"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        _fail("smooth", value, allowed)
    return float(value)


def _check_keep_float(value: Any) -> None:
    allowed = '"auto", an int >= 0 (that many worst linears), a float (SQNR floor in dB)'
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail("keep_float", value, allowed)
    if isinstance(value, int) and value < 0:
        _fail("keep_float", value, allowed)
    if isinstance(value, float) and value != value:
        _fail("keep_float", value, allowed)


LKD_DATA = ("random", "generated", "wikipedia")
LKD_SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class LkdConfig:
    """Layer-by-layer knowledge distillation (paper Eq. 2), run once before the first compile.

    Each repeated block of the model gets a copy with the deployed scheme's fake quantization;
    the copy is trained (AdamW, all its parameters) to reproduce the float block's output on the
    float model's own hidden states, and its float weights go back into the model.

    steps: optimizer steps per block. lr: AdamW learning rate. batch: sequences per step.
    seq: tokens per sequence. samples: calibration sequences in all (steps cycle over them).
    seed: fixes the random token ids, the batch order and the training.
    data: where calibration sequences come from when none are passed: "random" (token ids drawn
        uniformly from the vocabulary: the paper's no-training-data setting), "generated" (a
        causal LM's own sampled text from random first tokens: no training data either) or "wikipedia"
        (the Wikipedia prose shipped in the gensim wheel; needs a tokenizer).
    blocks: dotted path of the nn.ModuleList of blocks (e.g. "model.layers"); None finds it.
    schedule: the learning rate over a block's steps: "linear" decays from lr to 0, "constant".
    weight_decay: AdamW weight decay. progress: show a progress bar per block.
    Defaults are sized for 2 CPU cores (the paper's: 100 steps, lr 5e-6, batch 32, seq 128).
    """

    steps: int = 40
    lr: float = 2e-4
    batch: int = 8
    seq: int = 128
    samples: int = 32
    seed: int = 0
    data: str = "random"
    blocks: str | None = None
    schedule: str = "linear"
    weight_decay: float = 0.0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq", "samples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(f"lkd.{name}", value, "a positive int")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            _fail("lkd.seed", self.seed, "an int")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                _fail(f"lkd.{name}", value, "a finite number >= 0")
        if not self.lr > 0:
            _fail("lkd.lr", self.lr, "a finite number > 0")
        if self.data not in LKD_DATA:
            _fail("lkd.data", self.data, ", ".join(LKD_DATA))
        if self.schedule not in LKD_SCHEDULES:
            _fail("lkd.schedule", self.schedule, ", ".join(LKD_SCHEDULES))
        if self.blocks is not None and (not isinstance(self.blocks, str) or not self.blocks):
            _fail("lkd.blocks", self.blocks, "a dotted module path or None")
        if not isinstance(self.progress, bool):
            _fail("lkd.progress", self.progress, "True, False")

    @classmethod
    def from_options(cls, value: LkdConfig | dict[str, Any] | bool | None) -> LkdConfig | None:
        """None/False: no LKD; True: the defaults; a dict: these fields (unknown ones refused)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            _fail("lkd", value, "None, True, a dict of LkdConfig fields or an LkdConfig")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown lkd field(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**value)


@dataclass(frozen=True)
class ZeroQuantConfig:
    """Everything the backend needs to know; also what ``options=`` of torch.compile carries.

    preset: name of the scheme every eligible linear gets (see ``PRESETS``), or a mixed preset
        (``MIXED_PRESETS``: "w4/8a8") that picks it by the linear's role in the graph.
    weight_groups / symmetric: override the preset's weight grouping / symmetry.
    group_size: inputs per group along K for INT4 weights (32, 64, 128). A linear whose input
        width it does not divide gets the largest of those that does, or INT8 (see README).
    overrides: {glob over module paths: preset}, e.g. {"*.mlp.*": "w4a8"}; of the globs that
        match, the longest (most specific) wins; overrides come before ``module_types``.
    module_types: {nn.Module class name: preset}, e.g. {"LlamaMLP": "w4a16"}, matched against
        the modules a linear was called in (innermost first; plain or dotted class names).
    roles: {glob over module paths: "attention" | "ffn" | "other"}, overrides what the graph
        says a linear is (used by mixed presets).
    skip: fnmatch globs over module paths (``"pooler.*"``, ``"*.lm_head"``); matching linears
        stay in floating point, with the glob recorded as the reason.
    target: "auto" (triton kernels on CUDA tensors, cpu kernels on CPU tensors), "cpu", "triton"
        (CUDA; CPU tensors only under TRITON_INTERPRET=1, for tests), or "reference"
        (pure-PyTorch int32 GEMM; slow, exact, for tests and bisection).
    cpu_kernel: "auto" picks the fastest int8 GEMM this CPU supports; "onednn" or "int_mm"
        force one.
    attention: fp32 scaled-dot-product attention on the cpu target: "auto", where the CPU has
        native bf16 dot products and the query has more than a decode step's rows, races our
        two-bmm bf16 lowering, ATen's flash kernel on bf16 q/k/v and fp32 flash on each problem's
        shapes at compile time and emits the most exact one unless another is 10% faster
        (problems under 1 MiB of scores get bf16 flash unraced); "bf16" runs bf16 flash on any
        CPU; "bf16_matmul" our lowering; "fp32" leaves it.
    requant_plan: target "triton": how a GEMM whose output is quantized again for the next
        linear gets each row's absmax: "store" writes its float rows and quantizes them in a
        second kernel, "recompute" runs the int8 GEMM twice (no float rows in memory), "auto"
        picks by arithmetic per shape (``codegen/triton/runtime.requant_plan``). Same int8 values.
    activations: what fp32 models store between the quantized linears on the cpu target:
        "auto" is bf16 where the CPU has native bf16 (avx512_bf16 / amx_bf16), else fp32;
        "bf16" asks for it (ValueError on a CPU without native bf16); "fp32" keeps fp32. The
        arithmetic stays fp32 either way; bf16/fp16 models keep their own dtype.
    smooth: outlier smoothing of each quantized linear's input channels (calibrate/smooth.py):
        "auto" picks alpha from ``SMOOTH_ALPHAS`` (or none) by model-level error on the
        calibration data, and is off when ``lkd`` is set (LKD trains for the unsmoothed
        quantization: calibrate/policy.effective_smooth); False turns it off; {"alpha": a}
        (stored as the float a) fixes alpha.
    keep_float: linears the accuracy policy leaves in float (calibrate/policy.py): "auto" keeps
        lm_head / embedding-tied linears and then the worst linears while the model-level
        error on the calibration data improves; an int keeps that many of the worst; a float is
        a floor in dB: every linear whose output SQNR is below it stays float.
    heads: lm_head / embedding-tied linears: "float" keeps them float under keep_float="auto"
        (quantized like any linear under the other policies); "split" quantizes them with their
        input's widest channels split into several columns (calibrate/split.py) under every
        policy: an int8 GEMM where a float head is a bf16 / fp32 one, at some accuracy;
        "outliers" (the default) quantizes them with their input's 8 widest channels (per 1024)
        left out of the int8 GEMM and multiplied in float beside it (calibrate/outliers.py,
        LLM.int8's decomposition), fused into the kernel that writes the logits. "split" and
        "outliers" apply to heads with int8 activations and INT8 weights; other heads (w8a16,
        INT4 presets) stay float under keep_float="auto", as with "float".
    disable_passes: FX pass names to switch off, for bisection.
    dump_graphs: a directory to write the graph before and after every pass, or None.
    release_float_weights: after compiling, free the float weights of every quantized linear
        from the user's module (its quantized constants are kept for recompiles), and of every
        embedding table, which is then gathered as int8 rows (``passes/quantize_embedding.py``);
        the module then runs only compiled. Default False.
    lkd: layer-by-layer distillation to run once before the first graph compiles (an LkdConfig,
        its dict form, True for the defaults) or None; see ``LkdConfig``.
    pipeline_race: the int8 graph against this CPU's best float pipeline (bf16 + Inductor
        freezing with native bf16, fp32 + freezing elsewhere; ``pipeline_race.py``), timed at
        compile time on the graph's own inputs: "auto" runs the float one where it is 5% faster
        (the report and a warning say so; weights are then not quantized in memory), "report"
        only reports, "off" skips it. Graphs of decode size, under release_float_weights, with
        grad mode on or dynamic shapes are not raced (the report says why).
    pipeline_race_min_gflop: graphs with fewer GFLOP of linears per call than this are not
        raced (compiling the float pipeline costs seconds). Default 8.
    isolate_codegen: run Inductor's code generation in a forked child process
        (``codegen_child.py``) so that its garbage does not stay resident here: True, False, or
        "auto" (the default: True with release_float_weights, the memory-first setting).
        Target "cpu" on Linux with Inductor's FX graph cache on; elsewhere the report says why
        it compiled in process. Costs the child's compile time on top of a cache load.
    """

    preset: str = "w8a8"
    weight_groups: int | None = None
    symmetric: bool | None = None
    group_size: int = 128
    overrides: tuple[tuple[str, str], ...] = ()
    module_types: tuple[tuple[str, str], ...] = ()
    roles: tuple[tuple[str, str], ...] = ()
    skip: tuple[str, ...] = ()
    target: str = "auto"
    cpu_kernel: str = "auto"
    attention: str = "auto"
    requant_plan: str = "auto"
    activations: str = "auto"
    smooth: Any = "auto"
    keep_float: Any = "auto"
    heads: str = "outliers"
    disable_passes: tuple[str, ...] = ()
    dump_graphs: str | None = None
    release_float_weights: bool = False
    lkd: LkdConfig | None = None
    pipeline_race: str = "auto"
    pipeline_race_min_gflop: float = 8.0
    isolate_codegen: Any = "auto"
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str) or self.preset not in PRESET_NAMES:
            _fail("preset", self.preset, ", ".join(PRESET_NAMES))
        if self.group_size not in INT4_GROUP_SIZES or isinstance(self.group_size, bool):
            _fail("group_size", self.group_size, ", ".join(map(str, INT4_GROUP_SIZES)))
        object.__setattr__(self, "overrides", _pairs("overrides", self.overrides, PRESET_NAMES))
        object.__setattr__(self, "module_types", _pairs("module_types", self.module_types, PRESET_NAMES))
        object.__setattr__(self, "roles", _pairs("roles", self.roles, ROLES))
        # Lists arrive from JSON and from users; store tuples so the config stays hashable.
        for name in ("skip", "disable_passes"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                _fail(name, value, "a list of strings")
            object.__setattr__(self, name, tuple(value))
        if self.target not in TARGETS:
            _fail("target", self.target, ", ".join(TARGETS))
        if self.cpu_kernel not in CPU_KERNELS:
            _fail("cpu_kernel", self.cpu_kernel, ", ".join(CPU_KERNELS))
        if self.attention not in ATTENTION:
            _fail("attention", self.attention, ", ".join(ATTENTION))
        if self.requant_plan not in REQUANT_PLANS:
            _fail("requant_plan", self.requant_plan, ", ".join(REQUANT_PLANS))
        if self.activations not in ACTIVATIONS:
            _fail("activations", self.activations, ", ".join(ACTIVATIONS))
        if self.activations == "bf16" and self.target in ("auto", "cpu"):
            from zq_compile.codegen.cpu.select import cpu_description, has_bf16

            if not has_bf16():
                _fail("activations", self.activations,
                      f"auto, fp32 on this CPU ({cpu_description()} has no native bf16: avx512_bf16 / amx_bf16)")
        object.__setattr__(self, "smooth", _check_smooth(self.smooth))
        _check_keep_float(self.keep_float)
        if self.heads not in HEADS:
            _fail("heads", self.heads, ", ".join(HEADS))
        if self.symmetric is not None and not isinstance(self.symmetric, bool):
            _fail("symmetric", self.symmetric, "True, False, None (preset default)")
        if self.dump_graphs is not None and not isinstance(self.dump_graphs, str):
            _fail("dump_graphs", self.dump_graphs, "a directory path or None")
        if not isinstance(self.release_float_weights, bool):
            _fail("release_float_weights", self.release_float_weights, "True, False")
        object.__setattr__(self, "lkd", LkdConfig.from_options(self.lkd))
        if self.pipeline_race not in PIPELINE_RACE:
            _fail("pipeline_race", self.pipeline_race, ", ".join(PIPELINE_RACE))
        m = self.pipeline_race_min_gflop
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m >= 0 or m == float("inf"):
            _fail("pipeline_race_min_gflop", m, "a finite number >= 0 (GFLOP of linears per call)")
        if not (isinstance(self.isolate_codegen, bool) or self.isolate_codegen == "auto"):
            _fail("isolate_codegen", self.isolate_codegen, "auto, True, False")
        if self.version != CONFIG_VERSION:
            _fail("version", self.version, str(CONFIG_VERSION))
        from zq_compile.lowering import POST_GRAD_PASSES
        from zq_compile.passes import PASS_ORDER

        unknown = [p for p in self.disable_passes if p not in PASS_ORDER + POST_GRAD_PASSES]
        if unknown:
            _fail("disable_passes", unknown, ", ".join(PASS_ORDER + POST_GRAD_PASSES))
        for name in {self.preset, *(p for _, p in self.overrides + self.module_types)}:
            for scheme_name in MIXED_PRESETS.get(name, {"": name}).values():
                self.scheme_named(scheme_name)  # validates the merged schemes now, not at compile time

    @property
    def scheme(self) -> QuantScheme:
        """The scheme of the preset (of a mixed preset: the one its attention linears get)."""
        return self.scheme_named(MIXED_PRESETS.get(self.preset, {}).get("attention", self.preset))

    def scheme_named(self, name: str) -> QuantScheme:
        """A uniform preset's scheme with this config's weight_groups / symmetric / group_size."""
        base = PRESETS[name]
        return dataclasses.replace(
            base,
            weight_groups=self.weight_groups if self.weight_groups is not None else base.weight_groups,
            symmetric=self.symmetric if self.symmetric is not None else base.symmetric,
            group_size=self.group_size if base.weight_bits == 4 else None,
        )

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        d["disable_passes"] = list(self.disable_passes)
        for name in ("overrides", "module_types", "roles"):
            d[name] = dict(getattr(self, name))
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZeroQuantConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict of ZeroQuantConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> ZeroQuantConfig:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_options(cls, options: ZeroQuantConfig | dict[str, Any] | None) -> ZeroQuantConfig:
        """Accept what ``torch.compile(..., options=...)`` passes: None, a dict, or a config."""
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        if not isinstance(options, Mapping):
            raise ValueError(f"options/config={options!r} is not valid; allowed: a ZeroQuantConfig, "
                             "a dict of its fields, or None")
        return cls.from_dict(dict(options))


__all__ = ["LkdConfig", "QuantScheme", "ZeroQuantConfig", "PRESETS", "PRESET_NAMES", "MIXED_PRESETS"]
