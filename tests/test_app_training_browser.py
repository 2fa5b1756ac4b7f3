"""Training page in chromium: validation, layer and correlation views; a step-range selection in
one view filters the others."""

from __future__ import annotations

import numpy as np
import pytest

import convscope as cs
from convscope.track.columns import LAYER_COLUMNS

pytestmark = pytest.mark.browser

LAYERS = ["conv1", "layer1.0.conv1", "fc"]


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    rng = np.random.default_rng(0)
    n, classes = 60, 3
    labels = np.arange(n) % classes
    with cs.Run(logdir, "dyn", config={"class_names": ["circle", "square", "star"]}) as run:
        for step in range(10, 410, 10):
            lc = {"step": np.full(3, step), "layer": np.array(LAYERS, dtype=object),
                  "rank": np.zeros(3, np.int16)}
            for col in LAYER_COLUMNS:
                lc[col] = (rng.random(3) + step / 100).astype(np.float32)
            run.log_rows("watch_layers", lc)
            cos = np.full(12, 0.999, dtype=np.float32)
            if step == 200:
                cos[5] = 0.2  # layer1.0.conv1 filter 1 changes at the anomaly
            run.log_rows("watch_filters", {
                "step": np.full(12, step), "layer": np.repeat(LAYERS, 4),
                "filter": np.tile(np.arange(4, dtype=np.int32), 3),
                "w_l2": rng.random(12).astype(np.float32),
                "g_l2": rng.random(12).astype(np.float32),
                "ratio": rng.random(12).astype(np.float32), "cos_prev": cos,
                "rank": np.zeros(12, np.int16)})
        for step in range(20, 420, 20):
            pred = labels.copy()
            if 200 <= step < 300:  # class 1 forgotten at 200, relearned at 300: 20 images flip
                pred[labels == 1] = 0
            run.log_validation(step, np.arange(n), labels, pred)
    return logdir


@pytest.fixture(scope="module")
def server(training_run, module_serve):
    return module_serve(training_run, refresh_ms=60_000)


def _plot(page, gid):
    return f"document.querySelector('#{gid} .js-plotly-plot')"


def test_three_views_render_with_data_and_range_filters(training_run, server, page):
    page.goto(server.url + "/training")
    page.wait_for_function(f"() => {_plot(page, 'trn-validation')} && "
                           f"{_plot(page, 'trn-validation')}._fullData.length >= 1")
    reader = cs.open_run(training_run / "dyn")
    err = reader.class_error()
    # validation heatmap: classes as rows, the stored per-class error as values
    z = page.evaluate(f"() => {_plot(page, 'trn-validation')}._fullData[0].z"
                      ".map(r => Array.from(r))")
    classes = page.evaluate(f"() => {_plot(page, 'trn-validation')}.layout.meta.classes")
    np.testing.assert_allclose(np.array(z), err[classes].to_numpy().T)
    # the anomaly mark sits on class 1 ('square') at step 200
    marks = page.evaluate(f"() => {{ const t = {_plot(page, 'trn-validation')}._fullData[1];"
                          " return {x: Array.from(t.x), y: Array.from(t.y)}; }")
    assert marks["x"] == [200, 300] and all(y.endswith("square") for y in marks["y"])
    # correlation view: the changed filter's layer at the anomaly
    page.wait_for_function(f"() => {_plot(page, 'trn-correlation')} && "
                           f"{_plot(page, 'trn-correlation')}.layout.meta && {_plot(page, 'trn-correlation')}.layout.meta.steps.length > 0")
    corr = page.evaluate(f"() => {{ const t = {_plot(page, 'trn-correlation')}._fullData[0];"
                         " return {x: Array.from(t.x), y: Array.from(t.y), "
                         "text: t.text.map(r => Array.from(r))}; }")
    assert corr["x"] == ["200", "300"]
    assert "#1 (0.200)" in corr["text"][corr["y"].index("layer1.0.conv1")][0]
    # layer view: one panel per layer, full step range
    page.wait_for_function(f"() => {_plot(page, 'trn-layers')} && "
                           f"{_plot(page, 'trn-layers')}.layout.meta && {_plot(page, 'trn-layers')}.layout.meta.layers.length === 3")
    first_x = page.evaluate(f"() => Array.from({_plot(page, 'trn-layers')}._fullData[2].x)")
    assert min(first_x) == 10 and max(first_x) == 400
    page.screenshot(path=str(training_run / "training.png"), full_page=True)
    # select steps 20-150 on the validation view: the layer view and correlation follow
    page.evaluate(f"() => Plotly.relayout({_plot(page, 'trn-validation')}, "
                  "{'xaxis.range[0]': 20, 'xaxis.range[1]': 150})")
    page.wait_for_function(
        f"() => {{ const x = Array.from({_plot(page, 'trn-layers')}._fullData[2].x);"
        " return x.length > 0 && Math.max(...x) <= 150; }")
    assert "steps 20 – 150" in page.locator("#trn-range-text").inner_text()
    page.wait_for_function("() => document.getElementById('trn-correlation-box').style.display"
                           " === 'none'")
    page.click("#trn-reset")
    page.wait_for_function(
        f"() => Math.max(...Array.from({_plot(page, 'trn-layers')}._fullData[2].x)) === 400")
    # the filter view of the chosen layer
    try:
        page.wait_for_function(f"() => {_plot(page, 'trn-filters')} && "
                               f"{_plot(page, 'trn-filters')}.layout.meta && {_plot(page, 'trn-filters')}.layout.meta.layer === 'conv1'")
    except Exception as exc:  # say what the page showed and what the server logged
        shown = page.evaluate(
            f"() => {{ const g = {_plot(page, 'trn-filters')};"
            " return {plot: !!g, title: g && g.layout && g.layout.title && g.layout.title.text,"
            " meta: g && g.layout && g.layout.meta,"
            " box: document.getElementById('trn-filters-box').style.display,"
            " layer: document.getElementById('trn-filter-layer').innerText,"
            " range: document.getElementById('trn-range-text').innerText}; }")
        raise AssertionError(f"filter view never showed conv1: {shown}\nserver output:\n"
                             f"{server.output()}") from exc
