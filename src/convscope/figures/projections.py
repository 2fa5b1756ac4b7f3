"""DeconvNet projections beside their receptive-field crops (Zeiler & Fergus 2014, figure 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from . import theme
from .features import _image_grid

__all__ = ["stretch", "projection_pairs", "STRETCH_PERCENTILE"]

#: :func:`stretch` maps this percentile of a projection's absolute values to full contrast.
STRETCH_PERCENTILE = 99.0


def stretch(projection: np.ndarray, percentile: float = STRETCH_PERCENTILE) -> np.ndarray:
    """A signed projection ``[C, h, w]`` contrast-stretched for display, in [0, 1]: zero is
    mid-grey and ``percentile`` of the absolute values of its nonzero pixels is full contrast
    (``0.5 + 0.5 * x / s``, clipped), so a few strong pixels do not leave the rest grey. (Zeiler
    & Fergus show each projection contrast-normalised on its own.) An all-zero projection stays
    grey."""
    x = np.nan_to_num(np.asarray(projection, dtype=np.float32))
    mag = np.abs(x)
    nz = mag[mag > 0]
    if nz.size == 0:
        return np.full_like(x, 0.5)
    s = float(np.percentile(nz, percentile))
    s = s if s > 0 else float(nz.max())
    return np.clip(0.5 + 0.5 * x / s, 0.0, 1.0)


def projection_pairs(unit: int, projections: np.ndarray, crops: np.ndarray,
                     values: Sequence[float] | None = None,
                     indices: Sequence[int] | None = None, *, layer: str = "",
                     pairs_per_row: int = 3) -> go.Figure:
    """A unit's top-k activations: each projected back to pixels (left, contrast-stretched by
    :func:`stretch`) beside the image's receptive-field crop (right), ``pairs_per_row`` pairs a
    row, best first. ``projections`` and ``crops``: ``[n, C, h, w]``."""
    n = int(len(projections))
    if n == 0:
        fig = go.Figure()
        fig.add_annotation(text=f"unit {unit}: no images were ranked", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        fig.update_layout(height=120, meta={"kind": "projection_pairs", "unit": int(unit),
                                            "k": 0, "layer": layer})
        return theme.apply(fig, height=120)
    per_row = max(1, min(int(pairs_per_row), n))
    rows = math.ceil(n / per_row)
    cells: list[tuple[np.ndarray, str, str | None]] = []
    for i in range(n):
        value = f" {values[i]:.3g}" if values is not None else ""
        image = f" img {int(indices[i])}" if indices is not None else ""
        cells.append((stretch(projections[i]), f"#{i + 1} projection{value}",
                      f"projection {i + 1}"))
        cells.append((np.asarray(crops[i], dtype=np.float32), f"#{i + 1} crop{image}",
                      f"crop {i + 1}"))
    meta = {"kind": "projection_pairs", "unit": int(unit), "k": n, "layer": layer,
            "values": None if values is None else [float(v) for v in values],
            "indices": None if indices is None else [int(v) for v in indices],
            "stretch": f"0.5 + 0.5 x / p{STRETCH_PERCENTILE:g}(|x|)"}
    gap = min(0.3, 20 / (rows * 130)) if rows > 1 else 0.0  # room for a row's titles
    return _image_grid(cells, rows, 2 * per_row, vertical_spacing=gap, height=40 + rows * 130,
                       meta=meta)
