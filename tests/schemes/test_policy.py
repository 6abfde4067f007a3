"""Scheme policy: attention/FFN roles from the graph, overrides, INT4 grouping fallbacks.

Graphs are captured by Dynamo and prepared (policy, quantization, rewrite) without Inductor."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.models.tiny import tiny_model
from zq_compile.backend import prepare
from zq_compile.config import ZeroQuantConfig


def _prepare(model, *args, **config):
    out = []

    def backend(gm, example_inputs):
        # keep_float=0: these tests are about schemes; the accuracy policy would keep lm_head float
        out.append(prepare(gm, example_inputs, ZeroQuantConfig(**{"keep_float": 0, **config})))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend)(*args)
    return out[0]


def _by_module(prepared):
    return {d.module: d for d in prepared.report.decisions}


def _ids():
    return torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(0))


#: Ground truth from the architectures (the policy itself never reads module names).
EXPECTED_ROLES = {
    "bert": {"attention.self.query": "attention", "attention.self.key": "attention",
             "attention.self.value": "attention", "attention.output.dense": "attention",
             "intermediate.dense": "ffn", "output.dense": "ffn", "pooler.dense": "other"},
    "gpt2": {"attn.c_attn": "attention", "attn.c_proj": "attention", "mlp.c_fc": "ffn",
             "mlp.c_proj": "ffn", "lm_head": "other"},
    "llama": {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "attention",
              "gate_proj": "ffn", "up_proj": "ffn", "down_proj": "ffn", "lm_head": "other"},
}


def _expected(kind, module):
    hits = [role for suffix, role in EXPECTED_ROLES[kind].items() if module.endswith(suffix)]
    assert hits, module
    return hits[0] if not module.endswith("output.dense") or "attention" in module else "ffn"


@pytest.mark.parametrize("kind", [pytest.param("bert", marks=pytest.mark.slow),
                                  pytest.param("gpt2", marks=pytest.mark.slow), "llama"])
def test_roles_of_tiny_hf_models(kind):
    p = _prepare(tiny_model(kind), _ids(), preset="w4/8a8")
    decisions = p.report.decisions
    assert len(decisions) >= 9
    for d in decisions:
        want = _expected(kind, d.module)
        assert d.role == want, (d.module, d.role)
        assert d.scheme == {"attention": "w8a8", "ffn": "w4a8", "other": "w8a8"}[want], d


class OddNames(nn.Module):
    """An architecture with names no model family uses: hand-written matmul-softmax attention
    and a ReLU FFN, plus a head with no activation after it."""

    def __init__(self, d=64):
        super().__init__()
        self.a, self.b, self.c, self.e = (nn.Linear(d, d) for _ in range(4))
        self.p, self.q = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.z = nn.Linear(d, 10)

    def forward(self, x):
        s = self.a(x) @ self.b(x).transpose(-1, -2) / 8
        h = x + self.e(torch.softmax(s, dim=-1) @ self.c(x))
        h = h + self.q(F.relu(self.p(h)))
        return torch.tanh(self.z(h))


def test_roles_come_from_the_graph_not_the_names():
    p = _prepare(OddNames(), torch.randn(2, 5, 64), preset="w4/8a8")
    roles = {d.module: d.role for d in p.report.decisions if d.shape is not None}
    # the two activation-activation matmuls are decisions too (left float: no constant weight)
    assert sum(d.shape is None for d in p.report.decisions) == 2
    assert roles == {"a": "attention", "b": "attention", "c": "attention", "e": "attention",
                     "p": "ffn", "q": "ffn", "z": "other"}


def test_overrides_by_glob_type_and_role():
    m = tiny_model("llama")
    p = _prepare(m, _ids(), preset="w4/8a8", overrides={"*.mlp.*": "w4a16", "*.mlp.down_proj": "w8a16"},
                 module_types={"LlamaAttention": "w8a16"}, roles={"lm_head": "ffn"})
    for module, d in _by_module(p).items():
        if module.endswith("down_proj"):  # the longer, more specific glob wins
            assert d.scheme == "w8a16" and "override glob '*.mlp.down_proj'" in d.reason
        elif ".mlp." in module:
            assert d.scheme == "w4a16" and "override glob '*.mlp.*'" in d.reason
        elif "self_attn" in module:
            assert d.scheme == "w8a16" and "module type LlamaAttention" in d.reason
        else:
            assert module.endswith("lm_head") and d.scheme == "w4a8" and "roles glob" in d.reason


def test_skip_still_wins():
    p = _prepare(tiny_model("llama"), _ids(), preset="w4a8", skip=("lm_head",))
    head = [d for d in p.report.decisions if d.module.endswith("lm_head")]
    assert head and head[0].scheme is None and "skip glob" in head[0].reason


@pytest.mark.parametrize("k, preset, scheme, says", [
    (256, "w4a8", "w4a8", "group_size 128"),
    (160, "w4a8", "w4a8", "group_size 32 (group_size=128 does not divide K=160)"),
    (192, "w4a16", "w4a16", "group_size 64 (group_size=128 does not divide K=192)"),
    (100, "w4a8", "w8a8", "kept 8-bit weights: K=100"),
    (100, "w4a16", "w8a16", "kept 8-bit weights: K=100"),
])
def test_int4_input_width_not_divisible_by_group_size(k, preset, scheme, says):
    p = _prepare(nn.Linear(k, 32), torch.randn(3, k), preset=preset)
    (d,) = p.report.decisions
    assert d.scheme == scheme and says in d.reason, d.reason


@pytest.mark.parametrize("preset", ["w4a8", "w4a16"])
def test_int4_stays_packed_in_the_graph_constants(preset):
    p = _prepare(nn.Linear(256, 64), torch.randn(3, 256), preset=preset)
    weights = [t for t in p.constants if not t.is_floating_point()]
    assert len(weights) == 1 and weights[0].dtype == torch.uint8 and weights[0].shape == (64, 128)
    held = weights[0].untyped_storage().nbytes()
    assert held in (1, 64 * 128)  # a handle to the kernel's own INT4 copy, or our packed bytes
    assert p.report.quant_bytes == 64 * 128 + 64 * 2 * 4  # nibbles + one fp32 scale per block
