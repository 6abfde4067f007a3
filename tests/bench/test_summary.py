"""CPU class, the fastest-peer summary, the CPU class in every table, and calibration data that is
never the measured data (no compiling)."""

import pytest
import torch

from zq_compile.benchmarks import calibration, render
from zq_compile.benchmarks.contenders import BASELINE, BenchModel
from zq_compile.cpu_class import AMX, AVX2, AVX512, AVX512_VNNI, OLDER, cpu_class, cpu_class_label


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}, AMX),
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}, AVX512_VNNI),  # Zen 4/5
    ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, AVX512_VNNI),  # Cascade Lake
    ({"avx2", "avx512f", "avx512bw"}, AVX512),  # Skylake-SP
    ({"avx2", "fma", "avx_vnni"}, AVX2),  # AVX-VNNI is 256-bit: still the AVX2 class
    ({"sse4_2"}, OLDER),
])
def test_cpu_class_from_flags(flags, expected):
    assert cpu_class(flags) == expected


def test_cpu_class_label_says_whether_bf16_is_native():
    assert cpu_class_label({"avx512f", "avx512_vnni", "avx512_bf16"}) == "AVX-512 VNNI, native bf16"
    assert cpu_class_label({"avx2"}) == "AVX2, no native bf16"
    assert cpu_class_label() .split(",")[0] == cpu_class()  # this machine's, from /proc/cpuinfo


def _result() -> dict:
    ms = {BASELINE: 400.0, "inductor bf16+freezing": 130.0, "pt2e x86 static": 110.0, "zeroquant w8a8": 100.0}
    return {
        "mode": "quick", "date": "today", "wall_s": 1.0, "plan": {"runs": 3, "warmup": 1},
        "load_average_start": (1.0, 1.0, 1.0), "load_average_end": (1.0, 1.0, 1.0),
        # a result written before the class was recorded: it is derived from the flags
        "machine": {"cpu_model": "cpu", "logical_cpus": 2, "torch_threads": 2,
                    "cpu_flags": ["avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_bf16"],
                    "versions": {"torch": "t", "torchao": "a", "transformers": "x"}},
        "contenders": [{"name": BASELINE, "family": "float", "how": "torch.compile"},
                       {"name": "inductor bf16+freezing", "family": "float"},
                       {"name": "pt2e x86 static", "family": "peer"},
                       {"name": "zeroquant w8a8", "family": "zeroquant"}],
        "sections": {
            "minilm": {"model": "MiniLM-L6", "note": "n", "latency": [
                {"batch": 32, "seq": 128, "ms": ms, "speedup_vs_inductor_fp32": {k: 400.0 / v for k, v in ms.items()}}],
                "contenders": {k: {"ok": True} for k in ms}},
            "smollm2": {"model": "SmolLM2", "note": "n", "prefill_tokens": 256, "decode_tokens": 4, "text": "",
                        "prefill": {"ms": {BASELINE: 300.0, "pt2e x86 static": 90.0, "zeroquant w8a8": 120.0},
                                    "speedup_vs_inductor_fp32": {}},
                        "decode": {BASELINE: {"tokens_per_s": 20.0}, "inductor bf16+freezing": {"tokens_per_s": 50.0},
                                   "zeroquant w8a8": {"tokens_per_s": 60.0}},
                        "contenders": {}},
        },
    }


def test_fastest_peer_is_the_fastest_non_zeroquant_contender_and_zeroquant_is_compared_to_it():
    rows = {r["what"]: r for r in render.fastest_peers(_result())}
    head = rows["32x128 ms"]
    assert head["fastest_peer"] == "pt2e x86 static" and head["fastest_peer_value"] == 110.0
    assert head["zeroquant"]["zeroquant w8a8"]["vs_fastest_peer"] == pytest.approx(1.1)
    assert rows["prefill 1x256 ms"]["zeroquant"]["zeroquant w8a8"]["vs_fastest_peer"] == pytest.approx(0.75)
    decode = rows["decode tok/s"]  # higher is better there
    assert decode["fastest_peer"] == "inductor bf16+freezing"
    assert decode["zeroquant"]["zeroquant w8a8"]["vs_fastest_peer"] == pytest.approx(1.2)


def test_the_printed_bench_leads_with_the_fastest_peers_and_every_table_names_the_cpu_class():
    text = render.markdown(_result())
    assert "| MiniLM-L6 | 32x128 ms | pt2e x86 static | 110.0 | 100.0 (1.10x) |" in text
    captions = [line for line in text.splitlines() if line.startswith("**")]
    assert len(captions) == 3  # fastest peers, MiniLM, SmolLM2
    assert all("CPU class: AMX, native bf16." in line for line in captions)
    assert "- inductor fp32: torch.compile" in text


def test_calibration_batches_are_other_data_in_the_measured_shapes():
    bm = BenchModel("m", torch.nn.Identity(), "causal-lm")
    measured = {"input_ids": torch.arange(12).view(1, 12)}
    with pytest.raises(RuntimeError, match="no calibration data"):
        bm.calibration_batches(measured)
    bm.calibration = lambda inputs: [dict(inputs)]
    with pytest.raises(ValueError, match="equals the measured inputs"):
        bm.calibration_batches(measured)
    bm.calibration = lambda inputs: [{"input_ids": torch.zeros(1, 11, dtype=torch.long)}]
    with pytest.raises(ValueError, match="shape"):
        bm.calibration_batches(measured)
    bm.calibration = calibration.token_stream(torch.arange(100, 200))
    batches = bm.calibration_batches(measured)
    assert len(batches) == calibration.BATCHES and batches[1]["input_ids"].tolist() == [list(range(112, 124))]


def test_sentence_calibration_never_uses_the_measured_sentences():
    from zq_compile.data import polarity_sentences

    chosen = calibration.wikipedia_sentences()
    assert len(chosen) == 512 and not set(chosen) & {s for s, _ in polarity_sentences()}


def test_minilm_table_says_why_accuracy_is_missing_instead_of_question_marks():
    result = _result()
    result["sections"]["minilm"]["accuracy"] = {"error": "eager fp32 failed: no reference"}
    head = render.minilm_table(result)[0]
    assert "accuracy not measured (eager fp32 failed: no reference)" in head and "?" not in head
    result["sections"]["minilm"]["accuracy"] = {"sentences": 200, "split": {"test": 60}, "per_contender": {}}
    assert "accuracy on the 200 Pang & Lee sentences (sentiment: test split of 60)" in render.minilm_table(result)[0]
