"""One model calibrated under several configs keeps each config's calibration: a later graph of
either (a new shape, a save and load) finds its own, never the other's nor a silent
recalibration on its first call (seen in the bench, where contenders share one fp32 model)."""

import torch

import zq_compile
from zq_compile import ZeroQuantConfig
from zq_compile.calibrate import stats
from tests.models.tiny import tiny_model

A = ZeroQuantConfig(keep_float=0, heads="float")
B = ZeroQuantConfig()


def _ids(b, s, seed):
    return torch.randint(0, 1000, (b, s), generator=torch.Generator().manual_seed(seed))


def _sources(model, config, shapes):
    compiled = zq_compile.compile(model, config)
    with torch.inference_mode():
        for b, s in shapes:
            compiled(_ids(b, s, b * s))
    return [r.calibration.source for r in compiled.zq_reports]


def test_each_config_keeps_its_calibration_across_recompiles(tmp_path):
    model = tiny_model("llama")
    data = [{"input_ids": _ids(2, 16, 5)}]
    zq_compile.calibrate(model, A, data)
    zq_compile.calibrate(model, B, data)
    weight = model.model.layers[0].mlp.down_proj.weight
    assert {e.signature for e in stats.entries(weight)} == {stats.signature(A), stats.signature(B)}
    # A: first shape, then new sizes (two recompiles, after B's calibration was taken); B: one
    # graph, dynamic from the start (Dynamo remembers A's changing sizes). All use calibrate(data).
    for config, graphs in ((A, 3), (B, 1)):
        sources = _sources(model, config, [(2, 12), (3, 12), (4, 20)])
        assert sources == ["calibrate(data)"] * graphs, sources

    zq_compile.save(model, tmp_path / "w.safetensors")
    fresh = tiny_model("llama")
    zq_compile.load(tmp_path / "w.safetensors", fresh)
    loaded = stats.entries(fresh.model.layers[0].mlp.down_proj.weight)
    assert {e.signature for e in loaded} == {stats.signature(A), stats.signature(B)}
    for e in loaded:
        want = stats.lookup(weight, e.signature)
        assert torch.equal(e.act_absmax, want.act_absmax) and e.alpha == want.alpha
