"""The HTML page opened in headless Chromium (Debian's package): the screenshot is not blank and
the DOM Chromium parsed has one SVG node per op of each graph Dynamo captured."""

import re
import shutil
import subprocess

import pytest
import torch

from tests.inspect import toy
from zq_compile.inspect.html import render_html

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found: install Debian's `chromium` package (`make test` does so when run as root)",
)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--allow-file-access-from-files"]


def _chromium(*args, timeout=180):
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(toy_explained, tmp_path_factory):
    path = tmp_path_factory.mktemp("page") / "explain.html"
    path.write_text(render_html(toy_explained[0]), encoding="utf-8")
    return path


def test_screenshot_is_not_blank(page):
    from PIL import Image

    shot = page.with_suffix(".png")
    proc = _chromium("--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 1600)
    pixels = list(image.getdata())
    ink = sum(1 for p in pixels if sum(p) < 720) / len(pixels)
    assert ink > 0.03, f"only {ink:.1%} of the screenshot is not white"
    assert len(set(pixels)) > 100
    greens = sum(1 for r, g, b in pixels if abs(r - 0x2F) < 12 and abs(g - 0x9E) < 12 and abs(b - 0x44) < 12)
    assert greens > 500, "the w8a8 bars of the error chart are not drawn"


def test_dom_has_a_node_per_graph_op(page):
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    svgs = re.findall(r'<svg[^>]*class="graph".*?</svg>', dom, re.S)
    model, inputs = toy.build()
    torch._dynamo.reset()
    graphs = torch._dynamo.explain(model)(*inputs).graphs  # Dynamo's graphs, captured independently
    assert len(svgs) == 2 * len(graphs)
    for gm, before in zip(graphs, svgs[::2]):
        ops = [n for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")]
        drawn = re.findall(r'<g class="node" data-node="([^"]+)"', before)
        assert len(drawn) == len(ops) and set(drawn) == {n.name for n in ops}
