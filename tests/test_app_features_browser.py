"""Model page shows preferred inputs and top-k crops for a clicked conv layer; the Live page
updates its channel grid after an image upload."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

import convscope as cs

from .conftest import cy_click

pytestmark = pytest.mark.browser
LAYER = "layer1.0.conv1"


@pytest.fixture(scope="module")
def feat_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, _, _ = cs.data.Shapes(n=20, split="test").tensors()
    with cs.Run(logdir, "feat", quiet=True) as run:
        run.log_checkpoint(model)
        run.log_model(model, x[:4], profile=False)
        run.log_feature_maps(model, x[:4], layers=[LAYER, "conv1"])
        run.log_preferred_inputs(model, [LAYER], units=[0, 1, 2, 3], steps=8)
        top = run.log_top_examples(model, [LAYER], x, k=3)[LAYER]
    return logdir, model, x, top


@pytest.fixture(scope="module")
def server(feat_run, module_serve):
    return module_serve(feat_run[0], refresh_ms=60_000)


def test_conv_layer_panel_shows_preferred_inputs_and_top_crops(feat_run, server, page):
    logdir, model, x, top = feat_run
    page.goto(server.url + "/model")
    cy_click(page, "model-graph", "layer1")
    cy_click(page, "model-graph", "layer1.0")
    cy_click(page, "model-graph", LAYER)
    page.wait_for_selector("#features-section")
    grid = "document.querySelector('#fi-grid .js-plotly-plot')"
    page.wait_for_function(f"() => {grid} && {grid}.layout && {grid}.layout.meta")
    assert page.evaluate(f"() => {grid}.layout.meta.units") == [0, 1, 2, 3]
    pane = "document.querySelector('#fi-pane .js-plotly-plot')"
    page.wait_for_function(f"() => {pane} && {pane}.layout && {pane}.layout.meta")
    meta = page.evaluate(f"() => {pane}.layout.meta")
    assert meta == {"kind": "unit_pane", "unit": 0, "k": 3, "has_preferred": True}
    # the second crop shown for unit 2 is the crop of the stored second-best image
    page.locator("#fi-unit").click()
    page.get_by_role("option", name="2", exact=True).click()
    page.wait_for_function(f"() => {pane}.layout.meta.unit === 2")
    from convscope.figures.images import to_rgb

    z = np.array(page.evaluate(f"() => {pane}._fullData[2].z"), dtype=np.int64)[..., :3]
    # crops are stored as uint8 over their own range: the drawn pixels are within one level
    want = to_rgb(top.crops[2, 1].numpy().astype(np.float32)).astype(np.int64)
    assert z.shape == want.shape and np.abs(z - want).max() <= 1
    # clicking an optimised input picks its unit: the 4th cell is unit 3
    page.locator("#fi-grid").scroll_into_view_if_needed()
    xy = page.evaluate(f"""() => {{
        const g = {grid}, xa = g._fullLayout.xaxis4, ya = g._fullLayout.yaxis4;
        const r = g.getBoundingClientRect();
        return [r.left + xa._offset + xa._length / 2, r.top + ya._offset + ya._length / 2];
    }}""")
    page.mouse.move(*xy)
    page.mouse.click(*xy)
    page.wait_for_function(f"() => {pane}.layout.meta.unit === 3")
    assert page.locator("#fi-unit").inner_text().strip() == "3"
    page.screenshot(path=str(logdir / "features.png"), full_page=True)


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_live_page_updates_its_grid_after_an_upload(feat_run, server, page, tmp_path):
    logdir, model, x, _ = feat_run
    page.goto(server.url + "/live")
    gd = "document.querySelector('#live-grid .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}.layout.meta && "
                           f"{gd}.layout.meta.source === 'sample 0'")
    # upload a red square on black: the grid must show that image's activations
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[8:24, 8:24, 0] = 255
    path = tmp_path / "square.png"
    path.write_bytes(_png(img))
    page.set_input_files("#live-upload input[type=file]", str(path))
    page.wait_for_function(f"() => {gd}.layout.meta.source === 'upload'")
    layer = page.evaluate(f"() => {gd}.layout.meta.layer")
    expect = cs.features.live(model, layer, torch.as_tensor(img.transpose(2, 0, 1) / 255.0,
                                                              dtype=torch.float32))
    meta = page.evaluate(f"() => {gd}.layout.meta")
    assert meta["channels"] == expect.shape[0] and meta["h"] == expect.shape[1]
    z = np.array(page.evaluate(f"() => {gd}._fullData[0].z.map(r => Array.from(r, v => "
                               "v === null ? NaN : v))"), dtype=float)
    ch0 = expect[0].numpy()
    h, w = ch0.shape
    scaled = (ch0 - ch0.min()) / (ch0.max() - ch0.min())
    np.testing.assert_allclose(z[:h, :w], scaled, atol=1e-4)
    assert base64.b64decode(page.get_attribute("#live-input", "src").split(",", 1)[1])[:4] == \
        b"\x89PNG"


def test_a_grid_click_maps_to_a_stored_unit_and_refuses_anything_else(feat_run):
    from convscope.app.pages.model import _clicked_unit

    logdir = feat_run[0]

    class State:
        def reader(self, run):
            return cs.open_run(logdir / run)

    run = sorted(p.name for p in logdir.iterdir() if p.is_dir())[0]
    ok = {"points": [{"curveNumber": 2}]}
    assert _clicked_unit(State(), ok, LAYER, run) == 2  # units [0, 1, 2, 3] stored
    for click in (None, {}, {"points": []}, {"points": [{}]}, {"points": ["x"]},
                  {"points": [{"curveNumber": "2"}]}, {"points": [{"curveNumber": True}]},
                  {"points": [{"curveNumber": -1}]}, {"points": [{"curveNumber": 4}]},
                  {"points": [{"curveNumber": 10**9}]}, [1, 2]):
        assert _clicked_unit(State(), click, LAYER, run) is None, click
    assert _clicked_unit(State(), ok, "conv1", run) is None  # no preferred inputs there
    assert _clicked_unit(State(), ok, 5, run) is None and _clicked_unit(State(), ok, LAYER, 3) \
        is None
