"""Diagnosis page in chromium: findings are listed (grouped by stage and layer); a layer link
opens its dendrogram view."""

from __future__ import annotations

import pytest
import torch

import convscope as cs

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=8).eval()
    with torch.no_grad():  # a dead-ReLU fault: BN shifts every channel far below zero
        model.layer2[0].bn1.bias.fill_(-100.0)
    x, _, _ = cs.data.Shapes(n=16, split="test").tensors()
    with cs.Run(logdir, "sick", quiet=True) as run:
        report = run.log_diagnosis(model, x)
        big, _, _ = cs.data.Shapes(n=40, split="val").tensors()
        whole = run.log_diagnosis(model, big, batch_size=16, key="whole")
    return logdir, report, whole


@pytest.fixture(scope="module")
def server(diag_run, module_serve):
    return module_serve(diag_run[0], refresh_ms=60_000)


def test_findings_are_listed_and_a_layer_link_opens_its_view(diag_run, server, page):
    logdir, report, _ = diag_run
    dead = [f for f in report.findings if f.code == "dead-maps"]
    assert [f.layer for f in dead] == ["layer2.0.relu1"]
    page.goto(server.url + "/diagnosis")
    card = page.locator(".finding[data-code='dead-maps']")
    card.wait_for()
    assert card.get_attribute("data-layer") == "layer2.0.relu1"
    assert "batch normalisation" in card.inner_text() or "activation" in card.inner_text()
    assert page.locator(".finding").count() == len(report.findings)
    # the layer link heads the layer's group of findings (one link per layer and stage)
    group = page.locator(".finding-group[data-layer='layer2.0.relu1']")
    assert group.locator(".finding[data-code='dead-maps']").count() == 1
    group.locator(".layer-link").click()
    gd = "document.querySelector('#diag-view .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}.layout.meta && "
                           f"{gd}.layout.meta.layer === 'layer2.0.relu1'")
    # the dendrogram's leaf order is the stored clustering's
    leaves = page.evaluate(f"() => {gd}.layout.meta.leaves")
    view = cs.open_run(logdir / "sick").object("diag_view", "layer2.0.relu1")
    assert leaves == [view["channels"][i] for i in view["clustering"]["leaves"]]
    page.screenshot(path=str(logdir / "diagnosis.png"), full_page=True)


def test_a_data_set_report_is_chosen_and_says_what_it_covers(diag_run, server, page):
    _, report, whole = diag_run
    page.goto(server.url + "/diagnosis")
    page.locator("#diag-summary").wait_for()
    assert "one batch of shape [16, 3, 32, 32]" in page.locator("#diag-summary").inner_text()
    page.locator("#diag-key").click()
    page.get_by_role("option", name="whole", exact=True).click()
    page.wait_for_function("() => document.querySelector('#diag-summary') && document"
                           ".querySelector('#diag-summary').innerText.includes('40 images')")
    text = page.locator("#diag-summary").inner_text()
    assert "Statistics over 40 images" in text and "figures from the first 16 images" in text
    assert page.locator(".finding").count() == len(whole.findings)
    dead = page.locator(".finding[data-code='dead-maps']")
    assert dead.get_attribute("data-layer") == "layer2.0.relu1"
