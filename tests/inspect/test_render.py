"""Renderers: the JSON keys are the ones docs/inspect.md documents, the text table and the HTML
page carry every linear, and the page draws one SVG node per graph op."""

import json
import os
import re

import pytest

from zq_compile.inspect.html import render_html
from zq_compile.inspect.schema import SCHEMA_VERSION

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "inspect.md")


def documented_keys() -> dict[str, set[str]]:
    """heading -> keys listed under it (``- `key` (type): ...`` bullets, several per bullet allowed)."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in open(DOC, encoding="utf-8"):
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = set()
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("- "):
            head = line.split("): ", 1)[0]  # the keys come before the first description
            sections[current] |= set(re.findall(r"`(\w+)` \(", head))
    return sections


def test_json_keys_match_the_documented_schema(toy_explained):
    report = toy_explained[0]
    data = json.loads(report.to_json())
    doc = documented_keys()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert set(data) == doc["report"]
    graph = data["graphs"][0]
    assert set(graph) == doc["graph"]
    assert set(graph["linears"][0]) == doc["linear"]
    assert set(graph["float_nodes"][0]) == doc["float node"]
    assert set(graph["fusions"][0]) == doc["fusion"]
    assert set(data["model_error"]) == doc["error"]
    assert set(graph["after"][0]) == doc["graph node"]
    assert {"graphs", "graph_breaks", "recompiles"} == set(data["dynamo"])
    assert {"quantized_linears", "linears", "float_bytes", "quant_bytes"} == set(data["weights"])


def test_text_table_lists_every_linear_and_fusion(toy_explained):
    report = toy_explained[0]
    text = str(report)
    for row in report.linears:
        assert row.module in text
    for f in report.fusions:
        assert f.kernel in text
    assert "skip glob 'head'" in text and "graph break" in text


def svg_nodes(svg: str) -> list[str]:
    return re.findall(r'<g class="node" data-node="([^"]+)"', svg)


def test_html_is_self_contained_and_draws_every_op(toy_explained):
    report = toy_explained[0]
    page = render_html(report)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must not fetch anything"
    assert "<script" not in page
    svgs = re.findall(r"<svg[^>]*class=\"graph\".*?</svg>", page, re.S)
    assert len(svgs) == 2 * len(report.graphs)
    for g, (before, after) in zip(report.graphs, zip(svgs[::2], svgs[1::2])):
        assert svg_nodes(before) == [n.name for n in g.before]
        assert svg_nodes(after) == [n.name for n in g.after]
        assert len(re.findall(r'<g class="fusion"', after)) == len(g.fusions)
        # a float node says why on hover; a quantized one is coloured by its scheme
        assert re.search(r'data-kind="float"><title>[^<]*not a linear layer', before)
        assert 'data-kind="quantized"><title>' in after and "#2f9e44" in after
    assert page.count("<g class=\"bar\">") == len([r for r in report.linears if r.scheme or r.sqnr_db is not None])


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_json_writes_non_finite_floats_as_strings(toy_explained, bad):
    import copy

    report = copy.deepcopy(toy_explained[0])
    report.linears[0].sqnr_db = bad
    data = json.loads(report.to_json())
    assert data["graphs"][0]["linears"][0]["sqnr_db"] in ("inf", "nan")


def test_json_round_trips(toy_explained):
    from zq_compile.inspect.schema import from_dict

    report = toy_explained[0]
    again = from_dict(json.loads(report.to_json()))
    assert again.to_json() == report.to_json()
    assert render_html(again) == render_html(report)
