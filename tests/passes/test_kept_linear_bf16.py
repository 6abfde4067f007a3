"""kept_linear_bf16: the linears keep_float leaves in float run as bf16 GEMMs on the bf16
pipeline, and stay fp32 (with the reason) where that would not pay or is not wanted."""

import pytest
import torch
import torch.nn.functional as F

import zq_compile
import zq_compile.codegen.cpu.select as select
from tests.conftest import capture
from tests.modules import Block
from zq_compile import ZeroQuantConfig
from zq_compile.backend import prepare
from zq_compile.metrics import sqnr_db

bf16_cpu = pytest.mark.skipif(not select.has_bf16(), reason="the bf16 pipeline needs a CPU with native bf16")


class WithHead(torch.nn.Module):
    def __init__(self, d=64, vocab=96):
        super().__init__()
        self.block = Block(d)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, x):
        return self.lm_head(self.block(x))


def _prepare(model, x, **config):
    gm, inputs = capture(model, x)
    with torch.no_grad():
        prepared = prepare(gm, inputs, ZeroQuantConfig(smooth=False, **config))
        (out,) = prepared.gm(*inputs, *prepared.constants)
    return prepared, out


def _float_linears(gm):
    """The dtype of the input of every float linear left in the graph."""
    return [n.args[0].meta["example_value"].dtype for n in gm.graph.nodes
            if n.op == "call_function" and n.target in (F.linear, torch._C._nn.linear)]


@bf16_cpu
def test_a_policy_kept_linear_runs_as_a_bf16_gemm():
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 24, 64)
    prepared, out = _prepare(model, x, keep_float=1)
    assert prepared.report.pass_counts["kept_linear_bf16"] == 1
    assert _float_linears(prepared.gm) == [torch.bfloat16]
    (kept,) = [d for d in prepared.report.decisions if d.scheme is None]
    assert "runs in bf16 (kept_linear_bf16" in kept.reason
    assert out.dtype == torch.float32
    with torch.no_grad():
        assert sqnr_db(model(x), out) > 30


@bf16_cpu
def test_a_kept_linear_reads_its_weight_each_call():
    """The weight is cast in the graph: an in-place change is seen by the next call."""
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(4, 24, 64)
    compiled = torch.compile(model, backend="zeroquant", options={"keep_float": 1, "smooth": False})
    with torch.no_grad():
        compiled(x)
        report = zq_compile.recent_reports()[-1]
        (kept,) = [d for d in report.decisions if d.scheme is None]
        name = kept.module.rsplit(".", 1)[-1]
        getattr(model, name).weight.mul_(0.5)
        assert sqnr_db(model(x), compiled(x)) > 25


@pytest.mark.parametrize("config,rows,reason", [
    ({"activations": "fp32"}, 24, "activations='fp32'"),
    ({"disable_passes": ("kept_decode_w8a16",)}, 8, "decode step"),
])
def test_kept_linear_stays_fp32_with_the_reason(config, rows, reason):
    if "disable_passes" in config and not select.has_bf16():
        pytest.skip("without native bf16 every kept linear stays fp32 for that reason instead")
    torch.manual_seed(0)
    prepared, _ = _prepare(Block().eval(), torch.randn(1, rows, 64), keep_float=1, **config)
    assert _float_linears(prepared.gm) == [torch.float32]
    (kept,) = [d for d in prepared.report.decisions if d.scheme is None]
    assert "runs in fp32 (kept_linear_bf16: " in kept.reason and reason in kept.reason


@bf16_cpu
def test_a_default_kept_head_runs_bf16_at_prefill_and_fp32_in_a_decode_step():
    torch.manual_seed(0)
    for rows, dtype in ((24, torch.bfloat16), (1, torch.float32)):
        # (kept_decode_w8a16 would make the decode step's head w8a16: tests/passes/test_kept_decode_w8a16.py)
        prepared, _ = _prepare(WithHead().eval(), torch.randn(1, rows, 64), keep_float="auto", heads="float",
                               disable_passes=("kept_decode_w8a16",))
        head = next(d for d in prepared.report.decisions if d.module == "lm_head")
        assert head.scheme is None and "lm_head" in head.reason
        assert dtype in _float_linears(prepared.gm)
        assert ("runs in bf16" if dtype == torch.bfloat16 else "decode step") in head.reason


@bf16_cpu
def test_switched_off_by_name():
    torch.manual_seed(0)
    prepared, _ = _prepare(Block().eval(), torch.randn(4, 24, 64), keep_float=1,
                           disable_passes=("kept_linear_bf16",))
    assert "kept_linear_bf16" in prepared.report.disabled_passes
    assert _float_linears(prepared.gm) == [torch.float32]
