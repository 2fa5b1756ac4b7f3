"""Parameters with their trees (Wang & Li 2020, figures 7 and 10) in chromium: the Model page's
layer panel and the Diagnosis page's layer view draw a conv / linear layer's weight grid with
the outputs' dendrogram beside it, rows in the tree's leaf order. On the demo run (its own
weights, read back from its checkpoint) and on a torchvision ResNet-18 at 224² (random
weights; its big layers are cut to bounded figures and the page says so).

Oracle: scipy's ``linkage(pdist(W, "cosine"), "single")`` over the recorded outputs' raw weights
(float64): the cophenetic distances read off the drawn links are scipy's, and on the demo's small
layers the rows are scipy's ``dendrogram`` leaf order restricted to the outputs drawn; the rows
also follow the stored tree's leaf order. Screenshots go to
``$CONVSCOPE_SHOTS`` (default: the test's logdir)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import cophenet, dendrogram, linkage
from scipy.spatial.distance import pdist, squareform

import convscope as cs
from convscope.demo import run_demo
from convscope.store.checkpoints import load_checkpoint
from convscope.store.reader import open_run

from .conftest import cy_click
from .model_find import open_layer

pytestmark = pytest.mark.browser

PANEL_FIG = "document.querySelector('#params-fig .js-plotly-plot')"
DIAG_FIG = "document.querySelector('#diag-param-view .js-plotly-plot')"
R18_PARAMS = ["conv1", "layer4.1.conv2", "fc"]


def _shots(default: Path) -> Path:
    out = Path(os.environ.get("CONVSCOPE_SHOTS") or default)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _scipy_tree(weight: torch.Tensor, labels: list[int]) -> tuple[list[int], np.ndarray]:
    """scipy's single-linkage cosine tree over the recorded outputs ``labels`` (float64, from
    the raw weights): its leaf order (as output indices) and its cophenetic distances."""
    w = weight.detach().double().numpy()[labels]
    z = linkage(pdist(w.reshape(len(w), -1), "cosine"), "single")
    return [labels[i] for i in dendrogram(z, no_plot=True)["leaves"]], squareform(cophenet(z))


def _drawn_cophenet(xs: list, ys: list, kh: int, n: int) -> np.ndarray:
    """The cophenetic distances of the ``n`` drawn rows, read off the dendrogram as drawn: each
    link is 4 points then a gap, y = the rows' middle (``p * kh + (kh - 1) / 2``), x = height."""
    nodes = {(float(p), 0.0): [p] for p in range(n)}
    out = np.zeros((n, n))
    for k in range(0, len(xs), 5):
        h4, y4 = xs[k:k + 4], [(y - (kh - 1) / 2) / kh for y in ys[k:k + 4]]
        assert xs[k + 4] is None and y4[0] == y4[1] and y4[2] == y4[3] and h4[1] == h4[2]
        left, right = nodes.pop((y4[0], float(h4[0]))), nodes.pop((y4[3], float(h4[3])))
        for i in left:
            for j in right:
                out[i, j] = out[j, i] = h4[1]
        nodes[((y4[0] + y4[3]) / 2, float(h4[1]))] = left + right
    assert len(nodes) == 1  # one tree over every drawn row
    return out


def _figure(page, gd: str, layer: str) -> dict:
    """The drawn figure's meta and its dendrogram trace, once it shows ``layer``."""
    page.wait_for_function(f"() => {gd} && {gd}.layout && {gd}.layout.meta && "
                           f"{gd}.layout.meta.layer === {layer!r}")
    return page.evaluate(f"""() => {{ const g = {gd};
        const t = g.data.filter(d => d.name === 'dendrogram');
        return {{meta: g.layout.meta, trees: t.length,
                 x: t.length ? Array.from(t[0].x) : [], y: t.length ? Array.from(t[0].y) : [],
                 rows: g._fullData[0].z.length}}; }}""")


def _show(page, selector: str) -> None:
    """Scroll ``selector`` to the top of its scrolling box and let plotly settle (screenshots)."""
    page.locator(selector).evaluate("el => el.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(700)


def _diag_layer(page, layer: str) -> None:
    page.locator("#diag-layer").click()
    page.keyboard.type(layer)
    page.get_by_role("option", name=layer, exact=True).click()


def _check_tree(fig: dict, weight: torch.Tensor, stored: dict, kh: int, *,
                exact: bool = False) -> None:
    """The dendrogram is drawn beside the rows, one link per merge, and the rows are in leaf
    order: the stored tree's leaf order restricted to the drawn outputs, and the drawn tree is
    scipy's tree of the raw weights (its cophenetic distances, read off the drawn links, are
    scipy's; ``exact``: scipy's leaf order too, for small layers without near-equal merge
    heights, where float32 and float64 distances cannot order two merges differently)."""
    meta, rows = fig["meta"], fig["meta"]["rows"]
    labels = [int(v) for v in stored["clustering"]["labels"]]
    assert meta["tree"] and fig["trees"] == 1
    assert fig["x"].count(None) == meta["links"] == len(rows) - 1  # one link per merge
    assert fig["rows"] == kh * len(rows)  # one block of kh grid rows per output
    assert set(rows) <= set(labels)
    keep = set(rows)
    stored_order = [labels[i] for i in stored["clustering"]["leaves"]]
    assert rows == [r for r in stored_order if r in keep]
    order, coph = _scipy_tree(weight, labels)
    at = [labels.index(r) for r in rows]
    np.testing.assert_allclose(_drawn_cophenet(fig["x"], fig["y"], kh, len(rows)),
                               coph[np.ix_(at, at)], atol=1e-5)
    if exact:
        assert rows == [r for r in order if r in keep]


# -- the demo run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("demo")
    path = run_demo(logdir, name="demo", small=True, quiet=True)
    return logdir, path, dict(load_checkpoint(path).named_parameters())


@pytest.fixture(scope="module")
def demo_server(demo, module_serve):
    return module_serve(demo[0], refresh_ms=60_000)


def test_demo_model_page_draws_a_conv_and_the_dense_layer_with_their_trees(demo, demo_server,
                                                                            page):
    logdir, path, weights = demo
    reader = open_run(path)
    page.goto(demo_server.url + "/model")
    cy_click(page, "model-graph", "conv1")  # a click on the stem's conv
    page.wait_for_selector("#params-section[data-state='drawn']")
    fig = _figure(page, PANEL_FIG, "conv1")
    stored = reader.object("diag_param_view", "conv1")
    _check_tree(fig, weights["conv1.weight"], stored, kh=weights["conv1.weight"].shape[2],
                exact=True)
    assert len(fig["meta"]["rows"]) == weights["conv1.weight"].shape[0]  # all drawn
    text = page.locator("#params-section").inner_text()
    assert "Parameters" in text and "leaf order" in text
    _show(page, "#params-section")
    page.screenshot(path=str(_shots(logdir) / "model-demo-conv1-parameters.png"))
    open_layer(page, "fc")
    fig = _figure(page, PANEL_FIG, "fc")
    _check_tree(fig, weights["fc.weight"], reader.object("diag_param_view", "fc"), kh=1,
                exact=True)
    _show(page, "#params-section")
    page.screenshot(path=str(_shots(logdir) / "model-demo-fc-parameters.png"))


def test_demo_diagnosis_page_draws_the_tree_beside_the_weights(demo, demo_server, page):
    logdir, path, weights = demo
    reader = open_run(path)
    page.goto(demo_server.url + "/diagnosis")
    page.locator("#diag-summary").wait_for()
    layer = "layer2.0.conv2"
    _diag_layer(page, layer)
    fig = _figure(page, DIAG_FIG, layer)
    w = weights[layer + ".weight"]
    _check_tree(fig, w, reader.object("diag_param_view", layer), kh=w.shape[2], exact=True)
    _show(page, "#diag-param-view")
    page.screenshot(path=str(_shots(logdir) / "diagnosis-demo-layer-tree.png"))


# -- a 224² model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r18(tmp_path_factory):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()  # random weights: no download
    x = torch.rand(2, 3, 224, 224)
    logdir = tmp_path_factory.mktemp("r18")
    with cs.Run(logdir, "r18", quiet=True) as run:
        run.log_model(model, x, profile=False)
        run.log_diagnosis(model, x, layers=["layer4.1.conv2"], params=R18_PARAMS)
    return logdir, logdir / "r18", dict(model.named_parameters())


@pytest.fixture(scope="module")
def r18_server(r18, module_serve):
    return module_serve(r18[0], refresh_ms=60_000)


def test_224_model_page_cuts_big_layers_and_prunes_their_trees(r18, r18_server, page):
    logdir, path, weights = r18
    reader = open_run(path)
    page.goto(r18_server.url + "/model")
    page.wait_for_function("() => { const el = document.getElementById('model-graph');"
                           " return el && el._cyreg && el._cyreg.cy.nodes().length > 0; }")
    open_layer(page, "layer4.1.conv2")
    fig = _figure(page, PANEL_FIG, "layer4.1.conv2")
    stored = reader.object("diag_param_view", "layer4.1.conv2")
    _check_tree(fig, weights["layer4.1.conv2.weight"], stored, kh=3)
    # 128 of 512 outputs recorded and clustered, 74 of them drawn (<= 50,000 values)
    assert len(stored["clustering"]["labels"]) == 128 and len(fig["meta"]["rows"]) == 74
    notes = page.locator("#params-notes").inner_text()
    assert "of 512 outputs" in notes and "pruned to the 74 drawn" in notes
    _show(page, "#params-section")
    page.screenshot(path=str(_shots(logdir) / "model-224-layer4.1.conv2-parameters.png"))
    open_layer(page, "fc")  # 256 of 1000 outputs recorded, 157 drawn, 128 density curves
    fig = _figure(page, PANEL_FIG, "fc")
    _check_tree(fig, weights["fc.weight"], reader.object("diag_param_view", "fc"), kh=1)
    assert len(fig["meta"]["rows"]) == 157
    notes = page.locator("#params-notes").inner_text()
    assert "of 1000 outputs" in notes and "density curves: showing 128 of" in notes
    _show(page, "#params-section")
    page.screenshot(path=str(_shots(logdir) / "model-224-fc-parameters.png"))
    # a conv layer the diagnosis left out: the notice names the call that records it
    open_layer(page, "layer1.0.conv1")
    page.wait_for_selector("#params-section[data-state='missing']")
    text = page.locator("#params-section").inner_text()
    assert 'run.log_diagnosis(model, images, params=["layer1.0.conv1"])' in text
    assert page.locator("#params-fig").count() == 0


def test_224_diagnosis_page_draws_the_same_rows_as_the_model_page(r18, r18_server, page):
    logdir, path, weights = r18
    reader = open_run(path)
    page.goto(r18_server.url + "/diagnosis")
    page.locator("#diag-summary").wait_for()
    _diag_layer(page, "layer4.1.conv2")
    fig = _figure(page, DIAG_FIG, "layer4.1.conv2")
    _check_tree(fig, weights["layer4.1.conv2.weight"],
                reader.object("diag_param_view", "layer4.1.conv2"), kh=3)
    assert len(fig["meta"]["rows"]) == 74
    _show(page, "#diag-param-view")
    page.screenshot(path=str(_shots(logdir) / "diagnosis-224-layer4.1.conv2-tree.png"))
