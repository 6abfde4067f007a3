"""The Triton fusion passes (fuse_gemm_epilogue, fuse_norm_quantize, fuse_quantize_prologue, fuse_swiglu,
fuse_gate_up) end to end through Inductor
under the interpreter: what the generated code calls, what the report says, and that the fused
graph computes what the unfused one does."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck

from zq_compile import recent_reports
from zq_compile.metrics import sqnr_db

FUSION_PASSES = ("fuse_swiglu", "fuse_gate_up", "fuse_gemm_epilogue", "fuse_norm_quantize", "fuse_quantize_prologue")


class WrittenOutRMSNorm(torch.nn.Module):
    """Hugging Face's LlamaRMSNorm, as written there (casts included)."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(1 + 0.1 * torch.randn(d))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def written_out_gelu_tanh(x):
    """GPT-2's "gelu_new" (Hugging Face NewGELUActivation), as written there."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


NORMS = {
    "layer": lambda d: torch.nn.LayerNorm(d),
    "layer_no_affine": lambda d: torch.nn.LayerNorm(d, elementwise_affine=False),
    "rms": lambda d: torch.nn.RMSNorm(d, eps=1e-6),
    "rms_written_out": WrittenOutRMSNorm,
}
ACTIVATIONS = {
    "gelu_erf": (F.gelu, "gelu_erf"),
    "gelu_tanh": (lambda x: F.gelu(x, approximate="tanh"), "gelu_tanh"),
    "gelu_new_written_out": (written_out_gelu_tanh, "gelu_tanh"),
    "silu": (F.silu, "silu"),
    "tanh": (torch.tanh, "tanh"),
    # no epilogue form: must run unfused, with the reason
    "relu": (F.relu, None),
    "mish": (F.mish, None),
}


class Mlp(torch.nn.Module):
    """Pre-norm MLP block: x + down(act(up(norm(x)))), up's input also read by a side branch when
    ``side`` (so the norm must also write its float output)."""

    def __init__(self, norm="layer", act="gelu_erf", d=64, hidden=96, side=False):
        super().__init__()
        self.norm = NORMS[norm](d)
        self.act = ACTIVATIONS[act][0]
        self.up = torch.nn.Linear(d, hidden)
        self.down = torch.nn.Linear(hidden, d)
        self.side = side

    def forward(self, x):
        h = self.norm(x)
        y = x + self.down(self.act(self.up(h)))
        return y + h if self.side else y


def _compile(m, x, **options):
    before = len(recent_reports())
    with torch.inference_mode():
        out, code = run_and_get_code(
            torch.compile(m, backend="zeroquant", options={"target": "triton", "smooth": False, **options}), x)
    (report,) = recent_reports()[before:]
    torch._dynamo.reset()
    return out, "\n".join(code), report


def _block(norm="layer", act="gelu_erf", dtype=torch.float32, side=False):
    torch.manual_seed(0)
    m = Mlp(norm, act, side=side).to(dtype).eval()
    x = torch.randn(2, 13, 64, dtype=dtype)
    return m, x


@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("act", ["gelu_erf", "gelu_tanh", "gelu_new_written_out", "silu", "tanh"])
def test_block_runs_three_fused_kernels_and_matches_the_unfused_graph(norm, act):
    m, x = _block(norm, act)
    out, code, report = _compile(m, x)
    unfused, plain_code, plain = _compile(m, x, disable_passes=FUSION_PASSES)
    with torch.inference_mode():
        ref = m(x)
    # norm + quantize, GEMM + activation + requantize, GEMM + residual: nothing else runs
    FileCheck().check("zq.triton_norm_quantize").check("zq.triton_linear_a8_requant") \
        .check(f"'{ACTIVATIONS[act][1]}'").check("zq.triton_linear_a8.default").run(code)
    assert "triton_quantize_per_token" not in code and "cpp_fused" not in code
    # the unfused emission of the same graph: standalone quantize kernels and Inductor glue
    assert plain_code.count("zq.triton_quantize_per_token.default(") == 2 and "cpp_fused" in plain_code
    kind = "rms" if norm.startswith("rms") else "layer"
    assert report.fusions == {f"gemm+{ACTIVATIONS[act][1]}": 1, "gemm+requant": 1, "gemm+residual": 1,
                              f"{kind}_norm_quantize": 1}
    assert report.pass_counts["fuse_gemm_epilogue"] == 2 and report.pass_counts["fuse_norm_quantize"] == 1
    assert all(d.fused for d in report.quantized) and not report.fusion_fallbacks
    assert not plain.fusions and set(plain.disabled_passes) == set(FUSION_PASSES)
    # fp32 end to end: the kernels round where the unfused graph does; only summation order differs
    assert not torch.isnan(out).any()
    assert sqnr_db(unfused, out) > 60
    assert sqnr_db(ref, out) > 25


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_block_fuses_and_matches_the_unfused_graph(dtype):
    m, x = _block("layer", "gelu_erf", dtype)
    out, code, report = _compile(m, x)
    unfused, _, _ = _compile(m, x, disable_passes=FUSION_PASSES)
    assert "triton_quantize_per_token" not in code and len(report.fusions) == 4
    assert out.dtype == dtype
    # the unfused graph keeps Inductor's fused glue in fp32 where the kernels round to dtype
    assert sqnr_db(unfused.float(), out.float()) > 30


def test_norm_read_elsewhere_also_writes_its_float_output():
    m, x = _block(side=True)
    out, code, report = _compile(m, x)
    unfused, _, _ = _compile(m, x, disable_passes=FUSION_PASSES)
    FileCheck().check("zq.triton_norm_quantize.default(").check_same("False, True, quant_scale=None)").run(code)
    assert report.fusions["layer_norm_quantize+float"] == 1
    assert sqnr_db(unfused, out) > 60


@pytest.mark.parametrize("disabled", ["fuse_gemm_epilogue", "fuse_norm_quantize"])  # fuse_swiglu, fuse_gate_up: below
def test_each_fusion_pass_switches_off_by_name(disabled):
    m, x = _block()
    # without fuse_norm_quantize the norm's quantize would go into the GEMM's prologue instead
    out, code, report = _compile(m, x, disable_passes=(disabled, "fuse_quantize_prologue"))
    assert report.disabled_passes == [disabled, "fuse_quantize_prologue"] and disabled not in report.pass_counts
    if disabled == "fuse_norm_quantize":
        assert "triton_norm_quantize" not in code and "zq.triton_quantize_per_token" in code
        assert "zq.triton_linear_a8_requant" in code
    else:
        assert "triton_linear_a8_requant" not in code and "zq.triton_norm_quantize" in code
        assert not any(k.startswith("gemm+") for k in report.fusions)
    with torch.inference_mode():
        assert sqnr_db(m(x), out) > 25


@pytest.mark.parametrize("act", ["relu", "mish"])
def test_activation_without_epilogue_form_runs_unfused_with_the_reason(act):
    m, x = _block(act=act)
    out, code, report = _compile(m, x)
    assert any(f"activation {act!r} has no epilogue form" in f for f in report.fusion_fallbacks)
    assert "gemm+requant" not in report.fusions  # the activation reads the float output
    assert report.fusions["gemm+residual"] == 1 and report.fusions["layer_norm_quantize"] == 1
    with torch.inference_mode():
        assert sqnr_db(m(x), out) > 25


class NormOverTwoDims(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm((13, 64))
        self.up = torch.nn.Linear(64, 96)

    def forward(self, x):
        return self.up(self.norm(x))


class BroadcastAdd(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.up = torch.nn.Linear(64, 96)
        self.shift = torch.nn.Parameter(torch.randn(1, 1, 96))

    def forward(self, x):
        return self.up(x) + self.shift


@pytest.mark.parametrize("module, reason", [
    (NormOverTwoDims, "spans more than the last dimension"),
    (BroadcastAdd, "broadcasts against the output"),
], ids=["norm_over_two_dims", "broadcast_add"])
def test_shapes_the_kernels_do_not_take_run_unfused_with_the_reason(module, reason):
    torch.manual_seed(0)
    m = module().eval()
    x = torch.randn(2, 13, 64)
    out, code, report = _compile(m, x)
    assert any(reason in f for f in report.fusion_fallbacks), report.fusion_fallbacks
    # the quantize the norm / epilogue could not take goes into the GEMM's prologue
    assert report.fusions == {"quantize+gemm": 1} and "zq.triton_quantize_per_token" not in code
    assert "zq.triton_quantize_linear_a8.default(" in code
    with torch.inference_mode():
        assert sqnr_db(m(x), out) > 25


class Projection(torch.nn.Module):
    """An attention-output-like input (no norm makes it) read by one linear plus a residual,
    and, with ``siblings``, by a second linear too."""

    def __init__(self, siblings=False):
        super().__init__()
        self.proj = torch.nn.Linear(64, 64)
        self.other = torch.nn.Linear(64, 32) if siblings else None

    def forward(self, x):
        h = torch.tanh(x) * 2
        y = self.proj(h) + x
        return y if self.other is None else (y, self.other(h))


def test_quantize_of_a_gemm_input_goes_into_the_gemm_prologue():
    torch.manual_seed(0)
    m, x = Projection().eval(), torch.randn(2, 13, 64)
    out, code, report = _compile(m, x)
    unfused, plain_code, plain = _compile(m, x, disable_passes=("fuse_quantize_prologue",))
    assert report.fusions == {"gemm+residual": 1, "quantize+gemm": 1} and report.pass_counts["fuse_quantize_prologue"] == 1
    FileCheck().check("zq.triton_quantize_linear_a8.default(").run(code)
    assert "triton_quantize_per_token" not in code and "zq.triton_linear_a8.default" not in code
    assert plain_code.count("zq.triton_quantize_per_token.default(") == 1 and "quantize+gemm" not in plain.fusions
    assert plain.disabled_passes == ["fuse_quantize_prologue"]
    assert all("quantize+gemm" in d.fused for d in report.quantized)
    assert torch.equal(out, unfused)  # the prologue quantizes as the quantize kernel does, bit for bit


def test_quantize_read_by_two_gemms_stays_a_kernel_with_the_reason():
    torch.manual_seed(0)
    m, x = Projection(siblings=True).eval(), torch.randn(2, 13, 64)
    out, code, report = _compile(m, x)
    assert any("fuse_quantize_prologue" in f and "2 readers" in f for f in report.fusion_fallbacks), \
        report.fusion_fallbacks
    assert "quantize+gemm" not in report.fusions and "zq.triton_quantize_per_token.default(" in code
    with torch.inference_mode():
        ref = m(x)
    assert sqnr_db(ref[0], out[0]) > 25 and sqnr_db(ref[1], out[1]) > 25


def test_cpu_target_is_not_touched_by_the_fusion_passes():
    m, x = _block()
    before = len(recent_reports())
    with torch.inference_mode():
        torch.compile(m, backend="zeroquant", options={"target": "cpu", "smooth": False})(x)
    (report,) = recent_reports()[before:]
    torch._dynamo.reset()
    assert report.pass_counts["fuse_gemm_epilogue"] == 0 and report.pass_counts["fuse_norm_quantize"] == 0
    assert not report.fusions and not report.fusion_fallbacks


def test_smoothing_scales_go_into_the_norm_kernel_and_the_requantizing_epilogue():
    """With the norm's output also read elsewhere, smooth_outliers cannot fold 1/s into the
    norm's weight: it multiplies before the quantize, and the kernel takes that as quant_scale;
    the down projection's 1/s multiplies the GeLU output, and the up GEMM's epilogue takes it."""
    m, x = _block(side=True)
    smooth = {"smooth": {"alpha": 0.5}}
    out, code, report = _compile(m, x, **smooth)
    unfused, _, plain = _compile(m, x, disable_passes=FUSION_PASSES, **smooth)
    assert plain.pass_counts["smooth_outliers"] > 0
    assert report.fusions["layer_norm_quantize+float+smoothed"] == 1
    assert report.fusions["gemm+requant_smoothed"] == 1 and not report.fusion_fallbacks
    FileCheck().check("zq.triton_norm_quantize.default(").check_same("True, arg") \
        .check("zq.triton_linear_a8_requant.default(").check_same("'gelu_erf', arg").run(code)
    assert "triton_quantize_per_token" not in code  # (the side branch's add is Inductor's)
    assert sqnr_db(unfused, out) > 60


class SwiGLU(torch.nn.Module):
    """A Llama MLP block: x + down(SiLU(gate(rms(x))) * up(rms(x)))."""

    def __init__(self, d=64, hidden=96):
        super().__init__()
        self.norm = WrittenOutRMSNorm(d)
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


@pytest.mark.parametrize("smooth", [False, {"alpha": 0.5}], ids=["plain", "smoothed"])
def test_swiglu_runs_gate_and_up_in_one_requantizing_kernel(smooth):
    torch.manual_seed(0)
    m = SwiGLU().eval()
    x = torch.randn(2, 13, 64)
    out, code, report = _compile(m, x, smooth=smooth)
    two, two_code, two_report = _compile(m, x, smooth=smooth, disable_passes=("fuse_gate_up",))
    unfused, _, _ = _compile(m, x, smooth=smooth, disable_passes=FUSION_PASSES)
    # norm + quantize, one kernel for gate, up, SiLU, product and requantize, then down + residual
    FileCheck().check("zq.triton_norm_quantize").check("zq.triton_linear_a8_requant.default(") \
        .check_same("'none'").check("zq.triton_linear_a8.default(").run(code)
    requant = [line for line in code.splitlines() if "zq.triton_linear_a8_requant.default(" in line]
    assert len(requant) == 1 and "gate_w_zero=None" in requant[0] and "'silu'" not in code
    assert code.count("zq.triton_linear_a8.default(") == 1  # down only
    assert "triton_quantize_per_token" not in code and "cpp_fused" not in code
    assert report.fusions["swiglu"] == 1 and report.fusions["gate+up"] == 1
    assert report.pass_counts["fuse_swiglu"] == 1 and report.pass_counts["fuse_gate_up"] == 1
    assert all(d.fused for d in report.quantized) and not report.fusion_fallbacks
    assert sum("gate+up" in d.fused for d in report.quantized) == 2  # gate and up
    # with fuse_gate_up off: the two-launch fold (gate GEMM with SiLU, up reading it)
    FileCheck().check("zq.triton_linear_a8.default(").check_same("'silu'") \
        .check("zq.triton_linear_a8_requant.default(").check_same("gate_w_q=None").run(two_code)
    assert "gate+up" not in two_report.fusions and two_report.disabled_passes == ["fuse_gate_up"]
    assert torch.equal(out, two)  # SiLU(gate) rounded as the gate GEMM stores it: bit for bit
    # the report's GEMM bytes: x read once less, SiLU(gate) (26 x 96 fp32) neither written nor read
    assert two_report.gemm_bytes - report.gemm_bytes == 26 * 64 + 2 * 26 * 96 * 4
    assert sqnr_db(unfused, out) > 60
    with torch.inference_mode():
        assert sqnr_db(m(x), out) > 25


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_swiglu_runs_one_kernel_bit_for_bit(dtype):
    torch.manual_seed(0)
    m = SwiGLU().to(dtype).eval()
    x = torch.randn(2, 13, 64, dtype=dtype)
    out, code, report = _compile(m, x)
    two, _, _ = _compile(m, x, disable_passes=("fuse_gate_up",))
    assert report.fusions["gate+up"] == 1 and "'silu'" not in code and out.dtype == dtype
    assert torch.equal(out, two)


def test_swiglu_product_read_as_float_also_takes_one_kernel():
    """The product read by something besides down: the dual kernel writes it in float."""
    torch.manual_seed(0)
    m = SwiGLUSide().eval()
    x = torch.randn(2, 13, 64)
    out, code, report = _compile(m, x)
    two, _, _ = _compile(m, x, disable_passes=("fuse_gate_up",))
    assert report.fusions["gate+up"] == 1 and "'silu'" not in code
    # the dual kernel writing the float product, then down quantizing it in its prologue
    FileCheck().check("zq.triton_linear_a8.default(").check_same("'none', None, arg") \
        .check("zq.triton_quantize_linear_a8.default(").run(code)
    assert code.count("zq.triton_linear_a8.default(") == 1 and "triton_linear_a8_requant" not in code
    torch.testing.assert_close(out, two, rtol=0, atol=0)


class SwiGLUSide(SwiGLU):
    def forward(self, x):
        h = self.norm(x)
        p = F.silu(self.gate(h)) * self.up(h)
        return x + self.down(p), p.sum(-1)


def _pair_graph(gate_groups=3, gate_readers=1):
    """A graph as fuse_swiglu leaves it: gate GEMM with SiLU, the up GEMM reading it."""
    from zq_compile.config import ZeroQuantConfig
    from zq_compile.passes.context import PassContext
    from zq_compile.report import CompileReport

    ops = torch.ops.zq
    graph = torch.fx.Graph()
    vals = {"x_q": torch.zeros(13, 64, dtype=torch.int8), "x_s": torch.ones(13, 1),
            "wg": torch.zeros(96, 64, dtype=torch.int8), "sg": torch.ones(gate_groups),
            "wu": torch.zeros(96, 64, dtype=torch.int8), "su": torch.ones(3)}
    ph = {}
    for name, v in vals.items():
        ph[name] = graph.placeholder(name)
        ph[name].meta["val"] = v
    g = graph.call_function(ops.triton_linear_a8.default,
                            (ph["x_q"], ph["x_s"], ph["wg"], ph["sg"], None, None, None, torch.float32, 8, "silu"))
    up = graph.call_function(ops.triton_linear_a8.default,
                             (ph["x_q"], ph["x_s"], ph["wu"], ph["su"], None, None, None, torch.float32, 8, "none"),
                             {"gate": g})
    outs = [up] + [graph.call_function(torch.neg, (g,)) for _ in range(gate_readers - 1)]
    graph.output(tuple(outs))
    config = ZeroQuantConfig(target="triton")
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    ctx = PassContext(gm, list(vals.values()), config, CompileReport(config=config.to_dict()), "triton")
    return ctx, g, up


@pytest.mark.parametrize("gate_groups, gate_readers, reason", [
    (3, 1, None),
    (2, 1, "gate w_scale must be fp32 (3,) (the up weight's groups), got torch.float32 (2,)"),
    (3, 2, "SiLU(gate) is read by 2 nodes"),
], ids=["merged", "groups_differ", "gate_read_twice"])
def test_gate_up_merges_only_matching_pairs_and_says_why_not(gate_groups, gate_readers, reason):
    from zq_compile.passes import fuse_gate_up
    from zq_compile.passes.fusion_common import triton_ops

    triton_ops()
    ctx, g, up = _pair_graph(gate_groups, gate_readers)
    merged = fuse_gate_up.run(ctx)
    if reason is None:
        assert merged == 1 and ctx.report.fusions == {"gate+up": 1} and not ctx.report.fusion_fallbacks
        assert g not in ctx.gm.graph.nodes and "gate" not in up.kwargs
        assert up.kwargs["gate_w_q"].name == "wg" and up.kwargs["gate_w_scale"].name == "sg"
        assert up.kwargs["gate_w_zero"] is None and up.kwargs["gate_bias"] is None
    else:
        assert merged == 0 and not ctx.report.fusions and up.kwargs == {"gate": g}
        (why,) = ctx.report.fusion_fallbacks
        assert why.startswith("fuse_gate_up: ") and reason in why


@pytest.mark.parametrize("module", ["mlp", "swiglu"])
def test_requant_plan_from_the_config_reaches_the_kernel(module):
    """``requant_plan`` forces the plan of every requantizing GEMM (FFN1; SwiGLU's up): 26 tokens
    would take "store" by the rule; "recompute" gives the same output bit for bit."""
    torch.manual_seed(0)
    m, x = (_block() if module == "mlp" else (SwiGLU().eval(), torch.randn(2, 13, 64)))
    out, code, report = _compile(m, x, requant_plan="recompute")
    auto, auto_code, _ = _compile(m, x)
    call = [line for line in code.splitlines() if "zq.triton_linear_a8_requant.default(" in line]
    assert len(call) == 1 and "'recompute'" in call[0] and "'recompute'" not in auto_code
    assert torch.equal(out, auto)


def test_swiglu_off_by_name_leaves_silu_in_the_gate_epilogue_only():
    torch.manual_seed(0)
    m = SwiGLU().eval()
    x = torch.randn(2, 13, 64)
    out, code, report = _compile(m, x, disable_passes=("fuse_swiglu",))
    assert "swiglu" not in report.fusions and report.fusions["gemm+silu"] == 1
    # the product, for down: quantized in down's prologue (no quantize kernel)
    assert report.fusions["quantize+gemm"] == 1 and "zq.triton_quantize_per_token.default(" not in code
    with torch.inference_mode():
        assert sqnr_db(m(x), out) > 25
