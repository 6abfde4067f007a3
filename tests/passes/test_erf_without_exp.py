"""erf_without_exp: erf (exact GeLU's) computed without exp, within 2e-6 of erf in fp32, with
NaN/Inf kept, and the generated code no longer calling ATen's vectorized erf; run only where
Inductor's vectors are at most 256 bits wide (the tests force that width, so they check the same
thing on every CPU)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code

import zq_compile
from tests.modules import Block
from zq_compile.passes import erf_without_exp

#: Inductor's code at 256-bit vectors, where the pass runs, whatever this CPU's width
AVX2_WIDTH = {"cpp.simdlen": 256}

SPECIALS = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40, 3.99, 4.0, 4.01, 9.5, -9.5, 1e30]


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4000, generator=g) * s for s in (0.01, 0.3, 1, 3, 10, 100)] + [torch.tensor(SPECIALS)])
    if dtype == torch.float16:  # finite values inside fp16's range, inf and NaN kept
        x = torch.where(x.isfinite(), x.clamp(-6e4, 6e4), x)
    return x.to(dtype)


def _compile_with_pass(fn, x, enabled=True):
    counts = {}

    def post_grad(graph):
        counts["rewritten"] = erf_without_exp.run(graph) if enabled else 0

    torch._dynamo.reset()
    with torch._inductor.config.patch(post_grad_custom_pre_pass=post_grad, fx_graph_cache=False, **AVX2_WIDTH):
        out, (code,) = run_and_get_code(torch.compile(fn), x)
    return out, code, counts["rewritten"]


def test_the_reference_is_within_its_bound_of_erf():
    z = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    err = (erf_without_exp.erf_reference(z.float()).double() - torch.erf(z)).abs().max().item()
    assert err < 2e-6, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op", ["erf", "gelu"])
def test_compiled_matches_float64_and_keeps_nan_and_inf(dtype, op):
    fn = torch.erf if op == "erf" else F.gelu
    x = _inputs(dtype)
    out, code, rewritten = _compile_with_pass(fn, x)
    assert rewritten == 1
    ref = fn(x.double())
    assert torch.equal(out.isnan(), ref.isnan())
    inf = ref.isinf()
    assert torch.equal(out[inf], ref[inf].to(dtype))
    finite = ref.isfinite()
    # fp32: the rational form's own error (GeLU scales it by |x| / 2); 16-bit: one rounding of the result
    if dtype == torch.float32:
        tol = 2e-6 * (x.double().abs() / 2).clamp_min(1) if op == "gelu" else torch.full_like(ref, 2e-6)
    else:
        tol = ref.abs() * 2.0 ** -(8 if dtype == torch.bfloat16 else 11) + 2e-6
    assert ((out.double() - ref).abs() <= tol)[finite].all()
    assert ".erf()" not in code


def test_the_default_inductor_code_calls_erf_and_the_rewritten_one_equals_the_reference():
    x = _inputs(torch.float32)
    plain, plain_code, _ = _compile_with_pass(torch.erf, x, enabled=False)
    out, code, _ = _compile_with_pass(torch.erf, x)
    assert ".erf()" in plain_code and ".erf()" not in code  # the check above could not pass vacuously
    # Inductor may contract a multiply and an add into an FMA: equal up to a few fp32 ulps of 1
    assert (out - erf_without_exp.erf_reference(x)).abs().nan_to_num().max() <= 4 * 2.0 ** -23
    assert not torch.equal(plain, out)  # it did change the arithmetic


def test_wider_vectors_keep_atens_erf(monkeypatch):
    """512-bit code keeps ATen's erf (measured faster there in the FFN1 epilogue)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(torch.erf, tracing_mode="fake")(torch.randn(4))
    monkeypatch.setattr(erf_without_exp, "vector_bits", lambda: 512)
    assert erf_without_exp.run(gm.graph) == 0
    monkeypatch.setattr(erf_without_exp, "vector_bits", lambda: 256)
    assert erf_without_exp.run(gm.graph) == 1
    with torch._inductor.config.patch(AVX2_WIDTH):
        assert erf_without_exp.vector_bits() <= 256


def test_float64_erf_is_left_to_inductor(monkeypatch):
    from torch.fx.experimental.proxy_tensor import make_fx

    monkeypatch.setattr(erf_without_exp, "vector_bits", lambda: 256)
    gm = make_fx(lambda x: torch.erf(x.to(torch.float64)), tracing_mode="fake")(torch.randn(4))
    assert erf_without_exp.run(gm.graph) == 0  # float64 keeps ATen's erf


def test_the_backend_rewrites_the_gelu_of_a_block_and_can_be_switched_off():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(2, 13, 64)
    with torch.inference_mode():
        ref = model(x)
        outs = {}
        for name, options in (("on", {}), ("off", {"disable_passes": ("erf_without_exp",)})):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend="zeroquant", options={"pipeline_race": "off", **options})
            with torch._inductor.config.patch(fx_graph_cache=False, **AVX2_WIDTH):
                outs[name], (code,) = run_and_get_code(compiled, x)
            report = zq_compile.recent_reports()[-1]
            assert (".erf()" in code) == (name == "off")
            assert report.pass_counts.get("erf_without_exp") == (1 if name == "on" else None)
    sqnr = {n: 10 * math.log10(ref.pow(2).sum() / (o - ref).pow(2).sum()) for n, o in outs.items()}
    assert abs(sqnr["on"] - sqnr["off"]) < 0.5, sqnr
