"""The backend end to end through Inductor on small modules."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck

import zq_compile
from zq_compile import ZeroQuantConfig, recent_reports
from zq_compile.metrics import sqnr_db
from tests.modules import Block, TwoLayers, attention_inputs

#: SQNR (dB) a compiled model must keep against its fp32 eager self, per scheme and input dtype.
#: 8-bit weights and activations give ~35-40 dB on a single linear; a block compounds a few.
SQNR_DB = {"w8a8": {torch.float32: 25, torch.bfloat16: 22, torch.float16: 22}}


def _reports_since(n):
    return recent_reports()[n:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compiled_block_close_to_eager(dtype):
    torch.manual_seed(0)
    m = Block().to(dtype).eval()
    x = torch.randn(4, 13, 64, dtype=dtype)
    before = len(recent_reports())
    with torch.inference_mode():
        ref = m.float()(x.float())
        m.to(dtype)
        out = torch.compile(m, backend="zeroquant")(x)
    (report,) = _reports_since(before)
    assert len(report.quantized) == 2
    assert out.dtype == dtype
    assert not torch.isnan(out).any()
    assert sqnr_db(ref, out.float()) > SQNR_DB["w8a8"][dtype]


def _run_shapes(c, m, shapes):
    with torch.inference_mode():
        for b, s in shapes:
            x = torch.randn(b, s, 64)
            assert sqnr_db(m(x), c(x)) > SQNR_DB["w8a8"][torch.float32]


def test_varying_batch_and_sequence_do_not_recompile_per_shape():
    m = Block().eval()
    c = torch.compile(m, backend="zeroquant")
    before = len(recent_reports())
    # Dynamo compiles for the first shape, then once more for each dimension it sees change
    # (batch, then sequence), making that dimension symbolic ...
    _run_shapes(c, m, [(2, 16), (3, 16), (4, 20)])
    assert len(_reports_since(before)) == 3
    # ... after which no new batch or sequence size compiles anything.
    _run_shapes(c, m, [(5, 7), (8, 33), (6, 100), (2, 16), (17, 3)])
    assert len(_reports_since(before)) == 3
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 3


def test_dynamic_true_compiles_once_for_all_shapes():
    m = Block().eval()
    c = zq_compile.compile(m, dynamic=True)
    _run_shapes(c, m, [(2, 16), (3, 16), (4, 20), (5, 7), (8, 33)])
    assert len(c.zq_reports) == 1


def test_options_dict_reaches_the_backend():
    m = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    before = len(recent_reports())
    with torch.inference_mode():
        torch.compile(m, backend="zeroquant", options={"skip": ["2"], "weight_groups": 4})(torch.randn(3, 16))
    (report,) = _reports_since(before)
    assert [d.module for d in report.quantized] == ["0"]
    assert "4 groups" in report.quantized[0].reason
    assert report.config["skip"] == ["2"]


def test_invalid_options_raise_value_error_naming_the_field():
    m = torch.nn.Linear(4, 4)
    # torch.compile only calls the backend at the first run; Dynamo wraps what it raises.
    with pytest.raises(Exception, match="ValueError: preset='w9a9' is not valid; allowed: w8a8"):
        torch.compile(m, backend="zeroquant", options={"preset": "w9a9"})(torch.randn(2, 4))
    with pytest.raises(ValueError, match="target"):
        zq_compile.compile(m, {"target": "tpu"})


def test_function_form_attaches_reports():
    m = Block().eval()
    c = zq_compile.compile(m, ZeroQuantConfig())
    with torch.inference_mode():
        c(torch.randn(2, 5, 64))
    assert len(c.zq_reports) == 1 and len(c.zq_reports[0].quantized) == 2


def test_reference_target_and_forced_kernels_agree_with_the_default():
    torch.manual_seed(0)
    m = Block().eval()
    x = torch.randn(3, 11, 64)
    outs = {}
    with torch.inference_mode():
        for name, cfg in {
            "auto": {},
            "reference": {"target": "reference"},
            "int_mm": {"cpu_kernel": "int_mm"},
        }.items():
            torch._dynamo.reset()
            # fp32 storage throughout: the reference target never stores bf16 (bf16_activations
            # is a cpu-target pass), and the comparison is of the kernels, not the storage
            cfg = {"activations": "fp32", **cfg}
            outs[name] = torch.compile(m, backend="zeroquant", options=cfg)(x)
    assert recent_reports()[-1].kernel == "int_mm"
    assert recent_reports()[-2].kernel == "reference"
    # Same int8 values and int32 sums; only the epilogue's fp32 rounding may differ.
    torch.testing.assert_close(outs["auto"], outs["reference"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["int_mm"], outs["reference"], rtol=1e-4, atol=1e-4)


def test_model_without_linears_compiles_and_runs_unchanged():
    def f(x):
        return torch.relu(x) * 2 + 1

    x = torch.randn(5, 7)
    before = len(recent_reports())
    out = torch.compile(f, backend="zeroquant")(x)
    assert torch.equal(out, f(x))
    (report,) = _reports_since(before)
    assert "no linear layers" in report.summary()


def test_grad_mode_compiles_with_a_warning_and_no_gradient_through_quantized_linears():
    m = Block().eval()
    x = torch.randn(2, 3, 64)
    with pytest.warns(UserWarning, match="inference-only"):
        out = torch.compile(m, backend="zeroquant")(x)
    assert sqnr_db(m(x), out.detach()) > SQNR_DB["w8a8"][torch.float32]
    assert "inference-only" in recent_reports()[-1].summary()


def test_quantize_is_fused_into_layernorm_and_only_the_gemm_is_opaque():
    """Read the code Inductor generated: the per-token quantize lives in the LayerNorm kernel,
    and the GEMM is the only call out of generated code."""
    m = Block().eval()
    with torch.inference_mode():
        _, (code,) = run_and_get_code(torch.compile(m, backend="zeroquant"), torch.randn(4, 13, 64))
    kernel = recent_reports()[-1].kernel
    if kernel == "onednn":
        # (smoothing's 1/s multiply, when the default smooth="auto" picks it, joins the GeLU kernel)
        FileCheck().check("native_layer_norm_quantize_per_token").check("zq.onednn_u8s8_mm").check_regex(
            "gelu_linear_w8a8_(mul_)?quantize_per_token").check("zq.onednn_u8s8_mm").run(code)
        assert code.count("zq.onednn_u8s8_mm.default(") == 2
    assert "ops.zq.quantize_per_token" not in code  # decomposed, never called as an opaque op


@pytest.mark.parametrize("kernel", ["onednn", "int_mm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantize_is_one_pass_rounded_values_never_go_to_memory(dtype, kernel):
    """The per-token quantize reads its input twice (row max, then the scaling); everything after
    the scaling (round, NaN -> 0, clamp, int8, +128) must stay in registers. A rounded value
    stored to a buffer means Inductor split the chain: one more write and read of the whole
    activation per linear (quant/activation.py says how the chain is written to avoid it)."""
    import re

    from zq_compile.codegen.cpu.kernels import KERNELS

    if KERNELS[kernel].unavailable_reason():
        pytest.skip(KERNELS[kernel].unavailable_reason())
    m = Block().to(dtype).eval()
    compiled = torch.compile(m, backend="zeroquant", options={"cpu_kernel": kernel})
    with torch.inference_mode():
        _, (code,) = run_and_get_code(compiled, torch.randn(4, 13, 64, dtype=dtype))
    rounded = list(re.finditer(r"auto (tmp\d+) = \S+\.round\(\);", code))
    assert rounded, "no vectorized round in the generated code: the test no longer sees the quantize"
    for found in rounded:  # the rest of its loop: up to the next parallel loop
        rest = code[found.end():].split("#pragma omp for")[0]
        assert not re.search(rf"\b{found.group(1)}\.store\(", rest), f"a rounded value is stored: {rest[:300]}"


def test_bf16_attention_compiles_to_two_bf16_bmm_and_no_fp32_logits():
    """Read the generated code: each attention is two bmm calls on bf16 buffers, no flash
    attention call, and no fp32 buffer of the [L, S] logits (codegen/cpu/attention.py writes the
    softmax so only the bf16 scores and probabilities reach memory)."""
    import re

    x, mask = attention_inputs(length=40)
    m = TwoLayers().eval()
    compiled = torch.compile(m, backend="zeroquant", options={"attention": "bf16_matmul"})
    with torch.inference_mode():
        out, (code,) = run_and_get_code(compiled, x, mask)
        ref = m(x, mask)
    assert sqnr_db(ref, out) > 30
    assert code.count("extern_kernels.bmm(") == 4
    assert "scaled_dot_product" not in code.split("def call(")[1]
    buffers = re.findall(r"empty_strided_cpu\(\(([\d, ]+)\), \([^)]*\), (torch\.\w+)\)", code)
    per_head = 2 * 4 * 40 * 40  # batch x heads x L x S (the fp32 mask bias is per batch only)
    logits = [dtype for size, dtype in buffers if math.prod(map(int, size.split(","))) == per_head]
    assert logits and set(logits) == {"torch.bfloat16"}, buffers


def test_entry_point_works_without_importing_zq_compile():
    script = textwrap.dedent(
        """
        import sys, torch
        m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()
        x = torch.randn(4, 32)
        assert "zq_compile" not in sys.modules
        with torch.inference_mode():
            out = torch.compile(m, backend="zeroquant")(x)
            ref = m(x)
        from zq_compile import recent_reports
        (report,) = recent_reports()
        err = ((out - ref).norm() / ref.norm()).item()
        print(len(report.quantized), err)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    quantized, err = done.stdout.split()
    assert quantized == "2" and float(err) < 0.05


def test_non_cpu_tensors_stay_float_with_reason():
    from tests.conftest import capture
    from zq_compile.backend import prepare

    m = torch.nn.Linear(8, 4, device="meta")
    gm, inputs = capture(m, torch.empty(2, 8, device="meta"))
    with torch.no_grad():
        p = prepare(gm, inputs, ZeroQuantConfig())
    assert "device meta" in p.report.skipped[0].reason


def test_import_and_compile_leave_global_inductor_config_alone():
    script = textwrap.dedent(
        """
        import torch, torch._inductor.config as ic
        before = ic.save_config_portable()
        import zq_compile
        assert ic.save_config_portable() == before, "import changed Inductor config"
        m = torch.nn.Linear(8, 8)
        with torch.inference_mode():
            torch.compile(m, backend="zeroquant")(torch.randn(2, 8))
        assert ic.save_config_portable() == before, "compile changed Inductor config"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_zq_ops_trace_with_torch_export():
    from zq_compile.quant import quantize_weight

    class QuantLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            qw = quantize_weight(torch.randn(16, 32))
            self.register_buffer("w_q", qw.qdata)
            self.register_buffer("w_s", qw.scale)

        def forward(self, x):
            x_q, x_s = torch.ops.zq.quantize_per_token(x)
            return torch.ops.zq.linear_w8a8(x_q, x_s, self.w_q, self.w_s, None, None, torch.float32)

    m = QuantLinear()
    x = torch.randn(2, 5, 32)
    ep = torch.export.export(m, (x,))
    targets = {n.target for n in ep.graph.nodes}
    assert torch.ops.zq.linear_w8a8.default in targets and torch.ops.zq.quantize_per_token.default in targets
    torch.testing.assert_close(ep.module()(x), m(x))


def test_one_graph_called_with_another_modules_weights_uses_those_weights():
    """Dynamo guards parameters on shape and dtype only, so a compiled graph is reused for any
    module of the same shapes: the quantized constants must follow the weights passed in."""
    torch.manual_seed(0)
    l1, l2 = torch.nn.Linear(64, 32).eval(), torch.nn.Linear(64, 32).eval()
    x = torch.randn(4, 64)
    f = torch.compile(lambda m, x: m(x), backend="zeroquant")
    threshold = SQNR_DB["w8a8"][torch.float32]
    with torch.inference_mode():
        for m in (l1, l2, l1, l2):
            assert sqnr_db(m(x), f(m, x)) > threshold
    assert recent_reports()[-1].requantized == 1  # l2's weights, once
    with torch.no_grad():
        l1.weight.mul_(-1)  # an in-place edit after compiling is seen at the next call
    with torch.inference_mode():
        assert sqnr_db(l1(x), f(l1, x)) > threshold
    assert recent_reports()[-1].requantized == 2
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_unchanged_weights_are_not_requantized_per_call():
    m = Block().eval()
    c = torch.compile(m, backend="zeroquant")
    with torch.inference_mode():
        for _ in range(3):
            c(torch.randn(2, 5, 64))
    assert recent_reports()[-1].quantized and recent_reports()[-1].requantized == 0


class _NormFirst(torch.nn.Module):
    """A LayerNorm feeding a linear: smoothing folds s into the norm's weight and bias, a
    constant the binding re-derives when the norm changes."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(64)
        self.up, self.down = torch.nn.Linear(64, 96), torch.nn.Linear(96, 64)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


@pytest.mark.parametrize("kind", ["plain", "smoothed norm"])
def test_a_compiled_model_keeps_no_compile_time_objects_alive(monkeypatch, kind):
    """What a compiled graph holds after compiling: its code, its constants and the binding's
    recipes. Found on SmolLM2 (~200 MiB of RSS): Inductor's module-level metrics lists, filled
    while our byte count turns its log on, kept every Scheduler node, IR and fake tensor; the
    binding's closures kept the pass context (the rewritten graph, the first call's inputs)."""
    import gc
    import weakref

    from torch._inductor import config as inductor_config
    from torch._inductor import metrics

    from zq_compile.passes.context import PassContext

    made = []
    init = PassContext.__init__

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(PassContext, "__init__", tracking_init)
    totals = (len(metrics.node_runtimes), len(metrics.nodes_num_elem), metrics.num_bytes_accessed)
    torch.manual_seed(0)
    if kind == "plain":
        m = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 64)).eval()
        first, config = m[0], ZeroQuantConfig()
    else:
        m = _NormFirst().eval()
        first, config = m.up, ZeroQuantConfig(smooth={"alpha": 0.5})
    x = torch.randn(4, 8, 64)
    c = zq_compile.compile(m, config)
    with inductor_config.patch(fx_graph_cache=False), torch.inference_mode():  # code-generated: counted
        c(x)
    assert recent_reports()[-1].inductor_bytes  # Inductor's log was on for this compile
    assert (len(metrics.node_runtimes), len(metrics.nodes_num_elem), metrics.num_bytes_accessed) == totals
    gc.collect()
    alive = [r for r in made if r() is not None]
    assert made and not alive, f"{len(alive)} of {len(made)} PassContext(s) still alive after compiling"
    if kind == "smoothed norm":
        assert recent_reports()[-1].pass_counts.get("smooth_outliers"), "nothing folded: the case tests nothing"
    with torch.no_grad():  # the binding still re-quantizes a changed weight without them
        first.weight.mul_(-1)
        if kind == "smoothed norm":  # and re-derives the folded norm constant
            m.norm.weight.mul_(0.5)
    with torch.inference_mode():
        assert sqnr_db(m(x), c(x)) > 20
    assert recent_reports()[-1].requantized >= 1


@pytest.mark.parametrize("preset", ["w8a8", "w4/8a8"])
def test_a_graph_compiled_again_is_served_by_inductors_fx_graph_cache(preset):
    """Inductor pickles the decomposition table into its FX graph cache key; a plain copy of the
    default table does not pickle, so every zeroquant graph was code-generated again (SmolLM2:
    twice the compile time, ~120 MiB of Python heap left fragmented). The second compile of one
    graph must be a cache hit with the same outputs, its report saying Inductor's kernels were
    not counted."""
    from torch._dynamo.utils import counters
    from torch._inductor import config as inductor_config
    from torch._inductor.utils import fresh_cache

    torch.manual_seed(0)
    m = Block().eval()
    x = torch.randn(2, 16, 64)
    outs, hits = [], []
    with fresh_cache(), inductor_config.patch(fx_graph_cache=True), torch.inference_mode():
        for _ in range(2):
            torch._dynamo.reset()
            before = counters["inductor"]["fxgraph_cache_hit"]
            outs.append(zq_compile.compile(m, ZeroQuantConfig(preset=preset))(x))
            hits.append(counters["inductor"]["fxgraph_cache_hit"] - before)
            assert counters["inductor"]["fxgraph_cache_bypass"] == 0, "a zeroquant graph bypassed the cache"
    assert hits == [0, 1]
    assert torch.equal(outs[0], outs[1])
    assert "not counted" in recent_reports()[-1].bytes_text()


def test_the_decomposition_table_copies_as_a_table_and_pickles_as_its_key():
    import copy
    import pickle

    from zq_compile.codegen.cpu.kernels import KERNELS
    from zq_compile.lowering import DecompTable, decompositions_for

    table = decompositions_for(KERNELS["reference"])
    for made in (copy.copy(table), copy.deepcopy(table)):
        assert isinstance(made, DecompTable) and made == table and made.key == table.key
    assert pickle.loads(pickle.dumps(table)) == table.key  # what Inductor's cache key hashes
    assert decompositions_for(KERNELS["onednn"]).key != table.key
