"""Seed 002's views of one layer: the dendrogram of channels (cosine distance, single linkage)
drawn above the grid of samples × channels in leaf order, and a KDE curve per channel."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme
from .maps import mosaic

__all__ = ["layer_view_figure", "param_view_figure", "SEVERITY_COLORS"]

SEVERITY_COLORS = {"error": "#b42318", "warning": "#b54708", "info": "#0072B2", "note": "#667085"}


def _dendrogram(fig: go.Figure, tree: dict[str, Any], cell: float, row: int) -> None:
    """scipy's dendrogram coordinates put leaf i at x = 10 i + 5; rescale to grid columns."""
    for xs, ys in zip(tree.get("icoord", []), tree.get("dcoord", []), strict=True):
        fig.add_trace(go.Scatter(
            x=[(x - 5) / 10 * cell + cell / 2 for x in xs], y=ys, mode="lines",
            line={"color": "#344054", "width": 1}, hoverinfo="skip", showlegend=False,
        ), row=row, col=1)
    fig.update_yaxes(title_text="cosine distance", range=[0, 2.05], row=row, col=1)


def _kde(fig: go.Figure, grid: np.ndarray, density: np.ndarray, labels: list[str], row: int,
         col: int = 1) -> None:
    for i in range(density.shape[0]):
        fig.add_trace(go.Scatter(
            x=grid, y=density[i], mode="lines", line={"width": 1, "color": theme.color(i)},
            name=labels[i], showlegend=False, opacity=0.7,
            hovertemplate=f"{labels[i]}<br>value %{{x:.3g}}<br>density %{{y:.3g}}<extra></extra>",
        ), row=row, col=col)
    fig.update_xaxes(title_text="value", row=row, col=col)
    fig.update_yaxes(title_text="density", row=row, col=col)


def layer_view_figure(view: dict[str, Any], data: np.ndarray, density: np.ndarray
                      ) -> go.Figure:
    """``view``: the stored ``diag_view`` object; ``data``: maps ``[b, c, h, w]`` or features
    ``[b, c]``; ``density``: ``[c, G]``."""
    leaves = list(view["clustering"].get("leaves") or range(data.shape[1]))
    channels = list(view["channels"])
    labels = [f"ch {channels[i]}" for i in range(len(channels))]
    fig = make_subplots(rows=3, cols=1, row_heights=[0.25, 0.5, 0.25], vertical_spacing=0.06,
                        subplot_titles=["dendrogram of channels (single linkage)",
                                        "samples × channels, in leaf order",
                                        "KDE of each channel's values"])
    if data.ndim == 4:
        tiles, h, w = mosaic(data, leaves)
        cell = w + 1
        fig.add_trace(go.Heatmap(z=tiles, colorscale="Viridis", showscale=False,
                                 hoverongaps=False, hoverinfo="skip"), row=2, col=1)
        fig.update_yaxes(autorange="reversed", showticklabels=False, row=2, col=1)
    else:
        z = data[:, leaves]
        cell = 1.0
        fig.add_trace(go.Heatmap(z=z, x=np.arange(len(leaves)) + 0.5, colorscale="RdBu",
                                 zmid=0, showscale=False,
                                 hovertemplate="sample %{y}<br>value %{z:.3g}<extra></extra>"),
                      row=2, col=1)
        fig.update_yaxes(autorange="reversed", title_text="sample", row=2, col=1)
    _dendrogram(fig, view["clustering"], cell, row=1)
    ticks = [i * cell + cell / 2 for i in range(len(leaves))]
    for r in (1, 2):
        fig.update_xaxes(tickvals=ticks, ticktext=[str(channels[i]) for i in leaves],
                         tickfont={"size": 8}, range=[0, len(leaves) * cell], row=r, col=1)
    _kde(fig, np.asarray(view["kde"]["grid"]), density, labels, row=3)
    theme.apply(fig, height=820, title=f"{view['name']}: {view['kind']} {view['shape']}")
    fig.update_layout(meta={"kind": "diagnosis_layer", "layer": view["name"],
                            "leaves": [int(channels[i]) for i in leaves]})
    return fig


def param_view_figure(view: dict[str, Any], grid: np.ndarray, density: np.ndarray
                      ) -> go.Figure:
    """The seed's parameter grid (c_in × c_out cells of kh × kw, bias as the last column; rows
    = outputs in leaf order) with the dendrogram of outputs and their weight KDEs."""
    rows = list(view.get("rows", range(density.shape[0])))
    labels = [f"out {r}" for r in rows]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.08,
                        subplot_titles=["weights (each cell scaled to 0–1; bias last column)",
                                        "KDE of each output's weights"])
    fig.add_trace(go.Heatmap(z=grid, colorscale="Greys", showscale=False, hoverongaps=False,
                             hovertemplate="value %{z:.3g}<extra></extra>"), row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    _kde(fig, np.asarray(view["kde"]["grid"]), density, labels, row=1, col=2)
    theme.apply(fig, height=420, title=f"{view.get('name', '')}: {view.get('kind', '')} "
                                       f"parameters {view.get('shape', '')}")
    return fig
