"""Fake quantization computes exactly the deployed numerics, with a straight-through gradient."""

import pytest
import torch

from zq_compile.calibrate.fake_quant import (
    FakeQuantSpec,
    attach_fake_quant,
    fake_quant_activation,
    fake_quant_weight,
    is_attention,
    preset_rule,
)
from zq_compile.quant.activation import dequantize_per_token_ref, quantize_per_token_ref
from zq_compile.quant.weight import quantize_weight


def _weight(n, k, seed=0):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    w[min(1, n - 1)] = 0  # an all-zero row: scale 1, not a division by zero
    return w


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("n, k, groups", [(13, 67, None), (12, 64, 3), (1, 5, None), (67, 13, 67)])
def test_weight_equals_reference_quantize_dequantize(bits, symmetric, n, k, groups):
    w = _weight(n, k)
    ref = quantize_weight(w, bits=bits, groups=groups, symmetric=symmetric).dequantize()
    got = fake_quant_weight(w, FakeQuantSpec(bits, 8, groups, None, symmetric))
    assert torch.equal(got, ref)


@pytest.mark.parametrize("symmetric", [True, False])
def test_narrow_grid_equals_the_reference(symmetric):
    """The +-64 grid of int8-GEMM weights on CPUs without VNNI (codegen/cpu/select.py)."""
    w = _weight(13, 67)
    ref = quantize_weight(w, bits=8, symmetric=symmetric, qmax=64).dequantize()
    got = fake_quant_weight(w, FakeQuantSpec(8, 8, None, None, symmetric, weight_qmax=64))
    assert torch.equal(got, ref)
    with pytest.raises(ValueError, match="weight_qmax=5 is not valid"):
        FakeQuantSpec(4, 8, None, 32, True, weight_qmax=5)


@pytest.mark.parametrize("vnni", [True, False])
def test_lkd_trains_against_the_grid_the_cpu_target_deploys(vnni, monkeypatch):
    import zq_compile
    from zq_compile.calibrate.fake_quant import spec_for_config
    from zq_compile.codegen.cpu import select

    monkeypatch.setattr(select, "has_vnni", lambda: vnni)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))
    narrow = None if vnni else 64
    assert spec_for_config(zq_compile.ZeroQuantConfig(), model)("0").weight_qmax == narrow
    assert spec_for_config(zq_compile.ZeroQuantConfig(target="cpu"), model)("0").weight_qmax == narrow
    assert spec_for_config(zq_compile.ZeroQuantConfig(target="triton"), model)("0").weight_qmax is None
    assert spec_for_config(zq_compile.ZeroQuantConfig(preset="w8a16"), model)("0").weight_qmax is None


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("k, gk", [(67, 32), (64, 64), (128, 16)])
def test_groups_along_k_equal_the_reference_per_column_chunk(bits, k, gk):
    w = _weight(13, k, seed=1)
    got = fake_quant_weight(w, FakeQuantSpec(bits, 8, None, gk))
    for start in range(0, k, gk):
        chunk = w[:, start:start + gk]
        assert torch.equal(got[:, start:start + gk], quantize_weight(chunk, bits=bits).dequantize())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_activation_equals_reference_per_token(dtype):
    x = torch.randn(3, 13, 67, generator=torch.Generator().manual_seed(2)).to(dtype)
    x[0, 1] = 0
    x[1, 2, 5] = float("nan")
    x[2, 3, 7] = float("inf")
    q, s = quantize_per_token_ref(x)
    ref = dequantize_per_token_ref(q, s, dtype)
    torch.testing.assert_close(fake_quant_activation(x), ref, rtol=0, atol=0, equal_nan=True)


def test_gradient_is_straight_through():
    w = _weight(8, 16).requires_grad_()
    x = torch.randn(4, 16, requires_grad=True)
    g = torch.randn(8, 16)
    fake_quant_weight(w, FakeQuantSpec(4, 8)).backward(g)
    torch.testing.assert_close(w.grad, g)  # symmetric absmax clips no weight; (g / s) * s is g to an ulp
    gx = torch.randn(4, 16)
    fake_quant_activation(x).backward(gx)
    torch.testing.assert_close(x.grad, gx)


def test_attach_wraps_linears_per_rule_and_keeps_the_parameters():
    from tests.models.tiny import tiny_model

    block = tiny_model("llama").model.layers[0]
    params = dict(block.named_parameters())
    n = attach_fake_quant(block, "model.layers.0", preset_rule("w4/8a8", k_group_size=32))
    assert n == 7
    assert block.self_attn.q_proj.spec == FakeQuantSpec(8, 8, None, None)
    assert block.mlp.up_proj.spec == FakeQuantSpec(4, 8, None, 32)
    assert block.mlp.up_proj.inner.weight is params["mlp.up_proj.weight"]
    x = torch.randn(2, 5, 64)
    assert block.mlp(x).shape == (2, 5, 64)


def test_gpt2_conv1d_is_fake_quantized_on_its_transpose():
    from tests.models.tiny import tiny_model

    block = tiny_model("gpt2").transformer.h[0]
    conv = block.mlp.c_fc  # weight [K, N]
    x = torch.randn(2, 5, 64)
    ref = torch.nn.functional.linear(
        dequantize_per_token_ref(*quantize_per_token_ref(x)),
        quantize_weight(conv.weight.detach().t().contiguous(), bits=4).dequantize(), conv.bias)
    attach_fake_quant(block, "transformer.h.0", preset_rule("w4a8"))
    torch.testing.assert_close(block.mlp.c_fc(x), ref)


def test_attention_rule_and_presets():
    assert is_attention("encoder.layer.0.attention.self.query")
    assert is_attention("transformer.h.0.attn.c_proj") and not is_attention("transformer.h.0.mlp.c_proj")
    assert not is_attention("encoder.layer.0.output.dense")
    assert preset_rule("w8a16")("x.fc") == FakeQuantSpec(8, None)
    assert preset_rule("w4a8", skip=("*.fc",))("x.fc") is None
    with pytest.raises(ValueError, match="preset"):
        preset_rule("w2a2")


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_lkd_specs_match_what_the_backend_deploys(kind):
    """spec_for_config against the compiled graph's own decisions, linear by linear: scheme
    (role from the graph, override glob), activations, and the INT4 group size with its
    fallback (group_size 64 does not divide Llama's K=160: both must take 32)."""
    import re

    import zq_compile
    from tests.models.tiny import tiny_model
    from zq_compile.calibrate.fake_quant import spec_for_config

    model = tiny_model(kind)
    config = zq_compile.ZeroQuantConfig(preset="w4/8a8", group_size=64, smooth=False, keep_float=0,
                                        overrides={"*.0.*": "w8a16"})
    torch._dynamo.reset()
    before = len(zq_compile.recent_reports())
    with torch.inference_mode():
        zq_compile.compile(model, config)(torch.randint(0, 1000, (2, 7)))
    decisions = [d for r in zq_compile.recent_reports()[before:] for d in r.decisions
                 if re.search(r"\.(layer|h|layers)\.\d+\.", d.module)]
    assert len(decisions) >= 8 and any(d.scheme == "w4a8" for d in decisions)
    spec_for = spec_for_config(config, model)
    for d in decisions:
        spec = spec_for(d.module)
        assert spec.name == d.scheme, (d.module, spec, d.reason)
        group = re.search(r"group_size (\d+)", d.reason)
        assert spec.k_group_size == (int(group.group(1)) if group else None), (d.module, spec, d.reason)
