"""The Model page at scale (issue 14): legible labels at the default view, "Fit" shows the whole
graph, and "Find a layer" centres the layer and opens its panel, on a 13-node graph (the demo's
ResNet folded to stages) and a ~300-node one (a 40-block ResNet shown layer by layer).

The checks read what chromium shows through cytoscape's own view (zoom, rendered positions and
boxes, computed styles) against the canvas' box, independent of the page's code: a label is
legible when zoom × font size ≥ 10 CSS pixels; cytoscape does not draw a label whose rendered size
is under its ``min-zoomed-font-size``."""

from __future__ import annotations

import pytest
import torch

import convscope as cs

from .conftest import cy_click
from .model_find import open_layer

browser = pytest.mark.browser

LEGIBLE_PX = 10  # the smallest label height, in CSS pixels, counted as readable


@pytest.fixture(scope="module")
def logdirs(tmp_path_factory):
    torch.manual_seed(0)
    small = tmp_path_factory.mktemp("small")
    with cs.Run(small, "demo", quiet=True) as run:
        run.log_model(cs.zoo.resnet().eval(), torch.rand(8, 3, 32, 32), repeat=1)
    big = tmp_path_factory.mktemp("big")
    with cs.Run(big, "deep", quiet=True) as run:
        run.log_model(cs.zoo.resnet(width=4, blocks=(10, 10, 10, 10)).eval(),
                      torch.rand(2, 3, 32, 32), repeat=1, profile=False)
    return small, big


@pytest.fixture(scope="module")
def servers(logdirs, module_serve):
    return [module_serve(d, refresh_ms=60_000) for d in logdirs]


VIEW_JS = """() => { const el = document.getElementById('model-graph'); const cy = el._cyreg.cy;
  const r = el.getBoundingClientRect(); const z = cy.zoom();
  const nodes = cy.nodes().map(n => { const b = n.renderedBoundingBox({includeLabels: false});
    return {id: n.id(), px: z * parseFloat(n.style('font-size')),
            hideBelow: parseFloat(n.style('min-zoomed-font-size')), label: n.style('label'),
            x: n.renderedPosition().x, y: n.renderedPosition().y,
            box: [b.x1, b.y1, b.x2, b.y2]}; });
  return {w: r.width, h: r.height, zoom: z, pan: cy.pan(), nodes: nodes,
          classes: cy.nodes('.selected').map(n => n.id())}; }"""


def _view(page) -> dict:
    return page.evaluate(VIEW_JS)


def _settled(page, count: int | None = None) -> dict:
    """The view once the graph holds ``count`` nodes (any when None) and pan, zoom and the
    nodes' positions have not moved for 400 ms."""
    page.wait_for_function(
        "() => { const el = document.getElementById('model-graph');"
        " return el && el._cyreg && el._cyreg.cy.nodes().length"
        + (f" === {count}" if count is not None else " > 0") + "; }")
    prev = None
    for _ in range(60):
        page.wait_for_timeout(400)
        cur = _view(page)
        key = (cur["zoom"], cur["pan"]["x"], cur["pan"]["y"], len(cur["nodes"]),
               [(n["x"], n["y"]) for n in cur["nodes"]])
        if key == prev and (count is None or len(cur["nodes"]) == count):
            return cur
        prev = key
    raise AssertionError("the Model page's graph did not settle")


def _drawn(view) -> list[dict]:
    """The nodes whose label cytoscape draws (rendered size not under min-zoomed-font-size)."""
    return [n for n in view["nodes"] if n["label"] and n["px"] >= n["hideBelow"]]


def _inside(view, n) -> bool:
    x1, y1, x2, y2 = n["box"]
    return x1 >= -0.5 and y1 >= -0.5 and x2 <= view["w"] + 0.5 and y2 <= view["h"] + 0.5


def _depth(page, label: str) -> None:
    page.locator("#model-depth label", has_text=label).click()


@browser
def test_small_graph_default_view_is_whole_and_legible(servers, page):
    page.goto(servers[0].url + "/model")
    view = _settled(page, 13)  # input, stem, 4 stages, pool, flatten, fc, output...
    # every label is drawn, and drawn at least LEGIBLE_PX tall
    assert len(_drawn(view)) == len(view["nodes"])
    assert min(n["px"] for n in view["nodes"]) >= LEGIBLE_PX
    # the whole graph is in the canvas
    assert all(_inside(view, n) for n in view["nodes"]), view
    # the canvas names a node on hover (its full name), as labels may be shortened
    n = next(n for n in view["nodes"] if n["id"] == "layer2")
    box = page.locator("#model-graph").bounding_box()
    page.mouse.move(box["x"] + n["x"], box["y"] + n["y"])
    page.wait_for_function("() => document.getElementById('model-graph').title"
                           ".startsWith('layer2\\nSequential')")


@browser
def test_large_graph_reads_at_default_and_fits_on_demand(servers, page):
    page.goto(servers[1].url + "/model")
    _settled(page, 13)
    _depth(page, "layers")
    view = _settled(page, None)
    while len(view["nodes"]) < 250:  # the layers view arrives
        view = _settled(page, None)
    total = len(view["nodes"])
    assert 250 <= total <= 350, total
    # default: legible labels from the input down (the whole graph would be ~0.03× zoom)
    assert min(n["px"] for n in view["nodes"]) >= LEGIBLE_PX
    first = next(n for n in view["nodes"] if n["id"] == "input")
    assert _inside(view, first)
    on_screen = [n for n in view["nodes"] if _inside(view, n)]
    assert len(on_screen) >= 8
    # Fit: every node inside the canvas; no label drawn under LEGIBLE_PX
    page.click("#model-fit")
    fit = _settled(page, total)
    assert fit["zoom"] < view["zoom"]
    assert all(_inside(fit, n) for n in fit["nodes"]), [n for n in fit["nodes"]
                                                      if not _inside(fit, n)][:3]
    assert all(n["px"] >= LEGIBLE_PX for n in _drawn(fit))


@browser
@pytest.mark.parametrize("which,name", [(0, "layer3.0.conv2"), (1, "layer4.7.bn1")])
def test_find_centres_the_layer_and_opens_its_panel(servers, page, which, name):
    page.goto(servers[which].url + "/model")
    _settled(page, 13)
    open_layer(page, name)
    page.wait_for_selector(f"#layer-panel[data-layer='{name}']")
    page.wait_for_function(
        f"() => document.getElementById('model-graph')._cyreg.cy.$id({name!r}).length === 1")
    view = _settled(page, None)
    node = next(n for n in view["nodes"] if n["id"] == name)
    assert view["classes"] == [name]  # drawn as the selected node
    assert abs(node["x"] - view["w"] / 2) <= 0.05 * view["w"], (node, view["w"])
    assert abs(node["y"] - view["h"] / 2) <= 0.05 * view["h"], (node, view["h"])
    assert node["px"] >= LEGIBLE_PX


@browser
def test_click_keeps_the_opened_block_in_view(servers, page):
    page.goto(servers[1].url + "/model")
    _settled(page, 13)
    cy_click(page, "model-graph", "layer4")
    page.wait_for_function(
        "() => document.getElementById('model-graph')._cyreg.cy.$id('layer4.9').length === 1")
    view = _settled(page, None)
    inside = [n for n in view["nodes"] if n["id"].startswith("layer4.")]
    assert len(inside) == 10
    assert _inside(view, inside[0])  # the first block it opened sits where layer4 was
    assert min(n["px"] for n in _drawn(view)) >= LEGIBLE_PX


@pytest.mark.parametrize("name,shown", [
    ("layer3.2.conv2", "layer3.2.conv2"),  # short enough: whole
    ("features.denseblock3.denselayer12.conv2", "…denselayer12.conv2"),  # whole last parts
    ("x." + "b" * 30, "…" + "b" * 21),  # a last part over the limit keeps its end
])
def test_short_label_keeps_the_last_dotted_parts(name, shown):
    from convscope.figures.graph import MAX_LABEL_CHARS, short_label

    assert short_label(name) == shown
    assert len(short_label(name)) <= MAX_LABEL_CHARS


def test_a_time_the_profile_did_not_measure_shows_a_dash():
    from convscope.app.pages.model import _ms

    assert _ms(0.0023) == "2.300 ms"
    assert _ms(float("nan")) == "—" and _ms(None) == "—"  # log_model(..., backward=False)
