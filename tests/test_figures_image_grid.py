"""The Model page's unit figures, now built from plain dicts in one step (issue 14: the layer
panel took over 300 ms of server time on a ResNet-50 run, most of it in plotly's per-cell
updates), equal what plotly's own ``make_subplots`` and per-cell updates build; and the layer
panel reads each arrays index once per request."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
from plotly.subplots import make_subplots

import convscope as cs
from convscope.app.components import RequestReader
from convscope.figures import theme
from convscope.figures.features import preferred_grid, unit_pane
from convscope.figures.images import to_rgb


def _plotly_grid(images, titles, rows, cols, vspace, height, meta, names=None, hover=None):
    """The oracle: the same figure through make_subplots and update calls."""
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles or [""],
                        horizontal_spacing=0.01, vertical_spacing=vspace)
    for i, img in enumerate(images):
        kw = {"name": names[i]} if names else {}
        kw.update({"hovertemplate": hover[i] + "<extra></extra>"} if hover else
                  {"hoverinfo": "skip"})
        fig.add_trace(go.Image(z=to_rgb(img), **kw),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=9)
    theme.apply(fig, height=height)
    fig.update_layout(margin={"l": 5, "r": 5, "t": 30, "b": 5}, meta=meta)
    return fig


def _json(fig):
    return json.loads(pio.to_json(fig))


@pytest.mark.parametrize("n,values", [(13, True), (3, False), (1, True), (16, False)])
def test_preferred_grid_equals_make_subplots(n, values):
    rng = np.random.default_rng(n)
    imgs = rng.standard_normal((n, 3, 12, 10)).astype(np.float32)
    units = [int(u) for u in rng.permutation(100)[:n]]
    vals = list(rng.random(n)) if values else None
    cols = min(8, n)
    rows = math.ceil(n / cols)
    titles = [f"{u}" + (f" ({vals[i]:.2g})" if vals else "") for i, u in enumerate(units)]
    want = _plotly_grid(imgs, titles, rows, cols, 0.06, 40 + rows * 110,
                        {"kind": "preferred_grid", "units": units},
                        names=[f"unit {u}" for u in units],
                        hover=[f"unit {u}: click to pick it" for u in units])
    assert _json(preferred_grid(imgs, units, vals)) == _json(want)


@pytest.mark.parametrize("preferred,k,values", [(True, 9, True), (False, 4, False),
                                                (True, 0, False), (False, 0, False)])
def test_unit_pane_equals_make_subplots(preferred, k, values):
    rng = np.random.default_rng(k)
    pref = rng.random((3, 16, 16)).astype(np.float32) if preferred else None
    crops = rng.random((k, 1, 9, 9)).astype(np.float32) if k else None
    vals = list(rng.random(k)) if values else None
    images = ([pref] if preferred else []) + ([crops[i] for i in range(k)] if k else [])
    titles = (["optimised"] if preferred else []) + [
        f"#{i + 1}" + (f" {vals[i]:.2g}" if vals else "") for i in range(k)]
    want = _plotly_grid(images, titles, 1, max(len(images), 1), 0.0, 150,
                        {"kind": "unit_pane", "unit": 5, "k": k, "has_preferred": preferred})
    assert _json(unit_pane(5, pref, crops, vals)) == _json(want)


class Counting:
    """A reader that counts ``arrays`` calls per kind."""

    def __init__(self, reader):
        self.reader, self.calls = reader, {}

    def arrays(self, kind=None):
        self.calls[kind] = self.calls.get(kind, 0) + 1
        return self.reader.arrays(kind)

    def __getattr__(self, name):
        return getattr(self.reader, name)


def test_layer_panel_reads_each_arrays_index_once(tmp_path):
    from convscope.app.pages.model import layer_panel

    torch.manual_seed(0)
    model = cs.zoo.resnet().eval()
    x = torch.rand(4, 3, 32, 32)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_model(model, x, repeat=1, profile=False)
        run.log_feature_maps(model, x, ["layer1.0.conv2"])
        run.log_preferred_inputs(model, ["layer1.0.conv2"], max_units=2, steps=2, quiet=True)
        run.log_top_examples(model, ["layer1.0.conv2"], x, k=2, quiet=True)
    reader = cs.formats.reader.RunReader(tmp_path / "r")
    counting = Counting(reader)
    once = layer_panel(RequestReader(counting), "layer1.0.conv2")
    assert counting.calls and max(counting.calls.values()) == 1, counting.calls
    # the same panel as one read straight from the reader (repeated reads)
    direct = Counting(reader)
    again = layer_panel(direct, "layer1.0.conv2")
    assert max(direct.calls.values()) == 1  # layer_panel wraps a plain reader itself
    assert json.dumps(once.to_plotly_json(), default=str, sort_keys=True) == json.dumps(
        again.to_plotly_json(), default=str, sort_keys=True)


def test_many_channels_get_at_most_64_tick_labels(tmp_path):
    """A diagnosis view of 200 features labels every 4th leaf (512 labels were a black band);
    each label still names the channel drawn at that position (the stored leaf order)."""
    from convscope.figures.diagnosis import MAX_TICK_LABELS, layer_view_figure
    from convscope.formats import diagnosis as fmt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 200), torch.nn.ReLU(),
                                torch.nn.Linear(200, 10)).eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_diagnosis(model, torch.randn(16, 3, 4, 4), quiet=True)
    reader = cs.formats.reader.RunReader(tmp_path / "r")
    lv = fmt.output_view(reader, "2")  # the ReLU: 200 features
    fig = layer_view_figure(lv.meta, lv.data, lv.density)
    leaves = fig.layout.meta["leaves"]
    assert len(leaves) == 200
    for ax in (fig.layout.xaxis, fig.layout.xaxis2):
        assert len(ax.ticktext) == math.ceil(200 / 4) <= MAX_TICK_LABELS
        for v, t in zip(ax.tickvals, ax.ticktext, strict=True):
            assert t == str(leaves[int(v)])  # features: one unit-wide cell per leaf


@pytest.mark.parametrize("shape,side", [((16, 3, 96, 96), 48), ((2, 3, 224, 224), 96),
                                        ((4, 3, 97, 50), 32), ((5, 40, 40), 64),
                                        ((3, 1, 9, 9), 4)])
def test_page_shrink_is_the_block_mean(shape, side):
    from convscope.app.components import shrink

    x = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    got = shrink(x, side)
    h, w = shape[-2:]
    f = -(-max(h, w) // side)
    assert got.dtype == np.float32 and max(got.shape[-2:]) <= side
    if f == 1:
        assert np.array_equal(got, x.astype(np.float32))
        return
    # the oracle: every output pixel by hand, the mean of its f x f block (ragged edge cut)
    want = np.empty(shape[:-2] + (h // f, w // f), dtype=np.float64)
    for r in range(h // f):
        for c in range(w // f):
            want[..., r, c] = x[..., r * f:(r + 1) * f, c * f:(c + 1) * f].mean(axis=(-2, -1))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
