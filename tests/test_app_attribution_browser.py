"""Attribution page in chromium: the gallery of a stored run; method columns and opacity update
the figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.figures.images import colormap_lut, overlay, to_rgb

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def attr_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, y, masks = cs.data.Shapes(n=3, split="test").tensors()
    with cs.Run(logdir, "attr", quiet=True) as run:
        run.log_attributions(model, x, labels=y, masks=masks,
                             methods=["saliency", "grad_cam", "score_cam"],
                             class_names=list(cs.data.class_names))
        big, labels, _ = cs.data.Shapes(n=19, split="val").tensors()
        run.log_attributions(model, torch.utils.data.TensorDataset(big, labels),
                             methods=["saliency"], key="val", batch_size=8)
    return logdir, x


@pytest.fixture(scope="module")
def server(attr_run, module_serve):
    return module_serve(attr_run[0], refresh_ms=60_000)


GD = "document.querySelector('#attr-gallery .js-plotly-plot')"


def test_gallery_shows_stored_maps_and_reacts_to_controls(attr_run, server, page):
    logdir, x = attr_run
    page.goto(server.url + "/attribution")
    page.wait_for_function(f"() => {GD} && {GD}.layout.meta && "
                           f"{GD}.layout.meta.methods.length === 3")
    meta = page.evaluate(f"() => {GD}.layout.meta")
    assert meta["rows"] == 3 and meta["opacity"] == 0.5
    # the grad_cam cell of image 1 is exactly the stored map blended at 0.5
    reader = cs.open_run(logdir / "attr")
    stored = reader.array("attributions", "samples.grad_cam").astype(np.float32)
    images = reader.array("attr_images", "samples").astype(np.float32)
    expect = overlay(to_rgb(images[1]), stored[1], 0.5, colormap_lut("Jet"))
    # traces per row: input, saliency, grad_cam, score_cam -> image 1's grad_cam is trace 6
    z = np.array(page.evaluate(f"() => {GD}._fullData[6].z"), dtype=np.int64)
    np.testing.assert_array_equal(z[..., :3], expect)
    assert page.locator("#attr-table").inner_text().count("Grad-CAM") == 1
    assert "pointing game" in page.locator("#attr-table").inner_text()
    page.screenshot(path=str(logdir / "attribution.png"), full_page=True)
    # untick saliency: the figure drops that column
    page.locator("#attr-methods label", has_text="Saliency").click()
    page.wait_for_function(f"() => {GD}.layout.meta.methods.length === 2")
    assert page.evaluate(f"() => {GD}.layout.meta.methods") == ["grad_cam", "score_cam"]
    # opacity 1: the cell is the pure colour map
    page.locator("#attr-opacity [role=slider]").focus()
    page.keyboard.press("End")  # the slider's maximum, 1
    page.wait_for_function(f"() => {GD}.layout.meta.opacity === 1")
    z1 = np.array(page.evaluate(f"() => {GD}._fullData[4].z"), dtype=np.int64)
    pure = overlay(to_rgb(images[1]), stored[1], page.evaluate(f"() => {GD}.layout.meta.opacity"),
                   colormap_lut("Jet"))
    np.testing.assert_array_equal(z1[..., :3], pure)


def test_a_large_set_is_paged(attr_run, server, page):
    logdir, _ = attr_run
    page.goto(server.url + "/attribution")
    page.wait_for_function(f"() => {GD} && {GD}.layout.meta && {GD}.layout.meta.rows === 3")
    assert not page.locator("#attr-paging").is_visible()  # 3 images: one page
    page.locator("#attr-key").click()
    page.get_by_role("option", name="val", exact=True).click()
    page.wait_for_function(f"() => {GD}.layout.meta.rows === 8")
    assert "page 1 of 3: images 1-8 of 19" in page.locator("#attr-pages").inner_text()
    box = page.locator("#attr-page")
    box.fill("3")
    box.press("Enter")
    page.wait_for_function(f"() => {GD}.layout.meta.rows === 3")
    assert "images 17-19 of 19" in page.locator("#attr-pages").inner_text()
    # the first row of page 3 is image 17 (index 16): its saliency cell is that stored map
    reader = cs.open_run(logdir / "attr")
    stored = reader.array("attributions", "val.saliency").astype(np.float32)
    images = reader.array("attr_images", "val").astype(np.float32)
    expect = overlay(to_rgb(images[16]), stored[16], 0.5, colormap_lut("Jet"))
    z = np.array(page.evaluate(f"() => {GD}._fullData[1].z"), dtype=np.int64)
    np.testing.assert_array_equal(z[..., :3], expect)
    page.screenshot(path=str(logdir / "attribution-paged.png"), full_page=True)
