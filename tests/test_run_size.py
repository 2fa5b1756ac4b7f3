"""Economical run directories (issue 14, item 4): the diagnosis arrays are stored at the size
the Diagnosis page draws them, and the page draws the same figure from them as from the
full-size arrays earlier versions stored.

Oracles: the full-size view computed by :mod:`convscope.diagnose` and stored the old way
(float16 maps, float32 parameter grid), shrunk here independently with torch's ``avg_pool2d``
and plain indexing; and the page's own figure functions run on the old arrays (what the page
drew for earlier runs) against the new ones.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convscope as cs
from convscope.figures import diagnosis as figs
from convscope.figures import maps as fig_maps
from convscope.formats import diagnosis as fmt

torchvision = pytest.importorskip("torchvision")

OUT_LAYERS = ["relu", "layer1.0.conv1", "layer3.1.relu:2", "layer4.1.bn2", "fc"]
PARAM_LAYERS = ["conv1", "layer1.0.conv2", "layer3.0.downsample.0", "layer4.1.conv2", "fc"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A resnet18 (random weights) diagnosed on 4 images at 160²: conv1's maps are 80x80 (the
    view shrinks them to 64x64, the page to 8x8), layer4's weights are 512x512x3x3."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=300).eval()
    x = torch.randn(4, 3, 160, 160)
    report = cs.diagnose.diagnose(model, x, layers=OUT_LAYERS, params=PARAM_LAYERS, views=True,
                                  quiet=True)
    with cs.Run(tmp_path_factory.mktemp("runs"), "r", quiet=True) as run:
        run.log_diagnosis(report)
    return report, cs.open_run(run.path)


def _plain(obj):
    """``obj`` as it comes back from a stored JSON object (arrays as lists)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist()))


def _old_output(report, layer):
    """The output view as earlier versions stored it: (meta, float16 data, density)."""
    d = report.output_views[layer].to_dict()
    meta = {"name": layer, "kind": d["kind"], "shape": d["shape"],
            "samples": d["samples"].tolist(), "channels": d["channels"].tolist(),
            "clustering": {k: v for k, v in d["clustering"].items() if k != "condensed"},
            "kde": {k: v for k, v in d["kde"].items() if k != "density"},
            "stats": d["stats"], "notes": d["notes"]}
    return _plain(meta), d["data"].astype(np.float16), np.asarray(d["kde"]["density"], np.float32)


def _old_param(report, layer):
    d = report.param_views[layer].to_dict()
    meta = {k: v for k, v in d.items() if k not in ("grid", "kde", "clustering")}
    meta["rows"], meta["cols"] = d["rows"].tolist(), d["cols"].tolist()
    meta["kde"] = {k: v for k, v in d["kde"].items() if k != "density"}
    meta["clustering"] = {k: v for k, v in d["clustering"].items() if k != "condensed"}
    return _plain(meta), d["grid"].astype(np.float32), np.asarray(d["kde"]["density"], np.float32)


def _mosaic_cells(n, c, h, w):
    return (n * (h + 1) - 1) * (c * (w + 1) - 1)


def test_display_bounds_are_the_pages():
    assert fmt.GRID_VALUES == figs.MAX_GRID_VALUES
    assert fmt.GAP == fig_maps.GAP
    assert fmt.MAX_CURVES == figs.MAX_CURVES


@pytest.mark.parametrize("layer", ["relu", "layer1.0.conv1", "layer3.1.relu:2"])
def test_stored_maps_are_the_old_maps_area_averaged_to_the_drawn_size(recorded, layer):
    report, reader = recorded
    _, old, _ = _old_output(report, layer)
    new = fmt.output_view(reader, layer).data
    assert new.dtype == np.float16
    b, c, h, w = old.shape
    f = h // new.shape[2]
    assert new.shape == (b, c, h // f, w // f)
    # the page's bound, and the smallest integer factor that meets it
    assert _mosaic_cells(b, c, *new.shape[2:]) <= fmt.GRID_VALUES
    if f > 1:
        assert _mosaic_cells(b, c, h // (f - 1), w // (f - 1)) > fmt.GRID_VALUES
    want = F.avg_pool2d(torch.from_numpy(old.astype(np.float32)), f).numpy()
    scale = np.abs(want).max()
    np.testing.assert_allclose(new.astype(np.float32), want, rtol=0, atol=scale * 2**-10)
    if f > 1:
        assert new.nbytes * f * f <= old.nbytes


def test_small_maps_and_features_are_stored_as_before(recorded):
    report, reader = recorded
    for layer in ("layer4.1.bn2", "fc"):  # 5x5 maps and [4, 300] features fit the page
        _, old, density = _old_output(report, layer)
        lv = fmt.output_view(reader, layer)
        np.testing.assert_array_equal(lv.data, old)
        np.testing.assert_array_equal(lv.density, density)


def _same_figure(old_fig, new_fig, z_atol):
    assert len(old_fig.data) == len(new_fig.data)
    for a, b in zip(old_fig.data, new_fig.data, strict=True):
        assert a.type == b.type and a.name == b.name
        if a.type == "heatmap":
            za, zb = np.asarray(a.z, np.float32), np.asarray(b.z, np.float32)
            assert za.shape == zb.shape
            np.testing.assert_array_equal(np.isnan(za), np.isnan(zb))
            np.testing.assert_allclose(zb, za, rtol=0, atol=z_atol, equal_nan=True)
        else:
            for key in ("x", "y", "x0", "dx"):
                va, vb = getattr(a, key), getattr(b, key)
                if va is None:
                    assert vb is None
                else:
                    np.testing.assert_array_equal(np.asarray(vb, dtype=object),
                                                  np.asarray(va, dtype=object))
    for key in ("xaxis", "xaxis2", "yaxis2"):
        ta, tb = old_fig.layout[key], new_fig.layout[key]
        assert ta.tickvals == tb.tickvals and ta.ticktext == tb.ticktext
    assert old_fig.layout.title.text == new_fig.layout.title.text


@pytest.mark.parametrize("layer", OUT_LAYERS)
def test_page_draws_the_same_output_view(recorded, layer):
    report, reader = recorded
    meta, data, density = _old_output(report, layer)
    old_fig = figs.layer_view_figure(meta, data, density)
    lv = fmt.output_view(reader, layer, mmap=True)
    new_fig = figs.layer_view_figure(lv.meta, lv.data, lv.density)
    # per-channel 0-1 colours of the mosaic: within a 1/256 colour step (float16 of a mean)
    _same_figure(old_fig, new_fig, z_atol=2**-8)
    # the page lists the view's notes, then what the figure cut: the same lines
    old_notes = list(meta["notes"]) + list(old_fig.layout.meta["capped"])
    new_notes = list(lv.meta["notes"]) + list(new_fig.layout.meta["capped"])
    assert new_notes == old_notes


@pytest.mark.parametrize("layer", PARAM_LAYERS)
def test_page_draws_the_same_param_view(recorded, layer):
    report, reader = recorded
    meta, grid, density = _old_param(report, layer)
    old_fig = figs.param_view_figure(meta, grid, density)
    pv = fmt.param_view(reader, fmt.param_view_for(reader, layer), mmap=True)
    new_fig = figs.param_view_figure(pv.meta, pv.data, pv.density)
    _same_figure(old_fig, new_fig, z_atol=0)  # the weights are float32, cut, not recomputed
    old_notes = list(meta["notes"]) + list(old_fig.layout.meta["capped"])
    new_notes = list(pv.meta["notes"]) + list(new_fig.layout.meta["capped"])
    assert new_notes == old_notes
    if layer == "fc":  # 157 of 256 rows drawn: more than the page's 128 curves, stored whole
        assert pv.data.shape == grid.shape == (256, 513)
    else:
        assert pv.data.size <= fmt.GRID_VALUES


def test_param_grid_keeps_evenly_spaced_whole_cells(recorded):
    """layer4.1.conv2: 128 of 512 outputs and inputs are recorded, 3x3 cells, no bias: the page
    draws 74 x 74 of them (74 * 3 * 74 * 3 <= 50,000 < 75 * 3 * 75 * 3); picked by hand here."""
    report, reader = recorded
    d = report.param_views["layer4.1.conv2"].to_dict()
    assert d["grid"].shape == (384, 384)
    pv = fmt.param_view(reader, "layer4.1.conv2")
    k = int(math.sqrt(fmt.GRID_VALUES / 9))
    assert k == 74
    pick = np.unique(np.round(np.linspace(0, 127, k)).astype(int))
    cells = np.concatenate([np.arange(3 * p, 3 * p + 3) for p in pick])
    np.testing.assert_array_equal(pv.data, d["grid"][np.ix_(cells, cells)])
    assert pv.meta["rows"] == d["rows"][pick].tolist()
    assert pv.meta["cols"] == d["cols"][pick].tolist()
    np.testing.assert_array_equal(pv.density, d["kde"]["density"][pick])


def test_diagnosis_arrays_shrink(recorded):
    report, reader = recorded
    old = sum(_old_output(report, n)[1].nbytes for n in OUT_LAYERS)
    old += sum(_old_param(report, n)[1].nbytes for n in PARAM_LAYERS)
    new = sum(fmt.output_view(reader, n).data.nbytes for n in OUT_LAYERS)
    new += sum(fmt.param_view(reader, fmt.param_view_for(reader, n)).data.nbytes
               for n in PARAM_LAYERS)
    # 1.2 MB instead of 4.3 MB, of which the fc grid (stored whole, float32) is 0.53 MB
    assert new * 3 < old, (new, old)


def test_param_tree_keeps_its_linkage_not_its_drawing(recorded):
    """The page draws no tree for parameters: the stored view keeps the linkage, from which
    scipy's dendrogram gives back the coordinates the view computed."""
    from scipy.cluster.hierarchy import dendrogram

    report, reader = recorded
    d = report.param_views["layer1.0.conv2"].to_dict()["clustering"]
    stored = fmt.param_view(reader, "layer1.0.conv2").meta["clustering"]
    assert "icoord" not in stored and "dcoord" not in stored and "condensed" not in stored
    assert stored["leaves"] == d["leaves"].tolist()
    tree = dendrogram(np.asarray(stored["linkage"]), no_plot=True)
    np.testing.assert_allclose(tree["icoord"], d["icoord"])
    np.testing.assert_allclose(tree["dcoord"], d["dcoord"])
    assert tree["leaves"] == stored["leaves"]
