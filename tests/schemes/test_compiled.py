"""The new schemes through the whole backend (Inductor included): dynamic shapes, both M
regimes, a second module through the same compiled function (re-quantized constants must take
the layout the graph was compiled with), and the reference target."""

import pytest
import torch
import torch.nn as nn

import zq_compile
from zq_compile.metrics import sqnr_db

#: random Gaussian weights in INT4 at group 128 give ~20 dB here; INT8 ~40
FLOOR_DB = {"w4a16": 16, "w4/8a8": 16, "w4a8": 16, "w8a16": 34}


def _mlp():
    return nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256)).eval()


def _two_modules_through_one_function(preset, shapes, order):
    """One compiled function called with two modules (in ``order``) at each of ``shapes``; each
    output checked against the module's eager one. Returns the compile reports it made."""
    torch.manual_seed(0)
    mods = (_mlp(), _mlp())
    torch._dynamo.reset()
    # smooth=False: the second module would reuse the first one's smoothing scale through the binding
    f = torch.compile(lambda m, x: m(x), backend="zeroquant", options={"preset": preset, "smooth": False})
    before = len(zq_compile.recent_reports())
    with torch.inference_mode():
        for i in order:
            for shape in shapes:
                x = torch.randn(shape)
                assert sqnr_db(mods[i](x), f(mods[i], x)) > FLOOR_DB[preset], (preset, i, shape)
    return zq_compile.recent_reports()[before:]


@pytest.mark.parametrize("preset", [pytest.param("w4a16", marks=pytest.mark.slow), "w4/8a8", "w4a8",
                                    pytest.param("w8a16", marks=pytest.mark.slow)])
def test_two_modules_many_shapes_one_function(preset):
    # large M, then dynamic, then small M
    reports = _two_modules_through_one_function(preset, ((3, 256), (5, 7, 256), (1, 256)), order=(0, 1))
    assert sum(r.requantized for r in reports) >= 1  # module b went through binding.py
    assert all(len(r.quantized) == 2 for r in reports)


def test_reference_target_runs_the_reference_kernels():
    torch.manual_seed(0)
    m = _mlp()
    x = torch.randn(4, 256)
    torch._dynamo.reset()
    with torch.inference_mode():
        out = zq_compile.compile(m, zq_compile.ZeroQuantConfig(preset="w4/8a8", target="reference"))(x)
        assert sqnr_db(m(x), out) > FLOOR_DB["w4/8a8"]
    notes = " ".join(zq_compile.recent_reports()[-1].notes)
    assert "w4a8 kernel for small M: reference" in notes  # 4 rows: a decode-sized M


_KERNEL_PAIRS = {  # (small-M kernel, large-M kernel): one graph's handle must not reach the other
    "w4a16": [("aten", "dequant_bf16"), ("dequant", "aten"), ("aten", "aten")],
    "w4/8a8": [("int4pack", "int8:int_mm"), ("int8:int_mm", "int4pack"), ("int4pack", "unpack:int_mm"),
               ("unpack:onednn", "int8:onednn"),
               # one kernel in both regimes: the later graphs find the weight in that kernel's form
               # in the store already, and must still give other modules' weights that form
               ("int4pack", "int4pack"), ("int8:onednn", "int8:onednn"), ("int8:int_mm", "int8:int_mm")],
}


def _force_kernels(monkeypatch, wo: dict, w4a8: dict) -> None:
    """Pin the kernel races: ``wo`` / ``w4a8`` map an M regime to what each picker returns."""
    from zq_compile.codegen.cpu.w4a8 import W4A8Choice
    from zq_compile.codegen.cpu.weight_only import WoChoice

    monkeypatch.setattr("zq_compile.codegen.cpu.weight_only.select_wo_kernel",
                        lambda regime, bits, requested="auto": WoChoice(wo[regime], "test"))
    monkeypatch.setattr("zq_compile.codegen.cpu.w4a8.select_w4a8_kernel",
                        lambda regime, gemm, memory_first=False: W4A8Choice(w4a8[regime], "test"))


@pytest.mark.parametrize("preset,pair", [(p, k) for p, pairs in _KERNEL_PAIRS.items() for k in pairs])
def test_graphs_share_one_weight_whatever_kernel_each_runs(monkeypatch, preset, pair):
    """Static, dynamic and decode graphs of two modules, each regime forced to a kernel (the
    same or another): the store and the binding hand each graph its own kernel's form of the
    same weight. Same kernel, before the fix: the second module reached the dynamic graph with
    its plain packed INT4 (ATen's INT4 GEMM: garbage, -7 dB; an int8 handle: a stride assertion)."""
    pick = dict(zip(("small", "large"), pair))
    _force_kernels(monkeypatch, wo=pick, w4a8=pick)
    reports = _two_modules_through_one_function(preset, ((3, 256), (5, 7, 256), (1, 256), (9, 256)),
                                                order=(0, 1, 0))
    notes = " ".join(n for r in reports for n in r.notes)
    assert f"small M: {pair[0]}" in notes and f"large M: {pair[1]}" in notes


@pytest.mark.parametrize("preset", ["w4a16", "w4a8"])
def test_an_edited_int4_weight_gets_a_new_aten_scale_table(monkeypatch, preset):
    """At decode sizes ATen's INT4 GEMM reads a bf16 table of block scales the graph holds beside
    the weight; an in-place edit re-quantizes the weight and must re-make the table with it (a
    stale table scales the new INT4 values by the old scales). Not w4/8a8: its int8 head takes
    outlier channels from the first call's activations, which the edit changes, so a fresh
    compile of the edited model differs by design."""
    import copy

    from tests.models.tiny import model_output, tiny_model

    # ATen's INT4 GEMM at decode sizes, not the race's pick (a loaded machine may pick another)
    _force_kernels(monkeypatch, wo={"small": "aten", "large": "aten"},
                   w4a8={"small": "int4pack", "large": "int4pack"})
    ids = torch.randint(0, 1000, (1, 1), generator=torch.Generator().manual_seed(0))
    config = zq_compile.ZeroQuantConfig(preset=preset, cpu_kernel="onednn", smooth=False, keep_float=0)
    model = tiny_model("llama")
    twin = copy.deepcopy(model)
    torch._dynamo.reset()
    compiled = zq_compile.compile(model, config)
    with torch.inference_mode():
        before = model_output(compiled(ids))
    assert any("small M: aten" in n or "small M: int4pack" in n for r in compiled.zq_reports for n in r.notes)
    with torch.no_grad():
        for m in (model, twin):
            m.model.layers[0].mlp.up_proj.weight.mul_(-1.5)
    with torch.inference_mode():
        after = model_output(compiled(ids))
    torch._dynamo.reset()
    with torch.inference_mode():
        fresh = model_output(zq_compile.compile(twin, config)(ids))
    assert not torch.equal(before, after) and torch.equal(after, fresh)
