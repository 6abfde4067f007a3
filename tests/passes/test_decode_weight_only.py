"""decode_weight_only: decode-sized graphs run their int8 weights through the weight-only kernel
where the race says the int8 GEMM is slower there; prefill graphs and lost races keep w8a8.

The rewrite tests fix the race's outcome (``select.race_shapes`` returns chosen times) so that
both branches are tested on every CPU; the kernels themselves run for real."""

import pytest
import torch

import zq_compile
from tests.modules import Block
from tests.passes.test_kept_linear_bf16 import _prepare
from zq_compile.codegen.cpu import kernels, select
from zq_compile.metrics import sqnr_db

W8A8 = torch.ops.zq.linear_w8a8.default
WO = torch.ops.zq.linear_wo.default
QUANTIZE = torch.ops.zq.quantize_per_token.default


def _nodes(gm, target):
    return list(gm.graph.find_nodes(op="call_function", target=target))


def _race_says(monkeypatch, winner: str):
    """race_shapes returning times where ``winner`` ("weight-only" or "int8") is clearly faster."""

    def fake(shapes, kernels_, gemm_bf16, rounds=5, weight_only=None):
        fast, slow = 0.1, 1.0
        times = {"onednn->fp32": fast if winner == "int8" else slow,
                 "onednn->bf16": fast if winner == "int8" else slow,
                 "int_mm->int32": fast if winner == "int8" else slow, "fp32 F.linear": 0.5}
        if weight_only is not None:
            times[f"weight-only {weight_only}"] = fast if winner == "weight-only" else slow
        return times

    monkeypatch.setattr(select, "race_shapes", fake)


@pytest.fixture
def onednn_ready():
    ready, _ = select._candidates()
    if not ready:
        pytest.skip("no int8 GEMM kernel passed its self-test here: nothing to race against")


@pytest.mark.parametrize("rows", [1, 5, select.SMALL_M])
def test_a_decode_graph_reads_its_int8_weights_with_float_activations(monkeypatch, onednn_ready, rows):
    _race_says(monkeypatch, "weight-only")
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(1, rows, 64)
    prepared, out = _prepare(model, x)
    assert prepared.report.pass_counts["decode_weight_only"] == 2
    assert _nodes(prepared.gm, W8A8) == [] and _nodes(prepared.gm, QUANTIZE) == []
    wo = _nodes(prepared.gm, WO)
    assert len(wo) == 2 and all(n.args[5] == 8 and n.args[1].meta["example_value"].dtype == torch.int8 for n in wo)
    assert all(d.scheme == "w8a8" and "decode_weight_only: a decode step" in d.reason
               for d in prepared.report.decisions)
    assert any(r.startswith("decode_weight_only:") and r.endswith("on the int8 weights")
               for r in prepared.report.races)
    with torch.no_grad():
        ref = model(x)
    assert sqnr_db(ref, out) > 35  # int8 weights, float activations


def test_the_weights_are_the_w8a8_ones_on_the_cpu_grid(monkeypatch, onednn_ready):
    """Same recipe as the prefill graph's int8 GEMM: the decode graph quantizes nothing anew."""
    _race_says(monkeypatch, "weight-only")
    torch.manual_seed(0)
    model = Block().eval()
    decode, _ = _prepare(model, torch.randn(1, 1, 64))
    prefill, _ = _prepare(model, torch.randn(2, 24, 64))
    assert _nodes(prefill.gm, W8A8) and not _nodes(decode.gm, W8A8)

    def int8_values(prepared, target, slot):
        names = {n.args[slot].name for n in _nodes(prepared.gm, target)}
        return sorted((kernels.plain_weight(t) for name, t in zip(
            [p.name for p in prepared.gm.graph.find_nodes(op="placeholder")][-len(prepared.constants):],
            prepared.constants) if name in names), key=lambda t: tuple(t.shape))

    got, want = int8_values(decode, WO, 1), int8_values(prefill, W8A8, 2)
    assert len(got) == len(want) == 2
    for a, b in zip(got, want):
        assert torch.equal(a, b)
        assert int(a.abs().max()) <= select.int8_weight_qmax()


def test_a_lost_race_keeps_the_int8_gemm(monkeypatch, onednn_ready):
    _race_says(monkeypatch, "int8")
    torch.manual_seed(0)
    prepared, _ = _prepare(Block().eval(), torch.randn(1, 1, 64))
    assert prepared.report.pass_counts["decode_weight_only"] == 0
    assert len(_nodes(prepared.gm, W8A8)) == 2 and _nodes(prepared.gm, WO) == []
    assert any(r.startswith("decode_weight_only:") and r.endswith("-> int8 GEMM") for r in prepared.report.races)


def test_prefill_sized_graphs_are_not_raced(monkeypatch, onednn_ready):
    _race_says(monkeypatch, "weight-only")
    prepared, _ = _prepare(Block().eval(), torch.randn(1, select.SMALL_M + 1, 64))
    assert prepared.report.pass_counts["decode_weight_only"] == 0
    assert not any(r.startswith("decode_weight_only") for r in prepared.report.races)


@pytest.mark.parametrize("config", [{"disable_passes": ("decode_weight_only",)}, {"cpu_kernel": "onednn"},
                                    {"target": "reference"}])
def test_off_by_name_by_an_explicit_kernel_and_off_target(monkeypatch, onednn_ready, config):
    _race_says(monkeypatch, "weight-only")
    prepared, _ = _prepare(Block().eval(), torch.randn(1, 1, 64), **config)
    assert prepared.report.pass_counts.get("decode_weight_only", 0) == 0
    assert len(_nodes(prepared.gm, W8A8)) == 2


def test_the_real_race_agrees_with_the_graph(onednn_ready):
    """No fixed outcome: whatever this CPU's race says, the graph and the report say the same."""
    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(1, 1, 64)
    prepared, out = _prepare(model, x)
    (line,) = [r for r in prepared.report.races if r.startswith("decode_weight_only:")]
    rewritten = prepared.report.pass_counts["decode_weight_only"]
    assert rewritten == (2 if line.endswith("on the int8 weights") else 0)
    assert len(_nodes(prepared.gm, WO)) == rewritten
    with torch.no_grad():
        assert sqnr_db(model(x), out) > 30


def test_edited_weights_are_requantized_to_plain_int8(monkeypatch, onednn_ready):
    """The binding re-quantizes at call time: a decode graph must get plain int8 values, never
    the int8 GEMM kernel's handle (which the weight-only kernel cannot read)."""
    _race_says(monkeypatch, "weight-only")
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="zeroquant", options={"smooth": False}, dynamic=False)
    x = torch.randn(1, 1, 64)
    with torch.no_grad():
        compiled(x)
        assert zq_compile.recent_reports()[-1].pass_counts["decode_weight_only"] == 2
        model.up.weight.mul_(-2.0)
        out = compiled(x)
        assert sqnr_db(model(x), out) > 35


def test_prefill_then_decode_then_prefill_shares_one_onednn_copy(monkeypatch):
    """Prefill packs the weight for oneDNN (the store keeps its handle); the decode graph reads
    the int8 values back from it; a later prefill graph finds its handle again, not a new pack."""
    ready, _ = select._candidates()
    if "onednn" not in ready:
        pytest.skip("oneDNN's int8 GEMM is not used on this CPU")
    _race_says(monkeypatch, "weight-only")
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="zeroquant", options={"smooth": False, "cpu_kernel": "auto"},
                             dynamic=False)
    handles = []
    with torch.no_grad():
        for shape in [(2, 24, 64), (1, 1, 64), (3, 24, 64)]:
            x = torch.randn(*shape)
            assert sqnr_db(model(x), compiled(x)) > 25
            entry = zq_compile.store.entries(model.up.weight)
            (stored,) = entry.values()
            handles.append(stored.tensors["wq"])
    assert kernels.is_weight_handle(handles[0])
    assert not kernels.is_weight_handle(handles[1])  # the decode graph's plain read-back
    assert handles[2] is handles[0]
