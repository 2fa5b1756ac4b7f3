"""Feature maps as a grid (rows = sample images, columns = channels), one channel zoomed, and the
sample images themselves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from . import theme

__all__ = ["mosaic", "feature_map_grid", "channel_zoom", "image_strip", "cell_at"]

GAP = 1  # pixels of gap between cells


def mosaic(maps: np.ndarray, order: Sequence[int] | None = None) -> tuple[np.ndarray, int, int]:
    """Tile ``maps [N, C, h, w]`` into one array ``[N*(h+1)-1, C*(w+1)-1]`` with NaN gaps.

    Each channel is scaled to [0, 1] over all images together (so images compare within a
    column). Returns (tiles, h, w).
    """
    maps = np.asarray(maps, dtype=np.float32)
    n, c, h, w = maps.shape
    if order is not None:
        maps = maps[:, list(order)]
    lo = np.nanmin(maps, axis=(0, 2, 3), keepdims=True)
    hi = np.nanmax(maps, axis=(0, 2, 3), keepdims=True)
    scaled = (maps - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    out = np.full((n * (h + GAP) - GAP, c * (w + GAP) - GAP), np.nan, dtype=np.float32)
    for i in range(n):
        for j in range(c):
            out[i * (h + GAP): i * (h + GAP) + h, j * (w + GAP): j * (w + GAP) + w] = scaled[i, j]
    return out, h, w


def cell_at(x: float, y: float, h: int, w: int) -> tuple[int, int]:
    """(image row, channel column) of the mosaic cell under pixel (x, y)."""
    return int(y) // (h + GAP), int(x) // (w + GAP)


def feature_map_grid(
    maps: np.ndarray,
    channels: Sequence[int],
    *,
    order: Sequence[int] | None = None,
    title: str = "",
    row_labels: Sequence[str] | None = None,
) -> go.Figure:
    """The grid of ``maps [N, C, h, w]``; ``channels`` are the original channel indices of the
    C stored columns; ``order`` a permutation of columns (e.g. by mean activation)."""
    n, c, h, w = np.asarray(maps).shape
    order = list(range(c)) if order is None else list(order)
    tiles, h, w = mosaic(maps, order)
    col_centres = [j * (w + GAP) + w / 2 for j in range(c)]
    row_centres = [i * (h + GAP) + h / 2 for i in range(n)]
    data = [{"type": "heatmap", "z": tiles, "colorscale": "Viridis", "showscale": False,
             "hoverongaps": False, "hovertemplate": "x %{x}, y %{y}<extra></extra>"}]
    cell_px = max(6, min(28, 900 // max(c, 1)))
    layout = theme.layout(height=int(90 + n * cell_px * (h + GAP) / max(w, 1)),
                          title=title or None)
    layout.update(
        xaxis={"tickvals": col_centres, "ticktext": [str(channels[k]) for k in order],
               "side": "top", "showgrid": False, "zeroline": False, "tickfont": {"size": 9},
               "title": {"text": "channel"}, "constrain": "domain"},
        yaxis={"tickvals": row_centres,
               "ticktext": list(row_labels) if row_labels else [f"img {i}" for i in range(n)],
               "autorange": "reversed", "showgrid": False, "zeroline": False,
               "scaleanchor": "x", "tickfont": {"size": 9}, "constrain": "domain"},
        margin={"l": 60, "r": 10, "t": 70 if title else 50, "b": 10},
        meta={"kind": "feature_map_grid", "h": h, "w": w, "n": n, "c": c, "order": order,
              "channels": [int(ch) for ch in channels]})
    return theme.figure(data, layout)


def channel_zoom(maps: np.ndarray, column: int, channel: int, *, image: int | None = None
                 ) -> go.Figure:
    """One channel large: every image side by side (or one ``image``), with a colour bar."""
    m = np.asarray(maps, dtype=np.float32)[:, column]
    if image is not None:
        m = m[image: image + 1]
    n, h, w = m.shape
    row = np.full((h, n * (w + GAP) - GAP), np.nan, dtype=np.float32)
    for i in range(n):
        row[:, i * (w + GAP): i * (w + GAP) + w] = m[i]
    data = [{"type": "heatmap", "z": row, "colorscale": "Viridis", "hoverongaps": False,
             "colorbar": {"thickness": 10}, "hovertemplate": "value %{z:.3g}<extra></extra>"}]
    label = f"channel {channel}" + (f", image {image}" if image is not None else ", all images")
    layout = theme.layout(height=260, title=label)
    layout.update(yaxis={"autorange": "reversed", "scaleanchor": "x", "showticklabels": False},
                  xaxis={"showticklabels": False},
                  meta={"kind": "channel_zoom", "channel": int(channel)})
    return theme.figure(data, layout)


def image_strip(images: np.ndarray, labels: Sequence[str] | None = None) -> go.Figure:
    """Sample images ``[N, C, H, W]`` (any range; each scaled to [0, 255]) in one row."""
    x = np.asarray(images, dtype=np.float32)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x[:, :3]
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    n, _, h, w = x.shape
    strip = np.full((h, n * (w + 2) - 2, 3), 255, dtype=np.uint8)
    for i in range(n):
        strip[:, i * (w + 2): i * (w + 2) + w] = (x[i].transpose(1, 2, 0) * 255).astype(np.uint8)
    xaxis = {"showticklabels": bool(labels), "side": "bottom",
             "tickvals": [i * (w + 2) + w / 2 for i in range(n)]}
    if labels:
        xaxis["ticktext"] = list(labels)
    layout = theme.layout(height=150)
    layout.update(xaxis=xaxis, yaxis={"showticklabels": False},
                  margin={"l": 10, "r": 10, "t": 10, "b": 30})
    return theme.figure([{"type": "image", "z": strip, "hoverinfo": "skip"}], layout)
