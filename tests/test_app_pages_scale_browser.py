"""Pages that work at scale (issue 14): the Diagnosis page's counts, grouping, folded notes and
filters; the Resources page's legend of ring colours; the Embedding page's window-high scatter.

The browser tests compare what chromium shows with the report, the model and the viewport
(independent of the page's code); the pure tests check the page helpers against hand-computed
answers."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

import convscope as cs
from convscope.app.pages import diagnosis as page_diag
from convscope.figures.resources import ring_colors

browser = pytest.mark.browser
VIEWPORT_H = 900  # the `page` fixture's viewport


@pytest.fixture(scope="module")
def scale_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=8).eval()
    with torch.no_grad():
        model.layer2[0].bn1.bias.fill_(-100.0)  # dead maps: warnings in layer2.0.relu1
        model.fc.weight.uniform_(-3, 3)  # wide uniform weights: info findings
        model.layer3[0].conv1.weight.uniform_(-3, 3)
    x, _, _ = cs.data.Shapes(n=16, split="test").tensors()
    with cs.Run(logdir, "scale", quiet=True) as run:
        report = run.log_diagnosis(model, x, max_channels=4)
        run.log_model(model, x[:2], repeat=1)
        run.log_embedding(torch.randn(60, 8), torch.arange(60) % 3, name="feats")
    return logdir, report, model


@pytest.fixture(scope="module")
def server(scale_run, module_serve):
    return module_serve(scale_run[0], refresh_ms=60_000)


# in view: laid out, and inside no closed <details> (whose content chromium skips rendering)
SEEN = "(e => e.checkVisibility() && !e.closest('details:not([open])'))"
FINDINGS_JS = f"""() => Array.from(document.querySelectorAll('#diag-findings .finding')).map(e => [
    e.closest('.stage').dataset.stage, e.closest('.finding-group').dataset.layer,
    e.dataset.code, e.dataset.severity, {SEEN}(e)])"""


def _shown(page) -> list[list]:
    return page.evaluate(FINDINGS_JS)


def _choose(page, dropdown: str, label: re.Pattern) -> None:
    page.locator(f"#{dropdown}").click()
    page.get_by_role("option", name=label).click()


@browser
def test_diagnosis_counts_first_then_stages_and_layers_with_notes_folded(scale_run, server,
                                                                          page):
    _, report, _ = scale_run
    fs = report.findings
    sev = Counter(f.severity for f in fs)
    assert sev["warning"] >= 2 and sev["info"] >= 2 and sev["note"] >= 10  # the fixture's mix
    page.goto(server.url + "/diagnosis")
    page.locator("#diag-counts").wait_for()
    page.locator("#diag-findings .stage").first.wait_for()
    # counts per severity, every severity (zero errors too), above the findings
    for s in ("error", "warning", "info", "note"):
        chip = page.locator(f"#diag-counts .sev-count[data-severity='{s}']")
        assert chip.get_attribute("data-count") == str(sev[s]), s
        assert chip.locator(".sev-n").inner_text() == str(sev[s])
    first_stage = page.locator("#diag-findings .stage").first.bounding_box()
    assert page.locator("#diag-counts").bounding_box()["y"] < first_stage["y"]
    # grouped by stage (in Wang & Li's order) and layer: each finding once, in its own group
    shown = _shown(page)
    assert Counter((s, lay, c, v) for s, lay, c, v, _ in shown) == \
        Counter((f.stage, f.layer, f.code, f.severity) for f in fs)
    stages = page.evaluate("() => Array.from(document.querySelectorAll('#diag-findings .stage'))"
                           ".map(e => e.dataset.stage)")
    assert stages == [s for s in cs.diagnose.STAGES if any(f.stage == s for f in fs)]
    groups = page.evaluate("() => Array.from(document.querySelectorAll('.finding-group')).map("
                           "e => [e.closest('.stage').dataset.stage, e.dataset.layer])")
    assert sorted(map(tuple, groups)) == sorted({(f.stage, f.layer) for f in fs})
    # notes are folded away, everything else is in view
    for s, lay, code, v, visible in shown:
        assert visible == (v != "note"), (s, lay, code, v)
    # a layer's notes open with one click on its summary
    layer = next(f.layer for f in fs if f.severity == "warning")
    group = page.locator(f".finding-group[data-layer='{layer}']")
    notes = [f for f in fs if f.layer == layer and f.severity == "note"]
    assert notes, "the warned layer also has a note (sampled)"
    group.locator(".notes-summary").click()
    page.wait_for_function(f"""() => Array.from(document.querySelectorAll(
        ".finding-group[data-layer='{layer}'] .finding-note")).every({SEEN})""")
    # the layer link of a group still opens the layer's view
    group.locator(".layer-link").click()
    gd = "document.querySelector('#diag-view .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}.layout.meta && "
                           f"{gd}.layout.meta.layer === '{layer}'")


@browser
def test_diagnosis_filters_by_code_and_by_layer_or_block(scale_run, server, page):
    _, report, _ = scale_run
    fs = report.findings
    page.goto(server.url + "/diagnosis")
    page.locator("#diag-findings .stage").first.wait_for()
    assert len(_shown(page)) == len(fs)
    _choose(page, "diag-filter-code", re.compile(r"^sampled \("))
    page.wait_for_selector("#diag-filtered")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#diag-findings "
                           ".finding')).every(e => e.dataset.code === 'sampled')")
    shown = _shown(page)
    want = [f for f in fs if f.code == "sampled"]
    assert len(shown) == len(want)
    assert all(visible for *_, visible in shown)  # a filter opens what it chose
    assert f"Showing {len(want)} of {len(fs)} findings" in page.locator(
        "#diag-filtered").inner_text()
    # a block (layer2 holds layer2.0.relu1, layer2.0.conv1, ...) and the code together
    _choose(page, "diag-filter-layer", re.compile(r"^layer2 \(block"))
    page.wait_for_function("() => document.querySelector('#diag-filtered') && document"
                           ".querySelector('#diag-filtered').innerText.includes('layer2')")
    want = [f for f in fs if f.code == "sampled" and f.layer.startswith("layer2.")]
    assert len(want) >= 2
    shown = _shown(page)
    assert Counter(lay for _, lay, *_ in shown) == Counter(f.layer for f in want)
    # one layer, every code (a fresh page: no filter)
    page.goto(server.url + "/diagnosis")
    page.locator("#diag-findings .stage").first.wait_for()
    _choose(page, "diag-filter-layer", re.compile(r"^layer2\.0\.relu1 \("))
    want = [f for f in fs if f.layer == "layer2.0.relu1"]
    page.wait_for_function(f"() => document.querySelector('#diag-filtered') && document"
                           f".querySelectorAll('#diag-findings .finding').length === {len(want)}")
    assert Counter(c for _, _, c, _, _ in _shown(page)) == Counter(f.code for f in want)


@browser
def test_resources_legend_names_each_ring_colour(scale_run, server, page):
    _, _, model = scale_run
    page.goto(server.url + "/resources")
    gd = "document.querySelector('#res-rings .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}.layout && {gd}.layout.meta")
    page.locator("#res-legend .legend-item").first.wait_for()
    items = page.evaluate("() => Array.from(document.querySelectorAll('#res-legend "
                          ".legend-item')).map(e => [e.dataset.name, e.dataset.color, "
                          "getComputedStyle(e.querySelector('.swatch')).backgroundColor])")
    names = [n for n, _, _ in items]
    # the model's own children (torch's view, not the page's), in the rings' order
    assert set(names) <= {n for n, _ in model.named_children()}
    assert {"layer1", "layer4", "fc"} <= set(names)
    assert names == page.evaluate(f"() => {gd}.layout.meta.names")
    # each swatch has the colour its ring segment is drawn in (both rings)
    for ring in (0, 1):
        drawn = page.evaluate(f"() => Array.from({gd}._fullData[{ring}].marker.color)")
        assert [c for _, c, _ in items] == drawn
    for _, hex_, css in items:  # and the browser paints that colour
        r, g, b = (int(hex_[i:i + 2], 16) for i in (1, 3, 5))
        assert css == f"rgb({r}, {g}, {b})"
    assert "Colour" in page.locator("#res-legend").inner_text()
    # drilling down: the legend follows the children of the opened block
    page.locator("#res-table td[data-dash-column='name']", has_text="layer1").first.click()
    page.wait_for_function(f"() => {gd}.layout.meta.parent === 'layer1'")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#res-legend "
                           ".legend-item')).every(e => e.dataset.name.startsWith('layer1.'))")
    kids = {f"layer1.{n}" for n, _ in model.layer1.named_children()}
    shown = page.evaluate("() => Array.from(document.querySelectorAll('#res-legend "
                          ".legend-item')).map(e => e.dataset.name)")
    assert shown and set(shown) <= kids


@browser
def test_embedding_scatter_uses_the_window_height(scale_run, server, page):
    page.goto(server.url + "/embedding")
    gd = "document.querySelector('#emb-graph .js-plotly-plot')"
    page.wait_for_function(f"() => {gd} && {gd}.data && {gd}.data.length === 3")
    box = page.locator("#emb-graph").bounding_box()
    assert box["height"] >= 0.7 * VIEWPORT_H
    assert box["y"] + box["height"] <= VIEWPORT_H  # fits the window: no scrolling to see it
    assert abs(page.evaluate(f"() => {gd}._fullLayout.height") - box["height"]) <= 2
    # the 3-D scene fills the plot (a legend above the plot once pushed it down by its height)
    size = page.evaluate(f"() => {gd}._fullLayout._size")
    assert size["t"] <= 40 and size["h"] >= box["height"] - 100
    # a taller window: a taller scatter
    page.set_viewport_size({"width": 1400, "height": 1200})
    page.wait_for_function(f"() => {gd}._fullLayout.height >= 0.7 * 1200")
    assert page.locator("#emb-graph").bounding_box()["height"] >= 0.7 * 1200


# -- the page helpers, without a browser ---------------------------------------------------------
def _f(layer: str, code: str = "sampled", severity: str = "note",
       stage: str = "low-abstraction outputs") -> dict:
    return {"layer": layer, "code": code, "severity": severity, "stage": stage, "message": "m"}


def test_layer_filter_offers_blocks_of_several_layers_then_layers():
    fs = [_f("a.0.x"), _f("a.0.y"), _f("a.0.y", "dead-maps", "warning"), _f("a.1.x"), _f("b"),
          _f("f.1.block.3"), _f("f.1.block.5")]
    opts = page_diag.layer_filter_options(fs)
    # by hand: "a" holds 3 layers, "a.0" 2; "a.1" only one (not a block worth offering);
    # "f", "f.1" and "f.1.block" hold the same two layers: the shortest name only
    assert [o["value"] for o in opts] == ["a", "a.0", "f", "a.0.x", "a.0.y", "a.1.x", "b",
                                          "f.1.block.3", "f.1.block.5"]
    assert opts[0]["label"] == "a (block: 4 findings in 3 layers)"
    assert opts[4]["label"] == "a.0.y (2)"


def test_filter_matches_a_block_and_a_layer_called_twice_but_not_a_name_prefix():
    fs = [_f("layer1.0.relu"), _f("layer1.0.relu:2"), _f("layer10.conv"), _f("layer1")]
    got = page_diag.filter_findings(fs, "layer1")
    assert [f["layer"] for f in got] == ["layer1.0.relu", "layer1.0.relu:2", "layer1"]
    assert [f["layer"] for f in page_diag.filter_findings(fs, "layer1.0.relu")] == \
        ["layer1.0.relu", "layer1.0.relu:2"]
    assert page_diag.filter_findings(fs, None, "dead-maps") == []


def test_counts_and_codes_most_severe_first():
    fs = [_f("a"), _f("b"), _f("c", "dead-maps", "warning"), _f("d", "odd", "weird")]
    assert page_diag.severity_counts(fs) == {"error": 0, "warning": 1, "info": 0, "note": 2,
                                             "weird": 1}
    assert [o["value"] for o in page_diag.code_filter_options(fs)] == \
        ["dead-maps", "sampled", "odd"]


def _details(node, out):
    """Every html.Details in a Dash component tree, depth first."""
    if isinstance(node, (list, tuple)):
        for n in node:
            _details(n, out)
        return out
    if type(node).__name__ == "Details":
        out.append(node)
    children = getattr(node, "children", None)
    if children is not None and not isinstance(children, str):
        _details(children, out)
    return out


def test_stages_fold_when_they_hold_only_many_info_findings():
    dense = "dense parameters"
    many_info = [_f(f"fc{i}", "concentrated-param-splits", "info", dense)
                 for i in range(page_diag.OPEN_INFO_MAX + 1)]
    few_info = many_info[:2]
    warned = [_f("x", "dead-maps", "warning")] + many_info
    # by hand: many info alone fold; a few info stay open; a warning opens its own stage only
    for fs, want in ((many_info, [False]), (few_info, [True]), (warned, [True, False])):
        tree = page_diag.grouped_findings(fs)
        stages = [d for d in _details(tree, []) if d.className == "stage"]
        assert [d.open for d in stages] == want
    # a filter opens everything, notes too
    tree = page_diag.grouped_findings(many_info + [_f("fc0")], filtered=True)
    assert all(d.open for d in _details(tree, []))
    # stored stage numbers (older runs) name the stage
    assert page_diag.stage_name(4) == dense and page_diag.stage_name("x") == "x"


def test_ring_colours_stay_distinct_beyond_the_palette():
    from convscope.figures import theme

    n = len(theme.PALETTE)
    assert ring_colors(n) == theme.PALETTE  # one palette colour per child
    many = ring_colors(n + 5)
    assert len(set(many)) == n + 5  # no colour repeats
    assert many[0] == "rgb(68, 1, 84)" and many[-1] == "rgb(253, 231, 37)"  # Viridis' ends
