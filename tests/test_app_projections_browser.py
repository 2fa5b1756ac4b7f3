"""The Model page's DeconvNet section (Zeiler & Fergus 2014, figure 2): picking a unit of a layer
shows its top-9 activations projected back to pixels, each beside its receptive-field crop, on
the demo run and on a 224² run (torchvision ResNet-18, random weights); and its callback refuses
values no page sends.

Oracles: the drawn pixels against the stored windows (the crop through ``to_rgb``, the projection
through ``stretch`` and ``to_rgb``, within one level), the stored windows being checked against
``project_unit`` in test_projections_record.py; the projections must have contrast (a spread of
pixel values, not a grey square)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.figures.images import to_rgb
from convscope.figures.projections import stretch
from convscope.formats import projections as fmt

from .dash_http import DashClient
from .model_find import open_layer

pytestmark = pytest.mark.browser
SHOTS = Path("/tmp/shots15/C")
PANE = "document.querySelector('#pj-pane .js-plotly-plot')"


@pytest.fixture(scope="module")
def demo_logdir(tmp_path_factory):
    from convscope.demo import run_demo

    logdir = tmp_path_factory.mktemp("demo")
    run_demo(logdir, name="demo", small=True, quiet=True)
    return logdir


@pytest.fixture(scope="module")
def big_logdir(tmp_path_factory):
    import torchvision

    logdir = tmp_path_factory.mktemp("big")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x, _, _ = cs.data.Shapes(n=12, size=224, split="test").tensors()
    with cs.Run(logdir, "r18", quiet=True) as run:
        run.log_model(model, x[:2], profile=False)
        run.log_projections(model, ["conv1", "layer1.0.conv1", "layer3.0.conv2"], x,
                            max_units=4, k=9, batch_size=6)
    return logdir


@pytest.fixture(scope="module")
def demo_server(demo_logdir, module_serve):
    return module_serve(demo_logdir, refresh_ms=600_000)


@pytest.fixture(scope="module")
def big_server(big_logdir, module_serve):
    return module_serve(big_logdir, refresh_ms=600_000)


def _pick_unit(page, unit: int) -> None:
    page.locator("#fi-unit").click()
    page.get_by_role("option", name=str(unit), exact=True).click()


def _pane_meta(page, unit: int) -> dict:
    page.wait_for_function(f"() => {PANE} && {PANE}.layout && {PANE}.layout.meta && "
                           f"{PANE}.layout.meta.unit === {unit}")
    return page.evaluate(f"() => {PANE}.layout.meta")


def _drawn(page, i: int) -> np.ndarray:
    return np.array(page.evaluate(f"() => {PANE}._fullData[{i}].z"), dtype=np.int64)[..., :3]


def _check_pairs(page, reader, layer: str, unit: int) -> dict:
    """The pane shows ``unit``'s stored pairs: names in order, pixels within one level, and
    every projection has contrast."""
    meta = _pane_meta(page, unit)
    got = fmt.unit(reader, layer, unit)
    n = len(got.values)
    assert meta["kind"] == "projection_pairs" and meta["layer"] == layer and meta["k"] == n == 9
    assert meta["indices"] == got.indices.tolist()
    names = page.evaluate(f"() => {PANE}._fullData.map(t => t.name)")
    assert names == [f"{kind} {i + 1}" for i in range(n) for kind in ("projection", "crop")]
    for i in range(n):
        proj, crop = _drawn(page, 2 * i), _drawn(page, 2 * i + 1)
        want_p = to_rgb(stretch(got.projections[i].astype(np.float32))).astype(np.int64)
        want_c = to_rgb(got.crops[i].astype(np.float32)).astype(np.int64)
        assert proj.shape == want_p.shape and crop.shape == want_c.shape
        assert np.abs(proj - want_p).max() <= 1 and np.abs(crop - want_c).max() <= 1
        # visible, not a grey square: the full range drawn, and a share of the pixels far from
        # the background level (zero, outside the unit's effective field, is mid-grey)
        far = np.abs(proj - np.median(proj)) >= 48
        assert np.ptp(proj) >= 200 and far.mean() >= 0.02, (layer, unit, i, far.mean())
    return meta


def test_demo_run_unit_pick_shows_nine_projections_beside_nine_crops(demo_logdir, demo_server,
                                                                    page):
    reader = cs.open_run(demo_logdir / "demo")
    assert fmt.layers(reader) == ["conv1", "layer1.0.conv2", "layer2.0.conv2"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(demo_server.url + "/model")
    # a layer with preferred inputs: the section follows the features section's "Unit" picker
    open_layer(page, "layer2.0.conv2")
    page.wait_for_selector("#projections-section")
    assert page.locator("#features-section #fi-unit").count() == 1
    assert page.locator("#projections-section #fi-unit").count() == 0
    _check_pairs(page, reader, "layer2.0.conv2", 0)
    _pick_unit(page, 2)
    _check_pairs(page, reader, "layer2.0.conv2", 2)
    # the unit pane above follows the same pick
    page.wait_for_function("() => document.querySelector('#fi-pane .js-plotly-plot')"
                           ".layout.meta.unit === 2")
    page.locator("#projections-section").screenshot(path=str(SHOTS / "demo-layer2-unit2.png"))
    page.screenshot(path=str(SHOTS / "demo-page.png"), full_page=True)
    # a layer with projections but no preferred inputs: the section brings its own picker
    open_layer(page, "layer1.0.conv2")
    page.wait_for_function("() => document.querySelector('#projections-section #fi-unit')")
    _check_pairs(page, reader, "layer1.0.conv2", 0)
    _pick_unit(page, 3)
    _check_pairs(page, reader, "layer1.0.conv2", 3)
    page.locator("#projections-section").screenshot(path=str(SHOTS / "demo-layer1-unit3.png"))
    # a layer with preferred inputs but no projections: the section says what records them,
    # and the unit picker still drives the unit pane
    open_layer(page, "layer4.0.conv2")
    page.wait_for_selector("#projections-section .missing-data")
    text = page.inner_text("#projections-section")
    assert "run.log_projections(model, ['layer4.0.conv2'], dataset)" in text
    assert "conv1, layer1.0.conv2, layer2.0.conv2" in text
    assert page.locator("#pj-pane").count() == 0
    _pick_unit(page, 1)
    page.wait_for_function("() => document.querySelector('#fi-pane .js-plotly-plot')"
                           ".layout.meta.unit === 1")


def test_224_run_unit_pick_shows_nine_projections_beside_nine_crops(big_logdir, big_server,
                                                                   page):
    reader = cs.open_run(big_logdir / "r18")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(big_server.url + "/model")
    for layer, unit in (("conv1", 1), ("layer1.0.conv1", 2), ("layer3.0.conv2", 3)):
        open_layer(page, layer)
        page.wait_for_function("() => document.querySelector('#projections-section #fi-unit')")
        _check_pairs(page, reader, layer, 0)
        _pick_unit(page, unit)
        _check_pairs(page, reader, layer, unit)
        page.locator("#projections-section").screenshot(
            path=str(SHOTS / f"r18-{layer}-unit{unit}.png"))
    # the windows grow with depth: conv1's 7-pixel field, layer3's shrunk to at most 96
    small = fmt.unit(reader, "conv1", 0).crops.shape[-1]
    deep = fmt.unit(reader, "layer3.0.conv2", 0).crops.shape[-1]
    assert small == 7 and 7 < deep <= 96
    page.screenshot(path=str(SHOTS / "r18-page.png"), full_page=True)


def test_the_callback_refuses_values_no_page_sends(big_logdir, big_server):
    client = DashClient(big_server.url)
    out = "pj-pane.figure"
    good = {"fi-unit.value": 1, "model-selected.data": "layer1.0.conv1",
            "model-run.value": "r18"}
    status, resp = client.call(out, good)
    assert status == 200
    assert resp["pj-pane"]["figure"]["layout"]["meta"]["kind"] == "projection_pairs"
    for key, bad in [("fi-unit.value", "1"), ("fi-unit.value", -1), ("fi-unit.value", True),
                     ("fi-unit.value", 1.5), ("fi-unit.value", 2**40), ("fi-unit.value", None),
                     ("fi-unit.value", [1]), ("fi-unit.value", {"a": 1}),
                     ("model-selected.data", 5), ("model-selected.data", "x" * 5000),
                     ("model-selected.data", ["conv1"]), ("model-run.value", None),
                     ("model-run.value", ["r18"])]:
        _, resp = client.call(out, {**good, key: bad})  # 200 or 204, or the test fails
        assert resp == {}, (key, bad)  # refused: nothing drawn, nothing read
    # a run or layer that is not there, or a unit not projected: a message, never a failure
    status, resp = client.call(out, {**good, "model-run.value": "../r18"})
    assert status == 200 and "no run named" in json.dumps(resp)
    _, resp = client.call(out, {**good, "model-selected.data": "layer9"})
    assert resp == {}
    status, resp = client.call(out, {**good, "fi-unit.value": 40})
    text = json.dumps(resp)
    assert status == 200 and "recorded units: 0, 1, 2, 3" in text and "units=[40]" in text
