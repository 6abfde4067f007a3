"""Fake quantization for training (LKD): quantize-dequantize in float, straight-through gradient.

The forward values are exactly what the deployed scheme computes (``quant/weight.py`` for the
weights, ``quant/activation.py`` for the per-token activations); the backward treats the
rounding as the identity (straight-through estimator, STE) and the scales as constants, so every
weight inside the clamp range keeps its gradient.

    x ──fq_act (per token, a8 only)──▶ x̂ ─┐
                                          ├─ linear ─▶ y
    W ──fq_weight (groups of rows × K)──▶ Ŵ ─┘

Which scheme a linear of the model gets is ``spec_for``'s business. ``spec_for_config`` asks
the backend's own policy (``schemes/policy.scheme_for``: ``overrides`` globs, ``module_types``,
the preset, ``group_size`` and its fallback when it does not divide K), so training and
deployment agree. One input differs: the backend finds a linear's role (attention or FFN, for
``w4/8a8``) from the captured graph, while LKD trains nn.Modules before any graph exists, so
here a linear inside a block whose path has "attn" or "attention" in it is attention, any other
is FFN, unless a ``roles`` glob of the config says otherwise. On BERT, GPT-2 and Llama blocks
both rules give the same answer (``tests/calibrate/test_fake_quant.py`` checks it against the
graph rule).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zq_compile.quant.activation import qmax_for


@dataclass(frozen=True)
class FakeQuantSpec:
    """weight_bits 8/4; act_bits 8 or None (weight-only); row_groups: groups along the output
    rows (None: one per row); k_group_size: columns per group along K (None: the whole row);
    symmetric and weight_qmax (a narrower 8-bit grid, CPUs without VNNI) as in ``quantize_weight``."""

    weight_bits: int = 8
    act_bits: int | None = 8
    row_groups: int | None = None
    k_group_size: int | None = None
    symmetric: bool = True
    weight_qmax: int | None = None

    def __post_init__(self) -> None:
        if self.weight_bits not in (8, 4):
            raise ValueError(f"weight_bits={self.weight_bits!r} is not valid; allowed: 8, 4")
        if self.act_bits not in (8, None):
            raise ValueError(f"act_bits={self.act_bits!r} is not valid; allowed: 8, None")
        if self.k_group_size is not None and self.k_group_size < 1:
            raise ValueError(f"k_group_size={self.k_group_size!r} is not valid; allowed: a positive int or None")
        if self.weight_qmax is not None and (self.weight_bits != 8 or not 1 <= self.weight_qmax <= 127):
            raise ValueError(f"weight_qmax={self.weight_qmax!r} is not valid; allowed: None, or 1..127 for 8-bit weights")

    @property
    def name(self) -> str:
        return f"w{self.weight_bits}" + (f"a{self.act_bits}" if self.act_bits else "a16")


class _RoundSTE(torch.autograd.Function):
    """torch.round forward, identity backward. A custom function rather than
    ``x + (round(x) - x).detach()``, whose float sum can land one ulp off the rounded value:
    the forward must equal the deployed numerics exactly."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return _RoundSTE.apply(x)


def fake_quant_weight(w_nk: torch.Tensor, spec: FakeQuantSpec) -> torch.Tensor:
    """Quantize-dequantize a [N, K] weight as ``quantize_weight`` does (then its ``dequantize``),
    with optional groups along K; gradient straight through."""
    n, k = w_nk.shape
    groups = spec.row_groups or n
    groups = math.gcd(n, groups)  # as the rewrite does when weight_groups does not divide N
    gk = spec.k_group_size or k
    kg = -(-k // gk)
    wf = w_nk.float()
    # [G, N/G, kg, gk]: one scale per (row group, K group); a short last K group is zero-padded,
    # which changes no absmax and no min/max once clamped through 0.
    padded = F.pad(wf, (0, kg * gk - k)) if kg * gk != k else wf
    tiles = padded.detach().reshape(groups, n // groups, kg, gk)
    if spec.symmetric:
        qmax = spec.weight_qmax or qmax_for(spec.weight_bits)
        scale = tiles.abs().amax(dim=(1, 3), keepdim=True) / qmax
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        rows = _expand(scale, n, k, groups, kg, gk)
        wq = round_ste(wf / rows).clamp(-qmax, qmax) * rows
    else:
        q = spec.weight_qmax
        qmin, qmax = (-q, q) if q else (-(2 ** (spec.weight_bits - 1)), 2 ** (spec.weight_bits - 1) - 1)
        lo = tiles.amin(dim=(1, 3), keepdim=True).clamp(max=0)
        hi = tiles.amax(dim=(1, 3), keepdim=True).clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        zp = torch.round(qmin - lo / scale).clamp(qmin, qmax)
        rows, zrows = _expand(scale, n, k, groups, kg, gk), _expand(zp, n, k, groups, kg, gk)
        wq = ((round_ste(wf / rows) + zrows).clamp(qmin, qmax) - zrows) * rows
    return wq.to(w_nk.dtype)


def _expand(t: torch.Tensor, n: int, k: int, groups: int, kg: int, gk: int) -> torch.Tensor:
    """[G, 1, kg, 1] per-tile values -> [N, K] per-element values."""
    return t.expand(groups, n // groups, kg, gk).reshape(n, kg * gk)[:, :k]


def fake_quant_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token dynamic quantize-dequantize as ``quantize_per_token_ref`` then
    ``dequantize_per_token_ref``; gradient straight through."""
    xf = x.float()
    qmax = qmax_for(bits)
    amax = xf.detach().abs().amax(dim=-1, keepdim=True)
    scale = amax / qmax
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = round_ste(xf * (1.0 / scale))
    q = torch.where(q == q, q, torch.zeros_like(q)).clamp(-qmax, qmax)
    return (q * scale).to(x.dtype)


class FakeQuantLinear(torch.nn.Module):
    """Wraps an nn.Linear or a transformers Conv1D (weight [K, N]) of a block being trained; the
    wrapped module keeps its parameters, so they are the ones that train."""

    def __init__(self, inner: torch.nn.Module, spec: FakeQuantSpec):
        super().__init__()
        self.inner = inner
        self.spec = spec
        self.weight_is_kn = not isinstance(inner, torch.nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.inner.weight
        w_nk = w.t() if self.weight_is_kn else w
        if self.spec.act_bits:
            x = fake_quant_activation(x, self.spec.act_bits)
        return F.linear(x, fake_quant_weight(w_nk, self.spec), self.inner.bias)


def is_linear(module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return True
    # transformers' Conv1D (GPT-2): a linear with its weight stored [K, N]
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None and module.weight.dim() == 2


def attach_fake_quant(block: torch.nn.Module, prefix: str, spec_for: Callable[[str], FakeQuantSpec | None]) -> int:
    """Swap every linear of ``block`` (module path ``prefix``.name) for a FakeQuantLinear with
    the spec ``spec_for`` gives it (None: stays float). Returns the number swapped."""
    swapped = 0
    for name, module in list(block.named_modules()):
        if not is_linear(module) or name == "":
            continue
        spec = spec_for(f"{prefix}.{name}" if prefix else name)
        if spec is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = block.get_submodule(parent_name) if parent_name else block
        setattr(parent, child, FakeQuantLinear(module, spec))
        swapped += 1
    return swapped


def is_attention(path: str) -> bool:
    """Local rule for w4/8a8 (see the module docstring): attention linears keep INT8."""
    lowered = path.lower()
    return "attn" in lowered or "attention" in lowered


def preset_rule(preset: str, *, row_groups: int | None = None, k_group_size: int | None = None,
                symmetric: bool = True, skip: tuple[str, ...] = ()) -> Callable[[str], FakeQuantSpec | None]:
    """``spec_for`` of a preset by name: w8a8, w4a8, w8a16, w4a16 or w4/8a8 (FFN INT4, attention
    INT8, activations INT8). ``k_group_size`` is given to the INT4 weights only."""
    known = ("w8a8", "w4a8", "w8a16", "w4a16", "w4/8a8")
    if preset not in known:
        raise ValueError(f"preset={preset!r} is not valid; allowed: {', '.join(known)}")

    def spec_for(path: str) -> FakeQuantSpec | None:
        if any(fnmatch.fnmatchcase(path, g) for g in skip):
            return None
        if preset == "w4/8a8":
            bits, act = (8 if is_attention(path) else 4), 8
        else:
            bits, act = int(preset[1]), (8 if preset.endswith("a8") else None)
        return FakeQuantSpec(bits, act, row_groups, k_group_size if bits == 4 else None, symmetric)

    return spec_for


def _types_around(modules: dict[str, torch.nn.Module], path: str) -> list[tuple[str, str]]:
    """Class names of the module at ``path`` and of its parents, innermost first, as the
    backend reads them from a graph node's module stack."""
    from zq_compile.schemes.policy import type_names

    parts = path.split(".")
    around = (modules.get(".".join(parts[:i])) for i in range(len(parts), -1, -1))
    return [type_names(type(m)) for m in around if m is not None]


def deployed_qmax_for(config, model) -> int | None:
    """The narrower grid the CPU target gives int8-GEMM weights here (``passes/rewrite_linear.
    gemm_qmax``), or None: LKD must train against the weights that will be deployed."""
    from zq_compile.codegen.cpu.select import deployed_weight_qmax

    on_gpu = model is not None and any(p.device.type != "cpu" for p in model.parameters())
    target = "triton" if config.target == "auto" and on_gpu else config.target
    return deployed_weight_qmax("cpu" if target == "auto" else target)


def spec_for_config(config, model: torch.nn.Module | None = None) -> Callable[[str], FakeQuantSpec | None]:
    """The fake quantization matching what the backend will deploy for ``config`` on ``model``
    (see the module docstring); without ``model``, module types cannot be matched."""
    from zq_compile.schemes.policy import scheme_for

    modules = dict(model.named_modules()) if model is not None else {}
    narrow = deployed_qmax_for(config, model)

    def spec_for(path: str) -> FakeQuantSpec | None:
        if any(fnmatch.fnmatchcase(path, g) for g in config.skip):
            return None
        module = modules.get(path)
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2:
            n = k = 0  # unknown shape: no K-divisibility fallback
        else:
            n, k = weight.shape if isinstance(module, torch.nn.Linear) else weight.shape[::-1]
        role = "attention" if is_attention(path) else "ffn"
        scheme, _ = scheme_for(config, None, path, role, n, k, types=_types_around(modules, path))
        return FakeQuantSpec(scheme.weight_bits, scheme.act_bits, scheme.weight_groups,
                             scheme.group_size if scheme.weight_bits == 4 else None, scheme.symmetric,
                             narrow if scheme.weight_bits == 8 and scheme.act_bits else None)

    return spec_for
