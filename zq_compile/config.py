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
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.preset, str) or self.preset not in PRESETS:
            _fail("preset", self.preset, ", ".join(PRESETS))
        if self.preset not in IMPLEMENTED_SCHEMES:
            _fail("preset", self.preset, ", ".join(IMPLEMENTED_SCHEMES) + " (others are not built yet)")
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
        if self.symmetric is not None and not isinstance(self.symmetric, bool):
            _fail("symmetric", self.symmetric, "True, False, None (preset default)")
        if self.dump_graphs is not None and not isinstance(self.dump_graphs, str):
            _fail("dump_graphs", self.dump_graphs, "a directory path or None")
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


__all__ = ["QuantScheme", "ZeroQuantConfig", "PRESETS"]
