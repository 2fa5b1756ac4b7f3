"""DeepTracker's three views: validation (per-class error over checkpoints, classes grouped by
cluster, anomalies marked), layer (a statistic of every layer over steps as small multiples) and
correlation (which layers' filters changed most at each anomaly iteration)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme

__all__ = ["validation_figure", "layer_figure", "correlation_figure", "filter_figure"]


def _name(c, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= int(c) < len(class_names):
        return str(class_names[int(c)])
    return f"class {c}"


def validation_figure(
    error: pd.DataFrame,
    *,
    order: Sequence | None = None,
    clusters: Sequence[int] | None = None,
    anomalies: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
    x_range: Sequence[float] | None = None,
) -> go.Figure:
    """Heatmap of ``error`` (index = steps, columns = classes) with classes as rows in ``order``
    (grouped by ``clusters``, aligned with ``error.columns``), anomalies as red marks."""
    classes = list(error.columns)
    order = list(order) if order is not None else classes
    cluster_of = dict(zip(classes, clusters, strict=True)) if clusters is not None else {}
    labels = [(f"[{cluster_of[c]}] " if cluster_of else "") + _name(c, class_names)
              for c in order]
    z = error[order].to_numpy().T
    steps = error.index.to_numpy()
    fig = go.Figure(go.Heatmap(
        z=z, x=steps, y=labels, colorscale="Reds", zmin=0, zmax=1,
        colorbar={"title": {"text": "error", "side": "right"}, "thickness": 10},
        hovertemplate="%{y}<br>step %{x}<br>error %{z:.1%}<extra></extra>",
    ))
    if anomalies is not None and len(anomalies):
        pos = {c: i for i, c in enumerate(order)}
        a = anomalies[anomalies["class"].isin(pos)]
        fig.add_trace(go.Scatter(
            x=a["step"], y=[labels[pos[c]] for c in a["class"]], mode="markers",
            marker={"symbol": "x-thin", "size": 11, "line": {"width": 2.5, "color": "#0072B2"}},
            name="anomaly", customdata=a["n_flips"],
            hovertemplate="anomaly at step %{x}<br>%{y}: %{customdata} images flipped"
                          "<extra></extra>",
        ))
    if cluster_of:  # separators between clusters
        prev = None
        for i, c in enumerate(order):
            if prev is not None and cluster_of[c] != prev:
                fig.add_hline(y=i - 0.5, line={"color": "#101828", "width": 1.5})
            prev = cluster_of[c]
    fig.update_yaxes(autorange="reversed", title_text="class [cluster]")
    fig.update_xaxes(title_text="step", range=list(x_range) if x_range else None)
    theme.apply(fig, height=max(300, 60 + 22 * len(order)),
                title="Validation: per-class error over checkpoints")
    fig.update_layout(uirevision=f"validation-{x_range}", meta={"kind": "validation", "classes":
                                                     [int(c) for c in order]})
    return fig


def layer_figure(series: pd.DataFrame, stat: str, layers: Sequence[str], *, columns: int = 4,
                 x_range: Sequence[float] | None = None) -> go.Figure:
    """Small multiples: one panel per layer with ``stat`` over steps (bucket mean, min-max band).
    ``series``: columns layer, step, value, vmin, vmax."""
    n = max(len(layers), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(layers) or [""],
                        shared_xaxes=True, horizontal_spacing=0.05,
                        vertical_spacing=min(0.08, 0.6 / rows))
    for i, layer in enumerate(layers):
        r, c = i // cols + 1, i % cols + 1
        d = series[series["layer"] == layer]
        color = theme.color(0)
        fig.add_trace(go.Scatter(x=d["step"], y=d["vmax"], mode="lines", line={"width": 0},
                                 hoverinfo="skip", showlegend=False), row=r, col=c)
        fig.add_trace(go.Scatter(x=d["step"], y=d["vmin"], mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor="rgba(0,114,178,0.15)",
                                 hoverinfo="skip", showlegend=False), row=r, col=c)
        fig.add_trace(go.Scatter(x=d["step"], y=d["value"], mode="lines",
                                 line={"color": color, "width": 1.5}, showlegend=False,
                                 meta={"layer": layer},
                                 hovertemplate=f"{layer}<br>step %{{x}}<br>{stat} %{{y:.4g}}"
                                               "<extra></extra>"), row=r, col=c)
    fig.update_annotations(font_size=10)
    fig.update_yaxes(tickfont={"size": 8}, exponentformat="e")
    fig.update_xaxes(tickfont={"size": 8}, range=list(x_range) if x_range else None)
    theme.apply(fig, height=max(260, 150 * rows + 40),
                title=f"Layers: {stat} over steps (mean of each bucket, band = min to max)")
    fig.update_layout(uirevision=f"layers-{x_range}", meta={"kind": "layers", "stat": stat,
                                                 "layers": list(layers)})
    return fig


def correlation_figure(top: pd.DataFrame, layers: Sequence[str],
                       class_names: Sequence[str] | None = None) -> go.Figure:
    """For each anomaly iteration (columns) and layer (rows): how many of the iteration's
    most-changed filters lie in that layer. ``top``: columns step, classes, layer, filter,
    cos_prev (the output of :func:`convscope.track.correlate` with scope 'overall')."""
    steps = sorted(top["step"].unique()) if len(top) else []
    z = np.zeros((len(layers), len(steps)))
    text = [["" for _ in steps] for _ in layers]
    li = {name: i for i, name in enumerate(layers)}
    for j, s in enumerate(steps):
        d = top[top["step"] == s]
        for layer, g in d.groupby("layer"):
            if layer in li:
                z[li[layer], j] = len(g)
                text[li[layer]][j] = ", ".join(
                    f"#{int(f)} ({c:.3f})" for f, c in zip(g["filter"], g["cos_prev"],
                                                          strict=True))
    cls = {s: ", ".join(_name(c, class_names) for c in top[top["step"] == s]["classes"].iloc[0])
           for s in steps}
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(s) for s in steps], y=list(layers), colorscale="Blues", text=text,
        customdata=[[cls[s] for s in steps] for _ in layers],
        colorbar={"title": {"text": "filters", "side": "right"}, "thickness": 10},
        hovertemplate="step %{x} (classes: %{customdata})<br>%{y}: %{z} of the most-changed "
                      "filters<br>%{text}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9})
    fig.update_xaxes(title_text="anomaly step", type="category")
    theme.apply(fig, height=max(260, 60 + 16 * len(layers)),
                title="Correlation: where the most-changed filters sit at each anomaly")
    fig.update_layout(meta={"kind": "correlation", "steps": [int(s) for s in steps]})
    return fig


def filter_figure(steps: np.ndarray, filters: np.ndarray, matrix: np.ndarray, layer: str,
                  value: str) -> go.Figure:
    """Every filter of one layer over steps (rows = filters)."""
    fig = go.Figure(go.Heatmap(
        z=matrix, x=steps, y=filters, colorscale="Viridis",
        colorbar={"title": {"text": value, "side": "right"}, "thickness": 10},
        hovertemplate="filter %{y}<br>step %{x}<br>" + value + " %{z:.4g}<extra></extra>",
    ))
    fig.update_yaxes(autorange="reversed", title_text="filter")
    fig.update_xaxes(title_text="step")
    theme.apply(fig, height=max(260, min(700, 40 + 4 * len(filters))),
                title=f"Filters of {layer}: {value}")
    fig.update_layout(meta={"kind": "filters", "layer": layer})
    return fig
