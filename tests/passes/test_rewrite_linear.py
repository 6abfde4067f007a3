"""rewrite_linear on graphs Dynamo captured: what is rewritten, what is left, and why.

These run the passes without Inductor (``prepare``) and execute the rewritten graph eagerly, so
they are fast and see the graph itself.
"""

import operator

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import capture
from zq_compile import ZeroQuantConfig
from zq_compile.backend import m_regime, prepare
from zq_compile.metrics import sqnr_db


def _prepare(fn, *args, **config):
    # These tests read rewrite_linear's own output; in graphs of at most 16 rows decode_weight_only
    # may race it into linear_wo afterwards (tests/passes/test_decode_weight_only.py), and
    # merge_sibling_gemms joins linears that share an input (test_merge_sibling_gemms.py).
    config.setdefault("disable_passes", ("decode_weight_only", "merge_sibling_gemms"))
    gm, inputs = capture(fn, *args)
    with torch.no_grad():  # the backend runs in the grad mode of the call it compiles
        return prepare(gm, inputs, ZeroQuantConfig(**config)), inputs


def _run(prepared, inputs):
    with torch.no_grad():
        (out,) = prepared.gm(*inputs, *prepared.constants)  # Dynamo graphs return a tuple
    return out


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.target == target)


class Conv1D(torch.nn.Module):  # GPT-2's projection: addmm(b, x, W[K, N])
    def __init__(self, k, n):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(k, n) / k**0.5)
        self.bias = torch.nn.Parameter(torch.randn(n))

    def forward(self, x):
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], -1)


class Forms(torch.nn.Module):
    """Every linear-like form the pass must recognise."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(32, 48)
        self.w_kn = torch.nn.Parameter(torch.randn(48, 40) / 7)
        self.w_nk = torch.nn.Parameter(torch.randn(24, 40) / 7)
        self.w_sq = torch.nn.Parameter(torch.randn(24, 24) / 5)
        self.conv1d = Conv1D(24, 16)

    def forward(self, x):
        h = self.lin(x)  # nn.Linear
        h = h @ self.w_kn  # operator.matmul, W[K, N]
        h = torch.matmul(h, self.w_nk.t())  # matmul through a transpose
        h = F.linear(h, self.w_sq.t().contiguous())  # functional, through two folds
        h = torch.relu(h)
        return self.conv1d(h[..., :24])  # addmm


def test_every_linear_form_is_rewritten_and_accurate():
    m = Forms()
    x = torch.randn(3, 5, 32)
    p, inputs = _prepare(m, x)
    assert p.report.pass_counts["rewrite_linear"] == 5
    assert [d.op for d in p.report.quantized] == ["linear", "matmul", "matmul", "linear", "addmm"]
    assert _count(p.gm, torch.ops.zq.linear_w8a8.default) == 5
    assert _count(p.gm, torch._C._nn.linear) == _count(p.gm, operator.matmul) == 0
    with torch.no_grad():
        ref = m(x)
    assert sqnr_db(ref, _run(p, inputs)) > 25


def test_shared_activation_is_quantized_once():
    class QKV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(32, 32) for _ in range(3))

        def forward(self, x):
            return self.q(x) + self.k(x) * self.v(x)

    p, _ = _prepare(QKV(), torch.randn(4, 32))
    assert _count(p.gm, torch.ops.zq.linear_w8a8.default) == 3
    assert _count(p.gm, torch.ops.zq.quantize_per_token.default) == 1
    merged, _ = _prepare(QKV(), torch.randn(4, 32), disable_passes=("decode_weight_only",))
    assert _count(merged.gm, torch.ops.zq.linear_w8a8.default) == 1  # merge_sibling_gemms: one GEMM
    assert merged.report.pass_counts["rewrite_linear"] == 3


def test_shared_weight_is_quantized_once():
    lin = torch.nn.Linear(16, 16)

    def tied(x):
        return lin(lin(x))

    # (smoothing off: each input would get its own s, and so its own quantized W * s)
    p, _ = _prepare(tied, torch.randn(2, 16), smooth=False, keep_float=0)
    assert len(p.report.quantized) == 2
    assert len(p.constants) == 2  # one int8 weight + one scale tensor, shared
    assert "quantized once" in p.report.quantized[1].reason


def test_weights_are_quantized_at_compile_time_not_per_call():
    m = torch.nn.Linear(16, 8)
    p, _ = _prepare(m, torch.randn(2, 16), smooth=False)  # (smoothing adds a 1/s constant)
    w_q, w_s = p.constants
    assert w_q.dtype == torch.int8 and w_q.shape == (8, 16) and w_s.shape == (8,)
    assert _count(p.gm, torch.ops.zq.quantize_per_token.default) == 1  # activations only


@pytest.mark.parametrize("groups, expected", [(4, "4 groups"), (3, "1 groups (weight_groups=3 does not divide 8 rows)")])
def test_weight_groups(groups, expected):
    p, _ = _prepare(torch.nn.Linear(16, 8), torch.randn(2, 16), weight_groups=groups)
    assert expected in p.report.quantized[0].reason


def test_skip_globs_leave_modules_in_float_with_the_glob_as_reason():
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    p, inputs = _prepare(m, torch.randn(2, 8), skip=["2"])
    assert [d.module for d in p.report.quantized] == ["0"]
    (skipped,) = p.report.skipped
    assert skipped.module == "2" and "skip glob '2'" in skipped.reason
    assert _count(p.gm, torch._C._nn.linear) == 1


def test_runtime_weight_stays_float_with_reason():
    def f(x, w):
        return F.linear(x, w)

    p, inputs = _prepare(f, torch.randn(2, 8), torch.randn(4, 8))
    assert not p.report.quantized
    assert "computed at run time" in p.report.skipped[0].reason
    assert torch.equal(_run(p, inputs), F.linear(*inputs))


def test_unsupported_dtype_stays_float_with_reason():
    m = torch.nn.Linear(8, 4).double()
    p, inputs = _prepare(m, torch.randn(2, 8, dtype=torch.float64))
    assert "torch.float64 unsupported" in p.report.skipped[0].reason
    assert torch.allclose(_run(p, inputs), m(inputs[-1]))


def test_vector_matrix_product_stays_float():
    w = torch.nn.Parameter(torch.randn(8, 4))

    def f(x):
        return x @ w

    p, _ = _prepare(f, torch.randn(8))
    assert "1-D activation" in p.report.skipped[0].reason


def test_addmm_with_scaling_stays_float():
    m = Conv1D(8, 4)

    def f(x):
        return torch.addmm(m.bias, x, m.weight, beta=0.5)

    p, _ = _prepare(f, torch.randn(3, 8))
    assert "beta or alpha" in p.report.skipped[0].reason


def test_graph_without_linears_reports_it():
    p, inputs = _prepare(lambda x: torch.relu(x) * 2, torch.randn(3))
    assert not p.report.decisions
    assert any("no linear layers" in n for n in p.report.notes)
    assert "no linear layers found" in p.report.headline()


def test_disable_pass_by_name():
    p, _ = _prepare(torch.nn.Linear(8, 4), torch.randn(2, 8), disable_passes=["rewrite_linear"])
    assert p.report.disabled_passes == ["rewrite_linear"]
    assert _count(p.gm, torch.ops.zq.linear_w8a8.default) == 0


def test_dump_graphs_writes_before_and_after(tmp_path):
    _prepare(torch.nn.Linear(8, 4), torch.randn(2, 8), dump_graphs=str(tmp_path), disable_passes=())
    names = sorted(f.name for f in tmp_path.iterdir())
    from zq_compile.passes import PASS_ORDER

    assert [n.split("_", 1)[1] for n in names] == sorted(
        f"{i:02d}_{name}_{when}.py" for i, name in enumerate(PASS_ORDER) for when in ("after", "before"))
    assert len(names) == 2 * len(PASS_ORDER) >= 24
    after = next(f for f in tmp_path.iterdir() if f.name.endswith("rewrite_linear_after.py")).read_text()
    assert "zq.linear_w8a8" in after


def test_dynamo_graph_is_not_modified():
    gm, inputs = capture(torch.nn.Linear(8, 4), torch.randn(2, 8))
    before = str(gm.graph)
    with torch.no_grad():
        prepare(gm, inputs, ZeroQuantConfig())
    assert str(gm.graph) == before


def test_new_nodes_carry_fake_values():
    p, _ = _prepare(torch.nn.Linear(8, 4), torch.randn(2, 8))
    for node in p.gm.graph.nodes:
        if node.op in ("call_function", "placeholder"):
            assert "example_value" in node.meta, node.name
    (lin,) = [n for n in p.gm.graph.nodes if n.target == torch.ops.zq.linear_w8a8.default]
    assert lin.meta["example_value"].shape == (2, 4)


def test_buffer_modified_in_the_graph_is_not_a_constant():
    class Drift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("w", torch.randn(4, 8))

        def forward(self, x):
            y = F.linear(x, self.w)
            self.w.add_(1.0)
            return y

    p, _ = _prepare(Drift(), torch.randn(2, 8))
    assert "modified in place inside the graph" in p.report.skipped[0].reason


def test_in_place_cache_writes_survive_the_rewrite():
    """A KV-cache-like buffer written with index_copy_ from a linear's output: the write has no
    users in the graph and must not be pruned (FX's dead-code elimination deems it pure)."""

    class Cached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)
            self.register_buffer("cache", torch.zeros(6, 8))

        def forward(self, x, pos):
            self.cache.index_copy_(0, pos, self.proj(x))
            return self.cache.sum(0)

    m = Cached()
    x, pos = torch.randn(3, 8), torch.tensor([0, 2, 4])
    p, inputs = _prepare(m, x, pos)
    assert len(p.report.quantized) == 1
    m.cache.zero_()
    out = _run(p, inputs)
    assert m.cache[[0, 2, 4]].abs().sum() > 0 and (m.cache[[1, 3, 5]] == 0).all()
    torch.testing.assert_close(out, m.cache.sum(0))


@pytest.mark.parametrize("rows, regime", [((1, 1), "small"), ((2, 8), "small"), ((4, 13), "large")])
def test_m_regime_counts_the_rows_each_linear_sees(rows, regime):
    p, _ = _prepare(torch.nn.Linear(8, 4), torch.randn(*rows, 8))
    assert m_regime(p.gm) == regime
