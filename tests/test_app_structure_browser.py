"""Model, Resources and Embedding pages in chromium, on a run recorded with log_model,
log_feature_maps and log_embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope as cs

from .conftest import cy_click

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def structure_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=8).eval()
    x = torch.rand(4, 3, 32, 32)
    with cs.Run(logdir, "net", quiet=True) as run:
        run.log_model(model, x, repeat=2)
        run.log_feature_maps(model, x, labels=[0, 1, 2, 3])
        feats = torch.randn(60, 16)
        run.log_embedding(feats, torch.arange(60) % 3, name="feats", images=torch.rand(60, 3, 8, 8),
                          class_names=["a", "b", "c"])
    with cs.Run(logdir, "bare") as run:
        run.log_scalars(0, loss=1.0)
    return logdir, model, x


@pytest.fixture(scope="module")
def server(structure_run, module_serve):
    return module_serve(structure_run[0], refresh_ms=60_000)


def _select(page, names):
    page.click("#run-select")
    page.get_by_role("button", name="Deselect All").click()
    for n in names:
        page.locator("label.dash-dropdown-option", has_text=n).click()
    page.keyboard.press("Escape")


def test_model_page_click_opens_layer_with_its_feature_maps(structure_run, server, page):
    logdir, model, x = structure_run
    page.goto(server.url + "/model")
    _select(page, ["net"])
    # folded to stages: layer1 is a block node; clicking opens it, then its residual block
    cy_click(page, "model-graph", "layer1")
    cy_click(page, "model-graph", "layer1.0")
    cy_click(page, "model-graph", "layer1.0.conv1")
    page.wait_for_selector("#layer-panel[data-layer='layer1.0.conv1']")
    panel = page.locator("#layer-panel")
    assert "Conv2d" in panel.inner_text()
    ref = cs.model.capture(model, x, "layer1.0.conv1")["layer1.0.conv1"].numpy()
    assert str(list(ref.shape)) in panel.inner_text()  # output shape for the 4 sample images
    page.wait_for_selector("#fm-grid .js-plotly-plot")
    meta = page.evaluate(
        "() => document.querySelector('#fm-grid .js-plotly-plot').layout.meta"
    )
    assert meta["n"] == 4 and meta["c"] == 8
    # the grid shows exactly the stored maps of that layer, tiled and scaled per channel
    z = page.evaluate(
        "() => document.querySelector('#fm-grid .js-plotly-plot')._fullData[0].z.map(r => Array.from(r))"
    )
    z = np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)
    ch = ref[:, 3]
    scaled = (ch - ch.min()) / (ch.max() - ch.min())
    h, w = ref.shape[-2:]
    cell = z[2 * (h + 1): 2 * (h + 1) + h, 3 * (w + 1): 3 * (w + 1) + w]  # image 2, channel 3
    # stored as uint8 over the channel's range: within half a level (1/510), plus rounding
    np.testing.assert_allclose(cell, scaled[2], atol=1 / 510 + 2e-3)
    page.screenshot(path=str(logdir / "model.png"), full_page=True)
    # clicking a map zooms into that channel
    grid = page.locator("#fm-grid .nsewdrag").first
    box = grid.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (3.5 / 8), box["y"] + box["height"] * (0.5 / 4))
    page.wait_for_function(
        "() => { const g = document.querySelector('#fm-zoom .js-plotly-plot');"
        " return g && g.layout && g.layout.meta && g.layout.meta.kind === 'channel_zoom'; }"
    )
    assert page.evaluate(
        "() => document.querySelector('#fm-zoom .js-plotly-plot').layout.meta.channel") == 3


def test_model_page_names_the_call_for_a_run_without_a_model(structure_run, server, page):
    page.goto(server.url + "/model")
    _select(page, ["bare"])
    notice = page.locator(".missing-data")
    notice.wait_for()
    assert "run.log_model(model, example_inputs)" in notice.inner_text()
    assert page.locator("#model-graph").is_visible()  # no run chosen: the graph stays empty
    assert page.evaluate(
        "() => document.getElementById('model-graph')._cyreg.cy.nodes().length") == 0


def test_resources_page_rings_and_drill_down(structure_run, server, page):
    logdir = structure_run[0]
    page.goto(server.url + "/resources")
    _select(page, ["net"])
    page.wait_for_selector("#res-rings .js-plotly-plot")
    prof = cs.open_run(logdir / "net").table("profile")
    top = prof[prof["parent"] == ""]
    names = page.evaluate(
        "() => document.querySelector('#res-rings .js-plotly-plot').layout.meta.names")
    assert names == top["name"].tolist()
    r = page.evaluate(
        "() => Array.from(document.querySelector('#res-rings .js-plotly-plot')._fullData[0].r)")
    np.testing.assert_allclose(r, top["memory_share"].to_numpy(), rtol=1e-9)
    # drill into layer2 through the table
    page.locator("#res-table td[data-dash-column='name']", has_text="layer2").first.click()
    page.wait_for_function(
        "() => document.querySelector('#res-rings .js-plotly-plot').layout.meta.parent === 'layer2'"
    )
    names = page.evaluate(
        "() => document.querySelector('#res-rings .js-plotly-plot').layout.meta.names")
    assert names == ["layer2.0"]
    page.click("#res-up")
    page.wait_for_function(
        "() => document.querySelector('#res-rings .js-plotly-plot').layout.meta.parent === ''"
    )
    page.screenshot(path=str(logdir / "resources.png"), full_page=True)


def test_embedding_page_scatter_and_hover_thumbnail(structure_run, server, page):
    logdir = structure_run[0]
    page.goto(server.url + "/embedding")
    _select(page, ["net"])
    page.wait_for_selector("#emb-graph .js-plotly-plot")
    page.wait_for_function(
        "() => document.querySelector('#emb-graph .js-plotly-plot')._fullData.length === 3")
    traces = page.evaluate(
        "() => document.querySelector('#emb-graph .js-plotly-plot')._fullData.map("
        "t => ({name: t.name, n: t.x.length}))")
    assert traces == [{"name": "a", "n": 20}, {"name": "b", "n": 20}, {"name": "c", "n": 20}]
    stored = cs.open_run(logdir / "net").query("SELECT * FROM embedding ORDER BY idx")
    xs = page.evaluate(
        "() => Array.from(document.querySelector('#emb-graph .js-plotly-plot')._fullData[0].x)")
    np.testing.assert_allclose(xs, stored[stored["label"] == 0]["pc1"].to_numpy(), rtol=1e-6)
    assert "explain" in page.locator("#emb-notes").inner_text()
    page.screenshot(path=str(logdir / "embedding.png"), full_page=True)
