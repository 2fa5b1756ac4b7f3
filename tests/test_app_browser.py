"""The dashboard in Debian's chromium: run list, run selection, scalar charts, live refresh."""

from __future__ import annotations

import math

import pytest

import convscope as cs

pytestmark = pytest.mark.browser


def _log_two_runs(logdir):
    with cs.Run(logdir, "alpha", config={"lr": 0.1}) as run:
        for s in range(50):
            run.log_scalars(s, loss=math.exp(-s / 10), acc=s / 50)
    with cs.Run(logdir, "beta") as run:
        for s in range(0, 100, 2):
            run.log_scalars(s, loss=0.5 + 0.01 * s)
    with cs.Run(logdir, "gamma") as run:
        run.log_array("images", "x", [[0.0, 1.0]])


def _figure_traces(page):
    return page.evaluate(
        """() => {
            const gd = document.querySelector('#scalars-graph .js-plotly-plot');
            if (!gd || !gd.data) return null;
            // _fullData holds the decoded arrays (plotly.py ships numpy data base64-encoded)
            return gd._fullData.map(t => ({meta: t.meta, x: Array.from(t.x), y: Array.from(t.y)}));
        }"""
    )


def _select_only(page, names):
    page.click("#run-select")
    page.get_by_role("button", name="Deselect All").click()
    for n in names:
        page.locator("label.dash-dropdown-option", has_text=n).click()
    page.keyboard.press("Escape")


def test_runs_page_lists_runs_with_size_and_contents(tmp_path, serve, page):
    _log_two_runs(tmp_path)
    server = serve(tmp_path)
    page.goto(server.url + "/")
    page.wait_for_selector("table.runs")
    rows = page.locator("table.runs tbody tr")
    assert rows.count() == 3
    alpha = page.locator("tr[data-run='alpha']")
    assert "scalars (100 rows)" in alpha.inner_text()
    assert "KB" in alpha.inner_text()
    assert "images (arrays)" in page.locator("tr[data-run='gamma']").inner_text()
    page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)


def test_corrupt_part_is_reported_in_the_run_list_and_the_rest_loads(tmp_path, serve, page):
    _log_two_runs(tmp_path)
    bad = tmp_path / "alpha" / "tables" / "scalars" / "part-r000-p9-dead-000001.parquet"
    bad.write_bytes(b"PAR1 this is not parquet PAR1")
    server = serve(tmp_path)
    page.goto(server.url + "/")
    row = page.locator("tr[data-run='alpha']")
    row.wait_for()
    assert "part-r000-p9-dead-000001.parquet is not a readable Parquet file" in row.inner_text()
    assert "scalars (100 rows)" in row.inner_text()  # the intact parts still count
    page.click("#nav-scalars")
    _select_only(page, ["alpha"])
    page.wait_for_function(
        """() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');
                   return gd && gd._fullData && gd._fullData.length === 4; }"""
    )
    traces = _figure_traces(page)
    raw = {t["meta"]["tag"]: t for t in traces if t["meta"]["kind"] == "raw"}
    assert raw["loss"]["x"] == list(range(50))


def test_scalar_chart_shows_logged_points_of_selected_runs(tmp_path, serve, page):
    _log_two_runs(tmp_path)
    server = serve(tmp_path)
    page.goto(server.url + "/scalars")
    page.wait_for_selector("#scalars-graph .js-plotly-plot")
    _select_only(page, ["alpha"])
    page.wait_for_function(
        """() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');
                   return gd && gd.data && gd.data.length === 4 && gd.data.every(t => t.meta.run === 'alpha'); }"""
    )
    traces = _figure_traces(page)
    raw = {t["meta"]["tag"]: t for t in traces if t["meta"]["kind"] == "raw"}
    assert set(raw) == {"acc", "loss"}
    assert raw["loss"]["x"] == list(range(50))
    assert raw["loss"]["y"] == pytest.approx([math.exp(-s / 10) for s in range(50)])
    assert raw["acc"]["y"] == pytest.approx([s / 50 for s in range(50)])

    _select_only(page, ["alpha", "beta"])
    page.wait_for_function(
        """() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');
                   return gd && new Set(gd.data.map(t => t.meta.run)).size === 2; }"""
    )
    traces = _figure_traces(page)
    beta = [t for t in traces if t["meta"]["run"] == "beta" and t["meta"]["kind"] == "raw"]
    assert len(beta) == 1 and beta[0]["meta"]["tag"] == "loss"
    assert beta[0]["x"] == list(range(0, 100, 2))
    assert beta[0]["y"] == pytest.approx([0.5 + 0.01 * s for s in range(0, 100, 2)])
    # the selection persists across pages
    page.click("#nav-runs")
    page.wait_for_selector("table.runs")
    assert page.locator("tr.selected").count() == 2
    page.click("#nav-scalars")
    page.wait_for_selector("#scalars-graph .js-plotly-plot")
    assert page.locator("#run-select .dash-dropdown-value-item").all_inner_texts() == [
        "alpha", "beta"] or sorted(
        page.locator("#run-select .dash-dropdown-value-item").all_inner_texts()
    ) == ["alpha", "beta"]
    page.screenshot(path=str(tmp_path / "scalars.png"), full_page=True)


def test_smoothing_and_axis_controls_change_the_figure(tmp_path, serve, page):
    _log_two_runs(tmp_path)
    server = serve(tmp_path)
    page.goto(server.url + "/scalars")
    page.wait_for_selector("#scalars-graph .js-plotly-plot")
    _select_only(page, ["alpha"])
    page.locator("#scalars-x").get_by_text("relative time (s)").click()
    page.wait_for_function(
        """() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');
                   return gd && gd._fullLayout.xaxis.title.text === 'relative time (s)'; }"""
    )
    traces = _figure_traces(page)
    assert min(traces[0]["x"]) == 0  # relative time starts at the run's first point
    smoothed = [t for t in traces if t["meta"]["kind"] == "smoothed" and t["meta"]["tag"] == "loss"]
    raw = [t for t in traces if t["meta"]["kind"] == "raw" and t["meta"]["tag"] == "loss"]
    # debiased EMA with weight 0.6 by hand for the first two points
    y0, y1 = raw[0]["y"][0], raw[0]["y"][1]
    assert smoothed[0]["y"][0] == pytest.approx(y0)
    assert smoothed[0]["y"][1] == pytest.approx((0.6 * 0.4 * y0 + 0.4 * y1) / (1 - 0.36))


def test_page_lacking_data_names_the_recording_call(tmp_path, serve, page):
    _log_two_runs(tmp_path)
    server = serve(tmp_path)
    page.goto(server.url + "/scalars")
    page.wait_for_selector("#scalars-graph .js-plotly-plot")
    _select_only(page, ["gamma"])
    notice = page.locator(".missing-data")
    notice.wait_for()
    assert "gamma" in notice.inner_text()
    assert "run.log_scalars(step, loss=..., acc=...)" in notice.inner_text()


def test_live_run_refreshes_in_place(tmp_path, serve, page):
    run = cs.Run(tmp_path, "live", flush_interval=0.1)
    run.log_scalars(0, loss=1.0)
    run.flush()
    server = serve(tmp_path, refresh_ms=500)
    page.goto(server.url + "/scalars")
    page.wait_for_function(
        "() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');"
        " return gd && gd.data && gd.data.length > 0; }"
    )
    for s in range(1, 5):
        run.log_scalars(s, loss=1.0 / (s + 1))
    run.flush()
    page.wait_for_function(
        """() => { const gd = document.querySelector('#scalars-graph .js-plotly-plot');
                   return gd._fullData.some(t => t.meta.kind === 'raw' && t.x.length === 5); }""",
        timeout=20_000,
    )
    page.goto(server.url + "/")
    page.wait_for_selector("tr[data-run='live']")
    assert "running" in page.locator("tr[data-run='live']").inner_text()
    run.close()
