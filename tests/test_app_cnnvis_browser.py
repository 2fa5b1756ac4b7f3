"""CNNVis on the Model page (Liu et al. 2017), in chromium: on the demo run and on a 224² run
(torchvision ResNet-18, random weights, procedural Shapes images), clicking a recorded layer
shows its clusters (a representative image and the size of each), the count can be changed,
and the chain view below the graph draws the bundled edges with the crossing counts.

Oracles: the stored clusters (read through ``convscope.formats.cnnvis``), the page's crossing
counts computed in this process on the same stored view (whose geometric check is in
``tests/test_cnnvis_record.py``), and ``cluster_channels`` on the stored descriptors for the
reclustered layer. Screenshots go to /tmp/shots15/B/ (or $CONVSCOPE_SHOTS)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.app.pages import model_cnnvis as cnnvis_page
from convscope.app.state import AppState
from convscope.formats import cnnvis as fmt
from convscope.model.cnnvis import cluster_channels

from .conftest import cy_click
from .dash_http import DashClient

pytestmark = pytest.mark.browser

SHOTS = Path(os.environ.get("CONVSCOPE_SHOTS", "/tmp/shots15/B"))
CARDS = "document.querySelector('#cnnvis-cards .js-plotly-plot')"
CHAIN = "document.querySelector('#cnnvis-chain-graph .js-plotly-plot')"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from convscope.demo import run_demo

    logdir = tmp_path_factory.mktemp("demo")
    run_demo(logdir, name="demo", small=True, quiet=True)
    return logdir, "demo"


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = cs.data.Shapes(n=12, size=224, split="test").tensors(quiet=True)[0]
    logdir = tmp_path_factory.mktemp("r224")
    with cs.Run(logdir, "resnet18-224", quiet=True) as run:
        run.log_model(model, x[:2], profile=False)
        run.log_preferred_inputs(model, ["layer1.0.conv1"], units=[0, 1, 2, 3], steps=4,
                                 size=64)
        run.log_top_examples(model, ["layer1.0.conv2"], x, k=3)
        run.log_cnnvis(model, x, clusters=8, influence_images=2)
    return logdir, "resnet18-224"


def _stored(logdir: Path, run: str) -> tuple[dict, fmt.CNNVisView]:
    reader = cs.open_run(logdir / run)
    return fmt.meta(reader), fmt.load(reader)


def _open_layer(pg, layer: str) -> None:
    parts = layer.split(".")
    for i in range(1, len(parts)):  # open the blocks holding the layer
        cy_click(pg, "model-graph", ".".join(parts[:i]))
    cy_click(pg, "model-graph", layer)
    pg.wait_for_function(f"() => {CARDS} && {CARDS}.layout && {CARDS}.layout.meta && "
                         f"{CARDS}.layout.meta.layer === {json.dumps(layer)}")


def _show_section(pg) -> None:
    """Scroll the layer panel so the CNNVis section starts at its top (for the screenshots)."""
    pg.evaluate("""() => { const s = document.getElementById('cnnvis-section');
      const p = document.getElementById('model-panel');
      p.scrollTop += s.getBoundingClientRect().top - p.getBoundingClientRect().top;
      window.scrollTo(0, 0); }""")
    pg.wait_for_timeout(300)


def _check(pg, url: str, logdir: Path, run: str, layer: str, k_new: int, shot: str,
           kinds: set[str]) -> dict:
    doc, view = _stored(logdir, run)
    pg.goto(url + "/model")
    # the chain view is there before any click: every recorded layer, with crossing counts
    pg.wait_for_function(f"() => {CHAIN} && {CHAIN}.layout && {CHAIN}.layout.meta")
    meta = pg.evaluate(f"() => {CHAIN}.layout.meta")
    assert meta["kind"] == "cnnvis_chain" and meta["layers"] == view.layers
    assert meta["clusters"] == [view.clusters[la].n_clusters for la in view.layers]
    _open_layer(pg, layer)
    cards = pg.evaluate(f"() => {CARDS}.layout.meta")
    stored = view.clusters[layer]
    assert cards["k"] == stored.n_clusters and cards["sizes"] == stored.sizes.tolist()
    assert set(cards["sources"]) == kinds, cards["sources"]
    assert pg.locator("#cnnvis-section h3").inner_text() == "Clusters (CNNVis)"
    # the cluster x cluster matrix of the pair the layer feeds (or is fed by), sorted
    assert pg.locator("#cnnvis-matrix-out, #cnnvis-matrix-in").count() >= 1
    pg.wait_for_function(f"() => {CHAIN}.layout.meta.selected === {json.dumps(layer)}")
    before = pg.evaluate(f"() => {CHAIN}.layout.meta")
    reader = AppState(logdir).reader(run)
    want = cnnvis_page.chain_crossings(cnnvis_page.page_view(reader, "cnnvis"))
    assert before["crossings"] == want
    table = pg.locator("#cnnvis-crossings").inner_text()
    for c in want:
        assert f"{c['source']} → {c['target']}" in table and str(c["bundled"]) in table
    SHOTS.mkdir(parents=True, exist_ok=True)
    _show_section(pg)
    pg.screenshot(path=str(SHOTS / f"{shot}-clusters.png"), full_page=True)
    # change the number of clusters in the page
    pg.locator("#cnnvis-k").click()
    pg.get_by_role("option", name=str(k_new), exact=True).click()
    pg.wait_for_function(f"() => {CARDS}.layout.meta.k === {k_new}")
    i = view.layers.index(layer)
    pg.wait_for_function(f"() => {CHAIN}.layout.meta.clusters[{i}] === {k_new}")
    cards = pg.evaluate(f"() => {CARDS}.layout.meta")
    again = cluster_channels(view.descriptors[layer], k_new, seed=view.seed)
    assert cards["sizes"] == again.sizes.tolist()
    after = pg.evaluate(f"() => {CHAIN}.layout.meta")
    assert after["clusters"] == [k_new if la == layer else view.clusters[la].n_clusters
                                 for la in view.layers]
    _show_section(pg)
    pg.screenshot(path=str(SHOTS / f"{shot}-reclustered.png"), full_page=True)
    box = pg.locator("#model-panel").bounding_box()
    pg.screenshot(path=str(SHOTS / f"{shot}-panel.png"), clip=box)
    pg.locator("#cnnvis-chain").screenshot(path=str(SHOTS / f"{shot}-chain.png"))
    return after


def test_demo_run_clusters_recluster_and_bundled_chain(demo_run, module_serve, page):
    logdir, run = demo_run
    srv = module_serve(logdir, refresh_ms=60_000)
    # the small demo records preferred inputs (units 0-3) and top examples for layer2.0.conv2
    kinds = set(_kinds(logdir, run, "layer2.0.conv2"))
    assert "preferred" in kinds and kinds <= {"preferred", "top"}
    after = _check(page, srv.url, logdir, run, "layer2.0.conv2", 3, "demo", kinds)
    print("demo crossings", after["crossings"])
    assert sum(c["bundled"] for c in after["crossings"]) <= sum(c["plain"]
                                                               for c in after["crossings"])


def _kinds(logdir: Path, run: str, layer: str) -> list[str]:
    """The image kind of each recorded cluster of ``layer``, worked out from the stored data
    (the preferred inputs' units and the top examples), independently of the page."""
    reader = cs.open_run(logdir / run)
    cl = fmt.load(reader).clusters[layer]
    from convscope.formats import preferred_inputs as pi
    from convscope.formats import top_examples as te

    m = pi.meta(reader, layer)
    units = set(m["units"]) if m else set()
    has_top = te.crops_meta(reader, layer) is not None
    out = []
    for j in range(cl.n_clusters):
        members = set(np.flatnonzero(cl.labels == j).tolist())
        out.append("preferred" if members & units else "top" if has_top else "pattern")
    return out


def test_224_run_clusters_recluster_and_bundled_chain(big_run, module_serve, page):
    logdir, run = big_run
    srv = module_serve(logdir, refresh_ms=60_000)
    for layer, k_new, name in (("layer1.0.conv1", 4, "r224"),
                               ("layer1.0.conv2", 6, "r224-top")):
        after = _check(page, srv.url, logdir, run, layer, k_new, name,
                       set(_kinds(logdir, run, layer)))
        print("224 crossings", layer, after["crossings"])
        assert sum(c["bundled"] for c in after["crossings"]) < sum(
            c["plain"] for c in after["crossings"])


def test_bad_values_posted_to_the_cnnvis_callbacks_are_refused(big_run, module_serve):
    logdir, run = big_run
    srv = module_serve(logdir, refresh_ms=60_000)
    client = DashClient(srv.url)
    for bad in ("3; DROP TABLE arrays", 10**9, 1, True, 2.5, {"k": 3}):
        _, out = client.call("cnnvis-clusters.children", {
            "cnnvis-k.value": bad, "model-selected.data": "layer1.0.conv1",
            "model-run.value": run})
        text = json.dumps(out)
        assert "number of clusters must" in text, (bad, text[:300])
        assert "cnnvis-count" not in out  # the count store is left alone
    _, out = client.call("cnnvis-chain-body.children", {
        "model-run.value": run, "model-selected.data": "layer1.0.conv1",
        "cnnvis-count.data": {"run": run, "layer": "layer1.0.conv1", "k": 10**9}})
    assert "number of clusters must" in json.dumps(out)
    _, out = client.call("cnnvis-chain-body.children", {
        "model-run.value": "../../etc", "model-selected.data": None, "cnnvis-count.data": None})
    assert "no run named" in json.dumps(out)
