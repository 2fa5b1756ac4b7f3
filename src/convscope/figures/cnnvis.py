"""CNNVis (Liu et al. 2017) figures: a layer's channel clusters as cards, the cluster x cluster
influence matrix, and the chain of layers as columns of cluster boxes with the edges between
adjacent columns bundled through the hubs of their biclusters.

Torch-free: the page hands in arrays (cluster sizes, the biclusters and edges of each gap);
:func:`chain_layout` places the boxes so that each gap is drawn as the two-line drawing whose
crossings the page counts (every curve in a half-gap follows the same easing, so two curves
cross exactly when their ends swap order: the count is the drawing's).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from . import theme
from .features import _image_grid
from .images import colormap_lut, png_data_uri, to_rgb

__all__ = ["ChainGap", "chain_layout", "chain_figure", "cluster_cards", "cluster_matrix",
           "pattern_image"]

#: x units between two columns of the chain, and the half-width of a cluster box
COLUMN_GAP = 1.0
BOX_HALF = 0.14


@dataclass
class ChainGap:
    """The edges between two adjacent layers' clusters (one :class:`Bundling` of the analysis,
    as arrays): ``edges [E, 2]`` (source cluster, target cluster), ``weights [E]``, ``bundled
    [E]``, the bicluster of each source / target cluster, and the pair's own positions (used
    for the first gap) and hubs."""

    edges: np.ndarray
    weights: np.ndarray
    bundled: np.ndarray
    row_labels: np.ndarray
    col_labels: np.ndarray
    row_pos: np.ndarray
    col_pos: np.ndarray
    hub_pos: np.ndarray

    @property
    def n_bundles(self) -> int:
        return int(len(self.hub_pos))


def chain_layout(n_clusters: Sequence[int], gaps: Sequence[ChainGap]
                 ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Positions in ``(0, 1)`` of every layer's clusters and of every gap's hubs.

    The first gap keeps its bundling's own layout. Each later gap has its sources fixed (the
    previous gap placed them), so its targets are placed by the rank of their bicluster (the
    mean position of the bicluster's sources) and then by their barycentre (the weighted mean
    position of the sources feeding them); a hub sits between the means of its sources and
    targets, as in :func:`convscope.model.cnnvis.bundle_edges`."""
    n = len(n_clusters)
    if len(gaps) != max(n - 1, 0):
        raise ValueError("a chain of n layers has n - 1 gaps")
    if n == 1:
        k = int(n_clusters[0])
        return [(np.arange(k) + 0.5) / k], []
    pos: list[np.ndarray] = [np.asarray(gaps[0].row_pos, float),
                             np.asarray(gaps[0].col_pos, float)]
    hubs: list[np.ndarray] = [np.asarray(gaps[0].hub_pos, float)]
    for g in range(1, n - 1):
        gap = gaps[g]
        src = pos[g]
        kt = int(n_clusters[g + 1])
        rl, cl = np.asarray(gap.row_labels), np.asarray(gap.col_labels)
        e = np.asarray(gap.edges, dtype=np.int64).reshape(-1, 2)
        w = np.asarray(gap.weights, float).reshape(-1)
        num = np.bincount(e[:, 1], weights=w * src[e[:, 0]], minlength=kt)
        den = np.bincount(e[:, 1], weights=w, minlength=kt)
        bary = np.where(den > 0, num / np.where(den > 0, den, 1), np.asarray(gap.col_pos))
        nb = gap.n_bundles
        key = np.array([src[rl == b].mean() if (rl == b).any() else
                        bary[cl == b].mean() if (cl == b).any() else 0.5 for b in range(nb)])
        rank = np.argsort(np.argsort(key, kind="stable"), kind="stable")
        order = np.lexsort((np.arange(kt), bary, rank[cl]))
        tgt = np.empty(kt)
        tgt[order] = (np.arange(kt) + 0.5) / kt
        hub = np.zeros(nb)
        for b in range(nb):
            parts = [x.mean() for x in (src[rl == b], tgt[cl == b]) if len(x)]
            hub[b] = float(np.mean(parts)) if parts else (rank[b] + 0.5) / nb
        hubs.append(hub + 1e-7 * (np.arange(nb) + math.pi) / max(nb, 1))
        pos.append(tgt)
    return pos, hubs


def _ease(x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> tuple[list, list]:
    t = np.linspace(0.0, 1.0, steps)
    s = 3 * t**2 - 2 * t**3
    return (x0 + (x1 - x0) * t).tolist() + [None], (y0 + (y1 - y0) * s).tolist() + [None]


def _y(p: float) -> float:
    return 1.0 - float(p)  # position 0 at the top


def chain_figure(layers: Sequence[str], sizes: Sequence[Sequence[int]],
                 representatives: Sequence[Sequence[int]], gaps: Sequence[ChainGap],
                 crossings: Sequence[dict], *, selected: str | None = None,
                 thumbs: Sequence[Sequence[np.ndarray | None]] | None = None) -> go.Figure:
    """The chain of layers as columns of cluster boxes (height by size), the kept edges of
    each gap bundled through the hubs of their biclusters (one colour per bundle, width by
    the bundle's influence), the remaining edges thin and grey; a legend entry shows every edge
    drawn straight instead. ``crossings``: per gap ``{"plain": .., "bundled": .., ...}``, written
    under the gap. ``thumbs``: per layer and cluster an image ``[C, h, w]`` drawn in the box."""
    n = len(layers)
    ks = [len(s) for s in sizes]
    pos, hubs = chain_layout(ks, gaps)
    data: list[dict] = []
    shapes: list[dict] = []
    annotations: list[dict] = []
    images: list[dict] = []
    legend_seen: set[str] = set()
    for g, gap in enumerate(gaps):
        x0 = g * COLUMN_GAP + BOX_HALF
        x1 = (g + 1) * COLUMN_GAP - BOX_HALF
        xm = (x0 + x1) / 2
        src, tgt, hub = pos[g], pos[g + 1], hubs[g]
        e = np.asarray(gap.edges, dtype=np.int64).reshape(-1, 2)
        bd = np.asarray(gap.bundled, dtype=bool)
        w = np.asarray(gap.weights, float)
        rl = np.asarray(gap.row_labels)
        # a bundle's width: its summed influence, relative to the gap's strongest bundle
        totals = [float(w[bd & (rl[e[:, 0]] == b)].sum()) for b in range(gap.n_bundles)]
        tmax = max(totals + [1e-30])
        for b in range(gap.n_bundles):
            sel = bd & (rl[e[:, 0]] == b)
            if not sel.any():
                continue
            xs: list = []
            ys: list = []
            for s in np.unique(e[sel, 0]):
                a, c = _ease(x0, _y(src[s]), xm, _y(hub[b]))
                xs += a
                ys += c
            for t in np.unique(e[sel, 1]):
                a, c = _ease(xm, _y(hub[b]), x1, _y(tgt[t]))
                xs += a
                ys += c
            width = 1.5 + 4.5 * totals[b] / tmax
            data.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys,
                         "line": {"color": theme.color(b), "width": width},
                         "opacity": 0.75, "hoverinfo": "text",
                         "text": f"bundle {b + 1}: {int(sel.sum())} edges",
                         "name": "bundled edges", "legendgroup": "bundled",
                         "showlegend": "bundled" not in legend_seen})
            legend_seen.add("bundled")
        xs, ys = [], []
        for i, j in e[~bd]:
            ym = (_y(src[i]) + _y(tgt[j])) / 2
            a, c = _ease(x0, _y(src[i]), xm, ym)
            xs += a
            ys += c
            a, c = _ease(xm, ym, x1, _y(tgt[j]))
            xs += a
            ys += c
        if xs:
            data.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys,
                         "line": {"color": "#9aa0a6", "width": 1, "dash": "dot"},
                         "hoverinfo": "skip", "name": "edges outside the bundles",
                         "legendgroup": "loose", "showlegend": "loose" not in legend_seen})
            legend_seen.add("loose")
        xs, ys = [], []
        for i, j in e:
            xs += [x0, x1, None]
            ys += [_y(src[i]), _y(tgt[j]), None]
        if xs:
            data.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys,
                         "line": {"color": "#5f6368", "width": 1}, "hoverinfo": "skip",
                         "name": "every edge straight (plain)", "legendgroup": "plain",
                         "visible": "legendonly", "showlegend": "plain" not in legend_seen})
            legend_seen.add("plain")
        used = [b for b in range(gap.n_bundles) if (bd & (rl[e[:, 0]] == b)).any()]
        if used:  # the hubs of the bundles drawn
            data.append({"type": "scatter", "mode": "markers", "x": [xm] * len(used),
                         "y": [_y(hub[b]) for b in used], "hoverinfo": "skip",
                         "showlegend": False, "marker": {"symbol": "diamond", "size": 7,
                                                         "color": [theme.color(b) for b in used]}})
        cr = crossings[g] if g < len(crossings) else {}
        if cr:
            annotations.append({
                "x": xm, "y": -0.06, "xref": "x", "yref": "y", "showarrow": False,
                "yanchor": "top", "font": {"size": 11},
                "text": f"crossings<br>plain {cr.get('plain')} → bundled "
                        f"<b>{cr.get('bundled')}</b>"})
    hover_x, hover_y, hover_t = [], [], []
    for li in range(n):
        k = ks[li]
        x = li * COLUMN_GAP
        smax = max(max(sizes[li]), 1)
        slot = 1.0 / max(k, 1)
        chosen = layers[li] == selected
        for j in range(k):
            yc = _y(pos[li][j])
            h = slot * (0.35 + 0.5 * math.sqrt(sizes[li][j] / smax))
            shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": x - BOX_HALF,
                           "x1": x + BOX_HALF, "y0": yc - h / 2, "y1": yc + h / 2,
                           "line": {"color": "#b42318" if chosen else "#3c4043",
                                    "width": 2 if chosen else 1},
                           "fillcolor": "#fff4e5" if chosen else "#f1f3f4", "layer": "below"})
            img = thumbs[li][j] if thumbs is not None and j < len(thumbs[li]) else None
            if img is not None:
                images.append({"source": png_data_uri(to_rgb(img)), "xref": "x", "yref": "y",
                               "x": x - BOX_HALF + 0.005, "y": yc + h / 2 - 0.004,
                               "sizex": min(h * 0.9, BOX_HALF), "sizey": h * 0.9, "xanchor": "left",
                               "yanchor": "top", "sizing": "contain", "layer": "above"})
            annotations.append({"x": x + BOX_HALF - 0.01, "y": yc, "xref": "x", "yref": "y",
                                "text": f"#{j + 1}·{sizes[li][j]}", "showarrow": False,
                                "xanchor": "right", "font": {"size": 10}})
            hover_x.append(x)
            hover_y.append(yc)
            hover_t.append(f"{layers[li]}<br>cluster {j + 1}: {sizes[li][j]} channels<br>"
                           f"representative: channel {representatives[li][j]}")
        annotations.append({"x": x, "y": 1.02, "xref": "x", "yref": "y", "showarrow": False,
                            "yanchor": "bottom", "font": {"size": 11,
                                                          "color": "#b42318" if chosen else None},
                            "text": f"<b>{layers[li]}</b><br>{sum(sizes[li])} ch · {k} clusters"})
    data.append({"type": "scatter", "mode": "markers", "x": hover_x, "y": hover_y,
                 "text": hover_t, "hoverinfo": "text", "showlegend": False,
                 "marker": {"size": 18, "opacity": 0}})
    kmax = max(ks + [1])
    layout = theme.layout(height=int(min(760, max(360, 150 + 46 * kmax))))
    layout.update(
        xaxis={"visible": False, "range": [-0.35, (n - 1) * COLUMN_GAP + 0.35],
               "fixedrange": True},
        yaxis={"visible": False, "range": [-0.2, 1.16], "fixedrange": True},
        shapes=shapes, annotations=annotations, images=images,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0},
        meta={"kind": "cnnvis_chain", "layers": list(layers), "clusters": ks,
              "sizes": [[int(v) for v in s] for s in sizes],
              "selected": selected, "crossings": [dict(c) for c in crossings],
              "bundles": [g.n_bundles for g in gaps],
              "edges": [int(len(g.edges)) for g in gaps]})
    return theme.figure(data, layout)


def pattern_image(pattern: np.ndarray) -> np.ndarray:
    """A descriptor ``[D]`` (a channel's response per image or class) as a small coloured
    square ``[3, s, s]`` (viridis, min-max scaled, row by row; unused cells dark)."""
    p = np.asarray(pattern, dtype=np.float32).reshape(-1)
    side = max(1, math.ceil(math.sqrt(len(p))))
    lo, hi = float(p.min()), float(p.max())
    scaled = (p - lo) / (hi - lo if hi > lo else 1.0)
    grid = np.full(side * side, -1.0, dtype=np.float32)
    grid[: len(p)] = scaled
    lut = colormap_lut("Viridis")
    rgb = lut[(np.clip(grid, 0, 1) * (len(lut) - 1)).round().astype(np.int64)].astype(np.float32)
    rgb[grid < 0] = 40.0
    return rgb.reshape(side, side, 3).transpose(2, 0, 1) / 255.0


def cluster_cards(images: Sequence[np.ndarray], sizes: Sequence[int],
                  representatives: Sequence[int], kinds: Sequence[str], *, layer: str,
                  columns: int = 4) -> go.Figure:
    """One card per cluster: its representative image (a member's preferred input, its top
    example, or its response pattern: ``kinds``), titled with the cluster, its size and the
    channel shown."""
    k = len(sizes)
    cols = min(columns, max(k, 1))
    rows = max(1, math.ceil(k / cols))
    short = {"preferred": "pref", "top": "top", "pattern": "pat"}
    cells = [(images[j], f"#{j + 1} · {sizes[j]} ch · {short.get(kinds[j], kinds[j])} "
              f"{representatives[j]}", f"cluster {j + 1}") for j in range(k)]
    return _image_grid(cells, rows, cols, vertical_spacing=0.08 if rows > 1 else 0.0,
                       height=30 + rows * 100,
                       meta={"kind": "cnnvis_clusters", "layer": layer, "k": int(k),
                             "sizes": [int(s) for s in sizes],
                             "representatives": [int(r) for r in representatives],
                             "sources": list(kinds)})


def cluster_matrix(cc: np.ndarray, row_order: Sequence[int], col_order: Sequence[int],
                   row_sizes: Sequence[int], col_sizes: Sequence[int], *, source: str,
                   target: str) -> go.Figure:
    """The cluster x cluster influence ``cc [K_src, K_tgt]`` with rows and columns in the given
    (bicluster) order; cells annotated with their share of the total."""
    ro, co = [int(i) for i in row_order], [int(j) for j in col_order]
    z = np.asarray(cc, dtype=np.float64)[np.ix_(ro, co)]
    total = float(z.sum()) or 1.0
    ylab = [f"#{i + 1} ({row_sizes[i]})" for i in ro]
    xlab = [f"#{j + 1} ({col_sizes[j]})" for j in co]
    text = [[f"{v / total:.0%}" for v in row] for row in z]
    data = [{"type": "heatmap", "z": z.tolist(), "x": xlab, "y": ylab, "text": text,
             "texttemplate": "%{text}", "colorscale": theme.colorscale("Blues"),
             "hovertemplate": "%{y} → %{x}<br>influence %{z:.3g}<extra></extra>",
             "showscale": False}]
    layout = theme.layout(height=int(min(520, 110 + 26 * len(ro))))
    layout.update(xaxis={"title": {"text": f"{target} clusters", "font": {"size": 11}},
                         "side": "top", "type": "category"},
                  yaxis={"autorange": "reversed", "type": "category", "automargin": True,
                         "title": {"text": f"{source} clusters", "font": {"size": 11}}},
                  margin={"l": 10, "r": 10, "t": 60, "b": 10}, font={"size": 10},
                  meta={"kind": "cnnvis_matrix", "source": source, "target": target,
                        "row_order": ro, "col_order": co})
    return theme.figure(data, layout)
