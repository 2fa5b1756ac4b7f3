"""Units on demand in the browser (issue 15 item 3): on the demo run and on a 224² model
(torchvision ResNet-18, random weights), a layer without preferred inputs offers "Compute for this
layer"; clicking it shows the job's progress (step k of n, image k of n, unit k of n), then the
panel re-renders with the preferred inputs, top examples and DeconvNet projections the job stored
in the run (read back through the formats: the oracle).

"Cancel" beside the progress stops a job (on a server of two worker processes, so the request
may reach the one that does not run it): the page says "cancelled" and the run stays whole.

A server started with --no-compute says how to turn it on and offers no button."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.app.pages import model_units as mu
from convscope.formats import feature_maps as fm_format
from convscope.formats import preferred_inputs as pi_format
from convscope.formats import projections as pj_format
from convscope.formats import top_examples as te_format

from .model_find import open_layer

pytestmark = pytest.mark.browser

DEMO_LAYER = "layer1.0.conv1"  # the small demo records conv1, layer2.0.conv2, layer4.0.conv2
BIG_LAYER = "layer1.0.conv1"

#: every status the panel shows, recorded in the page as it changes
WATCH_JS = """() => {
  window._seen = [];
  const note = () => { const s = document.getElementById('units-state');
    if (s) { window._seen.push([s.dataset.state, s.innerText]); } };
  new MutationObserver(note).observe(document.getElementById('model-panel'),
    {subtree: true, childList: true, characterData: true, attributes: true});
}"""
GRID = "document.querySelector('#fi-grid .js-plotly-plot')"
PANE = "document.querySelector('#fi-pane .js-plotly-plot')"
PAIRS = "document.querySelector('#pj-pane .js-plotly-plot')"
CANCEL_LAYER = "layer2.0.conv1"


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("CONVSCOPE_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    from convscope.demo import run_demo

    logdir = tmp_path_factory.mktemp("demo")
    run_demo(logdir, name="demo", small=True, quiet=True, epochs=1)
    return logdir


@pytest.fixture(scope="module")
def big_logdir(tmp_path_factory):
    import torchvision

    logdir = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x, _, _ = cs.data.Shapes(n=8, size=224, split="test").tensors()
    with cs.Run(logdir, "resnet18", quiet=True) as run:
        run.log_checkpoint(model)
        run.log_model(model, x[:2], profile=False)
        run.log_feature_maps(model, x, layers=["conv1"])
    return logdir


def _compute(page, url: str, layer: str, shots: Path, tag: str, method: str | None = None
             ) -> list:
    """Open ``layer``'s panel, compute its units (quick), wait for the re-rendered panel;
    every status the page showed."""
    page.goto(url + "/model")
    open_layer(page, layer)
    page.wait_for_selector(f"#units-section[data-layer='{layer}']")
    page.wait_for_selector("#units-compute")
    assert page.evaluate("() => !document.querySelector('#features-section')")
    page.evaluate(WATCH_JS)
    if method is not None:
        page.locator("#units-method").click()
        page.get_by_role("option", name=mu.METHODS[method], exact=True).click()
    page.locator("#units-effort input[value='quick']").check()
    page.click("#units-compute")
    page.wait_for_function("() => window._seen.length > 0")  # the click's answer
    page.evaluate("() => document.getElementById('units-section').scrollIntoView()")
    page.screenshot(path=str(shots / f"{tag}-1-started.png"), full_page=True)
    # a later poll shows the steps (the job may also finish before one comes: not asserted)
    page.wait_for_function(
        "() => (window._seen || []).some(s => / of \\d+/.test(s[1])) || "
        "!!document.querySelector('#features-section')")
    if page.evaluate("() => { const s = document.getElementById('units-status');"
                     " if (s) { s.scrollIntoView(); } return !!s; }"):
        page.screenshot(path=str(shots / f"{tag}-2-progress.png"), full_page=True)
    page.wait_for_function(f"() => {GRID} && {GRID}.layout && {GRID}.layout.meta", timeout=300_000)
    page.wait_for_function(f"() => {PANE} && {PANE}.layout && {PANE}.layout.meta")
    page.evaluate("() => document.getElementById('features-section').scrollIntoView()")
    page.screenshot(path=str(shots / f"{tag}-3-results.png"), full_page=True)
    # the projections section, drawn from what the job stored
    page.wait_for_function(f"() => {PAIRS} && {PAIRS}.layout && {PAIRS}.layout.meta")
    page.evaluate("() => document.getElementById('projections-section').scrollIntoView()")
    page.screenshot(path=str(shots / f"{tag}-4-projections.png"), full_page=True)
    return page.evaluate("() => window._seen")


def _pairs_meta(page) -> dict:
    return page.evaluate(f"() => {PAIRS}.layout.meta")


def test_compute_off_says_how_to_turn_it_on(demo_logdir, module_serve, page):
    server = module_serve(demo_logdir, refresh_ms=60_000, args=["--no-compute"])
    page.goto(server.url + "/model")
    open_layer(page, DEMO_LAYER)
    page.wait_for_selector("#units-section")
    page.wait_for_function("() => document.querySelector('#units-body').innerText.includes("
                           "'convscope serve --compute')")
    assert page.locator("#units-compute").count() == 0


def test_demo_run_computes_a_layer_on_demand(demo_logdir, module_serve, page, tmp_path):
    reader = cs.open_run(demo_logdir / "demo")
    assert pi_format.meta(reader, DEMO_LAYER) is None
    # loopback: computing is on; two worker processes: the polls may reach the one not running
    # the job (the status is shared through the server's job directory)
    server = module_serve(demo_logdir, refresh_ms=60_000, workers=2)
    seen = _compute(page, server.url, DEMO_LAYER, _shots(tmp_path), "demo")
    assert seen and seen[0][0] == "running"
    assert page.evaluate(f"() => {GRID}.layout.meta.units") == [0, 1, 2, 3]
    n_samples = len(fm_format.samples(reader))
    meta = page.evaluate(f"() => {PANE}.layout.meta")
    assert meta == {"kind": "unit_pane", "unit": 0, "k": min(mu.TOP_K, n_samples),
                    "has_preferred": True}
    # what the page shows is what the run now stores
    stored = pi_format.load(reader, DEMO_LAYER)
    assert stored.units == [0, 1, 2, 3] and stored.settings["steps"] == str(mu.QUICK_STEPS)
    assert te_format.crops_meta(reader, DEMO_LAYER)["k"] == min(mu.TOP_K, n_samples)
    # the projections of the same units, the first one drawn with its top images
    assert pj_format.units(reader, DEMO_LAYER) == [0, 1, 2, 3]
    pairs = _pairs_meta(page)
    assert pairs["unit"] == 0 and pairs["layer"] == DEMO_LAYER
    assert pairs["k"] == len(pj_format.unit(reader, DEMO_LAYER, 0).values) == min(mu.TOP_K,
                                                                                  n_samples)
    assert "units-section" not in page.content()  # nothing left to compute for this layer


def test_224_model_computes_with_yosinski_setting_3(big_logdir, module_serve, page, tmp_path):
    server = module_serve(big_logdir, refresh_ms=60_000)
    seen = _compute(page, server.url, BIG_LAYER, _shots(tmp_path), "resnet18", "yosinski:3")
    assert seen and seen[0][0] == "running"
    assert page.evaluate(f"() => {GRID}.layout.meta.units") == [0, 1, 2, 3]
    reader = cs.open_run(big_logdir / "resnet18")
    stored = pi_format.load(reader, BIG_LAYER)
    assert stored.settings["regularizers"].startswith("Preset('yosinski(3)'")
    assert pi_format.meta(reader, BIG_LAYER)["size"] == [128, 128]  # 224² cut to 128
    assert np.isfinite(stored.values).all()
    meta = page.evaluate(f"() => {PANE}.layout.meta")
    assert meta["has_preferred"] and meta["k"] == 8  # the run's eight sample images
    assert pj_format.units(reader, BIG_LAYER) == [0, 1, 2, 3]
    assert _pairs_meta(page)["k"] == 8


def test_cancel_stops_the_job_and_the_page_says_cancelled(big_logdir, module_serve, page,
                                                          tmp_path):
    """The standard effort at 224² runs for minutes: cancelled at its first progress."""
    shots = _shots(tmp_path)
    server = module_serve(big_logdir, refresh_ms=60_000, workers=2)
    page.goto(server.url + "/model")
    open_layer(page, CANCEL_LAYER)
    page.wait_for_selector("#units-compute")
    assert page.locator("#units-cancel").is_hidden()  # nothing runs yet
    page.evaluate(WATCH_JS)
    page.click("#units-compute")  # lucid, standard
    page.wait_for_selector("#units-cancel:visible")
    # cancelled while it optimises: the page shows its steps first
    page.wait_for_function("() => window._seen.some(s => /: step \\d+ of \\d+/.test(s[1]))",
                           timeout=300_000)
    page.locator("#units-row").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "cancel-1-running.png"), full_page=True)
    page.click("#units-cancel")
    page.wait_for_selector("#units-state[data-state='cancelled']", timeout=300_000)
    text = page.inner_text("#units-state")
    assert text.startswith("Cancelled: ") and "was cancelled" in text
    page.locator("#units-section").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "cancel-2-cancelled.png"), full_page=True)
    assert page.locator("#units-cancel").is_hidden()
    assert page.locator("#units-compute").is_enabled()  # it can be computed again
    # the run is whole: closed as it was; each kind is there whole or not at all
    reader = cs.open_run(big_logdir / "resnet18")
    assert reader.meta["status"] == "ended"
    if pi_format.meta(reader, CANCEL_LAYER) is not None:
        assert "kept: the preferred inputs" in text
        assert np.isfinite(pi_format.load(reader, CANCEL_LAYER).values).all()
    else:
        assert "nothing was stored" in text
    assert pj_format.meta(reader, CANCEL_LAYER) is None
    assert not list((reader.path / "arrays").rglob("*.tmp*"))
