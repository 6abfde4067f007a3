"""The bench's linear-weight bytes table (zq_compile/benchmarks/weight_bytes.py): exact bytes of
a known model, shared weights once, float linears at their held bytes, the rendered target."""

from __future__ import annotations

import torch

from zq_compile.benchmarks.render import weights_table
from zq_compile.benchmarks.weight_bytes import preset_bytes

FP16 = 2 * 2 * 256 * 128
INT8 = 2 * 256 * 128 + 4 * (128 + 256)  # one fp32 scale per output row
# INT4 at half a byte; one fp32 scale per 128 inputs of a row: up has 2 blocks x 128 rows, down 1 x 256
INT4 = 256 * 128 + 4 * (2 * 128 + 1 * 256)


class Mlp(torch.nn.Module):
    def __init__(self, twice: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(256, 128)
        self.down = torch.nn.Linear(128, 256)
        self.twice = twice

    def forward(self, x):
        y = self.down(torch.nn.functional.gelu(self.up(x)))
        return self.down(torch.nn.functional.gelu(self.up(y))) if self.twice else y


def _rows(model, presets=None, **options):
    rows = preset_bytes(model, {"x": torch.randn(4, 256)}, presets=presets, log=lambda _: None, **options)
    return {r["preset"]: r for r in rows}


def test_bytes_are_the_stored_values_and_scales_against_fp16():
    rows = _rows(Mlp())
    assert {p: (r["fp16_bytes"], r["quant_bytes"]) for p, r in rows.items()} == {
        "w8a8": (FP16, INT8), "w8a16": (FP16, INT8), "w4a8": (FP16, INT4), "w4a16": (FP16, INT4),
        "w4/8a8": (FP16, INT4)}  # both linears sit around the GeLU: FFN, so INT4
    assert all(r["ratio"] == r["ratio_all"] and r["kept_float"] == 0 for r in rows.values())
    assert rows["w4/8a8"]["target"] == 0.35 and rows["w8a8"]["target"] is None
    assert rows["w4/8a8"]["by_scheme"] == {"w4a8": INT4}


def test_a_shared_weight_counts_once_and_a_float_linear_at_its_held_bytes():
    twice = _rows(Mlp(twice=True), presets=["w4a8"])["w4a8"]
    assert (twice["fp16_bytes"], twice["quant_bytes"], twice["quantized"]) == (FP16, INT4, 2)
    skipped = _rows(Mlp(), presets=["w4a8"], skip=("down",))["w4a8"]
    up_int4 = 256 * 128 // 2 + 4 * 2 * 128
    assert (skipped["quantized"], skipped["kept_float"], skipped["quant_bytes"]) == (1, 1, up_int4)
    assert skipped["float_bytes"] == 4 * 256 * 128  # fp32, as the model holds it
    assert skipped["ratio_all"] == (up_int4 + 4 * 256 * 128) / FP16


def test_the_table_judges_the_target_on_all_linears():
    row = _rows(Mlp(), presets=["w4/8a8"])["w4/8a8"]
    over = dict(row, ratio_all=0.36, kept_float=1, options={"release_float_weights": True})
    text = "\n".join(weights_table({"machine": {"cpu_class": "AVX2"},
                                    "sections": {"weights": {"mlp": [row, over]}}}))
    assert "| mlp | w4/8a8 | 2 | 0 |" in text and "| 0.266 | <= 0.35x: met |" in text
    assert "| mlp | w4/8a8 + release | 2 | 1 |" in text and "| 0.360 | <= 0.35x: **not met** |" in text
