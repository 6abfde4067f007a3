"""User-facing configuration: frozen dataclasses, validated on construction, JSON round-trip.

A ``QuantScheme`` says how one linear is quantized; a preset is a named scheme; a
``ZeroQuantConfig`` says which scheme every linear of a model gets and how the backend runs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

CONFIG_VERSION = 1

WEIGHT_BITS = (8, 4)
ACT_BITS = (8, None)  # None: activations stay in floating point (weight-only)
TARGETS = ("auto", "cpu", "triton", "reference")
CPU_KERNELS = ("auto", "onednn", "int_mm")
ATTENTION = ("auto", "bf16", "fp32")
#: Schemes whose rewrite and kernels exist in this release. Others validate as data but are
#: rejected by ZeroQuantConfig until their handler lands (see ``passes/rewrite_linear.py``).
IMPLEMENTED_SCHEMES = ("w8a8",)


def _fail(field_name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{field_name}={value!r} is not valid; allowed: {allowed}")


@dataclass(frozen=True)
class QuantScheme:
    """How one linear layer is quantized.

    weight_bits: 8 or 4. act_bits: 8 (dynamic per-token int8) or None (weight-only).
    weight_groups: number of groups along the output rows; None means one group per row
    (per-channel). symmetric: symmetric weight quantization (no zero point).
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    weight_groups: int | None = None
    symmetric: bool = True

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

    @property
    def name(self) -> str:
        act = f"a{self.act_bits}" if self.act_bits else "a16"
        return f"w{self.weight_bits}{act}"


PRESETS: dict[str, QuantScheme] = {
    "w8a8": QuantScheme(weight_bits=8, act_bits=8),
    "w4a8": QuantScheme(weight_bits=4, act_bits=8),
    "w8a16": QuantScheme(weight_bits=8, act_bits=None),
    "w4a16": QuantScheme(weight_bits=4, act_bits=None),
}


LKD_DATA = ("random", "wikipedia")
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
        uniformly from the vocabulary: the paper's no-training-data setting) or "wikipedia"
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

    preset: name of the scheme every eligible linear gets (see ``PRESETS``).
    weight_groups / symmetric: override the preset's weight grouping / symmetry.
    skip: fnmatch globs over module paths (``"pooler.*"``, ``"*.lm_head"``); matching linears
        stay in floating point, with the glob recorded as the reason.
    target: "auto" (triton kernels on CUDA tensors, cpu kernels on CPU tensors), "cpu", "triton"
        (CUDA; CPU tensors only under TRITON_INTERPRET=1, for tests), or "reference"
        (pure-PyTorch int32 GEMM; slow, exact, for tests and bisection).
    cpu_kernel: "auto" picks the fastest int8 GEMM this CPU supports; "onednn" or "int_mm"
        force one.
    attention: fp32 scaled-dot-product attention on the cpu target: "auto" runs its two
        matmuls in bf16 (softmax in fp32) where the CPU has native bf16 dot products and the
        query has more than a decode step's rows; "bf16" does so on any CPU; "fp32" leaves it.
    disable_passes: FX pass names to switch off, for bisection.
    dump_graphs: a directory to write the graph before and after every pass, or None.
    lkd: layer-by-layer distillation to run once before the first graph compiles (an LkdConfig,
        its dict form, True for the defaults) or None; see ``LkdConfig``.
    """

    preset: str = "w8a8"
    weight_groups: int | None = None
    symmetric: bool | None = None
    skip: tuple[str, ...] = ()
    target: str = "auto"
    cpu_kernel: str = "auto"
    attention: str = "auto"
    disable_passes: tuple[str, ...] = ()
    dump_graphs: str | None = None
    lkd: LkdConfig | None = None
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            _fail("preset", self.preset, ", ".join(PRESETS))
        if self.preset not in IMPLEMENTED_SCHEMES:
            _fail("preset", self.preset, ", ".join(IMPLEMENTED_SCHEMES) + " (others are not built yet)")
        # Lists arrive from JSON and from users; store tuples so the config stays hashable.
        for name in ("skip", "disable_passes"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                _fail(name, value, "a list of strings")
            object.__setattr__(self, name, tuple(value))
        if self.target not in TARGETS:
            _fail("target", self.target, ", ".join(TARGETS))
        if self.cpu_kernel not in CPU_KERNELS:
            _fail("cpu_kernel", self.cpu_kernel, ", ".join(CPU_KERNELS))
        if self.attention not in ATTENTION:
            _fail("attention", self.attention, ", ".join(ATTENTION))
        if self.symmetric is not None and not isinstance(self.symmetric, bool):
            _fail("symmetric", self.symmetric, "True, False, None (preset default)")
        if self.dump_graphs is not None and not isinstance(self.dump_graphs, str):
            _fail("dump_graphs", self.dump_graphs, "a directory path or None")
        object.__setattr__(self, "lkd", LkdConfig.from_options(self.lkd))
        if self.version != CONFIG_VERSION:
            _fail("version", self.version, str(CONFIG_VERSION))
        from zq_compile.passes import PASS_ORDER

        unknown = [p for p in self.disable_passes if p not in PASS_ORDER]
        if unknown:
            _fail("disable_passes", unknown, ", ".join(PASS_ORDER))
        self.scheme  # validates the merged scheme (weight_groups) now, not at compile time

    @property
    def scheme(self) -> QuantScheme:
        base = PRESETS[self.preset]
        return dataclasses.replace(
            base,
            weight_groups=self.weight_groups if self.weight_groups is not None else base.weight_groups,
            symmetric=self.symmetric if self.symmetric is not None else base.symmetric,
        )

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skip"] = list(self.skip)
        d["disable_passes"] = list(self.disable_passes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ZeroQuantConfig:
        if not isinstance(data, dict):
            raise ValueError(f"config must be a dict, got {type(data).__name__}")
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
        return cls.from_dict(dict(options))


__all__ = ["LkdConfig", "QuantScheme", "ZeroQuantConfig", "PRESETS"]
