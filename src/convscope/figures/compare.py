"""Figures of the Compare page: the layer x layer CKA heatmap (Kornblith et al. 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from ..errors import InputError
from . import theme

__all__ = ["cka_figure"]


def cka_figure(matrix: np.ndarray, layers_a: Sequence[str], layers_b: Sequence[str],
               label_a: str = "A", label_b: str = "B", *, title: str | None = None) -> go.Figure:
    """Heatmap of a CKA matrix ``[len(layers_a), len(layers_b)]``: rows the layers of
    ``label_a`` (first layer at the top), columns those of ``label_b``; colour 0 to 1, each
    cell's value on hover. The height follows the number of rows and every layer is named on
    both axes, so the labels stay legible (at least ~22 px a row up to 60 rows)."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (len(layers_a), len(layers_b)):
        raise InputError(f"the CKA matrix is {list(m.shape)} for {len(layers_a)} x "
                         f"{len(layers_b)} layers.")
    rows = len(layers_a)
    # every layer named on both axes (plotly would thin category ticks): at least ~22 px a row
    lay = theme.layout(height=int(min(1600, max(420, 170 + 24 * rows))), title=title)
    lay.update({
        "xaxis": {"title": {"text": f"layer of {label_b}"}, "tickangle": -45,
                  "automargin": True, "type": "category", "tickmode": "array",
                  "tickvals": list(layers_b), "ticktext": list(layers_b)},
        "yaxis": {"title": {"text": f"layer of {label_a}"}, "autorange": "reversed",
                  "automargin": True, "type": "category", "tickmode": "array",
                  "tickvals": list(layers_a), "ticktext": list(layers_a)},
        "meta": {"kind": "cka", "rows": list(layers_a), "cols": list(layers_b)},
    })
    trace = {"type": "heatmap", "z": np.round(m, 4).tolist(), "x": list(layers_b),
             "y": list(layers_a), "zmin": 0.0, "zmax": 1.0, "colorscale": "Viridis",
             "colorbar": {"title": {"text": "CKA"}},
             "hovertemplate": f"{label_a} %{{y}}<br>{label_b} %{{x}}<br>CKA %{{z:.3f}}"
                              "<extra></extra>"}
    return theme.figure([trace], lay)
