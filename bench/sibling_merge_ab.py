"""How much does one GEMM for Q, K and V (and for gate and up) save end to end?

Linears that read one activation (Q/K/V; a Llama MLP's gate and up) run as separate int8 GEMMs
on one shared quantized input. Merged into one GEMM over the concatenated weights, the input is
read once and the GEMM gets wider, which a microbenchmark of the GEMMs alone favours (oneDNN
u8s8 on the AMX Xeon: BERT's QKV 1.23x, SmolLM2's 1.93x at 256 tokens, gate/up 1.07x). Before
the merge was built as an FX pass (``passes/merge_sibling_gemms.py``), this script measured what
it could give a whole forward by merging the weights in the model itself (one ``nn.Parameter``
per group, the outputs split by columns, every value unchanged). It now compiles, side by side
in one process, with ``pipeline_race='off'`` and the plain options (no smoothing, float head) so
that all run the same int8 pipeline: the model with the pass switched off ("separate"), the
model with the pass ("merged by the pass"), and the model merged by hand with the pass off (the
bound it was built against).

    .venv/bin/python bench/sibling_merge_ab.py [--rounds 3] [--json out.json]

Models: BERT-base (random weights) 8 x 128 and SmolLM2-135M prefill 1 x 256 (the first window of
the bench's Wikipedia prose). Per-row weight scales make the merged quantization equal to the
separate ones, so outputs are expected equal (BERT: bit for bit); differences are printed.
"""

from __future__ import annotations

import copy
import itertools
import os
import statistics
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLAIN = {"smooth": False, "keep_float": 0, "heads": "float", "pipeline_race": "off"}


def _bert_attention(self, hidden_states, attention_mask=None, cache=None, **kwargs):
    import transformers.models.bert.modeling_bert as mb

    shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
    q, k, v = (t.view(shape).transpose(1, 2) for t in F.linear(hidden_states, self.zq_w, self.zq_b).split(self.zq_n, -1))
    attend = mb.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, mb.eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    return out.reshape(*hidden_states.shape[:-1], -1).contiguous(), weights


def _llama_attention(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
    import transformers.models.llama.modeling_llama as ml

    shape = (*hidden_states.shape[:-1], -1, self.head_dim)
    q, k, v = (t.view(shape).transpose(1, 2) for t in F.linear(hidden_states, self.zq_w).split(self.zq_n, -1))
    q, k = ml.apply_rotary_pos_emb(q, k, *position_embeddings)
    attend = ml.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, ml.eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=0.0, scaling=self.scaling, **kwargs)
    return self.o_proj(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


def _llama_mlp(self, x):
    gate, up = F.linear(x, self.zq_w).split(self.zq_n, -1)
    return self.down_proj(self.act_fn(gate) * up)


def _merge(module, names: tuple[str, ...], forward) -> None:
    linears = [getattr(module, n) for n in names]
    module.zq_w = torch.nn.Parameter(torch.cat([m.weight for m in linears]))
    if linears[0].bias is not None:
        module.zq_b = torch.nn.Parameter(torch.cat([m.bias for m in linears]))
    module.zq_n = [m.weight.shape[0] for m in linears]
    module.forward = types.MethodType(forward, module)


def merged_copy(model, mlp: bool):
    """A copy of ``model`` whose Q/K/V (and, with ``mlp``, gate/up) run as one linear each."""
    import transformers.models.bert.modeling_bert as mb
    import transformers.models.llama.modeling_llama as ml

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, mb.BertSelfAttention):
            _merge(m, ("query", "key", "value"), _bert_attention)
        elif isinstance(m, ml.LlamaAttention):
            _merge(m, ("q_proj", "k_proj", "v_proj"), _llama_attention)
        elif mlp and isinstance(m, ml.LlamaMLP):
            _merge(m, ("gate_proj", "up_proj"), _llama_mlp)
    return model


def _forward(model, inputs):
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out[0]


OFF = {**PLAIN, "disable_passes": ("merge_sibling_gemms",)}


def compare(title: str, variants: dict, inputs: dict, rounds: int) -> dict:
    """``variants``: name -> (model, zeroquant options)."""
    from zq_compile.timing import interleaved_medians

    compiles = itertools.count()
    fns, outs = {}, {}
    with torch.inference_mode():
        for name, (model, options) in variants.items():
            # a code object per variant: Dynamo would otherwise reuse the first one's graph
            code = _forward.__code__.replace(co_name=f"forward_{next(compiles)}")
            f = torch.compile(types.FunctionType(code, _forward.__globals__), backend="zeroquant", options=options)
            outs[name] = f(model, inputs)
            fns[name] = (lambda f, m: lambda: f(m, inputs))(f, model)
        first = next(iter(variants))
        diffs = {n: (outs[n].float() - outs[first].float()).abs().max().item() for n in outs}
        per_round = [interleaved_medians(fns, runs=9, warmup=2) for _ in range(rounds)]
    ms = {n: statistics.median(r[n] for r in per_round) for n in fns}
    print(f"\n{title}, zeroquant {PLAIN} (the pass off where named)")
    for n in fns:
        rounds_text = ", ".join(f"{r[n]:.1f}" for r in per_round)
        print(f"  {n}: {ms[n]:.1f} ms ({ms[first] / ms[n]:.3f}x {first}; rounds {rounds_text}); "
              f"max |output - {first}| {diffs[n]:g}")
    return {"ms": ms, "rounds": per_round, "max_abs_diff": diffs}


def main() -> None:
    from zq_compile.benchmarks.accuracy import token_windows
    from zq_compile.benchmarks.machine import targeted_bench_end, targeted_bench_start
    from zq_compile.benchmarks.models import bert_base_random, smollm2
    from zq_compile.data import wikipedia_prose

    args, info, started = targeted_bench_start(__doc__, rounds=3)
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "0"
    result = {"machine": info}
    bert = bert_base_random().model
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (8, 128), generator=g),
              "attention_mask": torch.ones(8, 128, dtype=torch.long)}
    result["bert"] = compare("BERT-base (random) 8x128", {
        "separate": (bert, OFF), "merged by the pass": (bert, PLAIN),
        "merged qkv by hand": (merged_copy(bert, False), OFF)}, inputs, args.rounds)
    del bert
    bm, tok = smollm2()
    ids = tok("\n\n".join(wikipedia_prose()), return_tensors="pt").input_ids
    inputs = {"input_ids": token_windows(ids, 256, 1), "use_cache": False}
    variants = {"separate": (bm.model, OFF), "merged by the pass": (bm.model, PLAIN),
                "merged qkv + gate/up by hand": (merged_copy(bm.model, True), OFF)}
    result["smollm2"] = compare("SmolLM2-135M prefill 1x256", variants, inputs, args.rounds)
    targeted_bench_end(args, started, result)


if __name__ == "__main__":
    main()
