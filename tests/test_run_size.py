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


# -- top-example crops, preferred inputs and feature maps as the Model page draws them ---------
# Oracles: full-size crops (``crop_size=None``) and images shrunk here by an explicit loop over
# blocks; the Model page's own thumbnail function (app.components.shrink) and figure code
# (figures.images.to_rgb, figures.maps.mosaic); the raw float16 arrays of the committed 0.1.0
# fixture for the old format.

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from convscope.features.top import CROP_SIZE, top_examples  # noqa: E402
from convscope.formats import feature_maps as fm_fmt  # noqa: E402
from convscope.formats import preferred_inputs as pi_fmt  # noqa: E402
from convscope.formats import quantized as qz  # noqa: E402
from convscope.formats import top_examples as te_fmt  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "logdir-0.1.0" / "intact"
TOP_LAYERS = ["conv1", "layer2.0.conv2", "layer4.0.conv2"]  # windows 7, 43 and 224 (whole)


def _block_mean(x: np.ndarray, side: int) -> np.ndarray:
    """``x [..., H, W]`` averaged over f x f blocks, f the smallest integer that brings both
    sides to at most ``side``: an explicit loop over output pixels."""
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    f = max(1, math.ceil(max(h, w) / side))
    out = np.empty(x.shape[:-2] + (h // f, w // f))
    for i in range(h // f):
        for j in range(w // f):
            out[..., i, j] = x[..., i * f:(i + 1) * f, j * f:(j + 1) * f].mean(axis=(-2, -1))
    return out


def _within_quantisation(got, want, item_axes):
    """``got`` equals ``want`` within 1/255 of each item's range (the uint8 step; the float16
    the values are decoded to adds less than half of that at these magnitudes)."""
    want = np.asarray(want, dtype=np.float64)
    span = want.max(axis=item_axes, keepdims=True) - want.min(axis=item_axes, keepdims=True)
    err = np.abs(np.asarray(got, dtype=np.float64) - want)
    assert np.all(err <= span / 255 + 1e-6), float((err - span / 255).max())


@pytest.fixture(scope="module")
def top_run(tmp_path_factory):
    """resnet18 (random weights), 6 images at 224²: top examples of conv1 (7² windows),
    layer2.0.conv2 (43²) and layer4.0.conv2 (whole images, 224², more than the page's 96)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(6, 3, 224, 224)
    with cs.Run(tmp_path_factory.mktemp("runs"), "top", quiet=True) as run:
        got = run.log_top_examples(model, TOP_LAYERS, x, k=4, quiet=True)
    full = {n: top_examples(model, n, x, k=4, crop_size=None, quiet=True) for n in TOP_LAYERS}
    return model, x, got, full, cs.open_run(run.path)


def test_crop_bound_is_the_pages():
    from convscope.app.components import shrink as page_shrink
    from convscope.app.pages.model import MAX_THUMB

    assert qz.DISPLAY_SIDE == MAX_THUMB == CROP_SIZE
    rng = np.random.default_rng(0)
    for shape in [(2, 3, 224, 224), (3, 107, 107), (1, 3, 40, 200), (3, 96, 96), (3, 7, 7)]:
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_allclose(qz.shrink(x), page_shrink(x, MAX_THUMB), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer", TOP_LAYERS)
def test_pass_keeps_crops_at_display_size(top_run, layer):
    """The pass shrinks crops as it keeps them: what it returns is the full-size windows
    block-averaged, never larger than the page's thumbnail, and cut() agrees with it."""
    _, x, got, full, _ = top_run
    te, ref = got[layer], full[layer]
    assert torch.equal(te.indices, ref.indices) and torch.equal(te.locations, ref.locations)
    assert max(te.crops.shape[-2:]) <= CROP_SIZE and te.crop_size == CROP_SIZE
    want = _block_mean(ref.crops.numpy(), CROP_SIZE)
    assert te.crops.shape == want.shape
    np.testing.assert_allclose(te.crops.numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(te.cut(x).numpy(), te.crops.numpy(), rtol=0, atol=1e-6)
    if max(ref.crops.shape[-2:]) <= CROP_SIZE:  # small windows: exactly the old crops
        assert torch.equal(te.crops, ref.crops)


@pytest.mark.parametrize("layer", TOP_LAYERS)
def test_stored_crops_are_the_full_crops_at_display_size(top_run, layer):
    _, _, _, full, reader = top_run
    ref = full[layer]
    raw = reader.array(te_fmt.CROPS_KIND, layer)
    assert raw.dtype == np.uint8 and max(raw.shape[-2:]) <= qz.DISPLAY_SIDE
    want = _block_mean(ref.crops.numpy(), qz.DISPLAY_SIDE)  # [C, k, 3, h, w]
    got = te_fmt.load(reader, layer).crops
    assert got.dtype == np.float16 and got.shape == want.shape
    _within_quantisation(got, want, (2, 3, 4))
    # the bytes: one byte per value of each distinct crop, not 2 per value of every slot
    assert raw.nbytes <= want[0, 0].size * len(np.unique(
        ref.indices.numpy() * 10**6 + ref.locations[..., 0].numpy() * 1000
        + ref.locations[..., 1].numpy()))


def test_whole_image_crops_are_stored_once_per_image(top_run):
    """layer4.0.conv2's windows are whole images (224² at 224²): every channel's crop of an
    image is the same picture, stored once, 74² (224 // 3) instead of 224²."""
    _, x, _, full, reader = top_run
    ref = full["layer4.0.conv2"]
    assert ref.crops.shape[-2:] == (224, 224)
    raw = reader.array(te_fmt.CROPS_KIND, "layer4.0.conv2")
    assert raw.shape == (len(set(ref.indices.reshape(-1).tolist())), 3, 74, 74)
    slots = reader.array(te_fmt.SLOTS_KIND, "layer4.0.conv2")
    crops = te_fmt.crops(reader, "layer4.0.conv2")
    for c, r in [(0, 0), (5, 1), (511, 3)]:
        i = int(ref.indices[c, r])
        assert int(slots[c, r]) == int(slots[np.nonzero(ref.indices.numpy() == i)][0])
        _within_quantisation(crops[c, r], _block_mean(x[i].numpy(), 96), (0, 1, 2))


def test_page_draws_the_same_crops(top_run):
    """The Model page's unit pane: thumbnails (page_shrink) coloured by to_rgb, from the old
    full-size float16 crops and from the stored ones, differ by at most 2 levels of 255."""
    from convscope.app.components import shrink as page_shrink
    from convscope.app.pages.model import MAX_THUMB
    from convscope.figures.images import to_rgb

    _, _, _, full, reader = top_run
    for layer in TOP_LAYERS:
        old = full[layer].crops.numpy().astype(np.float16)
        view = te_fmt.crops(reader, layer, mmap=True)  # what the page reads
        for unit in (0, 7, 63):
            a = page_shrink(old[unit], MAX_THUMB)
            b = page_shrink(view[unit], MAX_THUMB)
            assert a.shape == b.shape
            for i in range(len(a)):
                d = np.abs(to_rgb(a[i]).astype(int) - to_rgb(b[i]).astype(int))
                assert d.max() <= 2, (layer, unit, i, d.max())


def test_lazy_views_index_like_arrays(top_run):
    """What the pages index (a unit, a column, strided slices, a list) is what the decoded
    array gives."""
    *_, reader = top_run
    view = te_fmt.crops(reader, "layer2.0.conv2", mmap=True)
    whole = te_fmt.crops(reader, "layer2.0.conv2")
    assert view.shape == whole.shape and len(view) == len(whole) and view.ndim == 5
    for key in [3, -1, slice(2, 5), (1, 2), (slice(None, 3), slice(1, 3)), [0, 4, 2],
                (0, slice(None, 2), 0, slice(None, None, 3), slice(1, None, 5)), (Ellipsis, 0)]:
        np.testing.assert_array_equal(view[key], whole[key], err_msg=str(key))
    rng = np.random.default_rng(1)
    q = rng.integers(0, 256, (4, 5, 6, 7)).astype(np.uint8)
    lo, hi = rng.normal(size=(1, 5, 1, 1)), rng.normal(size=(1, 5, 1, 1)) + 3
    v = qz.Decoded(q, lo, hi)
    dense = (lo + q / 255.0 * (hi - lo)).astype(np.float16)
    for key in [1, (slice(None, 3), slice(2, 3)), (slice(None), 1, slice(None, None, 2)),
                (slice(None), [0, 3])]:
        np.testing.assert_allclose(v[key].astype(np.float32), dense[key].astype(np.float32),
                                   rtol=2e-3, atol=2e-3)


def test_preferred_inputs_stored_at_display_size(tmp_path):
    rng = np.random.default_rng(2)
    full = rng.normal(size=(4, 3, 224, 224)).astype(np.float32) * [1, 0.01, 5][0]
    full[1] *= 0.01  # a low-contrast image keeps its 256 levels
    with cs.Run(tmp_path, "pi", quiet=True) as run:
        pi_fmt.write(run, pi_fmt.PreferredInputs("layer1", [3, 1, 4, 5], full,
                                                 [1.0, 2.0, 3.0, 4.0], 1.5, {"steps": 8}))
    reader = cs.open_run(run.path)
    raw = reader.array(pi_fmt.KIND, "layer1")
    assert raw.dtype == np.uint8 and raw.shape == (4, 3, 74, 74)
    got = pi_fmt.load(reader, "layer1")
    assert got.units == [3, 1, 4, 5] and got.values == [1.0, 2.0, 3.0, 4.0]
    assert got.images.dtype == np.float16
    _within_quantisation(got.images, _block_mean(full, qz.DISPLAY_SIDE), (1, 2, 3))
    view = pi_fmt.images(reader, "layer1", mmap=True)
    np.testing.assert_array_equal(view[2], got.images[2])
    np.testing.assert_array_equal(view[:3], got.images[:3])


def test_feature_maps_stored_as_uint8_per_channel(tmp_path):
    """Maps keep their size (the grid and the zoom draw them at about that size) and one
    range per channel, the range the grid's mosaic scales each column over."""
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(5, 6, 20, 20)).astype(np.float32)
    maps[:, 2] *= 1e-3  # a quiet channel keeps its own 256 levels
    maps[:, 4] = 7.0  # a constant channel
    info = {"layer": "c", "channels": list(range(6)), "channel_mean": [0.0] * 6}
    with cs.Run(tmp_path, "fm", quiet=True) as run:
        nbytes = fm_fmt.write_layer(run, "c", maps, info)
    reader = cs.open_run(run.path)
    raw = reader.array(fm_fmt.KIND, "c")
    assert raw.dtype == np.uint8 and raw.shape == maps.shape and nbytes == maps.size
    got = fm_fmt.maps(reader, "c")
    assert got.dtype == np.float16
    _within_quantisation(got, maps, (0, 2, 3))
    np.testing.assert_array_equal(got[:, 4], np.float16(7.0))
    np.testing.assert_array_equal(fm_fmt.maps(reader, "c", mmap=True)[:3, 1:2, ::2, ::2],
                                  got[:3, 1:2, ::2, ::2])
    # the page's mosaic (per-column scaling) of the stored maps: within one level of 255
    old, _, _ = fig_maps.mosaic(maps)
    new, _, _ = fig_maps.mosaic(got)
    np.testing.assert_allclose(np.nan_to_num(new), np.nan_to_num(old), rtol=0,
                               atol=1 / 255 + 2e-3)
    assert fm_fmt.load(reader).layers["c"].maps.shape == maps.shape


def test_old_float16_runs_still_load(tmp_path):
    """The committed 0.1.0 fixture stores float16 crops, preferred inputs and maps at full
    size: the formats return them as stored."""
    dst = tmp_path / "logdir"
    shutil.copytree(FIXTURE.parent, dst)
    reader = cs.open_run(dst / "intact")
    layer = te_fmt.layers(reader)[0]
    raw = reader.array(te_fmt.CROPS_KIND, layer)
    assert raw.dtype == np.float16 and raw.ndim == 5
    np.testing.assert_array_equal(te_fmt.load(reader, layer).crops, raw)
    assert te_fmt.crops(reader, layer, mmap=True).shape == raw.shape
    for name in pi_fmt.layers(reader):
        raw = reader.array(pi_fmt.KIND, name)
        assert raw.dtype == np.float16
        np.testing.assert_array_equal(pi_fmt.load(reader, name).images, raw)
    for name in fm_fmt.layers(reader):
        raw = reader.array(fm_fmt.KIND, name)
        assert raw.dtype == np.float16
        np.testing.assert_array_equal(fm_fmt.maps(reader, name), raw)
        np.testing.assert_array_equal(fm_fmt.load(reader).layers[name].maps, raw)


def test_damaged_ranges_say_what_to_do(top_run, tmp_path):
    from convscope.errors import StoreError

    *_, reader = top_run
    dst = tmp_path / "copy"
    shutil.copytree(reader.path, dst)
    np.save(dst / "arrays" / te_fmt.RANGE_KIND / "conv1.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(StoreError, match="record them again"):
        te_fmt.crops(cs.open_run(dst), "conv1")
