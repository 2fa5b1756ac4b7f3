"""DeepTracker's three views: validation (per-class error over checkpoints, classes grouped by
cluster, anomalies marked), layer (a statistic of every layer over steps as small multiples) and
correlation (which layers' filters changed most at each anomaly iteration)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from . import theme

__all__ = ["validation_figure", "validation_rows", "flip_direction", "MARKS", "layer_figure",
           "correlation_figure", "cube_figure", "class_images_figure", "filter_figure"]


def _name(c, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= int(c) < len(class_names):
        return str(class_names[int(c)])
    return f"class {c}"


#: Anomaly mark per flip direction: learned (more images wrong -> correct), forgotten (more
#: correct -> wrong), mixed (as many each way).
MARKS = {"learned": ("triangle-up", "#009E73"), "forgotten": ("triangle-down", "#D55E00"),
         "mixed": ("diamond", "#6B7280")}


def flip_direction(n_to_right: int, n_to_wrong: int) -> str:
    """``learned`` when more images flipped wrong -> correct than the other way,
    ``forgotten`` when more flipped correct -> wrong, ``mixed`` when as many each way."""
    return "learned" if n_to_right > n_to_wrong else "forgotten" if n_to_wrong > n_to_right \
        else "mixed"


def validation_rows(classes: Sequence, order: Sequence, clusters: Sequence[int] | None,
                    open_clusters: Sequence[int] | None) -> list[dict]:
    """The validation view's rows, top to bottom: without ``open_clusters`` one row per class
    in ``order``; with it, one row per cluster (in order of its first class in ``order``),
    each followed by its classes' rows when it is open. Each row: ``{"kind": "cluster" |
    "class", "id": int, "cluster": int}``."""
    cluster_of = dict(zip(classes, clusters, strict=True)) if clusters is not None else {}
    if open_clusters is None or not cluster_of:
        return [{"kind": "class", "id": int(c), "cluster": int(cluster_of.get(c, 0))}
                for c in order]
    opened = {int(k) for k in open_clusters}
    rows: list[dict] = []
    for k in dict.fromkeys(int(cluster_of[c]) for c in order):
        rows.append({"kind": "cluster", "id": k, "cluster": k})
        if k in opened:
            rows += [{"kind": "class", "id": int(c), "cluster": k} for c in order
                     if int(cluster_of[c]) == k]
    return rows


def validation_figure(
    error: pd.DataFrame,
    *,
    order: Sequence | None = None,
    clusters: Sequence[int] | None = None,
    anomalies: pd.DataFrame | None = None,
    class_names: Sequence[str] | None = None,
    x_range: Sequence[float] | None = None,
    open_clusters: Sequence[int] | None = None,
) -> go.Figure:
    """Heatmap of ``error`` (index = steps, columns = classes) with classes as rows in ``order``
    (grouped by ``clusters``, aligned with ``error.columns``) and anomalies as triangles: up
    where the class's images were learned (``n_to_right > n_to_wrong``), down where they were
    forgotten, a diamond where as many flipped each way (:data:`MARKS`).

    With ``open_clusters`` (DeepTracker's hierarchy, Liu et al. 2018) each cluster is a row of
    its own: the mean error of its classes at each checkpoint (NaN classes left out), followed
    by its classes' rows when the cluster is in ``open_clusters``; a closed cluster row carries
    its classes' anomaly marks. ``layout.meta.rows`` lists the rows (:func:`validation_rows`,
    each with its ``label``: the row's y value)."""
    classes = list(error.columns)
    order = list(order) if order is not None else classes
    cluster_of = dict(zip(classes, clusters, strict=True)) if clusters is not None else {}
    rows = validation_rows(classes, order, clusters, open_clusters)
    members: dict[int, list] = {}
    for c in order:
        members.setdefault(int(cluster_of.get(c, 0)), []).append(c)
    hier = open_clusters is not None and bool(cluster_of)
    labels, zrows = [], []
    with warnings.catch_warnings():  # a checkpoint where no class of a cluster has a value
        warnings.simplefilter("ignore", RuntimeWarning)
        for r in rows:
            if r["kind"] == "cluster":
                k = r["id"]
                mark = "▾" if k in {int(o) for o in open_clusters} else "▸"
                n_k = len(members[k])
                labels.append(f"{mark} cluster {k} ({n_k} class{'es' if n_k != 1 else ''})")
                zrows.append(np.nanmean(error[members[k]].to_numpy(dtype=np.float64), axis=1))
            else:
                c = next(c for c in order if int(c) == r["id"])
                labels.append(("   " if hier else (f"[{cluster_of[c]}] " if cluster_of else ""))
                              + _name(c, class_names))
                zrows.append(error[c].to_numpy(dtype=np.float64))
    z = np.array(zrows) if zrows else np.zeros((0, len(error)))
    steps = error.index.to_numpy()
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # category rows need unique labels (repeated class names)
        if lab in seen:
            labels[i] = f"{lab} #{rows[i]['id']}"
        seen[labels[i]] = i
    for r, lab in zip(rows, labels, strict=True):
        r["label"] = lab
    data: list[dict] = [{
        "type": "heatmap", "z": z, "x": steps, "y": labels, "colorscale": "Reds", "zmin": 0,
        "zmax": 1, "colorbar": {"title": {"text": "error", "side": "right"}, "thickness": 10},
        "hovertemplate": "%{y}<br>step %{x}<br>error %{z:.1%}<extra></extra>",
    }]
    if anomalies is not None and len(anomalies):
        row_of_class = {r["id"]: i for i, r in enumerate(rows) if r["kind"] == "class"}
        row_of_cluster = {r["id"]: i for i, r in enumerate(rows) if r["kind"] == "cluster"}
        cls_pos = {int(c): c for c in order}
        a = anomalies[anomalies["class"].isin(list(cls_pos))]
        y, keep = [], []
        for i, c in enumerate(a["class"].tolist()):
            if int(c) in row_of_class:
                y.append(row_of_class[int(c)])
            elif hier and int(cluster_of[cls_pos[int(c)]]) in row_of_cluster:
                y.append(row_of_cluster[int(cluster_of[cls_pos[int(c)]])])
            else:
                continue
            keep.append(i)
        a = a.iloc[keep]
        zeros = np.zeros(len(a), dtype=np.int64)  # no direction counts: diamonds (mixed)
        to_right = a["n_to_right"].to_numpy() if "n_to_right" in a.columns else zeros
        to_wrong = a["n_to_wrong"].to_numpy() if "n_to_wrong" in a.columns else zeros
        kind = np.where(to_right > to_wrong, 0, np.where(to_wrong > to_right, 1, 2))
        x_all, y_all = a["step"].to_numpy(), np.array([labels[i] for i in y], dtype=object)
        cls_all = a["class"].to_numpy()
        names_all = np.array([_name(c, class_names) for c in cls_all.tolist()], dtype=object)
        counts = np.stack([a["n_flips"].to_numpy(), to_right, to_wrong], axis=1).astype(
            np.int64) if len(a) else np.zeros((0, 3), dtype=np.int64)
        # one trace per direction (scalar symbol and colour: cheap to build, and a legend)
        for k, direction in enumerate(("learned", "forgotten", "mixed")):
            sel = kind == k
            if not sel.any():
                continue
            symbol, color = MARKS[direction]
            data.append({
                "type": "scatter", "x": x_all[sel], "y": y_all[sel], "mode": "markers",
                "marker": {"symbol": symbol, "size": 13, "color": color,
                           "line": {"width": 1, "color": "#101828"}},
                "name": f"anomaly: {direction}", "text": names_all[sel],
                "customdata": counts[sel],
                "meta": {"direction": direction, "classes": [int(c) for c in cls_all[sel]]},
                "hovertemplate": f"anomaly at step %{{x}}: %{{text}} {direction}<br>"
                                 "%{customdata[0]} stable flips (%{customdata[1]} to correct, "
                                 "%{customdata[2]} to wrong)<extra></extra>",
            })
    shapes = []
    if cluster_of and not hier:  # separators between clusters (what fig.add_hline draws)
        prev = None
        for i, c in enumerate(order):
            if prev is not None and cluster_of[c] != prev:
                shapes.append({"type": "line", "xref": "x domain", "x0": 0, "x1": 1,
                               "yref": "y", "y0": i - 0.5, "y1": i - 0.5,
                               "line": {"color": "#101828", "width": 1.5}})
            prev = cluster_of[c]
    elif hier:  # a line above each cluster row
        shapes = [{"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y",
                   "y0": i - 0.5, "y1": i - 0.5, "line": {"color": "#101828", "width": 1.5}}
                  for i, r in enumerate(rows) if r["kind"] == "cluster" and i > 0]
    layout = theme.layout(height=max(300, 60 + 22 * len(rows)),
                          title="Validation: per-class error over checkpoints"
                          + (" (click a cluster to open it, a class for its images)"
                             if hier else ""))
    xaxis: dict = {"title": {"text": "step"}}
    if x_range:
        xaxis["range"] = list(x_range)
    layout.update(yaxis={"autorange": "reversed", "title": {"text": "cluster / class" if hier
                                                              else "class [cluster]"},
                         "type": "category", "tickfont": {"size": 10}},
                  xaxis=xaxis, uirevision=f"validation-{x_range}",
                  legend={"orientation": "h", "y": -0.15},
                  meta={"kind": "validation", "rows": rows, "labels": labels,
                        "classes": [int(c) for c in order]})
    layout["margin"] = {**layout["margin"], "l": 150}
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
    # 3 traces x 53 layers of a fixed, valid shape: plotly's per-property validation of them
    # was most of the layer view's time at DeepTracker's scale; later updates stay validated
    fig = theme.trusted_figure(data, layout)
    fig._validate = True
    return fig


def correlation_figure(top: pd.DataFrame, layers: Sequence[str],
                       class_names: Sequence[str] | None = None) -> go.Figure:
    """DeepTracker's correlation view by anomaly class: for each class flagged at an anomaly
    (columns) and layer (rows), how many of the most-changed filters at that class's anomaly
    iterations lie in the layer (the cube of :func:`convscope.track.correlation_cube` summed
    over the iterations). ``top``: the output of :func:`convscope.track.correlate` (its
    ``scope == 'overall'`` rows: step, classes, layer, filter, cos_prev). The hover of a cell
    lists the iterations and filters behind it."""
    from ..track.correlate import explode_classes

    t = top[top["scope"] == "overall"] if "scope" in top.columns else top
    t = t[t["layer"].isin(list(layers))]  # filters of layers not shown are left out
    # the cube of convscope.track.correlation_cube summed over the iterations, from one pass
    flat = explode_classes(t)
    classes = np.unique(flat["class"])
    li = {name: i for i, name in enumerate(layers)}
    cell = np.array([li[n] for n in flat["layer"].tolist()], dtype=np.int64) * len(
        classes) + np.searchsorted(classes, flat["class"])
    z = np.bincount(cell, minlength=len(layers) * len(classes)).reshape(len(layers),
                                                                        len(classes))
    cube = SimpleNamespace(layers=list(layers), classes=classes,
                           steps=np.unique(t["step"].to_numpy(dtype=np.int64)))
    text = [["" for _ in cube.classes] for _ in cube.layers]
    if len(flat["row"]):
        order = np.lexsort((flat["row"], cell))  # by cell, then table order
        cell_sorted = cell[order]
        starts = np.flatnonzero(np.r_[True, cell_sorted[1:] != cell_sorted[:-1]])
        ends = np.r_[starts[1:], len(order)]
        filters, cos = t["filter"].to_numpy(), t["cos_prev"].to_numpy()
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            rows_ = flat["row"][order[a:min(b, a + HOVER_FILTERS)]]  # bounded hover text
            parts = [f"step {int(st)} #{int(f)} ({c:.3f})" for st, f, c in
                     zip(flat["step"][order[a:min(b, a + HOVER_FILTERS)]], filters[rows_],
                         cos[rows_], strict=True)]
            if b - a > HOVER_FILTERS:
                parts.append("...")
            i, j = divmod(int(cell_sorted[a]), len(cube.classes))
            text[i][j] = ", ".join(parts)
    names = [_name(c, class_names) for c in cube.classes.tolist()]
    data = [{
        "type": "heatmap", "z": z, "x": names, "y": list(cube.layers),
        "colorscale": "Blues", "text": text,
        "colorbar": {"title": {"text": "filters", "side": "right"}, "thickness": 10},
        "hovertemplate": "class %{x}<br>%{y}: %{z} of the most-changed filters at its "
                         "anomalies<br>%{text}<extra></extra>",
    }]
    layout = theme.layout(height=max(260, 60 + 16 * len(cube.layers)),
                          title="Correlation: where the most-changed filters sit, by anomaly "
                                "class")
    layout.update(yaxis={"autorange": "reversed", "tickfont": {"size": 9}},
                  xaxis={"title": {"text": "anomaly class"}, "type": "category"},
                  meta={"kind": "correlation", "classes": [int(c) for c in cube.classes],
                        "steps": [int(s) for s in cube.steps], "layers": list(cube.layers)})
    return theme.figure(data, layout)


HOVER_FILTERS = 6  #: filters a correlation cell's hover lists (then "...")


def cube_figure(cube, layer: str | None = None, cls: int | None = None,
                class_names: Sequence[str] | None = None) -> go.Figure:
    """Three linked slices of DeepTracker's layers x iterations x classes cube
    (:class:`convscope.track.CorrelationCube`, already cut to the step range): layers x
    iterations for class ``cls`` (all classes summed when None), classes x iterations for
    ``layer`` (all layers summed when None), and layers x classes summed over the
    iterations. Each cell counts most-changed filters."""
    counts = np.asarray(cube.counts)
    cls_list = [int(c) for c in cube.classes.tolist()]
    if cls is not None and int(cls) in cls_list:
        a = counts[:, :, cls_list.index(int(cls))]
        a_title = f"layers \u00d7 iterations, class {_name(cls, class_names)}"
    else:
        a, a_title = counts.sum(axis=2), "layers \u00d7 iterations, all classes"
    if layer is not None and layer in cube.layers:
        b = counts[cube.layers.index(layer)].T
        b_title = f"classes \u00d7 iterations, {layer}"
    else:
        b, b_title = counts.sum(axis=0).T, "classes \u00d7 iterations, all layers"
    c = counts.sum(axis=1)
    steps = [str(int(s)) for s in cube.steps.tolist()]
    names = [_name(k, class_names) for k in cls_list]
    axes = theme.grid(1, 3, horizontal_spacing=0.12, vertical_spacing=0.0)
    common = {"type": "heatmap", "colorscale": "Blues", "showscale": False}
    data = [
        {**common, "z": a, "x": steps, "y": list(cube.layers), "xaxis": "x", "yaxis": "y",
         "hovertemplate": "step %{x}<br>%{y}: %{z} filters<extra></extra>"},
        {**common, "z": b, "x": steps, "y": names, "xaxis": "x2", "yaxis": "y2",
         "hovertemplate": "step %{x}<br>class %{y}: %{z} filters<extra></extra>"},
        {**common, "z": c, "x": names, "y": list(cube.layers), "xaxis": "x3", "yaxis": "y3",
         "showscale": True, "colorbar": {"title": {"text": "filters", "side": "right"},
                                         "thickness": 10},
         "hovertemplate": "class %{x}<br>%{y}: %{z} filters<extra></extra>"},
    ]
    for n in ("xaxis", "xaxis2", "xaxis3"):
        axes[n].update(type="category", tickfont={"size": 8})
    for n in ("yaxis", "yaxis2", "yaxis3"):
        axes[n].update(autorange="reversed", tickfont={"size": 8}, type="category")
    axes["yaxis3"]["showticklabels"] = False
    layout = theme.layout(height=max(300, 80 + 14 * max(len(cube.layers), len(names))),
                          title="Cube: layers \u00d7 iterations \u00d7 classes (most-changed "
                                "filters at the anomalies)")
    layout.update(axes, annotations=theme.title_annotations(axes, [a_title, b_title,
                                                                   "layers \u00d7 classes"],
                                                            size=11),
                  meta={"kind": "cube", "layer": layer, "class": cls,
                        "layers": list(cube.layers), "classes": cls_list,
                        "steps": [int(s) for s in cube.steps]})
    layout["margin"] = {**layout["margin"], "t": 80}
    return theme.figure(data, layout)


def class_images_figure(strips, thumbs: dict[int, str] | None, class_name: str) -> go.Figure:
    """A class's validation images (rows) with their correct/wrong strip over checkpoints
    (:class:`convscope.formats.training.ClassImageStrips`): green correct, vermilion wrong,
    grey not covered; ``thumbs`` (``{id: PNG data URI}``) drawn at the left of their rows."""
    n = len(strips.ids)
    z = np.asarray(strips.state, dtype=np.float64)
    ys = list(range(n))
    data = [{
        "type": "heatmap", "z": z, "x": strips.steps, "y": ys, "zmin": 0, "zmax": 1,
        "colorscale": [[0, "#D55E00"], [0.5, "#D55E00"], [0.5, "#009E73"], [1, "#009E73"]],
        "showscale": False, "xgap": 0, "ygap": 2,
        "customdata": [[int(i), int(f)] for i, f in zip(strips.ids, strips.flips, strict=True)],
        "hovertemplate": "step %{x}<br>%{z}<extra></extra>",
    }]
    images = []
    if thumbs:
        for i, img_id in enumerate(strips.ids.tolist()):
            uri = thumbs.get(int(img_id))
            if uri:
                images.append({"source": uri, "xref": "paper", "yref": "y", "x": 0.035,
                               "y": i, "sizex": 0.06, "sizey": 0.95, "xanchor": "center",
                               "yanchor": "middle", "sizing": "contain", "layer": "above"})
    labels = [f"id {int(i)} ({int(f)} flips)" for i, f in zip(strips.ids, strips.flips,
                                                              strict=True)]
    shown = f"{n} of {strips.total} images" if n < strips.total else f"{n} images"
    cols = (f", {len(strips.steps)} of {strips.total_steps} checkpoints"
            if len(strips.steps) < strips.total_steps else "")
    layout = theme.layout(height=max(220, 70 + 26 * n),
                          title=f"Images of {class_name}: correct (green) / wrong (vermilion) at "
                                f"each checkpoint \u2014 {shown}{cols}, most flips first")
    # thumbnails in a column of their own between the tick labels and the strips
    yaxis = {"autorange": "reversed", "tickvals": ys, "ticktext": labels,
             "tickfont": {"size": 9}}
    xaxis = {"title": {"text": "step"}}
    if images:
        yaxis.update(anchor="free", position=0)
        xaxis["domain"] = [0.075, 1]
    layout.update(yaxis=yaxis, xaxis=xaxis,
                  meta={"kind": "class_images", "class": int(strips.cls),
                        "ids": [int(i) for i in strips.ids], "thumbnails": len(images)})
    layout["margin"] = {**layout["margin"], "l": 120}
    if images:
        layout["images"] = images
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
