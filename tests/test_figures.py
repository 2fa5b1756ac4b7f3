"""Figure builders on stored data: no model needed, and big models stay readable."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

import convscope as cs
from convscope.figures.graph import graph_elements
from convscope.figures.maps import cell_at, mosaic
from convscope.figures.scalars import smooth


def test_smoothing_is_tensorboards_debiased_ema():
    v = np.array([1.0, 3.0, float("nan"), 2.0])
    w = 0.5
    # by hand: m1 = 0.5, s1 = 0.5/0.5 = 1; m2 = 0.25 + 1.5 = 1.75, s2 = 1.75/0.75;
    # NaN is shown as is; m3 = 0.875 + 1 = 1.875, s3 = 1.875/0.875
    np.testing.assert_allclose(smooth(v, w)[[0, 1, 3]], [1.0, 1.75 / 0.75, 1.875 / 0.875])
    assert np.isnan(smooth(v, w)[2])
    with pytest.raises(ValueError):
        smooth(v, 1.0)


def test_mosaic_tiles_and_cell_lookup_are_inverse():
    maps = np.random.default_rng(0).normal(size=(3, 5, 4, 6))
    tiles, h, w = mosaic(maps)
    assert tiles.shape == (3 * 5 - 1, 5 * 7 - 1)
    for i in range(3):
        for j in range(5):
            y, x = i * (h + 1) + 1, j * (w + 1) + 2
            assert cell_at(x, y, h, w) == (i, j)
            ch = maps[:, j]
            expect = (ch[i] - ch.min()) / (ch.max() - ch.min())
            np.testing.assert_allclose(tiles[i * 5: i * 5 + 4, j * 7: j * 7 + 6], expect,
                                       rtol=1e-5)
    assert np.isnan(tiles[4]).all()  # the gap row


def test_resnet152_graph_is_folded_by_default():
    model = torchvision.models.resnet152(weights=None).eval()
    g = cs.model.graph(model, __import__("torch").rand(1, 3, 64, 64))
    els = graph_elements(g.to_dict())
    nodes = [e for e in els if "source" not in e["data"]]
    assert len(g.nodes) > 500 and len(nodes) <= 15  # stem, 4 stages, head, input/output
    blocks = {e["data"]["id"] for e in nodes if e["data"]["expandable"]}
    assert blocks == {"layer1", "layer2", "layer3", "layer4"}
    opened = [e for e in graph_elements(g.to_dict(), expanded=["layer3"])
              if "source" not in e["data"]]
    assert sum(e["data"]["id"].startswith("layer3.") for e in opened) == 36  # its blocks


# -- figures built from dicts in one step (issue 12, load) --------------------------------------
# The dashboard's heaviest figures are built as plain dicts and validated once (theme.figure)
# instead of make_subplots + per-cell fig.update_* calls (0.1-0.3 s per figure). The oracle: the
# same figure built the old way, through plotly's own API, must serialise to the same JSON.

def _plotly_json(fig) -> dict:
    import json

    import plotly.io as pio

    return json.loads(pio.to_json(fig))


def _assert_same_json(new, ref, path="fig", rel=0.0):
    """Equal JSON; ``rel``: floats may differ by that relative amount (else bit-identical)."""
    assert type(new) is type(ref) or {type(new), type(ref)} <= {int, float}, path
    if isinstance(ref, dict):
        assert set(new) == set(ref), f"{path}: keys {set(new) ^ set(ref)} differ"
        for k in ref:
            _assert_same_json(new[k], ref[k], f"{path}.{k}", rel)
    elif isinstance(ref, list):
        assert len(new) == len(ref), f"{path}: {len(new)} != {len(ref)} items"
        for i, (a, b) in enumerate(zip(new, ref, strict=True)):
            _assert_same_json(a, b, f"{path}[{i}]", rel)
    elif rel and isinstance(ref, float):
        assert new == pytest.approx(ref, rel=rel, abs=0), f"{path}: {new!r} != {ref!r}"
    else:
        assert new == ref, f"{path}: {new!r} != {ref!r}"


@pytest.mark.parametrize("rows,cols,hs,vs,shared", [
    (1, 1, 0.01, 0.01, False), (3, 8, 0.01, 0.01, False), (8, 8, 0.01, 0.01, False),
    (4, 4, 0.05, 0.08, True), (2, 3, 0.05, 0.08, True), (7, 4, 0.05, 0.6 / 7, True),
    (1, 4, 0.05, 0.08, True), (5, 1, 0.0, 0.25, False),
    # 7 and 27 columns at 0.01: the last column's end sums to 1.0000000000000002 / ...04, which
    # plotly refuses as a domain (the attribution gallery of a 6-method ConvNeXt run failed)
    (2, 7, 0.01, 0.01, False), (1, 27, 0.01, 0.01, False),
])
def test_grid_lays_out_axes_and_titles_exactly_as_make_subplots(rows, cols, hs, vs, shared):
    from plotly.subplots import make_subplots

    from convscope.figures import theme

    titles = [f"t{i}" if i % 3 else "" for i in range(rows * cols)]
    ref = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=hs,
                        vertical_spacing=vs, shared_xaxes=shared).to_plotly_json()["layout"]
    axes = theme.grid(rows, cols, horizontal_spacing=hs, vertical_spacing=vs,
                      shared_xaxes=shared)
    ref_axes = {k: v for k, v in ref.items() if k not in ("annotations", "template")}
    _assert_same_json(axes, ref_axes)  # bit-identical domains, anchors, matches
    for ax in axes.values():  # what plotly accepts (make_subplots clamps its axes too)
        assert 0.0 <= ax["domain"][0] <= ax["domain"][1] <= 1.0
    # make_subplots places titles over the domains before it clamps them: 1 ulp apart at most
    _assert_same_json(theme.title_annotations(axes, titles), list(ref.get("annotations", ())),
                      rel=1e-15)
    with pytest.raises(cs.ConvscopeError, match="between 0 and 0.5"):
        theme.grid(3, 2, horizontal_spacing=0.1, vertical_spacing=0.6)


def _ref_gallery(images, maps, *, methods=None, opacity=0.5, row_labels=None):
    """The gallery as it was built through plotly's API (before issue 12)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from convscope.figures import theme
    from convscope.figures.attribution import METHOD_TITLES
    from convscope.figures.images import colormap_lut, overlay, to_rgb

    methods = [m for m in (methods or list(maps)) if m in maps]
    b, cols = images.shape[0], 1 + len(methods)
    titles = ["input"] + [METHOD_TITLES.get(m, m) for m in methods]
    fig = make_subplots(rows=b, cols=cols, column_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.01)
    lut = colormap_lut("Jet")
    for i in range(b):
        rgb = to_rgb(images[i])
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip", name="input"), row=i + 1, col=1)
        for j, m in enumerate(methods):
            fig.add_trace(go.Image(z=overlay(rgb, maps[m][i], opacity, lut), name=m,
                                   hovertemplate=f"{METHOD_TITLES.get(m, m)}<extra></extra>"),
                          row=i + 1, col=j + 2)
        if row_labels:
            fig.update_yaxes(title_text=row_labels[i], title_font={"size": 10}, row=i + 1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    theme.apply(fig, height=60 + b * max(70, min(130, 1100 // cols)))
    fig.update_layout(margin={"l": 110 if row_labels else 10, "r": 10, "t": 40, "b": 10},
                      meta={"kind": "attribution_gallery", "methods": list(methods),
                            "opacity": float(opacity), "rows": int(b)})
    return fig


@pytest.mark.parametrize("b,methods,labels", [
    (1, ["saliency"], False), (3, ["grad_cam", "unknown", "saliency"], True),
    (8, ["saliency", "deconvnet", "guided_backprop", "cam", "grad_cam", "grad_cam_pp",
         "score_cam"], True),
])
def test_attribution_gallery_is_the_figure_plotlys_api_builds(b, methods, labels):
    from convscope.figures.attribution import attribution_gallery

    rng = np.random.default_rng(b)
    images = rng.normal(size=(b, 3, 9, 7)).astype(np.float32)
    maps = {m: rng.random((b, 9, 7)).astype(np.float32) for m in methods}
    rows = [f"true {i}<br>pred {i + 1}" for i in range(b)] if labels else None
    new = attribution_gallery(images, maps, opacity=0.3, row_labels=rows)
    _assert_same_json(_plotly_json(new),
                      _plotly_json(_ref_gallery(images, maps, opacity=0.3, row_labels=rows)))
    assert new.layout.meta["kind"] == "attribution_gallery"
    assert len(new.data) == b * (1 + len(methods))


def _training_data(seed=0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    steps = np.arange(0, 500, 50)
    err = pd.DataFrame(rng.random((len(steps), 6)), index=steps, columns=list(range(6)))
    anomalies = pd.DataFrame({"step": [100, 100, 300, 450], "class": [2, 5, 0, 9],
                              "n_flips": [7, 5, 6, 8]})  # class 9 is not shown: left out
    layers = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1", "fc"]
    series = pd.DataFrame([(layer, int(s), v, v - 0.1, v + 0.2) for layer in layers[::-1]
                           for s, v in zip(steps, rng.random(len(steps)), strict=True)],
                          columns=["layer", "step", "value", "vmin", "vmax"])
    return err, anomalies, layers, series


def _ref_validation(error, *, order, clusters, anomalies, x_range):
    import plotly.graph_objects as go

    from convscope.figures import theme

    cluster_of = dict(zip(list(error.columns), clusters, strict=True))
    labels = [f"[{cluster_of[c]}] class {c}" for c in order]
    fig = go.Figure(go.Heatmap(
        z=error[order].to_numpy().T, x=error.index.to_numpy(), y=labels, colorscale="Reds",
        zmin=0, zmax=1, colorbar={"title": {"text": "error", "side": "right"}, "thickness": 10},
        hovertemplate="%{y}<br>step %{x}<br>error %{z:.1%}<extra></extra>"))
    pos = {c: i for i, c in enumerate(order)}
    a = anomalies[anomalies["class"].isin(pos)]
    fig.add_trace(go.Scatter(
        x=a["step"], y=[labels[pos[c]] for c in a["class"]], mode="markers",
        marker={"symbol": "x-thin", "size": 11, "line": {"width": 2.5, "color": "#0072B2"}},
        name="anomaly", customdata=a["n_flips"],
        hovertemplate="anomaly at step %{x}<br>%{y}: %{customdata} images flipped"
                      "<extra></extra>"))
    for i in range(1, len(order)):
        if cluster_of[order[i]] != cluster_of[order[i - 1]]:
            fig.add_hline(y=i - 0.5, line={"color": "#101828", "width": 1.5})
    fig.update_yaxes(autorange="reversed", title_text="class [cluster]")
    fig.update_xaxes(title_text="step", range=list(x_range) if x_range else None)
    theme.apply(fig, height=max(300, 60 + 22 * len(order)),
                title="Validation: per-class error over checkpoints")
    fig.update_layout(uirevision=f"validation-{x_range}",
                      meta={"kind": "validation", "classes": [int(c) for c in order]})
    return fig


def _ref_layers(series, stat, layers, columns, x_range):
    import math

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from convscope.figures import theme

    n = max(len(layers), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(layers) or [""],
                        shared_xaxes=True, horizontal_spacing=0.05,
                        vertical_spacing=min(0.08, 0.6 / rows))
    for i, layer in enumerate(layers):
        r, c = i // cols + 1, i % cols + 1
        d = series[series["layer"] == layer]
        fig.add_trace(go.Scatter(x=d["step"], y=d["vmax"], mode="lines", line={"width": 0},
                                 hoverinfo="skip", showlegend=False), row=r, col=c)
        fig.add_trace(go.Scatter(x=d["step"], y=d["vmin"], mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor="rgba(0,114,178,0.15)",
                                 hoverinfo="skip", showlegend=False), row=r, col=c)
        fig.add_trace(go.Scatter(x=d["step"], y=d["value"], mode="lines",
                                 line={"color": theme.color(0), "width": 1.5},
                                 showlegend=False, meta={"layer": layer},
                                 hovertemplate=f"{layer}<br>step %{{x}}<br>{stat} %{{y:.4g}}"
                                               "<extra></extra>"), row=r, col=c)
    fig.update_annotations(font_size=10)
    fig.update_yaxes(tickfont={"size": 8}, exponentformat="e")
    fig.update_xaxes(tickfont={"size": 8}, range=list(x_range) if x_range else None)
    theme.apply(fig, height=max(260, 150 * rows + 40),
                title=f"Layers: {stat} over steps (mean of each bucket, band = min to max)")
    fig.update_layout(uirevision=f"layers-{x_range}",
                      meta={"kind": "layers", "stat": stat, "layers": list(layers)})
    return fig


@pytest.mark.parametrize("x_range", [None, (100, 300)])
def test_training_views_are_the_figures_plotlys_api_builds(x_range):
    from convscope.figures.training import layer_figure, validation_figure

    # (issue 16: the validation view's triangles and cluster rows are checked by hand in
    # tests/test_figures_training.py; its heatmap trace is still the reference's)
    err, anomalies, layers, series = _training_data()
    order, clusters = [3, 0, 5, 1, 2, 4], [1, 0, 0, 1, 2, 0]  # clusters by column
    new = validation_figure(err, order=order, clusters=clusters, anomalies=anomalies,
                            x_range=x_range)
    ref = _ref_validation(err, order=order, clusters=clusters, anomalies=anomalies,
                          x_range=x_range)
    _assert_same_json(_plotly_json(new)["data"][0], _plotly_json(ref)["data"][0])
    # separators at each cluster change of the order [1, 1, 0, 0, 0, 2]: before rows 2 and 5
    assert [s.y0 for s in new.layout.shapes] == [1.5, 4.5]
    for chosen, cols in [(layers, 4), (layers[:1], 4), (layers[:4], 2), (layers[:3], 5)]:
        new = layer_figure(series, "update_ratio", chosen, columns=cols, x_range=x_range)
        ref = _ref_layers(series, "update_ratio", chosen, cols, x_range)
        _assert_same_json(_plotly_json(new), _plotly_json(ref))
        assert [t.meta["layer"] for t in new.data if t.meta] == chosen


def test_built_figures_skip_plotlys_per_update_path_and_stay_validated(monkeypatch):
    import plotly.basedatatypes as bdt
    import plotly.io as pio
    import plotly.subplots

    from convscope.figures.attribution import attribution_gallery
    from convscope.figures.training import layer_figure, validation_figure

    def forbidden(*a, **k):
        raise AssertionError("per-update plotly path used")

    monkeypatch.setattr(bdt.BaseFigure, "update", forbidden)
    monkeypatch.setattr(plotly.subplots, "make_subplots", forbidden)
    err, anomalies, layers, series = _training_data(1)
    rng = np.random.default_rng(0)
    figs = [
        attribution_gallery(rng.random((4, 3, 8, 8)), {"saliency": rng.random((4, 8, 8))}),
        validation_figure(err, anomalies=anomalies),
        layer_figure(series, "w_l2", layers),
    ]
    monkeypatch.undo()
    white = pio.templates["plotly_white"].to_plotly_json()
    for fig in figs:
        assert fig.layout.template.to_plotly_json() == white  # the theme's template, attached
        fig.layout.template.layout.font.size = 99  # ... as the figure's own copy
        with pytest.raises(ValueError):  # later updates are still validated
            fig.update_layout(not_a_plotly_property=1)
    assert pio.templates["plotly_white"].to_plotly_json() == white


def test_feature_map_figures_are_the_figures_plotlys_api_builds():
    import plotly.graph_objects as go

    from convscope.figures import theme
    from convscope.figures.maps import GAP, channel_zoom, feature_map_grid, image_strip, mosaic

    rng = np.random.default_rng(3)
    maps = rng.normal(size=(4, 6, 5, 7))
    channels, order, labels = [3, 9, 1, 0, 5, 2], [5, 4, 3, 2, 1, 0], list("abcd")
    # the grid as built through plotly's API (before issue 12)
    tiles, h, w = mosaic(maps, order)
    ref = go.Figure(go.Heatmap(z=tiles, colorscale="Viridis", showscale=False,
                               hoverongaps=False, hovertemplate="x %{x}, y %{y}<extra></extra>"))
    ref.update_xaxes(tickvals=[j * (w + GAP) + w / 2 for j in range(6)],
                     ticktext=[str(channels[k]) for k in order], side="top", showgrid=False,
                     zeroline=False, tickfont={"size": 9}, title_text="channel",
                     constrain="domain")
    ref.update_yaxes(tickvals=[i * (h + GAP) + h / 2 for i in range(4)], ticktext=labels,
                     autorange="reversed", showgrid=False, zeroline=False, scaleanchor="x",
                     tickfont={"size": 9}, constrain="domain")
    theme.apply(ref, height=int(90 + 4 * 28 * (h + GAP) / w), title="T")
    ref.update_layout(margin={"l": 60, "r": 10, "t": 70, "b": 10},
                      meta={"kind": "feature_map_grid", "h": h, "w": w, "n": 4, "c": 6,
                            "order": order, "channels": channels})
    new = feature_map_grid(maps, channels, order=order, title="T", row_labels=labels)
    _assert_same_json(_plotly_json(new), _plotly_json(ref))

    zoom = channel_zoom(maps, 2, 1, image=3)
    ref = go.Figure(go.Heatmap(z=maps[3, 2].astype(np.float32), colorscale="Viridis",
                               hoverongaps=False, colorbar={"thickness": 10},
                               hovertemplate="value %{z:.3g}<extra></extra>"))
    ref.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    ref.update_xaxes(showticklabels=False)
    theme.apply(ref, height=260, title="channel 1, image 3")
    ref.update_layout(meta={"kind": "channel_zoom", "channel": 1})
    _assert_same_json(_plotly_json(zoom), _plotly_json(ref))

    strip = image_strip(np.zeros((2, 1, 3, 3)), labels=["x", "y"])
    assert strip.layout.xaxis.ticktext == ("x", "y") and strip.layout.xaxis.tickvals == (1.5, 6.5)
    assert np.asarray(strip.data[0].z).shape == (3, 3 * 2 + 2, 3)  # 2 px white gap between
