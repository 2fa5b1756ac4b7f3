"""What units prefer: optimised inputs, top dataset crops, and live channel grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme
from .images import to_rgb

__all__ = ["preferred_grid", "unit_pane", "channel_grid"]


def preferred_grid(images: np.ndarray, units: Sequence[int], values: Sequence[float] | None = None,
                   columns: int = 8) -> go.Figure:
    """All optimised inputs of a layer ``[U, C, H, W]``, one cell per unit."""
    n = len(units)
    cols = min(columns, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    titles = [f"{u}" + (f" ({values[i]:.2g})" if values is not None else "")
              for i, u in enumerate(units)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06)
    for i in range(n):
        fig.add_trace(go.Image(z=to_rgb(images[i]), hoverinfo="skip", name=f"unit {units[i]}"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=9)
    theme.apply(fig, height=40 + rows * 110)
    fig.update_layout(margin={"l": 5, "r": 5, "t": 30, "b": 5},
                      meta={"kind": "preferred_grid", "units": [int(u) for u in units]})
    return fig


def unit_pane(unit: int, preferred: np.ndarray | None, crops: np.ndarray | None,
              values: Sequence[float] | None = None) -> go.Figure:
    """The toolbox's right-hand pane: the unit's optimised input beside its top-k crops."""
    k = 0 if crops is None else crops.shape[0]
    cols = (1 if preferred is not None else 0) + k
    titles = (["optimised"] if preferred is not None else []) + [
        f"#{i + 1}" + (f" {values[i]:.2g}" if values is not None else "") for i in range(k)]
    fig = make_subplots(rows=1, cols=max(cols, 1), subplot_titles=titles or [""],
                        horizontal_spacing=0.01)
    c = 1
    if preferred is not None:
        fig.add_trace(go.Image(z=to_rgb(preferred), hoverinfo="skip"), row=1, col=1)
        c = 2
    for i in range(k):
        fig.add_trace(go.Image(z=to_rgb(crops[i]), hoverinfo="skip"), row=1, col=c + i)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_annotations(font_size=9)
    theme.apply(fig, height=150)
    fig.update_layout(margin={"l": 5, "r": 5, "t": 30, "b": 5},
                      meta={"kind": "unit_pane", "unit": int(unit), "k": int(k),
                            "has_preferred": preferred is not None})
    return fig


def channel_grid(acts: np.ndarray, columns: int | None = None, title: str = "") -> go.Figure:
    """Every channel of one image's layer output ``[C, h, w]`` as a grid of grey maps (each
    scaled on its own), the deep-visualization toolbox's live view."""
    c, h, w = acts.shape
    cols = columns or max(1, math.ceil(math.sqrt(c)))
    rows = math.ceil(c / cols)
    tiles = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), np.nan, dtype=np.float32)
    for i in range(c):
        a = acts[i].astype(np.float32)
        lo, hi = float(a.min()), float(a.max())
        r, q = divmod(i, cols)
        tiles[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = (
            (a - lo) / (hi - lo) if hi > lo else 0.0)
    fig = go.Figure(go.Heatmap(z=tiles, colorscale="Greys_r", showscale=False, hoverongaps=False,
                               hovertemplate="%{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    theme.apply(fig, height=min(900, 80 + rows * max(h, 24) * 2), title=title or None)
    fig.update_layout(meta={"kind": "channel_grid", "channels": int(c), "h": int(h),
                            "w": int(w), "cols": int(cols)})
    return fig
