"""The Diagnosis page's layer and parameter views are built from plain dicts without plotly's
per-property validation (fast: the fc view of a ResNet-50 run has ~240 traces). Oracle: the same
figures built the validated way, with ``make_subplots`` and ``add_trace`` (the construction the
module used before); their ``to_plotly_json()`` must be identical, value for value and dtype for
dtype."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.subplots import make_subplots
from torch import nn

from convscope import Run
from convscope.figures import diagnosis as d
from convscope.figures import theme
from convscope.figures.maps import GAP, mosaic
from convscope.formats import diagnosis as fmt
from convscope.store.reader import open_run

from .plotly_json import same_json


# -- the oracle: the validated make_subplots construction ---------------------------------------
def _o_kde(fig, grid, density, labels, row, col=1):
    grid = np.asarray(grid, dtype=np.float64)
    step = np.diff(grid)
    even = len(grid) > 1 and np.allclose(step, step[0], rtol=1e-4, atol=0)
    xs = {"x0": float(grid[0]), "dx": float(step[0])} if even else \
        {"x": grid.astype(np.float32)}
    for i in range(density.shape[0]):
        fig.add_trace(go.Scatter(
            **xs, y=np.asarray(density[i], dtype=np.float32), mode="lines",
            line={"width": 1, "color": theme.color(i)}, name=labels[i], showlegend=False,
            opacity=0.7,
            hovertemplate=f"{labels[i]}<br>value %{{x:.3g}}<br>density %{{y:.3g}}<extra></extra>",
        ), row=row, col=col)
    fig.update_xaxes(title_text="value", row=row, col=col)
    fig.update_yaxes(title_text="density", row=row, col=col)


def _o_layer(view, data, density, max_values=d.MAX_GRID_VALUES):
    channels = list(view["channels"])
    leaves = list(view["clustering"].get("leaves") or range(data.shape[1]))
    labels = [f"ch {channels[i]}" for i in range(len(channels))]
    notes = []
    fig = make_subplots(rows=3, cols=1, row_heights=[0.25, 0.5, 0.25], vertical_spacing=0.06,
                        subplot_titles=["dendrogram of channels (single linkage)",
                                        "samples × channels, in leaf order",
                                        "KDE of each channel's values"])
    if data.ndim == 4:
        shown, more = d.fit_maps(data, max_values)
        notes += more
        cell = (shown.shape[3] if shown is not None else 1) + GAP
        if shown is not None:
            tiles, _, _ = mosaic(shown, leaves)
            fig.add_trace(go.Heatmap(z=tiles, colorscale="Viridis", showscale=False,
                                     hoverongaps=False, hoverinfo="skip"), row=2, col=1)
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=2, col=1)
    else:
        shown, more = d.fit_features(data, max_values)
        notes += more
        cell = 1.0
        if shown is not None:
            fig.add_trace(go.Heatmap(z=shown[:, leaves], x=np.arange(len(leaves)) + 0.5,
                                     colorscale="RdBu", zmid=0, showscale=False,
                                     hovertemplate="sample %{y}<br>value %{z:.3g}<extra></extra>"),
                          row=2, col=1)
        fig.update_yaxes(autorange="reversed", title_text="sample", row=2, col=1)
    if len(leaves) <= d.MAX_TREE_LEAVES:
        xs, ys = [], []
        tree = view["clustering"]
        for x4, y4 in zip(tree.get("icoord", []), tree.get("dcoord", []), strict=True):
            xs += [(x - 5) / 10 * cell + cell / 2 for x in x4] + [None]
            ys += [float(y) for y in y4] + [None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines",
                                     line={"color": "#344054", "width": 1}, hoverinfo="skip",
                                     showlegend=False, connectgaps=False), row=1, col=1)
        fig.update_yaxes(title_text="cosine distance", range=[0, 2.05], row=1, col=1)
        ticks = [i * cell + cell / 2 for i in range(len(leaves))]
        step = max(1, math.ceil(len(leaves) / d.MAX_TICK_LABELS))
        for r in (1, 2):
            fig.update_xaxes(tickvals=ticks[::step],
                             ticktext=[str(channels[i]) for i in leaves][::step],
                             tickfont={"size": 8}, range=[0, len(leaves) * cell], row=r, col=1)
    else:
        notes.append(f"dendrogram not drawn: {len(leaves)} leaves (at most {d.MAX_TREE_LEAVES})")
    grid, dens, pick = d._curves(view["kde"]["grid"], density, np.asarray(leaves), "channels",
                                 notes)
    _o_kde(fig, grid, dens, [labels[i] for i in pick], row=3)
    theme.apply(fig, height=820, title=f"{view['name']}: {view['kind']} {view['shape']}")
    fig.update_layout(meta={"kind": "diagnosis_layer", "layer": view["name"],
                            "leaves": [int(channels[i]) for i in leaves], "capped": notes})
    return fig


def _same(a, b, path="fig"):
    same_json(a, b, path, types=True)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 24, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(24, 40)

    def forward(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("diagviews")
    with Run(logdir, name="r", quiet=True) as run:
        run.log_diagnosis(Small().eval(), torch.rand(5, 3, 20, 20))
    reader = open_run(logdir / "r")
    out, par = [], []
    for layer in fmt.view_layers(reader):
        if fmt.has_output_view(reader, layer):
            out.append(fmt.output_view(reader, layer))
        pk = fmt.param_view_for(reader, layer)
        if pk:
            par.append(fmt.param_view(reader, pk))
    assert {v.data.ndim for v in out} == {2, 4} and par  # maps, features and weights
    return out, par


@pytest.mark.parametrize("max_values", [d.MAX_GRID_VALUES, 300, 40])
def test_layer_views_equal_the_validated_construction(views, max_values):
    for lv in views[0]:
        new = d.layer_view_figure(lv.meta, lv.data, lv.density, max_values=max_values)
        _same(new.to_plotly_json(), _o_layer(lv.meta, lv.data, lv.density,
                                             max_values).to_plotly_json())
        assert new.layout.meta["layer"] == lv.meta["name"]


@pytest.mark.parametrize("max_values", [d.MAX_GRID_VALUES, 300, 40])
def test_param_views_equal_the_validated_construction(views, max_values):
    """The parameter view (since issue 15 with the outputs' dendrogram beside the grid, rows in
    leaf order: tests/test_figures_params_tree.py checks what it draws) is what plotly's
    validation makes of it."""
    for pv in views[1]:
        got = d.param_view_figure(pv.meta, pv.data, pv.density,
                                  max_values=max_values).to_plotly_json()
        _same(got, go.Figure(data=got["data"], layout=got["layout"]).to_plotly_json())


def test_uneven_kde_grid_and_many_curves_equal_the_validated_construction(views):
    lv = views[0][0]
    meta = dict(lv.meta)
    g = np.asarray(meta["kde"]["grid"], dtype=np.float64)
    meta["kde"] = dict(meta["kde"], grid=list(g[0] + (g - g[0]) ** 2 / (g[-1] - g[0] + 1e-9)))
    new = d.layer_view_figure(meta, lv.data, lv.density)
    assert "x" in new.to_plotly_json()["data"][-1]  # the uneven grid is sent per curve
    _same(new.to_plotly_json(), _o_layer(meta, lv.data, lv.density).to_plotly_json())


def test_colorscale_matches_plotly_validation():
    for name in ("Viridis", "Greys", "RdBu"):
        assert theme.colorscale(name) == go.Heatmap(colorscale=name).to_plotly_json()[
            "colorscale"]
