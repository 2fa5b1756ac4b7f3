"""Training page in chromium (DeepTracker, Liu et al. 2018): validation view with cluster rows
that open into classes and images, anomaly triangles by flip direction, correlation by anomaly
class, the cube, alerts, layer and filter views; one step range drives every view.

Oracles are independent of the page: per-class errors from the fixture's own predictions,
anomaly directions from ``reader.anomalies``, the correlation and cube counted by brute force
from ``track.correlate`` run on every stored filter row, alerts from the fixture's planted
stretches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import convscope as cs
from convscope.formats import training as fmt
from convscope.track import correlate
from convscope.track.columns import LAYER_COLUMNS

from .dash_http import DashClient

pytestmark = pytest.mark.browser

LAYERS = ["conv1", "layer1.0.conv1", "fc"]
NAMES = ["circle", "square", "star", "disk", "ring", "cross"]
N, C = 120, 6
SHOTS = Path("/tmp/shots16/C")


def _predictions(step: int, labels: np.ndarray) -> np.ndarray:
    """Per class: 0-1 learned early, 2-3 late (step 260), 4 forgotten at 200 and relearned at
    300 (20 stable flips each way), 5 half wrong all along."""
    pred = labels.copy()
    wrong = np.zeros(len(labels), dtype=bool)
    wrong |= (labels <= 1) & (step < 60)
    wrong |= (labels == 2) & (step < 260)
    wrong |= (labels == 3) & (step < 260) & (np.arange(len(labels)) % 12 < 9)
    wrong |= (labels == 4) & (step >= 200) & (step < 300)
    wrong |= (labels == 5) & (np.arange(len(labels)) % 12 < 6)
    pred[wrong] = (labels[wrong] + 1) % C
    return pred


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("logdir")
    rng = np.random.default_rng(0)
    labels = np.arange(N) % C
    truth = {}
    with cs.Run(logdir, "dyn", config={"class_names": NAMES}) as run:
        for step in range(10, 410, 10):
            lc = {"step": np.full(3, step), "layer": np.array(LAYERS, dtype=object),
                  "rank": np.zeros(3, np.int16)}
            for col in LAYER_COLUMNS:
                lc[col] = (rng.random(3) + step / 100).astype(np.float32)
            # healthy update ratios (~1e-3) and gradient norms (~1), with planted alerts:
            # fc's ratio 0.5 at steps 100-150, conv1's gradient 1e3 at 300-320
            lc["update_ratio"] = (1e-3 * (1 + 0.1 * rng.random(3))).astype(np.float32)
            lc["g_l2"] = (1 + 0.1 * rng.random(3)).astype(np.float32)
            if 100 <= step <= 150:
                lc["update_ratio"][2] = 0.5
            if 300 <= step <= 320:
                lc["g_l2"][0] = 1e3
            run.log_rows("watch_layers", lc)
            cos = np.full(12, 0.999, dtype=np.float32)
            if step == 200:
                cos[5] = 0.2  # layer1.0.conv1 filter 1 changes at the forgetting
            if step == 300:
                cos[9] = 0.3  # fc filter 1 at the relearning
            run.log_rows("watch_filters", {
                "step": np.full(12, step), "layer": np.repeat(LAYERS, 4),
                "filter": np.tile(np.arange(4, dtype=np.int32), 3),
                "w_l2": rng.random(12).astype(np.float32),
                "g_l2": rng.random(12).astype(np.float32),
                "ratio": rng.random(12).astype(np.float32), "cos_prev": cos,
                "rank": np.zeros(12, np.int16)})
        for step in range(20, 420, 20):
            pred = _predictions(step, labels)
            truth[step] = pred == labels
            run.log_validation(step, np.arange(N), labels, pred)
        images = rng.random((N, 3, 28, 28)).astype(np.float32)
        fmt.write_validation_thumbnails(run, np.arange(N), images, labels)
    return logdir, labels, truth


@pytest.fixture(scope="module")
def server(training_run, module_serve):
    return module_serve(training_run[0], refresh_ms=60_000)


def _plot(gid):
    return f"document.querySelector('#{gid} .js-plotly-plot')"


def _meta(page, gid):
    return page.evaluate(f"() => {_plot(gid)}.layout.meta")


def _wait_meta(page, gid, cond="true"):
    page.wait_for_function(f"() => {{ const g = {_plot(gid)}; if (!g || !g.layout || "
                           f"!g.layout.meta) return false; const m = g.layout.meta; "
                           f"return {cond}; }}")


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def _click_row(page, gid, row):
    """A real mouse click on row ``row`` of a heatmap (in the middle of the x axis)."""
    xy = page.evaluate(f"""() => {{ const g = {_plot(gid)}; const L = g._fullLayout;
        const r = g.querySelector('.nsewdrag').getBoundingClientRect();
        return {{x: r.left + r.width / 2, y: L.yaxis._offset + L.yaxis.l2p({row})
                 + g.getBoundingClientRect().top}}; }}""")
    page.mouse.click(xy["x"], xy["y"])


def _choose(page, dropdown, label):
    page.locator(f"#{dropdown}").click()
    page.get_by_role("option", name=label, exact=True).click()


MARKS_JS = """() => { const out = {x: [], y: [], symbol: [], classes: [], direction: []};
    for (const t of {PLOT}._fullData) {
        if (!t.meta || !t.meta.direction) continue;
        t.x.forEach((v, i) => { out.x.push(v); out.y.push(t.y[i]);
            out.symbol.push(t.marker.symbol); out.classes.push(t.meta.classes[i]);
            out.direction.push(t.meta.direction); });
    }
    return out; }"""


def _marks(page):
    """Every anomaly mark of the validation view (one trace per flip direction)."""
    return page.evaluate(MARKS_JS.replace("{PLOT}", _plot("trn-validation")))


def _independent_error(labels, truth):
    steps = sorted(truth)
    return steps, np.array([[1 - truth[s][labels == c].mean() for c in range(C)]
                            for s in steps])


def _brute_correlation(reader, direction=None):
    """correlate() over every stored filter row (not the page's top-k path)."""
    filters = fmt.load_watch(reader).filters
    return correlate(reader.anomalies(threshold=5, direction=direction), filters, top=10,
                     scope="overall")


def _flips(page, label):
    """Choose which flips the anomalies count (the Flips radio items)."""
    page.locator("#trn-flips").get_by_text(label, exact=True).click()


def test_validation_clusters_triangles_images(training_run, server, page):
    logdir, labels, truth = training_run
    reader = cs.open_run(logdir / "dyn")
    steps, err = _independent_error(labels, truth)
    page.goto(server.url + "/training")
    _wait_meta(page, "trn-validation", "m.rows && m.rows.length > 0")
    meta = _meta(page, "trn-validation")
    rows = meta["rows"]
    z = np.array(page.evaluate(f"() => {_plot('trn-validation')}._fullData[0].z"
                               ".map(r => Array.from(r, v => v === null ? NaN : v))"))
    x = page.evaluate(f"() => Array.from({_plot('trn-validation')}._fullData[0].x)")
    assert x == steps
    # 6 classes: every cluster starts open; a cluster row = mean of its classes' errors
    kinds = [r["kind"] for r in rows]
    assert kinds.count("class") == C and kinds.count("cluster") >= 2
    for i, r in enumerate(rows):
        if r["kind"] == "class":
            np.testing.assert_allclose(z[i], err[:, r["id"]], atol=1e-12)
        else:
            members = [q["id"] for q in rows if q["kind"] == "class"
                       and q["cluster"] == r["id"]]
            assert members
            np.testing.assert_allclose(z[i], err[:, members].mean(axis=1), atol=1e-12)
    # by default only forgetting is marked: class 4 ('ring') forgotten at 200
    default = reader.anomalies(threshold=5).frame
    _wait_meta(page, "trn-validation", "m.rows && m.rows.length > 0")
    marks = _marks(page)
    assert sorted(zip(marks["x"], marks["classes"], strict=True)) == sorted(
        zip(default["step"], default["class"], strict=True))
    assert set(marks["symbol"]) == {"triangle-down"}
    assert {s for s, c in zip(marks["x"], marks["classes"], strict=True) if c == 4} == {200}
    # both directions: class 4 is forgotten at 200 and relearned at 300: triangles down,
    # then up, directions equal to the anomaly frame's counts
    frame = reader.anomalies(threshold=5, direction="both").frame
    assert len(frame) > len(default)
    _flips(page, "both")
    page.wait_for_function(f"() => {{ const n = ({MARKS_JS.replace('{PLOT}', _plot('trn-validation'))})().x.length; return n === {len(frame)}; }}")
    marks = _marks(page)
    assert len(marks["x"]) == len(frame)
    for s, y, sym, c in zip(marks["x"], marks["y"], marks["symbol"], marks["classes"],
                            strict=True):
        f = frame[(frame["step"] == s) & (frame["class"] == c)].iloc[0]
        want = "triangle-up" if f["n_to_right"] > f["n_to_wrong"] else "triangle-down" \
            if f["n_to_wrong"] > f["n_to_right"] else "diamond"
        assert sym == want
        row = next(r for r in rows if r["label"] == y)
        assert row["kind"] == "class" and row["id"] == c
    ring = {s: sym for s, sym, c in zip(marks["x"], marks["symbol"], marks["classes"],
                                        strict=True) if c == 4}
    assert ring == {200: "triangle-down", 300: "triangle-up"}
    _shot(page, "validation_open.png")

    # a real click on a cluster row closes it: its classes' rows go, the row stays
    first = rows[0]
    assert first["kind"] == "cluster"
    n_members = sum(1 for r in rows if r["kind"] == "class" and r["cluster"] == first["id"])
    _click_row(page, "trn-validation", 0)
    _wait_meta(page, "trn-validation", f"m.rows.length === {len(rows) - n_members}")
    closed = _meta(page, "trn-validation")["rows"]
    assert closed[0]["id"] == first["id"] and closed[0]["kind"] == "cluster"
    assert closed[0]["label"].startswith("\u25b8") and first["label"].startswith("\u25be")
    assert not any(r["kind"] == "class" and r["cluster"] == first["id"] for r in closed)
    assert first["id"] not in page.evaluate(
        "() => Array.from(document.querySelectorAll('#trn-open input:checked'), "
        "e => Number(e.value))")
    # marks of a closed cluster's classes sit on the cluster row
    members = {r["id"] for r in rows if r["kind"] == "class" and r["cluster"] == first["id"]}
    marks = _marks(page)
    for y, c in zip(marks["y"], marks["classes"], strict=True):
        assert (c in members) == (y == closed[0]["label"])
    _shot(page, "validation_closed.png")

    # a click on class 4's row opens its images: strips equal the stored truth, thumbnails
    rows = _meta(page, "trn-validation")["rows"]
    row4 = next(i for i, r in enumerate(rows) if r["kind"] == "class" and r["id"] == 4)
    _click_row(page, "trn-validation", row4)
    _wait_meta(page, "trn-images", "m.class === 4")
    im = _meta(page, "trn-images")
    ids = im["ids"]
    assert set(ids) <= set(np.flatnonzero(labels == 4).tolist()) and len(ids) == 20
    assert im["thumbnails"] == len(ids)
    sz = np.array(page.evaluate(f"() => {_plot('trn-images')}._fullData[0].z"
                                ".map(r => Array.from(r))"))
    want = np.array([[truth[s][i] for s in steps] for i in ids], dtype=float)
    np.testing.assert_array_equal(sz, want)
    n_img = page.evaluate(f"() => {_plot('trn-images')}.querySelectorAll("
                          "'.layer-above image').length")
    assert n_img == len(ids)
    _shot(page, "images.png")


def test_correlation_by_class_cube_and_alerts(training_run, server, page):
    logdir, labels, truth = training_run
    reader = cs.open_run(logdir / "dyn")
    top = _brute_correlation(reader)
    page.goto(server.url + "/training")
    # correlation view: columns = anomaly classes; a cell = the class's anomaly steps' top
    # filters lying in the layer, counted by brute force
    _wait_meta(page, "trn-correlation", "m.classes && m.classes.length > 0")
    cm = _meta(page, "trn-correlation")
    cz = np.array(page.evaluate(f"() => {_plot('trn-correlation')}._fullData[0].z"
                                ".map(r => Array.from(r))"))
    ex = top.explode("classes")
    assert cm["classes"] == sorted({int(c) for c in ex["classes"]})
    assert cm["layers"] == reader.watched_layers() and set(cm["layers"]) == set(LAYERS)
    for i, layer in enumerate(cm["layers"]):
        for j, c in enumerate(cm["classes"]):
            assert cz[i, j] == ((ex["layer"] == layer) & (ex["classes"] == c)).sum()
    xs = page.evaluate(f"() => Array.from({_plot('trn-correlation')}._fullData[0].x)")
    assert xs == [NAMES[c] for c in cm["classes"]]
    # the cube: slice by layer and class, each heatmap equals a brute-force count
    _wait_meta(page, "trn-cube", "m.kind === 'cube'")
    _choose(page, "trn-cube-layer", "layer1.0.conv1")
    _choose(page, "trn-cube-class", "ring")
    _wait_meta(page, "trn-cube", "m.layer === 'layer1.0.conv1' && m.class === 4")
    meta = _meta(page, "trn-cube")
    z = page.evaluate(f"() => {_plot('trn-cube')}._fullData.map(t => t.z.map(r => "
                      "Array.from(r)))")

    def count(layer=None, step=None, cls=None):
        d = ex
        if layer is not None:
            d = d[d["layer"] == layer]
        if step is not None:
            d = d[d["step"] == step]
        if cls is not None:
            d = d[d["classes"] == cls]
        return len(d)

    assert meta["steps"] == sorted(top["step"].unique().tolist())
    for i, layer in enumerate(meta["layers"]):
        for j, s in enumerate(meta["steps"]):
            assert z[0][i][j] == count(layer, s, 4)
    for ci, c in enumerate(meta["classes"]):
        for j, s in enumerate(meta["steps"]):
            assert z[1][ci][j] == count("layer1.0.conv1", s, c)
    for i, layer in enumerate(meta["layers"]):
        for ci, c in enumerate(meta["classes"]):
            assert z[2][i][ci] == count(layer, None, c)
    assert z[0][meta["layers"].index("layer1.0.conv1")][meta["steps"].index(200)] >= 1
    _shot(page, "correlation_cube.png")
    # alerts: exactly the planted stretches
    page.locator("#trn-alerts-table").wait_for()
    got = page.evaluate("() => Array.from(document.querySelectorAll('#trn-alerts-table "
                        "tbody tr'), r => [r.querySelector('.alert-kind').innerText, "
                        "r.querySelector('.alert-layer').innerText, "
                        "r.querySelector('.alert-steps').innerText])")
    assert got == [["update_ratio_high", "fc", "100 \u2013 150"],
                   ["gradient_exploding", "conv1", "300 \u2013 320"]]
    page.locator("#trn-alerts").screenshot(path=str(SHOTS / "alerts.png"))


def test_one_step_range_drives_every_view(training_run, server, page):
    logdir, labels, truth = training_run
    page.goto(server.url + "/training")
    _wait_meta(page, "trn-cube", "m.kind === 'cube'")
    _wait_meta(page, "trn-layers", "m.layers && m.layers.length === 3")
    first_x = page.evaluate(f"() => Array.from({_plot('trn-layers')}._fullData[2].x)")
    assert min(first_x) == 10 and max(first_x) == 400
    rows = _meta(page, "trn-validation")["rows"]
    row4 = next(i for i, r in enumerate(rows) if r["kind"] == "class" and r["id"] == 4)
    _click_row(page, "trn-validation", row4)
    _wait_meta(page, "trn-images", "m.class === 4")
    # select steps 150-250 on the validation view: every view follows
    page.evaluate(f"() => Plotly.relayout({_plot('trn-validation')}, "
                  "{'xaxis.range[0]': 150, 'xaxis.range[1]': 250})")
    page.wait_for_function(
        f"() => {{ const x = Array.from({_plot('trn-layers')}._fullData[2].x);"
        " return x.length > 0 && Math.max(...x) <= 250 && Math.min(...x) >= 150; }")
    assert "steps 150 \u2013 250" in page.locator("#trn-range-text").inner_text()
    _wait_meta(page, "trn-cube", "m.steps.length === 1 && m.steps[0] === 200")
    _wait_meta(page, "trn-correlation", "m.steps.length === 1 && m.steps[0] === 200")
    page.wait_for_function(f"() => {{ const x = Array.from({_plot('trn-images')}._fullData[0]"
                           ".x); return x.length > 0 && Math.min(...x) >= 150 && "
                           "Math.max(...x) <= 250; }")
    vx = page.evaluate(f"() => Array.from({_plot('trn-validation')}._fullData[0].x)")
    assert min(vx) >= 150 and max(vx) <= 250
    # the alerts overlapping 150-250: fc's 100-150 stretch, not conv1's 300-320
    page.wait_for_function("() => Array.from(document.querySelectorAll("
                           "'#trn-alerts-table .alert-layer'), e => e.innerText).join() "
                           "=== 'fc'")
    _shot(page, "range_150_250.png")
    page.click("#trn-reset")
    page.wait_for_function(
        f"() => Math.max(...Array.from({_plot('trn-layers')}._fullData[2].x)) === 400")
    _flips(page, "both")  # forgetting and relearning: the whole range has both steps
    n_steps = _brute_correlation(cs.open_run(logdir / "dyn"), "both")["step"].nunique()
    assert n_steps >= 2  # the whole range holds more anomaly steps than 150-250's one
    _wait_meta(page, "trn-cube", f"m.steps.length === {n_steps}")
    # the filter view of the chosen layer
    _wait_meta(page, "trn-filters", "m.layer === 'conv1'")


def test_callbacks_refuse_bad_values_without_failing(training_run, server, tmp_path):
    """Every Training-page callback answers 200/204 on values a client may post."""
    client = DashClient(server.url)
    bad = [None, "x", -5, 1e308, [1, 2, 3], {"a": 1}, ["a", "b"], [float("nan"), 1], True,
           "../../etc", [[1]], 2**70]
    outputs = [k for k in client.deps if k.startswith("trn-")]
    assert {"trn-validation.figure", "trn-images.figure", "trn-correlation.figure",
            "trn-alerts.children", "trn-open.options"} <= set(outputs)
    good = {"trn-run.value": "dyn", "trn-k.value": 3, "trn-threshold.value": 5,
            "trn-flips.value": "both",
            "trn-range.data": None, "refresh.n_intervals": 1, "trn-open.value": [0],
            "trn-class.value": 4, "trn-cube-layer.value": "fc", "trn-cube-class.value": 4,
            "trn-stat.value": "update_ratio", "trn-filter-layer.value": "fc",
            "trn-filter-value.value": "cos_prev", "trn-rows.data": None,
            "trn-validation.clickData": None, "trn-reset.n_clicks": None,
            "trn-validation.relayoutData": None, "trn-layers.relayoutData": None,
            "run-select.value": ["dyn"]}
    for out in outputs:
        dep = client.deps[out]
        for i in [*dep["inputs"], *dep.get("state", [])]:
            name = f"{i['id']}.{i['property']}"
            if name in ("trn-run.value", "run-select.value"):
                continue
            for v in bad:
                client.call(out, {**good, name: v}, changed=name)
    # a click that names rows the server never sent: ignored, no failure
    _, resp = client.call("trn-open.options", {
        **good, "trn-validation.clickData": {"points": [{"y": "a"}]},
        "trn-rows.data": [{"kind": "cluster", "id": "../x", "label": "a"}]},
        changed="trn-validation.clickData")
    assert json.dumps(resp)  # answered


def test_images_without_stored_pixels_say_so(tmp_path, serve, page):
    """A run without thumbnails: the images view lists ids and says how to store pixels."""
    labels = np.arange(30) % 3
    with cs.Run(tmp_path, "bare") as run:
        for step in (10, 20, 30):
            run.log_validation(step, np.arange(30), labels, labels if step > 10 else
                               (labels + 1) % 3)
    server = serve(tmp_path, refresh_ms=60_000)
    page.goto(server.url + "/training")
    _wait_meta(page, "trn-validation", "m.rows && m.rows.length > 0")
    _choose(page, "trn-class", "class 1")
    _wait_meta(page, "trn-images", "m.class === 1")
    assert _meta(page, "trn-images")["thumbnails"] == 0
    assert "stored no validation pixels" in page.locator("#trn-images-note").inner_text()
    # the strips span the panel (plotly drew them after the panel appeared)
    widths = page.evaluate(f"() => [{_plot('trn-images')}._fullLayout.width, "
                           "document.getElementById('trn-images-box').clientWidth]")
    assert 0.9 * (widths[1] - 40) <= widths[0] <= widths[1], widths
    _shot(page, "images_no_pixels.png")
    shutil.rmtree(tmp_path / "bare", ignore_errors=True)
