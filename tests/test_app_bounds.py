"""Bounded answers: against a real server, the Diagnosis, Training (filter view), Scalars and
Runs callbacks answer a large run in well under 1 MB with a visible "showing N of M" note that
states the true total, pick the most informative rows (the filters that changed most, evenly
spaced weights, the newest runs), and leave a small run whole.

The runs are recorded through the public API: a diagnosis of a conv with 2048 x 512 x 3 x 3
weights and a 64 x 64 activation; a watch of 2048 filters over 300 steps; 200 runs in the
logdir, 50 of them with 20 scalar tags.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.app.pages import runs as runs_page
from convscope.app.pages import scalars as scalars_page
from convscope.app.pages import training as training_page
from convscope.figures import diagnosis as diag_figures
from convscope.formats import diagnosis as diag_format
from convscope.store.reader import RunInfo, open_run
from convscope.track.columns import LAYER_COLUMNS

from .dash_http import DashClient

pytestmark = pytest.mark.browser  # starts a real server

BOUND = 1_000_000  # bytes of one callback's answer
N_FILLER, N_SCALAR, N_TAGS, N_STEPS = 150, 50, 20, 200
N_FILTERS, N_WATCH_STEPS = 2048, 300


# -- the runs -------------------------------------------------------------------------------------
def _diagnosis_runs(logdir: Path) -> None:
    torch.manual_seed(0)
    big = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),  # "1": 16 maps of 64 x 64
        torch.nn.Conv2d(16, 512, 3, stride=16, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(512, 2048, 3, padding=1), torch.nn.ReLU(),  # "4": 2048 x 512 x 3 x 3
    ).eval()
    # Recorded as convscope did before it stored diagnosis views at the size the page draws
    # (issue 14): full-size grids, which the page must cut itself (old runs still hold them).
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diag_format, "_shown_maps", lambda data: (data, []))
        mp.setattr(diag_format, "_shown_features", lambda data: (data, []))
        mp.setattr(diag_format, "_shown_param", lambda d: d)
        with cs.Run(logdir, "diag-big", quiet=True) as run:
            run.log_diagnosis(big, torch.rand(8, 3, 64, 64))
    small = cs.zoo.resnet(width=4).eval()
    x, _, _ = cs.data.Shapes(n=4, split="test").tensors()
    with cs.Run(logdir, "diag-small", quiet=True) as run:
        run.log_diagnosis(small, x)


def _watch_run(logdir: Path, name: str, n_filters: int, n_steps: int) -> np.ndarray:
    """Filter statistics of one layer; returns each filter's lowest cos_prev (distinct)."""
    rng = np.random.default_rng(1)
    dips = rng.permutation(n_filters).astype(np.float32) / n_filters * 0.5 + 0.1  # distinct
    dip_step = rng.integers(0, n_steps, n_filters)
    with cs.Run(logdir, name, quiet=True) as run:
        for step in range(n_steps):
            run.log_rows("watch_layers", {
                "step": np.full(1, step), "layer": np.array(["conv"], dtype=object),
                "rank": np.zeros(1, np.int16),
                **{c: rng.random(1).astype(np.float32) for c in LAYER_COLUMNS}})
            cos = np.full(n_filters, 0.99, np.float32) + rng.random(n_filters).astype(
                np.float32) * 0.009
            hit = dip_step == step
            cos[hit] = dips[hit]
            run.log_rows("watch_filters", {
                "step": np.full(n_filters, step), "layer": np.full(n_filters, "conv", object),
                "filter": np.arange(n_filters, dtype=np.int32),
                "w_l2": rng.random(n_filters).astype(np.float32),
                "g_l2": rng.random(n_filters).astype(np.float32),
                "ratio": rng.random(n_filters).astype(np.float32), "cos_prev": cos,
                "rank": np.zeros(n_filters, np.int16)})
    return dips


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logdir")
    for i in range(N_FILLER):  # the oldest runs
        with cs.Run(root, f"old-{i:03d}", quiet=True) as run:
            run.log_scalars(0, loss=1.0)
    for i in range(N_SCALAR):
        with cs.Run(root, f"sc-{i:02d}", quiet=True) as run:
            for s in range(N_STEPS):
                run.log_scalars(s, **{f"tag{j:02d}": float(np.sin(s / 10 + j + i))
                                      for j in range(N_TAGS)})
    _diagnosis_runs(root)
    dips = _watch_run(root, "watch-big", N_FILTERS, N_WATCH_STEPS)
    _watch_run(root, "watch-small", 8, 20)
    return root, dips


@pytest.fixture(scope="module")
def client(logdir, module_serve):
    return DashClient(module_serve(logdir[0], refresh_ms=600_000).url)


def _post(client: DashClient, output: str, values: dict) -> tuple[dict, int]:
    """One callback's answer and its size in bytes (as sent: the JSON of the response)."""
    _, resp = client.call(output, values)
    return resp, len(json.dumps(resp).encode())


def _array(v) -> np.ndarray:
    """A figure array as Plotly sends it (a list, or base64 typed array with a shape)."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(s) for s in str(v["shape"]).split(",")])
        return a
    return np.asarray(v, dtype=object if v and isinstance(np.ravel(v)[0], str) else float)


def _text(tree) -> str:
    return json.dumps(tree)


# -- Diagnosis ---------------------------------------------------------------------------------
def test_a_wide_conv_parameter_view_is_capped_and_says_so(client, logdir):
    resp, size = _post(client, "diag-view.figure",
                       {"diag-layer.value": "4", "diag-run.value": "diag-big"})
    assert size < BOUND, size
    fig = resp["diag-param-view"]["figure"]
    notes = _text(resp["diag-view-notes"]["children"])
    capped = fig["layout"]["meta"]["capped"]
    # the true totals of the layer: 2048 outputs, 512 inputs
    assert any("of 2048 outputs" in c and "of 512 inputs" in c for c in capped), capped
    assert "of 2048 outputs" in notes and "of 512 inputs" in notes
    z = _array(fig["data"][0]["z"]).astype(np.float32)
    assert z.size <= diag_figures.MAX_GRID_VALUES
    stored = open_run(logdir[0] / "diag-big").array("diag_param", "4")
    view = open_run(logdir[0] / "diag-big").object("diag_param_view", "4")
    assert stored.shape == (128 * 3, 128 * 3 + 1) and view["has_bias"]  # what was recorded
    # the outputs are drawn in their tree's leaf order (issue 15): put the row blocks back in
    # the recorded order, then compare with the stored grid
    drawn = fig["layout"]["meta"]["rows"]
    assert fig["layout"]["meta"]["tree"] and set(drawn) <= set(view["rows"])
    back = np.argsort([view["rows"].index(r) for r in drawn])
    z = z.reshape(len(drawn), 3, -1)[back].reshape(z.shape)
    # whole 3 x 3 cells of evenly spaced outputs/inputs: the first and the last recorded
    # output/input are kept, and the bias column (last) is the recorded biases of those rows
    assert z.shape[0] % 3 == 0 and (z.shape[1] - 1) % 3 == 0
    np.testing.assert_array_equal(z[:3, :3], stored[:3, :3])
    np.testing.assert_array_equal(z[-3:, -4:-1], stored[-3:, -4:-1])
    np.testing.assert_array_equal(z[::3, -1], stored[::3, -1][
        np.round(np.linspace(0, 127, z.shape[0] // 3)).astype(int)])
    # every drawn row block is one recorded output's block (same 3 x 3 cell at column 0)
    blocks = {stored[r:r + 3, :3].tobytes() for r in range(0, stored.shape[0], 3)}
    assert all(z[r:r + 3, :3].tobytes() in blocks for r in range(0, z.shape[0], 3))
    kde = [t for t in fig["data"][1:] if t.get("type") == "scatter"]
    assert 0 < len(kde) <= diag_figures.MAX_CURVES


def test_large_maps_are_averaged_to_fit_and_match_the_stored_maps(client, logdir):
    resp, size = _post(client, "diag-view.figure",
                       {"diag-layer.value": "1", "diag-run.value": "diag-big"})
    assert size < BOUND, size
    fig = resp["diag-view"]["figure"]
    capped = " ".join(fig["layout"]["meta"]["capped"])
    assert "maps averaged from 64x64 to" in capped, capped
    assert "maps averaged from 64x64" in _text(resp["diag-view-notes"]["children"])
    z = _array(fig["data"][0]["z"]).astype(np.float32)
    assert z.size <= diag_figures.MAX_GRID_VALUES
    reader = open_run(logdir[0] / "diag-big")
    maps = reader.array("diag_maps", "1").astype(np.float32)  # [8, 16, 64, 64]
    view = reader.object("diag_view", "1")
    first = view["clustering"]["leaves"][0]
    # oracle: average-pool by the factor the note names, scale the channel to 0-1 over all
    # samples, and compare with the first tile of the mosaic
    side = int(capped.split("to ")[1].split("x")[0])
    f = 64 // side
    pooled = maps[:, first].reshape(8, side, f, side, f).mean(axis=(2, 4))
    scaled = (pooled - pooled.min()) / (pooled.max() - pooled.min())
    np.testing.assert_allclose(z[:side, :side], scaled[0], atol=1e-5)
    assert z.shape == (8 * (side + 1) - 1, 16 * (side + 1) - 1)  # every sample and channel


def test_a_small_diagnosis_is_not_capped(client, logdir):
    reader = open_run(logdir[0] / "diag-small")
    layer = "layer1.0.relu1"
    resp, size = _post(client, "diag-view.figure",
                       {"diag-layer.value": layer, "diag-run.value": "diag-small"})
    fig = resp["diag-view"]["figure"]
    assert fig["layout"]["meta"]["capped"] == []
    maps = reader.array("diag_maps", layer)
    z = _array(fig["data"][0]["z"])
    b, c, h, w = maps.shape
    assert z.shape == (b * (h + 1) - 1, c * (w + 1) - 1)  # full resolution, every sample
    n_curves = len([t for t in fig["data"] if t.get("hovertemplate", "").find("density") >= 0])
    assert n_curves == c
    resp, _ = _post(client, "diag-view.figure",
                    {"diag-layer.value": "layer1.0.conv1", "diag-run.value": "diag-small"})
    pfig = resp["diag-param-view"]["figure"]
    assert pfig["layout"]["meta"]["capped"] == []
    stored = reader.array("diag_param", "layer1.0.conv1")
    # every output, drawn in the tree's leaf order (issue 15): the stored row blocks reordered
    pview = reader.object("diag_param_view", "layer1.0.conv1")
    drawn, kh = pfig["layout"]["meta"]["rows"], pview["cell"][0]
    assert pfig["layout"]["meta"]["tree"] and sorted(drawn) == sorted(pview["rows"])
    blocks = [pview["rows"].index(r) for r in drawn]
    want = stored.reshape(len(pview["rows"]), kh, -1)[blocks].reshape(stored.shape)
    np.testing.assert_array_equal(_array(pfig["data"][0]["z"]).astype(np.float32), want)
    assert "showing" not in _text(resp["diag-view-notes"]["children"])


# -- Training: the filter view -------------------------------------------------------------------
def _filters(client, run: str, value: str = "cos_prev"):
    return _post(client, "trn-filters.figure", {
        "trn-run.value": run, "trn-filter-layer.value": "conv",
        "trn-filter-value.value": value})


def test_the_filter_view_shows_the_filters_that_changed_most(client, logdir):
    _, dips = logdir
    resp, size = _filters(client, "watch-big")
    assert size < BOUND, size
    note = _text(resp["trn-filters-note"]["children"])
    n = training_page.MAX_FILTER_ROWS
    assert f"Showing the {n} of {N_FILTERS} filters of conv that changed most" in note
    fig = resp["trn-filters"]["figure"]
    assert fig["layout"]["meta"]["total"] == N_FILTERS
    shown = [int(v) for v in _array(fig["data"][0]["y"])]
    # oracle: the n filters whose logged cos_prev went lowest (each dips once, distinctly)
    assert shown == sorted(np.argsort(dips)[:n].tolist())
    z = _array(fig["data"][0]["z"])
    assert z.shape == (n, N_WATCH_STEPS)
    # a shown row is that filter's series: its dip sits in its row
    f0 = shown[0]
    np.testing.assert_allclose(np.nanmin(z[0].astype(np.float64)), dips[f0], rtol=1e-6)
    # another statistic ranks by range, still bounded and still saying the total
    resp, size = _filters(client, "watch-big", "w_l2")
    assert size < BOUND
    assert f"of {N_FILTERS} filters" in _text(resp["trn-filters-note"]["children"])


def test_a_small_filter_view_is_whole(client):
    resp, _ = _filters(client, "watch-small")
    assert resp["trn-filters-note"]["children"] is None
    fig = resp["trn-filters"]["figure"]
    assert [int(v) for v in _array(fig["data"][0]["y"])] == list(range(8))
    assert _array(fig["data"][0]["z"]).shape == (8, 20)


# -- Scalars -------------------------------------------------------------------------------------
def _created_order(root: Path, names: list[str]) -> list[str]:
    """Oracle: the runs by run.json's creation time, newest first."""
    created = {n: json.loads((root / n / "run.json").read_text())["created_unix"] for n in names}
    return sorted(names, key=lambda n: created[n], reverse=True)


def _scalars(client, selected, x="step"):
    return _post(client, "scalars-graph.figure", {
        "run-select.value": selected, "scalars-smoothing.value": 0.6, "scalars-x.value": x})


def test_many_selected_runs_draw_the_newest_and_say_how_many(client, logdir):
    root, _ = logdir
    names = [f"sc-{i:02d}" for i in range(N_SCALAR)]
    for x in ("step", "wall"):
        resp, size = _scalars(client, names, x)
        assert size < BOUND, (x, size)
        status = _text(resp["scalars-status"]["children"])
        assert f"Showing {scalars_page.MAX_RUNS} of {N_SCALAR} selected runs" in status
        drawn = {t["meta"]["run"] for t in resp["scalars-graph"]["figure"]["data"]}
        assert drawn == set(_created_order(root, names)[: scalars_page.MAX_RUNS])
        per_run = scalars_page.MAX_SERIES // scalars_page.MAX_RUNS
        assert f"showing {per_run} of {N_TAGS} tags" in status
        series = {(t["meta"]["run"], t["meta"]["tag"]) for t in
                  resp["scalars-graph"]["figure"]["data"]}
        assert len(series) <= scalars_page.MAX_SERIES
        points = sum(len(_array(t["y"])) for t in resp["scalars-graph"]["figure"]["data"]
                     if t["meta"]["kind"] == "raw")
        assert points <= scalars_page.TOTAL_POINTS


def test_a_few_runs_are_drawn_whole(client, logdir):
    resp, size = _scalars(client, ["sc-00", "sc-01"])
    status = _text(resp["scalars-status"]["children"])
    assert "Showing" not in status and "showing" not in status and "buckets" not in status
    raw = [t for t in resp["scalars-graph"]["figure"]["data"] if t["meta"]["kind"] == "raw"]
    assert {(t["meta"]["run"], t["meta"]["tag"]) for t in raw} == {
        (r, f"tag{j:02d}") for r in ("sc-00", "sc-01") for j in range(N_TAGS)}
    assert all(len(_array(t["y"])) == N_STEPS for t in raw)  # every point, none averaged
    want = [np.sin(s / 10 + 3 + 1) for s in range(N_STEPS)]
    (t,) = [t for t in raw if t["meta"]["run"] == "sc-01" and t["meta"]["tag"] == "tag03"]
    np.testing.assert_allclose(_array(t["y"]).astype(float), want, rtol=1e-6)


# -- Runs ----------------------------------------------------------------------------------------
def _rows(resp) -> list[str]:
    out = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Tr" and "data-run" in node.get("props", {}):
                out.append(node["props"]["data-run"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(resp)
    return out


def test_a_large_logdir_lists_the_newest_runs_and_the_selected_ones(client, logdir):
    root, _ = logdir
    names = sorted(p.name for p in root.iterdir() if (p / "run.json").exists())
    total = len(names)
    assert total > runs_page.MAX_RUNS
    t0 = time.monotonic()
    resp, size = _post(client, "runs-table.children", {"run-select.value": ["old-000"]})
    assert size < BOUND
    assert time.monotonic() - t0 < 60
    text = _text(resp)
    assert f"Showing {runs_page.MAX_RUNS} of {total} runs in the logdir" in text
    rows = _rows(resp)
    newest = _created_order(root, [n for n in names if n != "old-000"])
    assert set(rows) == {"old-000", *newest[: runs_page.MAX_RUNS - 1]}
    assert len(rows) == runs_page.MAX_RUNS


def test_a_small_logdir_lists_every_run(tmp_path, serve):
    for n in ("a", "b", "c"):
        with cs.Run(tmp_path, n, quiet=True) as run:
            run.log_scalars(0, loss=1.0)
    c = DashClient(serve(tmp_path, refresh_ms=600_000).url)
    resp, _ = _post(c, "runs-table.children", {"run-select.value": []})
    assert sorted(_rows(resp)) == ["a", "b", "c"]
    assert "Showing" not in _text(resp)


# -- the reader names table entries that are not directories ------------------------------------
def test_table_entries_that_are_not_directories_are_problems(tmp_path):
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_scalars(0, loss=1.0)
        run.log_rows("extra", {"a": np.arange(3)})
    root = tmp_path / "r" / "tables"
    (root / "a_file").write_text("not a table")
    (root / "gone").symlink_to(root / "no-such-dir")
    part = sorted((root / "extra").glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:20])
    reader = open_run(tmp_path / "r")
    probs = reader.problems
    assert any(p.startswith("tables/a_file is not a directory") for p in probs), probs
    assert any(p.startswith("tables/gone is a dangling link") for p in probs), probs
    assert any(p.startswith(f"tables/extra/{part.name} is not a readable Parquet file")
               for p in probs), probs
    assert len(probs) == 3
    info = RunInfo.of(tmp_path / "r")
    assert sorted(info.problems) == sorted(probs)
    assert info.tables == {"scalars": 1}
    assert reader.table_names() == ["extra", "scalars"]  # only directories are tables
