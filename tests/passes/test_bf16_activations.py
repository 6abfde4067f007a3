"""bf16_activations: read the code Inductor generated for a BERT encoder. On a CPU with native
bf16, no fp32 [tokens, features] buffer lies between two quantized linears and the oneDNN GEMMs
write bf16; with activations="fp32" (or the pass disabled) the fp32 path is back."""

import math
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import zq_compile.codegen.cpu.select as select
from tests.conftest import capture
from zq_compile import ZeroQuantConfig, recent_reports
from zq_compile.backend import prepare
from zq_compile.codegen.cpu.kernels import KERNELS
from zq_compile.metrics import sqnr_db

TOKENS, HIDDEN, FFN = 2 * 24, 64, 128
needs_bf16 = pytest.mark.skipif(not select.has_bf16(), reason="this CPU has no native bf16")
needs_onednn = pytest.mark.skipif(KERNELS["onednn"].unavailable_reason() is not None,
                                  reason=str(KERNELS["onednn"].unavailable_reason()))


def _bert(dtype=torch.float32):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=500, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=FFN, max_position_embeddings=64)
    return tf.BertModel(cfg, add_pooling_layer=False).to(dtype).eval()


def _ids():
    return torch.randint(0, 500, (2, 24), generator=torch.Generator().manual_seed(1))


def _compile(model, **options):
    compiled = torch.compile(model, backend="zeroquant", options={"cpu_kernel": "onednn", **options})
    with torch.inference_mode():
        out, (code,) = run_and_get_code(lambda: compiled(input_ids=_ids()).last_hidden_state)
    return out, code, recent_reports()[-1]


def _buffers(wrapper):
    """name -> (shape, dtype) of every buffer the wrapper names: allocated, returned by a GEMM,
    reused under a new name, or reinterpreted with a new shape; and the returned buffer's names
    (itself and every buffer it was reused from)."""
    found = {}
    for line in wrapper.splitlines():
        line = line.strip()
        if m := re.match(r"(buf\d+) = empty_strided_cpu\(\(([\d, ]+)\), \([^)]*\), (torch\.\w+)\)", line):
            found[m[1]] = (tuple(int(d) for d in m[2].split(",") if d.strip()), m[3])
        elif m := re.match(r"(buf\d+) = torch\.ops\.zq\.onednn_u8s8_mm\.default\((\w+), (\w+)(.*)\)$", line):
            found[m[1]] = (None, "torch.bfloat16" if "bfloat16" in m[4] else "torch.float32")
        elif m := re.match(r"assert_size_stride\((buf\d+), \(([\d, ]+)\)", line):
            if m[1] in found and found[m[1]][0] is None:
                found[m[1]] = (tuple(int(d) for d in m[2].split(",") if d.strip()), found[m[1]][1])
        elif m := re.match(r"(buf\d+) = (buf\d+)(;|$)", line):
            found[m[1]] = found.get(m[2], (None, None))
            found.setdefault("__from__", {})[m[1]] = m[2]
        elif m := re.match(r"(buf\d+) = reinterpret_tensor\((buf\d+), \(([\d, ]+)\)", line):
            found[m[1]] = (tuple(int(d) for d in m[3].split(",") if d.strip()), found.get(m[2], (None, None))[1])
            found.setdefault("__from__", {})[m[1]] = m[2]
    origin = found.pop("__from__", {})
    returned = set(re.findall(r"return \(([^)]*)\)", wrapper)[-1].replace(",", " ").split())
    for name in list(returned):
        while name in origin:
            name = origin[name]
            returned.add(name)
    return found, returned


def _activations(wrapper, dtype):
    """Names of [tokens, features] buffers of ``dtype`` (batch-major, so attention's per-head
    q/k/v buffers [B, H, L, D] are not among them; its output [B, L, H, D] is)."""
    found, _ = _buffers(wrapper)
    return sorted(name for name, (shape, dt) in found.items()
                  if dt == dtype and shape and shape[:2] in ((2, 24), (TOKENS, HIDDEN), (TOKENS, FFN))
                  and math.prod(shape) in (TOKENS * HIDDEN, TOKENS * FFN))


def _gemm_calls(code):
    return re.findall(r"torch\.ops\.zq\.onednn_u8s8_mm\.default\((\w+), [^\n]*", code)


@needs_bf16
@needs_onednn
def test_bf16_cpu_no_fp32_activation_between_quantized_linears():
    m = _bert()
    out, code, report = _compile(m, activations="bf16")
    with torch.inference_mode():
        ref = m(input_ids=_ids()).last_hidden_state
    assert out.dtype == torch.float32 and sqnr_db(ref, out) > 25
    assert report.pass_counts["bf16_activations"] > 0 and "bf16 storage" in report.activations
    wrapper = code.split("def call(")[1]
    calls = re.findall(r"torch\.ops\.zq\.onednn_u8s8_mm\.default\([^\n]*", wrapper)
    # 2 layers x (Q/K/V as one GEMM, merge_sibling_gemms; output; FFN1; FFN2), all writing bf16
    assert len(calls) == 8 and all("torch.bfloat16" in c for c in calls), calls
    _, returned = _buffers(wrapper)
    fp32 = _activations(wrapper, "torch.float32")
    # the model's output (the last LayerNorm, after the last linear) is the one fp32 activation
    assert fp32 and set(fp32) <= returned, (fp32, returned)
    assert len(_activations(wrapper, "torch.bfloat16")) >= 8  # 2 layers x (GEMM outputs, norms, GeLU)


@needs_onednn
@pytest.mark.parametrize("how", [{"activations": "fp32"},
                                 pytest.param({"disable_passes": ("bf16_activations",)}, marks=pytest.mark.slow)])
def test_fp32_path_when_bf16_is_switched_off(how):
    m = _bert()
    out, code, report = _compile(m, **how)
    wrapper = code.split("def call(")[1]
    calls = re.findall(r"torch\.ops\.zq\.onednn_u8s8_mm\.default\([^\n]*", wrapper)
    assert len(calls) == 8 and not any("bfloat16" in c for c in calls), calls  # Q/K/V merged
    _, returned = _buffers(wrapper)
    assert set(_activations(wrapper, "torch.float32")) - returned  # fp32 between the GEMMs
    assert not _activations(wrapper, "torch.bfloat16")
    # One GEMM input per GEMM (Q, K and V are one GEMM): 4 per layer (LN, attention, LN, GeLU),
    # and no int8 copy of an activation is written.
    inputs = _gemm_calls(wrapper)
    assert len(inputs) == 8 and len(set(inputs)) == 8, inputs
    found, _ = _buffers(wrapper)
    assert not [name for name, (_, dtype) in found.items() if dtype == "torch.int8"]
    assert report.pass_counts.get("bf16_activations", 0) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)])
def test_bf16_and_fp16_models_keep_their_dtype(dtype):
    m = _bert(dtype)
    compiled = torch.compile(m, backend="zeroquant")
    with torch.inference_mode():
        out = compiled(input_ids=_ids()).last_hidden_state
    report = recent_reports()[-1]
    assert out.dtype == dtype and not torch.isnan(out).any()
    assert report.pass_counts.get("bf16_activations", 0) == 0
    assert "keep their dtype" in report.activations or "no native bf16" in report.activations


def test_bf16_asked_on_a_cpu_without_it_is_a_value_error(monkeypatch):
    monkeypatch.setattr(select, "has_bf16", lambda: False)
    with pytest.raises(ValueError, match=r"activations='bf16'.*allowed: auto, fp32"):
        ZeroQuantConfig(activations="bf16")
    with pytest.raises(ValueError, match=r"activations='fp16'.*allowed: auto, bf16, fp32"):
        ZeroQuantConfig(activations="fp16")
    # the triton target never reads this field: no CPU check there
    assert ZeroQuantConfig(activations="bf16", target="triton").activations == "bf16"


def test_auto_keeps_fp32_on_a_cpu_without_bf16_with_the_reason(monkeypatch):
    monkeypatch.setattr(select, "has_bf16", lambda: False)
    m = _bert()
    gm, inputs = capture(lambda ids: m(input_ids=ids).last_hidden_state, _ids())
    with torch.no_grad():
        prepared = prepare(gm, inputs, ZeroQuantConfig(attention="fp32"))
    assert prepared.report.pass_counts["bf16_activations"] == 0
    assert "no native bf16" in prepared.report.activations
    linears = prepared.gm.graph.find_nodes(op="call_function", target=torch.ops.zq.linear_w8a8.default)
    assert linears and all(n.args[6] == torch.float32 for n in linears)
