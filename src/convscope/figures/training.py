"""DeepTracker's three views: validation (per-class error over checkpoints, classes grouped by
cluster, anomalies marked), layer (a statistic of every layer over steps as small multiples) and
correlation (which layers' filters changed most at each anomaly iteration)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

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
    data: list[dict] = [{
        "type": "heatmap", "z": z, "x": steps, "y": labels, "colorscale": "Reds", "zmin": 0,
        "zmax": 1, "colorbar": {"title": {"text": "error", "side": "right"}, "thickness": 10},
        "hovertemplate": "%{y}<br>step %{x}<br>error %{z:.1%}<extra></extra>",
    }]
    if anomalies is not None and len(anomalies):
        pos = {c: i for i, c in enumerate(order)}
        a = anomalies[anomalies["class"].isin(pos)]
        data.append({
            "type": "scatter", "x": a["step"].to_numpy(),
            "y": [labels[pos[c]] for c in a["class"]], "mode": "markers",
            "marker": {"symbol": "x-thin", "size": 11, "line": {"width": 2.5, "color": "#0072B2"}},
            "name": "anomaly", "customdata": a["n_flips"].to_numpy(),
            "hovertemplate": "anomaly at step %{x}<br>%{y}: %{customdata} images flipped"
                             "<extra></extra>",
        })
    shapes = []
    if cluster_of:  # separators between clusters (what fig.add_hline draws)
        prev = None
        for i, c in enumerate(order):
            if prev is not None and cluster_of[c] != prev:
                shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1,
                               "yref": "y", "y0": i - 0.5, "y1": i - 0.5,
                               "line": {"color": "#101828", "width": 1.5}})
            prev = cluster_of[c]
    layout = theme.layout(height=max(300, 60 + 22 * len(order)),
                          title="Validation: per-class error over checkpoints")
    xaxis: dict = {"title": {"text": "step"}}
    if x_range:
        xaxis["range"] = list(x_range)
    layout.update(yaxis={"autorange": "reversed", "title": {"text": "class [cluster]"}},
                  xaxis=xaxis, uirevision=f"validation-{x_range}",
                  meta={"kind": "validation", "classes": [int(c) for c in order]})
    if shapes:
        layout["shapes"] = shapes
    return theme.figure(data, layout)


def layer_figure(series: pd.DataFrame, stat: str, layers: Sequence[str], *, columns: int = 4,
                 x_range: Sequence[float] | None = None) -> go.Figure:
    """Small multiples: one panel per layer with ``stat`` over steps (bucket mean, min-max band).
    ``series``: columns layer, step, value, vmin, vmax."""
    n = max(len(layers), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    axes = theme.grid(rows, cols, shared_xaxes=True, horizontal_spacing=0.05,
                      vertical_spacing=min(0.08, 0.6 / rows))
    for name, ax in axes.items():
        if name.startswith("y"):
            ax.update(tickfont={"size": 8}, exponentformat="e")
        else:
            ax["tickfont"] = {"size": 8}
            if x_range:
                ax["range"] = list(x_range)
    data: list[dict] = []
    color = theme.color(0)
    by_layer = dict(tuple(series.groupby("layer", sort=False))) if len(series) else {}
    for i, layer in enumerate(layers):
        xa, ya = theme.axis_ref(i + 1)  # cell (i // cols, i % cols)
        d = by_layer.get(layer, series.iloc[:0])
        step = d["step"].to_numpy()
        data += [
            {"type": "scatter", "x": step, "y": d["vmax"].to_numpy(), "mode": "lines",
             "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False,
             "xaxis": xa, "yaxis": ya},
            {"type": "scatter", "x": step, "y": d["vmin"].to_numpy(), "mode": "lines",
             "line": {"width": 0}, "fill": "tonexty", "fillcolor": "rgba(0,114,178,0.15)",
             "hoverinfo": "skip", "showlegend": False, "xaxis": xa, "yaxis": ya},
            {"type": "scatter", "x": step, "y": d["value"].to_numpy(), "mode": "lines",
             "line": {"color": color, "width": 1.5}, "showlegend": False,
             "meta": {"layer": layer},
             "hovertemplate": f"{layer}<br>step %{{x}}<br>{stat} %{{y:.4g}}<extra></extra>",
             "xaxis": xa, "yaxis": ya},
        ]
    layout = theme.layout(height=max(260, 150 * rows + 40),
                          title=f"Layers: {stat} over steps (mean of each bucket, band = min to max)")
    layout.update(axes, annotations=theme.title_annotations(axes, list(layers) or [""], size=10),
                  uirevision=f"layers-{x_range}",
                  meta={"kind": "layers", "stat": stat, "layers": list(layers)})
    return theme.figure(data, layout)


def correlation_figure(top: pd.DataFrame, layers: Sequence[str],
                       class_names: Sequence[str] | None = None) -> go.Figure:
    """For each anomaly iteration (columns) and layer (rows): how many of the iteration's
    most-changed filters lie in that layer. ``top``: columns step, classes, layer, filter,
    cos_prev (the output of :func:`convscope.track.correlate` with scope 'overall')."""
    steps = sorted(top["step"].unique()) if len(top) else []
    z = np.zeros((len(layers), len(steps)))
    li = {name: i for i, name in enumerate(layers)}
    sj = {s: j for j, s in enumerate(steps)}
    cells: dict[tuple[int, int], list[str]] = {}
    cls: dict = {}
    # one pass over the rows (in order: a cell lists its filters as the table does)
    for s, layer, f, c, classes in zip(top["step"].to_numpy(), top["layer"].to_numpy(),
                                       top["filter"].to_numpy(), top["cos_prev"].to_numpy(),
                                       top["classes"].to_numpy(), strict=True):
        if s not in cls:  # a step's classes: those of its first row
            cls[s] = ", ".join(_name(k, class_names) for k in classes)
        if layer in li:
            cells.setdefault((li[layer], sj[s]), []).append(f"#{int(f)} ({c:.3f})")
    text = [["" for _ in steps] for _ in layers]
    for (i, j), parts in cells.items():
        z[i, j] = len(parts)
        text[i][j] = ", ".join(parts)
    data = [{
        "type": "heatmap", "z": z, "x": [str(s) for s in steps], "y": list(layers),
        "colorscale": "Blues", "text": text, "customdata": [[cls[s] for s in steps] for _ in layers],
        "colorbar": {"title": {"text": "filters", "side": "right"}, "thickness": 10},
        "hovertemplate": "step %{x} (classes: %{customdata})<br>%{y}: %{z} of the most-changed "
                         "filters<br>%{text}<extra></extra>",
    }]
    layout = theme.layout(height=max(260, 60 + 16 * len(layers)),
                          title="Correlation: where the most-changed filters sit at each anomaly")
    layout.update(yaxis={"autorange": "reversed", "tickfont": {"size": 9}},
                  xaxis={"title": {"text": "anomaly step"}, "type": "category"},
                  meta={"kind": "correlation", "steps": [int(s) for s in steps]})
    return theme.figure(data, layout)


def filter_figure(steps: np.ndarray, filters: np.ndarray, matrix: np.ndarray, layer: str,
                  value: str) -> go.Figure:
    """Every filter of one layer over steps (rows = filters)."""
    data = [{
        "type": "heatmap", "z": matrix, "x": steps, "y": filters, "colorscale": "Viridis",
        "colorbar": {"title": {"text": value, "side": "right"}, "thickness": 10},
        "hovertemplate": "filter %{y}<br>step %{x}<br>" + value + " %{z:.4g}<extra></extra>",
    }]
    layout = theme.layout(height=max(260, min(700, 40 + 4 * len(filters))),
                          title=f"Filters of {layer}: {value}")
    layout.update(yaxis={"autorange": "reversed", "title": {"text": "filter"}},
                  xaxis={"title": {"text": "step"}}, meta={"kind": "filters", "layer": layer})
    return theme.figure(data, layout)
