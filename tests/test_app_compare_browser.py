"""The Compare page in chromium: two runs that differ by one injected fault (run B's conv2 is
dead), side by side.

Oracles: the findings the page marks new / gone are the set differences of the two stored
reports' (code, layer) pairs, computed here from the report dicts; the marked metric cells are
those whose mean changed by >= 0.05, computed with pandas from the stored tables; the heatmap's
values are the stored CKA matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.formats import attribution, diagnosis
from convscope.formats import cka as cka_fmt

from .test_compare import Net, record_two_runs

pytestmark = pytest.mark.browser
SHOTS = Path("/tmp/shots16/compare")


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmpb")
    record_two_runs(root)
    return root


def _pairs(reader) -> set[tuple[str, str]]:
    rep = diagnosis.report_dict(reader, "model")
    return {(f["code"], f.get("layer") or "") for f in rep["findings"]}


def test_compare_page_marks_what_changed(logdir, module_serve, page):
    server = module_serve(logdir, refresh_ms=600_000)
    ra, rb = cs.open_run(logdir / "a"), cs.open_run(logdir / "b")
    page.goto(server.url + "/compare")
    page.wait_for_selector("#cmp-findings")
    assert page.locator("#cmp-a").inner_text().strip() == "a"
    assert page.locator("#cmp-b").inner_text().strip() == "b"
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('#cmp-findings tbody tr'))
        .map(r => [r.dataset.status, r.children[3].innerText, r.children[2].innerText])""")
    pa, pb = _pairs(ra), _pairs(rb)
    layer = lambda s: "" if s == "(model)" else s  # noqa: E731
    assert {(c, layer(lay)) for s, c, lay in rows if s == "new"} == pb - pa
    assert {(c, layer(lay)) for s, c, lay in rows if s == "gone"} == pa - pb
    assert ("dead-maps", "relu2") in pb - pa
    assert not any(s == "kept" for s, _, _ in rows)  # hidden until asked for
    # the metrics: a cell is marked exactly when its mean moved by >= 0.05
    cells = page.evaluate("""() => Array.from(document.querySelectorAll('#cmp-metrics tbody tr'))
        .map(r => [r.children[1].innerText, r.children[2].innerText, r.dataset.marked])""")
    ta, tb = attribution.metrics(ra, "samples"), attribution.metrics(rb, "samples")
    assert cells
    for method, metric, marked in cells:
        da = ta[ta["method"] == method][metric].astype(float).mean()
        db = tb[tb["method"] == method][metric].astype(float).mean()
        assert marked == ("1" if abs(db - da) >= 0.05 else "0"), (method, metric, da, db)
    # preferred inputs: both runs' 2 units of conv2, side by side
    assert page.locator(".cmp-layer[data-layer='conv2'] .cmp-col").count() == 2
    assert page.locator(".cmp-layer[data-layer='conv2'] .cmp-thumb").count() == 4
    # the CKA heatmap is the stored matrix
    page.wait_for_function("() => { const g = document.querySelector('#cmp-cka-graph "
                           ".js-plotly-plot'); return g && g.data && g.data.length; }")
    z = np.array(page.evaluate("() => document.querySelector('#cmp-cka-graph .js-plotly-plot')"
                               ".data[0].z"), dtype=np.float64)
    stored = cka_fmt.load(ra, "cka")
    np.testing.assert_allclose(z, stored.matrix, atol=1e-4)
    assert "A (rows) × B (columns), 16 images" in page.locator("#cmp-cka-note").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": 1800})
    page.wait_for_timeout(500)
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)
    # asking for the shared findings lists them too
    page.get_by_text("list the findings both runs share").click()
    page.wait_for_selector("#cmp-findings tr[data-status='kept']")
    kept = page.locator("#cmp-findings tr[data-status='kept']").count()
    assert kept == len(pa & pb)


def test_one_run_shows_its_own_cka(tmp_path, serve, page):
    """One run selected: the page asks for a second run and still draws the run's CKA of a
    model against itself (a unit diagonal, checked here)."""
    torch.manual_seed(0)
    with cs.Run(tmp_path, "only", quiet=True) as run:
        run.log_cka(Net().eval(), None, torch.rand(8, 3, 16, 16), batch_size=8, key="self")
    server = serve(tmp_path, refresh_ms=600_000)
    page.goto(server.url + "/compare")
    page.wait_for_selector("text=Select two runs in the header")
    page.wait_for_function("() => { const g = document.querySelector('#cmp-cka-graph "
                           ".js-plotly-plot'); return g && g.data && g.data.length; }")
    z = np.array(page.evaluate("() => document.querySelector('#cmp-cka-graph .js-plotly-plot')"
                               ".data[0].z"), dtype=np.float64)
    np.testing.assert_allclose(np.diagonal(z), 1.0, atol=1e-4)
    assert page.locator("#cmp-findings").count() == 0
