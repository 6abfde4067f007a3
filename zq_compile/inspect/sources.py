"""What ``zeroquant inspect MODEL`` accepts, loaded offline: a bundled model name, a local
Hugging Face model directory, or ``module:factory`` returning ``(model, example_inputs)``.

Every problem with MODEL raises ``ModelSourceError`` with one line naming what was wrong.
"""

from __future__ import annotations

import glob
import importlib
import os
import sys

import torch

WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.gguf", "*.pt", "*.pth")


class ModelSourceError(Exception):
    """MODEL could not be turned into a model and example inputs."""


def _minilm():
    from zq_compile.data import polarity_sentences
    from zq_compile.models import load_minilm

    model, tokenizer = load_minilm()
    texts = [s for s, _ in polarity_sentences()[:8]]
    # padded to the longest sentence only: padding positions carry no meaning, yet count in the
    # output's error
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=128, return_tensors="pt")
    return "MiniLM-L6 (all-MiniLM-L6-v2)", model, dict(enc)


def _smollm2():
    from zq_compile.benchmarks.models import smollm2
    from zq_compile.data import wikipedia_prose

    bench, tokenizer = smollm2()
    ids = tokenizer(" ".join(wikipedia_prose()[:4]), return_tensors="pt").input_ids[:, :128]
    return "SmolLM2-135M-Instruct", bench.model, {"input_ids": ids, "use_cache": False}


BUNDLED = {"minilm": _minilm, "smollm2": _smollm2}


def load(spec: str):
    """(display name, model, example_inputs) for MODEL."""
    if spec in BUNDLED:
        try:
            return BUNDLED[spec]()
        except (ImportError, RuntimeError, OSError) as exc:
            raise ModelSourceError(f"bundled model {spec!r} is not installed: {_line(exc)}") from exc
    if os.path.isdir(spec):
        return _hf_dir(spec)
    if os.path.exists(spec):
        raise ModelSourceError(f"{spec}: a file, not a model directory (MODEL is a bundled name, a Hugging Face "
                               "model directory or module:factory)")
    if ":" in spec:
        return _factory(spec)
    raise ModelSourceError(f"unknown MODEL {spec!r}: use a bundled name ({', '.join(BUNDLED)}), a Hugging Face "
                           "model directory, or module:factory")


def _hf_dir(path: str):
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelSourceError(f"{path}: no Hugging Face model here (no config.json)")
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_FILES):
        raise ModelSourceError(f"{path}: config.json but no weights ({', '.join(WEIGHT_FILES)})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers as tf

    try:
        config = tf.AutoConfig.from_pretrained(path)
        causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
        auto = tf.AutoModelForCausalLM if causal else tf.AutoModel
        model = auto.from_pretrained(path, dtype=torch.float32).eval()
    except Exception as exc:  # noqa: BLE001  (any loader failure is the user's MODEL)
        raise ModelSourceError(f"{path}: transformers could not load it: {_line(exc)}") from exc
    vocab = getattr(config, "vocab_size", None) or 1000
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    if causal:
        inputs["use_cache"] = False
    return os.path.basename(os.path.normpath(path)), model, inputs


def _factory(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelSourceError(f"{spec!r}: write module:factory, e.g. mymodels:build")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `zeroquant inspect mymodels:build` from the module's folder
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"cannot import module {module_name!r}: {_line(exc)}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSourceError(f"module {module_name!r} has no callable {attr!r}")
    try:
        result = factory()
    except Exception as exc:  # noqa: BLE001
        raise ModelSourceError(f"factory {spec} raised {type(exc).__name__}: {_line(exc)}") from exc
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise ModelSourceError(f"factory {spec} must return (model, example_inputs), got {type(result).__name__}")
    return spec, result[0], result[1]


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
