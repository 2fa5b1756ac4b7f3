"""What units prefer: optimised inputs, top dataset crops, and live channel grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from . import theme
from .images import to_rgb

__all__ = ["preferred_grid", "unit_pane", "channel_grid"]


def _image_grid(cells: Sequence[tuple[np.ndarray, str, str | None]], rows: int, cols: int, *,
                vertical_spacing: float, height: int, meta: dict,
                hover: Sequence[str] | None = None) -> go.Figure:
    """Images ``(image [C, H, W], title, trace name)`` in a ``rows`` x ``cols`` grid without
    ticks, titled in 9 px (``hover``: a hover label per cell, which also lets a cell be
    clicked; else no hover and no events), built from plain dicts in one step without plotly's per-property
    validation (:func:`~convscope.figures.theme.trusted_figure`; the values are given in the
    validated form): what ``make_subplots`` and per-cell updates give, at a fraction of the
    cost (the Model page's layer panel draws up to four such figures per click)."""
    axes = theme.grid(rows, cols, horizontal_spacing=0.01, vertical_spacing=vertical_spacing)
    for ax in axes.values():
        ax.update(showticklabels=False, showgrid=False, zeroline=False)
    data = []
    for i, (image, _, name) in enumerate(cells):
        xa, ya = theme.axis_ref(i + 1)
        trace = {"type": "image", "z": to_rgb(image), "xaxis": xa, "yaxis": ya}
        if hover is None:
            trace["hoverinfo"] = "skip"
        else:
            trace["hovertemplate"] = hover[i] + "<extra></extra>"
        if name:
            trace["name"] = name
        data.append(trace)
    layout = theme.layout(height=height)
    titles = theme.title_annotations(axes, [t for _, t, _ in cells], size=9)
    layout.update(axes, margin={"l": 5, "r": 5, "t": 30, "b": 5}, meta=meta)
    if titles:  # (validation drops an empty list; unvalidated, it is left out here)
        layout["annotations"] = titles
    return theme.trusted_figure(data, layout)


def preferred_grid(images: np.ndarray, units: Sequence[int], values: Sequence[float] | None = None,
                   columns: int = 8) -> go.Figure:
    """All optimised inputs of a layer ``[U, C, H, W]``, one cell per unit (hovering names the
    unit; a click event carries the cell's trace number, its index in ``units``)."""
    n = len(units)
    cols = min(columns, max(n, 1))
    rows = max(1, math.ceil(n / cols))
    titles = [f"{u}" + (f" ({values[i]:.2g})" if values is not None else "")
              for i, u in enumerate(units)]
    cells = [(images[i], titles[i], f"unit {units[i]}") for i in range(n)]
    return _image_grid(cells, rows, cols, vertical_spacing=0.06, height=40 + rows * 110,
                       meta={"kind": "preferred_grid", "units": [int(u) for u in units]},
                       hover=[f"unit {u}: click to pick it" for u in units])


def unit_pane(unit: int, preferred: np.ndarray | None, crops: np.ndarray | None,
              values: Sequence[float] | None = None) -> go.Figure:
    """The toolbox's right-hand pane: the unit's optimised input beside its top-k crops."""
    k = 0 if crops is None else crops.shape[0]
    cells = [(preferred, "optimised", None)] if preferred is not None else []
    cells += [(crops[i], f"#{i + 1}" + (f" {values[i]:.2g}" if values is not None else ""), None)
              for i in range(k)]
    return _image_grid(cells, 1, max(len(cells), 1), vertical_spacing=0.0, height=150,
                       meta={"kind": "unit_pane", "unit": int(unit), "k": int(k),
                             "has_preferred": preferred is not None})


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
