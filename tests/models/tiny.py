"""Tiny Hugging Face models with random weights: for structure and numerics tests only, never
for accuracy claims (those use real weights, see test_minilm.py and bench/)."""

import torch


def _build(kind: str):
    import transformers as tf

    common = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
    if kind == "bert":
        cfg = tf.BertConfig(intermediate_size=128, max_position_embeddings=128, **common)
        return tf.BertModel(cfg)
    if kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128)
        return tf.GPT2LMHeadModel(cfg)
    if kind == "llama":
        cfg = tf.LlamaConfig(intermediate_size=160, num_key_value_heads=2, max_position_embeddings=128, **common)
        return tf.LlamaForCausalLM(cfg)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return _build(kind).eval()


def linear_module_count(model) -> int:
    from transformers.pytorch_utils import Conv1D

    return sum(isinstance(m, (torch.nn.Linear, Conv1D)) for m in model.modules())


def model_output(out):
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def save_and_reload(kind: str, config, ids, path, before_load=lambda: None):
    """(output of a tiny model compiled with ``config``, the output of a fresh copy loaded from
    the file ``zq_compile.save`` wrote and compiled with the config ``load`` returned, that
    config); ``before_load`` runs between saving and loading (to forbid re-quantizing, say)."""
    import zq_compile

    def output(model, config):
        torch._dynamo.reset()
        with torch.inference_mode():
            return model_output(zq_compile.compile(model, config)(ids))

    model = tiny_model(kind)
    before = output(model, config)
    zq_compile.save(model, path)
    fresh = tiny_model(kind)
    before_load()
    loaded = zq_compile.load(path, fresh)
    return before, output(fresh, loaded), loaded
