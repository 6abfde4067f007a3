"""Every config or input error names the field or argument and the allowed values; a failure in
the middle of compiling leaves the user's module exactly as it was."""

from __future__ import annotations

import pytest
import torch

import zq_compile
from zq_compile import ZeroQuantConfig
from zq_compile.metrics import sqnr_db

BAD_VALUES = [
    ("preset", "w9a9", "w8a8"),
    ("preset", None, "w8a8"),
    ("preset", ["w8a8"], "w8a8"),  # was TypeError: unhashable type
    ("weight_groups", 0, "positive int"),
    ("weight_groups", "4", "positive int"),
    ("weight_groups", 2.5, "positive int"),
    ("symmetric", 1, "True, False"),
    ("skip", "pooler.*", "list of strings"),
    ("skip", None, "list of strings"),  # was TypeError: 'NoneType' object is not iterable
    ("skip", 5, "list of strings"),
    ("skip", [1], "list of strings"),
    ("target", "cuda", "auto, cpu, triton, reference"),
    ("target", None, "auto, cpu, triton, reference"),
    ("cpu_kernel", "mkl", "auto, onednn, int_mm"),
    ("attention", True, "auto, bf16, bf16_matmul, fp32"),
    ("disable_passes", "rewrite_linear", "list of strings"),
    ("disable_passes", None, "list of strings"),
    ("disable_passes", ["nope"], "rewrite_linear"),
    ("dump_graphs", 3, "directory"),
    ("version", "1", "1"),
]


@pytest.mark.parametrize("field, value, allowed", BAD_VALUES)
def test_config_errors_name_the_field_and_the_allowed_values(field, value, allowed):
    for make in (lambda: ZeroQuantConfig(**{field: value}), lambda: ZeroQuantConfig.from_dict({field: value}),
                 lambda: zq_compile.compile(torch.nn.Linear(2, 2), {field: value})):
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value).startswith(f"{field}=") and "allowed" in str(e.value) and allowed in str(e.value)


@pytest.mark.parametrize("config", [42, "w8a8", ["w8a8"]])
def test_config_argument_of_the_wrong_type(config):
    with pytest.raises(ValueError, match="options/config=.*allowed: a ZeroQuantConfig, a dict"):
        zq_compile.compile(torch.nn.Linear(2, 2), config)


def test_unknown_option_through_torch_compile_names_the_key_and_the_fields():
    m = torch.nn.Linear(4, 4)
    with pytest.raises(Exception, match=r"unknown config field\(s\) \['presets'\]; allowed: .*preset"):
        torch.compile(m, backend="zeroquant", options={"presets": "w8a8"})(torch.randn(2, 4))


def test_quantize_op_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="bits=4 is not valid; allowed: 8"):
        torch.ops.zq.quantize_per_token(torch.randn(2, 4), 4)
    with pytest.raises(TypeError, match="floating tensor, got torch.int64"):
        torch.ops.zq.quantize_per_token(torch.ones(2, 4, dtype=torch.long))


class _Injected(RuntimeError):
    pass


def _snapshot(m):
    return {
        "state": {k: (v.clone(), v.data_ptr(), v.dtype, v.requires_grad, type(v)) for k, v in m.state_dict(keep_vars=True).items()},
        "params": [id(p) for p in m.parameters()],
        # torch.compile itself marks the module (_is_torch_compile), whatever the backend
        "attrs": {name: sorted(set(vars(mod)) - {"_is_torch_compile"}) for name, mod in m.named_modules()},
        "hooks": [(len(mod._forward_hooks), len(mod._forward_pre_hooks)) for mod in m.modules()],
        "training": [mod.training for mod in m.modules()],
    }


def _assert_same(before, after):
    assert before["params"] == after["params"] and before["attrs"] == after["attrs"]
    assert before["hooks"] == after["hooks"] and before["training"] == after["training"]
    assert before["state"].keys() == after["state"].keys()
    for k, (v, ptr, dtype, rg, kind) in before["state"].items():
        v2, ptr2, dtype2, rg2, kind2 = after["state"][k]
        assert torch.equal(v, v2) and (ptr, dtype, rg, kind) == (ptr2, dtype2, rg2, kind2), k


def _fail_in_rewrite(monkeypatch):
    """The second linear's rewrite fails: the first one is already rewritten and quantized."""
    from zq_compile.schemes import w8a8

    calls = []
    real = w8a8.W8A8.emit

    def emit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise _Injected("injected failure in the middle of rewrite_linear")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(w8a8.W8A8, "emit", emit)


def _fail_in_inductor(monkeypatch):
    """Every pass ran and the weights are quantized; Inductor's lowering then fails."""
    from zq_compile import backend

    def boom(kernel):
        raise _Injected("injected failure in the lowering")

    monkeypatch.setattr(backend, "decompositions_for", boom)


@pytest.mark.parametrize("inject", [_fail_in_rewrite, _fail_in_inductor])
def test_failure_mid_compile_leaves_the_module_unchanged(monkeypatch, inject):
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.LayerNorm(24), torch.nn.Linear(24, 40), torch.nn.GELU(),
                            torch.nn.Linear(40, 24)).eval()
    x = torch.randn(3, 24)
    with torch.inference_mode():
        ref = m(x)
    before = _snapshot(m)
    inject(monkeypatch)
    with pytest.raises(Exception, match="injected failure"):
        with torch.inference_mode():
            zq_compile.compile(m)(x)
    _assert_same(before, _snapshot(m))
    monkeypatch.undo()
    torch._dynamo.reset()
    with torch.inference_mode():
        assert torch.equal(m(x), ref)
        assert sqnr_db(ref, zq_compile.compile(m)(x)) > 25  # and it compiles once the fault is gone
