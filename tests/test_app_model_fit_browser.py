"""The Model page fits the browser window (issue 14): its graph canvas and layer panel end
inside the window, so the page itself does not scroll, while the canvas still takes most of
the height. The old ``78vh`` canvas overflowed a 900-pixel window by about 60 px.

The checks read chromium's own layout (bounding boxes, ``innerHeight``, the document's scroll
height), not the page's code."""

from __future__ import annotations

import pytest
import torch

import convscope as cs

pytestmark = pytest.mark.browser

BOXES_JS = """() => { const box = s => document.querySelector(s).getBoundingClientRect();
  const g = box('#model-graph'), p = box('#model-panel');
  return {top: g.top, bottom: g.bottom, height: g.height, panel: p.bottom,
          inner: innerHeight, scroll: document.documentElement.scrollHeight}; }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_serve):
    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("fit")
    with cs.Run(logdir, "demo", quiet=True) as run:
        run.log_model(cs.zoo.resnet().eval(), torch.rand(4, 3, 32, 32), repeat=1)
    return module_serve(logdir, refresh_ms=60_000)


def _boxes(browser, url: str, width: int, height: int, layer: str | None = None) -> dict:
    ctx = browser.new_context(viewport={"width": width, "height": height})
    ctx.set_default_timeout(60_000)
    try:
        page = ctx.new_page()
        page.goto(url + "/model")
        page.wait_for_function("() => { const el = document.getElementById('model-graph');"
                               " return el && el._cyreg && el._cyreg.cy.nodes().length > 0; }")
        if layer:  # a long layer panel scrolls inside itself, not the page
            page.click("#model-find")
            page.keyboard.type(layer)
            page.keyboard.press("Enter")
            page.wait_for_selector("#panel-layer")
        page.wait_for_timeout(500)
        return page.evaluate(BOXES_JS)
    finally:
        ctx.close()


@pytest.mark.parametrize("width,height", [(1400, 900), (1920, 1080), (1400, 1200)])
def test_graph_fits_the_window(browser, server, width, height):
    b = _boxes(browser, server.url, width, height)
    assert b["inner"] == height
    assert b["bottom"] <= height, b  # the canvas ends inside the window
    assert b["panel"] <= height, b
    assert b["scroll"] <= height, b  # nothing below it makes the page scroll
    # and it uses the height: at most ~50 px between the canvas and the window's bottom
    assert b["bottom"] >= height - 60, b
    assert b["height"] >= 420


def test_open_layer_panel_scrolls_inside(browser, server):
    b = _boxes(browser, server.url, 1400, 900, layer="layer1")
    assert b["panel"] <= 900 and b["scroll"] <= 900, b


def test_small_window_keeps_a_usable_canvas(browser, server):
    """Below ~730 px the canvas keeps 420 px and the page scrolls a little instead."""
    b = _boxes(browser, server.url, 1400, 600)
    assert b["height"] == pytest.approx(420, abs=1)
