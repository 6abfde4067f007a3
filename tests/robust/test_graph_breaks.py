"""Data-dependent Python control flow and untraceable calls split a model into several graphs:
it still runs as eager does, every captured piece is quantized, and each report says where and
why its graph ended (``CompileReport.graph_break``)."""

from __future__ import annotations

import torch

import zq_compile
from zq_compile.metrics import sqnr_db


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 8)
        self.calls = 0

    def forward(self, x):
        h = self.a(x)
        if h.mean() > 0:  # data-dependent branch: a graph break
            h = torch.relu(h)
        else:
            h = torch.tanh(h)
        h = self.b(h)
        self.calls += 1
        print(end="")  # an untraceable builtin: another break
        return self.c(h)


def test_graph_breaks_run_quantized_and_are_reported():
    torch.manual_seed(0)
    m = Branchy().eval()
    c = zq_compile.compile(m)
    x = torch.randn(4, 16)
    pos = x if m.a(x).mean() > 0 else -x
    neg = -pos
    with torch.inference_mode():
        for inp in (pos, neg, pos):
            assert sqnr_db(m(inp), c(inp)) >= 25
    reports = c.zq_reports
    assert len(reports) >= 3, [r.summary() for r in reports]
    assert all(len(r.quantized) == len(r.decisions) == 1 for r in reports)  # each piece quantized
    assert {r.quantized[0].module for r in reports} == {"a", "b", "c"}
    breaks = [r.graph_break for r in reports if r.graph_break]
    assert any("generic_jump" in b or "data-dependent" in b.lower() for b in breaks), breaks
    assert any("print" in b for b in breaks), breaks
    assert all("test_graph_breaks.py:" in b for b in breaks), breaks
    last = next(r for r in reports if r.quantized[0].module == "c")
    assert last.graph_break is None and "graph break" not in last.summary()
    assert "graph break after this graph" in next(r for r in reports if r.graph_break).summary()
