"""Wang & Li (2020)'s views of one layer. Layer outputs (:func:`layer_view_figure`): the
dendrogram of channels (cosine distance, single linkage) drawn above the grid of samples ×
channels in leaf order, and a KDE curve per channel. Parameters (:func:`param_view_figure`, Wang
& Li 2020 figures 7 and 10): the outputs' dendrogram (c_out / f_out) beside the weight grid
whose rows follow its leaf order, and a KDE curve per output; :func:`leaf_tree` prunes the stored
tree to the outputs drawn.

Each figure is bounded whatever the stored view holds (a dashboard answer stays well under
1 MB): the grid keeps at most :data:`MAX_GRID_VALUES` values (maps are area-averaged, then
samples dropped; a parameter grid keeps evenly spaced outputs and inputs, whole kernel cells),
at most :data:`MAX_CURVES` density curves of :data:`MAX_CURVE_POINTS` points are drawn, and
what was left out is listed in ``fig.layout.meta["capped"]`` ("showing N of M ...").
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme
from .maps import GAP, mosaic

__all__ = ["layer_view_figure", "param_view_figure", "SEVERITY_COLORS", "MAX_GRID_VALUES",
           "MAX_CURVES", "MAX_CURVE_POINTS", "MAX_TREE_LEAVES", "evenly", "leaf_tree",
           "fit_param_grid"]

SEVERITY_COLORS = {"error": "#b42318", "warning": "#b54708", "info": "#0072B2", "note": "#667085"}

MAX_GRID_VALUES = 50_000  #: heatmap cells per figure (float32: ~270 kB in a Dash answer)
MAX_CURVES = 128  #: density curves per figure (the recorded default of a conv)
MAX_CURVE_POINTS = 256  #: points per density curve
MAX_TREE_LEAVES = 1024  #: dendrograms with more leaves are not drawn
MAX_TICK_LABELS = 64  #: channel labels under the dendrogram and grid (every k-th beyond)
MAX_CELL_BORDERS = 32  #: parameter grids with more output or input blocks draw no cell borders


def evenly(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` distinct positions in ``range(n)``, evenly spaced, first and last kept."""
    if k >= n:
        return np.arange(n)
    if k <= 1:
        return np.zeros(max(k, 0), dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


@functools.lru_cache(maxsize=4)
def _subplots(spec: str) -> str:
    """The layout (axes and title annotations) of ``make_subplots(**json.loads(spec))``, as
    JSON: built once per process, so every figure gets bit-identical domains without paying
    for ``make_subplots`` and its per-update validation again."""
    lay = make_subplots(**json.loads(spec)).layout.to_plotly_json()
    lay.pop("template", None)
    return json.dumps(lay)


def _layout(height: int, title: str, **subplots: Any) -> dict[str, Any]:
    """A fresh layout dict: the subplots' axes and titles plus convscope's theme."""
    out = json.loads(_subplots(json.dumps(subplots, sort_keys=True)))
    out.update(theme.layout(height=height, title=title))
    return out


def _dendrogram(tree: dict[str, Any], cell: float, xaxis: str, yaxis: str) -> list[dict]:
    """scipy's dendrogram coordinates put leaf i at x = 10 i + 5; rescale to grid columns.
    One trace, links separated by gaps (a trace per link costs ~200 bytes each)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for x4, y4 in zip(tree.get("icoord", []), tree.get("dcoord", []), strict=True):
        xs += [(x - 5) / 10 * cell + cell / 2 for x in x4] + [None]
        ys += [float(y) for y in y4] + [None]
    if not xs:
        return []
    return [{"type": "scatter", "x": xs, "y": ys, "mode": "lines",
             "line": {"color": "#344054", "width": 1}, "hoverinfo": "skip",
             "showlegend": False, "connectgaps": False, "xaxis": xaxis, "yaxis": yaxis}]


def _kde(grid: np.ndarray, density: np.ndarray, labels: list[str], xaxis: str, yaxis: str
         ) -> list[dict]:
    """One line trace per density curve (plain dicts: validated once, with the figure)."""
    grid = np.asarray(grid, dtype=np.float64)
    step = np.diff(grid)
    # an evenly spaced grid (the usual case) is sent once as x0 + dx, not once per curve
    even = len(grid) > 1 and np.allclose(step, step[0], rtol=1e-4, atol=0)
    xs = {"x0": float(grid[0]), "dx": float(step[0])} if even else \
        {"x": grid.astype(np.float32)}
    density = np.asarray(density, dtype=np.float32)
    return [{"type": "scatter", **xs, "y": density[i], "mode": "lines",
             "line": {"width": 1, "color": theme.color(i)}, "name": labels[i],
             "showlegend": False, "opacity": 0.7,
             "hovertemplate": f"{labels[i]}<br>value %{{x:.3g}}<br>density %{{y:.3g}}"
                              "<extra></extra>",
             "xaxis": xaxis, "yaxis": yaxis} for i in range(density.shape[0])]


def _curves(grid: Any, density: Any, pick: np.ndarray, what: str, notes: list[str]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, curves, rows)``: the density rows ``pick`` (at most :data:`MAX_CURVES` of them,
    evenly spaced), each thinned to at most :data:`MAX_CURVE_POINTS` points."""
    density = np.asarray(density)
    if density.ndim != 2:
        raise ValueError(f"density curves must be [curves, points], not shape {density.shape}")
    n_all = density.shape[0]
    pick = np.asarray(pick, dtype=np.int64)
    pick = pick[(pick >= 0) & (pick < n_all)]
    if len(pick) > MAX_CURVES:
        pick = pick[evenly(len(pick), MAX_CURVES)]
    if len(pick) < n_all:
        notes.append(f"density curves: showing {len(pick)} of {n_all} {what} (evenly spaced; "
                     f"at most {MAX_CURVES} curves per figure)")
    grid = np.asarray(grid, dtype=np.float32).reshape(-1)
    pts = evenly(min(len(grid), density.shape[1]), MAX_CURVE_POINTS)
    if len(pts) < density.shape[1]:
        notes.append(f"density curves: {len(pts)} of {density.shape[1]} points each")
    return grid[pts], np.asarray(density[pick][:, pts], dtype=np.float32), pick


def _shrink(x: np.ndarray, f: int) -> np.ndarray:
    """``[..., H, W]`` area-averaged by ``f`` on each side (at most the side's length)."""
    h, w = x.shape[-2:]
    fh, fw = min(f, h), min(f, w)
    if fh <= 1 and fw <= 1:
        return x
    h2, w2 = h // fh * fh, w // fw * fw
    x = x[..., :h2, :w2]
    return x.reshape(*x.shape[:-2], h2 // fh, fh, w2 // fw, fw).mean(axis=(-3, -1))


def fit_maps(data: Any, max_values: int = MAX_GRID_VALUES
             ) -> tuple[np.ndarray | None, list[str]]:
    """Maps ``[b, c, h, w]`` whose mosaic has at most ``max_values`` cells: area-averaged by
    the smallest integer factor that fits, then (1x1 maps still too many) the first samples
    only; None when even one sample of 1x1 maps does not fit. Reads only what it keeps (``data``
    may be a memory map)."""
    b, c, h, w = (int(s) for s in data.shape)

    def cells(n: int, hh: int, ww: int) -> int:
        return (n * (hh + GAP) - GAP) * (c * (ww + GAP) - GAP)

    notes: list[str] = []
    f, h2, w2 = 1, h, w
    while cells(b, h2, w2) > max_values and (h2 > 1 or w2 > 1):
        f += 1
        h2, w2 = h // min(f, h), w // min(f, w)
    n = b
    if cells(n, h2, w2) > max_values:
        per = (c * (w2 + GAP) - GAP)
        n = max(1, (max_values // per + GAP) // (h2 + GAP))
        if cells(n, h2, w2) > max_values:
            return None, [f"grid not drawn: {c} channels are more than one answer holds "
                          f"({max_values:,} values at most); the dendrogram and curves still "
                          "show them"]
    out = np.asarray(data[:n], dtype=np.float32)
    if f > 1:
        out = _shrink(out, f)
        notes.append(f"grid: maps averaged from {h}x{w} to {out.shape[2]}x{out.shape[3]} "
                     f"pixels (at most {max_values:,} values per figure)")
    if n < b:
        notes.append(f"grid: showing the first {n} of {b} samples")
    return out, notes


def fit_features(data: Any, max_values: int = MAX_GRID_VALUES
                 ) -> tuple[np.ndarray | None, list[str]]:
    """Features ``[b, c]`` with at most ``max_values`` cells: the first samples only."""
    b, c = (int(s) for s in data.shape)
    if b * c <= max_values:
        return np.asarray(data, dtype=np.float32), []
    n = max_values // c
    if n < 1:
        return None, [f"grid not drawn: {c} features are more than one answer holds "
                      f"({max_values:,} values at most)"]
    return np.asarray(data[:n], dtype=np.float32), [f"grid: showing the first {n} of {b} "
                                                    "samples"]


def layer_view_figure(view: dict[str, Any], data: np.ndarray, density: np.ndarray, *,
                      max_values: int = MAX_GRID_VALUES) -> go.Figure:
    """``view``: the stored ``diag_view`` object; ``data``: maps ``[b, c, h, w]`` or features
    ``[b, c]`` (may be a memory map: only what is drawn is read); ``density``: ``[c, G]``.
    What was left out to stay within the bounds is listed in ``layout.meta["capped"]``."""
    channels = list(view["channels"])
    if data.ndim not in (2, 4) or data.shape[1] != len(channels):
        raise ValueError(f"the grid has shape {list(data.shape)}, not [samples, "
                         f"{len(channels)} channels(, h, w)]: record the diagnosis again")
    leaves = list(view["clustering"].get("leaves") or range(data.shape[1]))
    labels = [f"ch {channels[i]}" for i in range(len(channels))]
    notes: list[str] = []
    layout = _layout(820, f"{view['name']}: {view['kind']} {view['shape']}", rows=3, cols=1,
                     row_heights=[0.25, 0.5, 0.25], vertical_spacing=0.06,
                     subplot_titles=["dendrogram of channels (single linkage)",
                                     "samples × channels, in leaf order",
                                     "KDE of each channel's values"])
    data_: list[dict] = []
    if data.ndim == 4:
        shown, more = fit_maps(data, max_values)
        notes += more
        w = shown.shape[3] if shown is not None else 1
        cell = w + GAP
        if shown is not None:
            tiles, _, _ = mosaic(shown, leaves)
            data_.append({"type": "heatmap", "z": tiles,
                          "colorscale": theme.colorscale("Viridis"), "showscale": False,
                          "hoverongaps": False, "hoverinfo": "skip", "xaxis": "x2",
                          "yaxis": "y2"})
        layout["yaxis2"].update(autorange="reversed", showticklabels=False)
    else:
        shown, more = fit_features(data, max_values)
        notes += more
        cell = 1.0
        if shown is not None:
            data_.append({"type": "heatmap", "z": shown[:, leaves],
                          "x": np.arange(len(leaves)) + 0.5,
                          "colorscale": theme.colorscale("RdBu"), "zmid": 0, "showscale": False,
                          "hovertemplate": "sample %{y}<br>value %{z:.3g}<extra></extra>",
                          "xaxis": "x2", "yaxis": "y2"})
        layout["yaxis2"].update(autorange="reversed", title={"text": "sample"})
    if len(leaves) <= MAX_TREE_LEAVES:
        data_ += _dendrogram(view["clustering"], cell, "x", "y")
        layout["yaxis"].update(title={"text": "cosine distance"}, range=[0, 2.05])
    else:
        notes.append(f"dendrogram not drawn: {len(leaves)} leaves (at most {MAX_TREE_LEAVES})")
    if len(leaves) <= MAX_TREE_LEAVES:
        ticks = [i * cell + cell / 2 for i in range(len(leaves))]
        # at most MAX_TICK_LABELS labels (every step-th leaf): 512 labels are a black band
        step = max(1, math.ceil(len(leaves) / MAX_TICK_LABELS))
        for ax in ("xaxis", "xaxis2"):
            layout[ax].update(tickvals=ticks[::step],
                              ticktext=[str(channels[i]) for i in leaves][::step],
                              tickfont={"size": 8}, range=[0, len(leaves) * cell])
    grid, dens, pick = _curves(view["kde"]["grid"], density, np.asarray(leaves), "channels",
                               notes)
    data_ += _kde(grid, dens, [labels[i] for i in pick], "x3", "y3")
    layout["xaxis3"]["title"] = {"text": "value"}
    layout["yaxis3"]["title"] = {"text": "density"}
    layout["meta"] = {"kind": "diagnosis_layer", "layer": view["name"],
                      "leaves": [int(channels[i]) for i in leaves], "capped": notes}
    return theme.trusted_figure(data_, layout)


def _layer_sizes(view: dict[str, Any], n_rows: int, n_cols: int) -> tuple[int, int]:
    """(outputs, inputs) of the whole layer from the view's weight shape (the drawn rows and
    columns are a sample of them)."""
    shape = view.get("shape") or []
    try:
        o, i = int(shape[0]), int(shape[1])
    except (IndexError, TypeError, ValueError):
        return n_rows, n_cols
    return (i, o) if view.get("kind") == "deconv" else (o, i)


def _seq(v: Any) -> list:
    """A stored list field as a list (a numpy array when the view comes from ``to_dict()``;
    None or a damaged non-sequence: empty)."""
    if isinstance(v, np.ndarray):
        return v.reshape(-1).tolist()
    return list(v) if isinstance(v, (list, tuple)) else []


def fit_param_grid(view: dict[str, Any], grid: Any, max_values: int = MAX_GRID_VALUES
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(grid, kept rows of the view, notes)``: the parameter grid with at most ``max_values``
    cells. Evenly spaced outputs (row blocks of ``kh`` rows) and inputs (column blocks of
    ``kw``) are kept whole, with the bias column; a grid of another layout keeps evenly spaced
    rows and columns. Reads only what it keeps (``grid`` may be a memory map)."""
    if grid.ndim != 2:
        raise ValueError(f"the parameter grid has shape {list(grid.shape)}, not 2-D: record "
                         "the diagnosis again")
    big_h, big_w = (int(s) for s in grid.shape)
    rows = list(_seq(view.get("rows")))
    n_r, n_c = len(rows), len(_seq(view.get("cols")))
    all_rows = np.arange(n_r)
    if big_h * big_w <= max_values:
        return np.asarray(grid, dtype=np.float32), all_rows, []
    try:
        kh, kw = (int(v) for v in (_seq(view.get("cell")) or [1, 1]))
    except (TypeError, ValueError):
        kh, kw = 0, 0
    bias = 1 if view.get("has_bias") else 0
    if n_r and n_c and kh >= 1 and kw >= 1 and n_r * kh == big_h and n_c * kw + bias == big_w:
        scale = math.sqrt(max_values / (big_h * big_w))
        ro, co = max(1, int(n_r * scale)), max(1, int(n_c * scale))
        while ro * kh * (co * kw + bias) > max_values and (ro > 1 or co > 1):
            if ro >= co and ro > 1:
                ro -= 1
            else:
                co -= 1
        ri, ci = evenly(n_r, ro), evenly(n_c, co)
        r_idx = (ri[:, None] * kh + np.arange(kh)[None, :]).reshape(-1)
        c_idx = (ci[:, None] * kw + np.arange(kw)[None, :]).reshape(-1)
        if bias:
            c_idx = np.append(c_idx, big_w - 1)
        outs, ins = _layer_sizes(view, n_r, n_c)
        note = (f"weights: showing {len(ri)} of {outs} outputs × {len(ci)} of {ins} inputs "
                f"(evenly spaced among the {n_r} × {n_c} recorded; at most {max_values:,} "
                "values per figure)")
    else:  # an unknown layout: evenly spaced rows and columns
        scale = math.sqrt(max_values / (big_h * big_w))
        r_idx = evenly(big_h, max(1, int(big_h * scale)))
        c_idx = evenly(big_w, max(1, max_values // len(r_idx)))
        ri = all_rows[evenly(n_r, len(r_idx))] if n_r == big_h else all_rows
        note = (f"weights: showing {len(r_idx)} of {big_h} rows × {len(c_idx)} of {big_w} "
                "columns of the grid (evenly spaced)")
    out = np.asarray(np.asarray(grid)[np.ix_(r_idx, c_idx)], dtype=np.float32)
    return out, ri, [note]


def leaf_tree(clustering: dict[str, Any], rows: Any
              ) -> tuple[np.ndarray, list[list[float]], list[list[float]]]:
    """The stored tree of a view's outputs, restricted to ``rows`` (output indices, each among
    ``clustering["labels"]``), as a dendrogram of those rows only.

    Returns ``(order, icoord, dcoord)``: ``order`` the positions into ``rows`` in the tree's
    leaf order (draw row ``rows[order[0]]`` first); one link per merge of two branches that
    both hold a drawn row, as scipy's ``dendrogram(Z, no_plot=True)`` gives ``icoord`` /
    ``dcoord`` but with leaf ``p`` at ``x = p`` (scipy: ``10 p + 5``) and a merge at the middle
    of its two branches. With every clustered row drawn this is scipy's dendrogram; with some
    of them (the page draws evenly spaced outputs of a big layer) it is that tree pruned to
    them: the merge heights are the full tree's (single linkage: the cophenetic distance of
    two drawn rows is unchanged) and the rows keep the full tree's leaf order. No tree (fewer
    than two clustered rows): ``rows`` in the given order and no link. A damaged tree (a
    linkage of the wrong shape, a row it does not hold): :class:`ValueError`.
    """
    rows = [int(r) for r in rows]
    labels = np.asarray(clustering.get("labels", []), dtype=np.int64).reshape(-1)
    z = np.asarray(clustering.get("linkage", []), dtype=np.float64)
    n = len(labels)
    if n < 2 or z.size == 0 or len(rows) < 1:
        return np.arange(len(rows)), [], []
    z = z.reshape(-1, z.shape[-1]) if z.ndim else z
    leaves = np.asarray(clustering.get("leaves", []), dtype=np.int64).reshape(-1)
    if (z.shape != (n - 1, 4) or len(leaves) != n
            or not np.array_equal(np.sort(leaves), np.arange(n))):
        raise ValueError(f"the stored tree of {n} outputs is damaged (linkage of shape "
                         f"{list(z.shape)}, {len(leaves)} leaves): record the diagnosis again")
    where = {int(lab): i for i, lab in enumerate(labels)}
    idx = [where.get(r) for r in rows]
    if any(i is None for i in idx) or len(set(idx)) != len(idx):
        raise ValueError("the drawn outputs are not distinct leaves of the stored tree: record "
                         "the diagnosis again")
    rank = np.empty(n, dtype=np.int64)
    rank[leaves] = np.arange(n)
    order = np.argsort(rank[np.asarray(idx, dtype=np.int64)], kind="stable")
    pos = np.empty(len(rows), dtype=np.float64)
    pos[order] = np.arange(len(rows))
    x: list[float | None] = [None] * (2 * n - 1)
    h = [0.0] * (2 * n - 1)
    for j, i in enumerate(idx):
        x[i] = float(pos[j])
    icoord: list[list[float]] = []
    dcoord: list[list[float]] = []
    for k in range(n - 1):
        a, b, height = z[k, 0], z[k, 1], float(z[k, 2])
        if not (a == int(a) and b == int(b) and 0 <= a < n + k and 0 <= b < n + k
                and math.isfinite(height)):
            raise ValueError(f"merge {k} of the stored tree is damaged: record the diagnosis "
                             "again")
        a, b = int(a), int(b)
        xa, xb = x[a], x[b]
        if xa is not None and xb is not None:
            if xa > xb:
                a, b, xa, xb = b, a, xb, xa
            icoord.append([xa, xa, xb, xb])
            dcoord.append([h[a], height, height, h[b]])
            x[n + k], h[n + k] = (xa + xb) / 2, height
        elif xa is not None:
            x[n + k], h[n + k] = xa, h[a]
        elif xb is not None:
            x[n + k], h[n + k] = xb, h[b]
    return order, icoord, dcoord


def _row_dendrogram(icoord: list[list[float]], dcoord: list[list[float]], block: int,
                    xaxis: str, yaxis: str) -> list[dict]:
    """A dendrogram lying on its side, leaves on the right: leaf ``p`` beside rows
    ``p * block .. p * block + block - 1`` of the grid (at their middle), the merge height along
    x. One trace, links separated by gaps."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    for p4, h4 in zip(icoord, dcoord, strict=True):
        ys += [p * block + (block - 1) / 2 for p in p4] + [None]
        xs += [float(v) for v in h4] + [None]
    if not xs:
        return []
    return [{"type": "scatter", "x": xs, "y": ys, "mode": "lines", "name": "dendrogram",
             "line": {"color": "#344054", "width": 1}, "hoverinfo": "skip",
             "showlegend": False, "connectgaps": False, "xaxis": xaxis, "yaxis": yaxis}]


#: Axis domains of the parameter figure: wide (the Diagnosis page: tree | grid | curves in one
#: row) and compact (the Model page's side panel: tree | grid above, curves below).
_PARAM_AXES = {
    False: {"x": [0.0, 0.12], "x2": [0.125, 0.58], "x3": [0.7, 1.0],
            "y": [0.0, 1.0], "y2": [0.0, 1.0], "y3": [0.0, 1.0]},
    True: {"x": [0.0, 0.2], "x2": [0.21, 0.92], "x3": [0.0, 1.0],
           "y": [0.38, 1.0], "y2": [0.38, 1.0], "y3": [0.0, 0.26]},
}


def param_view_figure(view: dict[str, Any], grid: np.ndarray, density: np.ndarray, *,
                      max_values: int = MAX_GRID_VALUES, compact: bool = False) -> go.Figure:
    """Wang & Li (2020, figures 7 and 10)'s picture of a layer's parameters: the outputs'
    dendrogram (cosine distance, single linkage, ``view["clustering"]``) lying on its side at
    the left, beside the weight grid with its rows in the tree's leaf order (a conv: one row
    block per output channel, one column block per input channel, each kh × kw cell scaled to
    0–1, the bias as the last column, in grey; a linear layer: the raw ``f_out × (f_in + 1)``
    heatmap with the bias last, blue below 0 and red above), and a KDE curve of each drawn
    output's weights. ``compact``: the curves go under the grid (the Model page's panel).

    Bounded whatever the stored view holds (:func:`fit_param_grid`: at most ``max_values``
    grid values, evenly spaced whole outputs and inputs; at most :data:`MAX_CURVES` curves; a
    tree of at most :data:`MAX_TREE_LEAVES` drawn outputs, pruned to them by
    :func:`leaf_tree`). ``layout.meta``: ``rows`` (the drawn outputs, top to bottom),
    ``tree`` (whether a dendrogram is drawn), ``links``, ``cell`` and ``capped`` (what was left
    out, "showing N of M ...")."""
    density = np.asarray(density)
    rows = list(view.get("rows", range(density.shape[0])))
    labels = [f"out {r}" for r in rows] + [f"out #{i}" for i in range(len(rows),
                                                                       density.shape[0])]
    shown, kept, notes = fit_param_grid(view, grid, max_values)
    kept = np.asarray(kept, dtype=np.int64)
    try:
        kh, kw = (int(v) for v in (_seq(view.get("cell")) or [1, 1]))
    except (TypeError, ValueError):
        kh, kw = 0, 0
    blocks = len(kept) > 0 and kh >= 1 and shown.shape[0] == len(kept) * kh \
        and len(rows) > int(kept.max())
    clustering = view.get("clustering") if isinstance(view.get("clustering"), dict) else {}
    drawn = [int(rows[i]) for i in kept] if blocks else []
    icoord: list[list[float]] = []
    dcoord: list[list[float]] = []
    tree_notes: list[str] = []  # listed after the grid's and the curves' notes
    if not blocks:
        tree_notes.append("dendrogram not drawn: the stored grid is not one block of rows per "
                          "output (rows in stored order)")
    elif len(kept) > MAX_TREE_LEAVES:
        tree_notes.append(f"dendrogram not drawn: {len(kept)} outputs (at most "
                          f"{MAX_TREE_LEAVES}); rows in stored order")
    else:
        order, icoord, dcoord = leaf_tree(clustering, drawn)
        if icoord:
            r_idx = (order[:, None] * kh + np.arange(kh)[None, :]).reshape(-1)
            shown, kept = shown[r_idx], kept[order]
            drawn = [drawn[i] for i in order]
            n_tree = int(np.asarray(clustering.get("labels", [])).size)
            if len(drawn) < n_tree:
                tree_notes.append(f"dendrogram: the tree of the {n_tree} recorded outputs, "
                                  f"pruned to the {len(drawn)} drawn (merge heights unchanged)")
        else:
            why = str(clustering.get("note") or "") or "a tree needs at least two outputs"
            tree_notes.append(f"dendrogram not drawn: {why}")
    curves = kept if len(kept) else np.arange(density.shape[0])
    kde_grid, dens, pick = _curves(view["kde"]["grid"], density, curves, "outputs", notes)
    notes += tree_notes
    linear = view.get("kind") == "linear"
    axes = _PARAM_AXES[bool(compact)]
    layout = theme.layout(height=600 if compact else 460,
                          title=f"{view.get('name', '')}: {view.get('kind', '')} "
                                f"parameters {view.get('shape', '')}")
    height = max(1, shown.shape[0])
    yrange = [height - 0.5, -0.5]  # row 0 at the top, the tree's leaves beside their rows
    merges = [d4[1] for d4 in dcoord]
    top, low = (max(merges), min(merges)) if merges else (1.0, 0.0)
    span = max(top - low, 0.02)
    for ax in ("x", "x2", "x3"):
        name = "xaxis" if ax == "x" else f"xaxis{ax[1:]}"
        yname = "yaxis" if ax == "x" else f"yaxis{ax[1:]}"
        layout[name] = {"anchor": ax.replace("x", "y"), "domain": axes[ax]}
        layout[yname] = {"anchor": ax, "domain": axes[ax.replace("x", "y")]}
    # the merge heights fill the panel (a random layer merges everything near 1): the leaves'
    # stubs start at its right edge, the axis says where
    layout["xaxis"].update(range=[top + 0.05 * span, max(0.0, low - 0.3 * span)],
                           title={"text": "cosine distance"}, tickfont={"size": 9}, nticks=4,
                           zeroline=False)
    layout["yaxis"].update(range=yrange, showticklabels=False, showgrid=False,
                           zeroline=False)
    step = max(1, math.ceil(len(drawn) / MAX_TICK_LABELS)) if blocks else 1
    layout["yaxis2"].update(range=yrange, showgrid=False, zeroline=False, side="right",
                            tickfont={"size": 8},
                            tickvals=[p * kh + (kh - 1) / 2 for p in range(len(drawn))][::step],
                            ticktext=[str(r) for r in drawn][::step])
    bias = 1 if view.get("has_bias") and shown.shape[1] > 1 else 0
    layout["xaxis2"].update(showticklabels=False, showgrid=False, zeroline=False,
                            range=[-0.5, shown.shape[1] - 0.5],
                            title={"text": "inputs" + (" (kh × kw cells)" if not linear else "")
                                   + (", bias last" if bias else "")})
    layout["xaxis3"]["title"] = {"text": "value"}
    layout["yaxis3"]["title"] = {"text": "density"}
    # cell borders (Wang & Li's grid of kh x kw cells) while they stay a few pixels apart
    lines: list[tuple[float, float, float, float]] = []
    n_in = (shown.shape[1] - bias) // kw if blocks and kw >= 1 else 0
    if blocks and kh > 1 and len(drawn) <= MAX_CELL_BORDERS:
        lines += [(-0.5, shown.shape[1] - 0.5, p * kh - 0.5, p * kh - 0.5)
                  for p in range(1, len(drawn))]
    if blocks and kw > 1 and n_in <= MAX_CELL_BORDERS and n_in * kw + bias == shown.shape[1]:
        lines += [(j * kw - 0.5, j * kw - 0.5, -0.5, height - 0.5) for j in range(1, n_in)]
    if bias:
        x = shown.shape[1] - 1.5
        lines.append((x, x, -0.5, height - 0.5))
    if lines:
        color = "#344054" if linear else "#53b1fd"
        layout["shapes"] = [{"type": "line", "xref": "x2", "yref": "y2", "x0": x0, "x1": x1,
                             "y0": y0, "y1": y1, "line": {"color": color, "width": 1.5}}
                            for x0, x1, y0, y1 in lines]
    grid_title = (("outputs' dendrogram and weights, rows in leaf order" if icoord
                   else "weights, one row per output")
                  + (" (raw)" if linear else " (each cell scaled to 0–1)"))
    tree_and_grid = {"xaxis": {"domain": [axes["x"][0], axes["x2"][1]]},
                     "yaxis": {"domain": axes["y2"]}, "xaxis2": layout["xaxis3"],
                     "yaxis2": layout["yaxis3"]}
    layout["annotations"] = theme.title_annotations(
        tree_and_grid, [grid_title, "KDE of each output's weights"], size=12)
    heat = {"type": "heatmap", "z": shown, "showscale": False, "hoverongaps": False,
            "hovertemplate": "value %{z:.3g}<extra></extra>", "xaxis": "x2", "yaxis": "y2"}
    if linear:
        heat.update(colorscale=theme.colorscale("RdBu"), zmid=0)
    else:
        heat["colorscale"] = theme.colorscale("Greys")
    data = [heat] + _row_dendrogram(icoord, dcoord, max(kh, 1), "x", "y")
    data += _kde(kde_grid, dens, [labels[i] for i in pick], "x3", "y3")
    layout["meta"] = {"kind": "diagnosis_params", "layer": view.get("name", ""),
                      "rows": drawn, "tree": bool(icoord), "links": len(icoord),
                      "cell": [kh, kw], "capped": notes}
    return theme.trusted_figure(data, layout)
