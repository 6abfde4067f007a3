"""Every preset besides W8A8 on target "triton", on tiny Hugging Face models under the interpreter,
against fp32 eager and the same preset on target "cpu": W8A16 / W4A16 through gemm_a16
(codegen/triton/weight_only.py), W4A8 and W4/8A8's INT4 linears through gemm_a8 on the INT4
weight (codegen/triton/w4a8.py). W8A8 is tests/triton_interp/test_models.py's."""

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from tests.models.tiny import model_output, save_and_reload, tiny_model
from zq_compile import recent_reports
from zq_compile.metrics import sqnr_db

#: SQNR floors vs fp32 (dB): INT8 weights per channel; INT4 in blocks of 32 along K (the tiny
#: models' widths). Observed on the 2-core Zen 4, 2026-12-07: see the printed figures.
FLOOR = {"w8a16": 30, "w4a16": 12}


def _run(model, ids, options):
    before = len(recent_reports())
    out, code = run_and_get_code(torch.compile(model, backend="zeroquant", options=options), input_ids=ids)
    torch._dynamo.reset()
    return model_output(out), "\n".join(code), recent_reports()[before:]


def _both_targets(kind, preset, seed, **cpu_options):
    """fp32 eager, target "triton" (output, generated code, reports) and target "cpu" on one
    tiny model; the cpu side keeps heads float as the triton target does (no outlier head)."""
    m = tiny_model(kind)
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model_output(m(input_ids=ids))
        out, code, reports = _run(m, ids, {"target": "triton", "preset": preset})
        cpu, _, _ = _run(m, ids, {"target": "cpu", "preset": preset, "heads": "float", **cpu_options})
    notes = " ".join(n for r in reports for n in r.notes)
    assert ": triton (target 'triton')" in notes, notes
    assert not torch.isnan(out).any()
    vs_ref, vs_cpu, cpu_vs_ref = sqnr_db(ref, out), sqnr_db(cpu, out), sqnr_db(ref, cpu)
    print(f"{kind} {preset}: SQNR vs fp32 {vs_ref:.1f} dB (cpu target {cpu_vs_ref:.1f}), "
          f"vs cpu target {vs_cpu:.1f} dB")
    # the same quantized weights on both targets; gemm_a16 runs an fp32 model's activations in
    # bf16 (the CPU kernels may not): a little accuracy at most
    assert vs_ref > FLOOR.get(preset, FLOOR["w4a16"]) and vs_ref > cpu_vs_ref - 3
    return code, [d for r in reports for d in r.quantized], reports


@pytest.mark.parametrize("preset", ["w8a16", "w4a16"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_weight_only_preset_runs_gemm_a16(kind, preset):
    code, quantized, _ = _both_targets(kind, preset, 0)
    assert quantized and all(d.scheme == preset for d in quantized), {d.module: d.scheme for d in quantized}
    # every weight-only linear is one gemm_a16 launch; no CPU kernel or dequantized weight left
    assert code.count("zq.triton_linear_a16.default(") == len(quantized)
    assert "zq.linear_wo.default" not in code and "_weight_int" not in code


#: what fuse_gemm_epilogue moves into gemm_a16 on a 16-bit model with 2 layers: the residual
#: after the attention output and the down projection, GPT-2's tanh GeLU after c_fc
WO_FUSIONS = {"llama": {"gemm+residual": 4}, "gpt2": {"gemm+residual": 4, "gemm+gelu_tanh": 2}}


@pytest.mark.parametrize("kind, preset", [("llama", "w4a16"), ("gpt2", "w8a16")])
def test_16_bit_model_fuses_the_weight_only_epilogue(kind, preset):
    m = tiny_model(kind).to(torch.bfloat16)
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model_output(m(input_ids=ids)).float()
        out, code, reports = _run(m, ids, {"target": "triton", "preset": preset})
        plain, _, _ = _run(m, ids, {"target": "triton", "preset": preset, "disable_passes": ("fuse_gemm_epilogue",)})
    quantized = [d for r in reports for d in r.quantized]
    assert out.dtype == torch.bfloat16 and code.count("zq.triton_linear_a16.default(") == len(quantized)
    fusions = {k: sum(r.fusions.get(k, 0) for r in reports) for k in WO_FUSIONS[kind]}
    assert fusions == WO_FUSIONS[kind]
    assert sqnr_db(ref, out.float()) > FLOOR[preset]
    # the same sums in the kernel's fp32 epilogue instead of a bf16 add after it
    assert sqnr_db(plain.float(), out.float()) > 30


def test_fp32_model_keeps_the_weight_only_epilogue_outside_and_says_why():
    m = tiny_model("llama")
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        _, _, reports = _run(m, ids, {"target": "triton", "preset": "w8a16"})
    assert not any(r.fusions for r in reports)
    whys = [f for r in reports for f in r.fusion_fallbacks]
    assert whys and all("weight-only GEMM on torch.float32 activations" in f for f in whys), whys


#: the schemes a preset gives the tiny models' linears on target "triton" (keep_float may keep the
#: LM head, the report's "skipped")
MIXED = {"w4a8": {"w4a8"}, "w4/8a8": {"w8a8", "w4a8"}}


@pytest.mark.parametrize("preset", ["w4a8", "w4/8a8"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_int4_presets_with_int8_activations_run_gemm_a8_on_int4(kind, preset):
    from tests.triton_interp.test_models import _calls

    code, quantized, reports = _both_targets(kind, preset, 2, attention="fp32")
    assert {d.scheme for d in quantized} == MIXED[preset]
    assert "zq.linear_w4a8.default" not in code and "_weight_int" not in code
    # each W4A8 linear is one gemm_a8 launch on the INT4 weight (w_bits 4: the 9th argument, the
    # 8th where the GEMM quantizes its own input), with its epilogue fused as W8A8's would be;
    # SwiGLU's gate rides in its up projection's launch (fuse_gate_up, on K groups too)
    calls = [args[8] for op in ("triton_linear_a8", "triton_linear_a8_requant") for args in _calls(code, f"zq.{op}.default")]
    calls += [args[7] for args in _calls(code, "zq.triton_quantize_linear_a8.default")]
    gate_up = sum(r.fusions.get("gate+up", 0) for r in reports)
    assert gate_up == (2 if kind == "llama" else 0)
    assert calls.count("4") + gate_up == sum(d.scheme == "w4a8" for d in quantized), calls
    assert all(d.fused for d in quantized), [(d.module, d.scheme) for d in quantized if not d.fused]


@pytest.mark.parametrize("preset", ["w4/8a8", "w4a16"])
def test_saved_int4_weights_load_and_run_on_target_triton(preset, tmp_path, monkeypatch):
    """zq_compile.save / load on target "triton": the INT4 K-group weights the GEMMs read are the
    file's (no re-quantization), and the outputs are bit for bit the ones before saving."""
    import zq_compile
    import zq_compile.schemes.w4a8 as w4a8
    import zq_compile.schemes.w8a8 as w8a8
    import zq_compile.schemes.weight_only as weight_only

    config = zq_compile.ZeroQuantConfig(preset=preset, target="triton")
    ids = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(3))

    def refuse(*a, **k):
        raise AssertionError("a weight was quantized again")

    def forbid_quantizing():
        for module, name in ((w8a8, "quantize_weight"), (w4a8, "quantize_int4"), (weight_only, "quantize_int4"),
                             (weight_only, "quantize_weight")):
            monkeypatch.setattr(module, name, refuse)

    before, after, loaded = save_and_reload("llama", config, ids, tmp_path / "w.safetensors", forbid_quantizing)
    assert loaded == config
    assert torch.equal(before, after)


def test_report_counts_the_triton_gemms_bytes_as_stored():
    """report.gemm_bytes on target "triton" counts INT4 weights at half a byte: W8A16 and W4A16
    of one bf16 model differ by exactly half of each quantized weight's values."""
    m = tiny_model("llama").to(torch.bfloat16)
    ids = torch.randint(0, 1000, (1, 5), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        reports = {p: _run(m, ids, {"target": "triton", "preset": p})[2] for p in ("w8a16", "w4a16")}
    w8, w4 = (sum(r.gemm_bytes for r in reports[p]) for p in ("w8a16", "w4a16"))
    modules = {d.module for r in reports["w4a16"] for d in r.quantized}
    assert modules == {d.module for r in reports["w8a16"] for d in r.quantized} and w4 > 0
    assert w8 - w4 == sum(m.get_submodule(name).weight.numel() // 2 for name in modules)
