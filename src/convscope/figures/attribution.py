"""The attribution gallery: rows = images, columns = the input and each method's map overlaid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from . import theme
from .images import colormap_lut, overlay, to_rgb

__all__ = ["attribution_gallery", "METHOD_TITLES"]

METHOD_TITLES = {
    "saliency": "Saliency", "deconvnet": "DeconvNet", "guided_backprop": "Guided backprop",
    "cam": "CAM", "grad_cam": "Grad-CAM", "grad_cam_pp": "Grad-CAM++", "score_cam": "Score-CAM",
}


def attribution_gallery(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    methods: Sequence[str] | None = None,
    opacity: float = 0.5,
    row_labels: Sequence[str] | None = None,
    colorscale: str = "Jet",
) -> go.Figure:
    """``images [B, C, H, W]``; ``maps`` ``{method: [B, H, W] in [0, 1]}``.

    Built from plain dicts in one step (what ``make_subplots`` and per-cell updates would
    produce, at a tenth of the cost: this figure is drawn on every gallery page turn)."""
    methods = [m for m in (methods or list(maps)) if m in maps]
    b = images.shape[0]
    cols = 1 + len(methods)
    titles = ["input"] + [METHOD_TITLES.get(m, m) for m in methods]
    axes = theme.grid(b, cols, horizontal_spacing=0.01, vertical_spacing=0.01)
    for ax in axes.values():
        ax.update(showticklabels=False, showgrid=False, zeroline=False)
    lut = colormap_lut(colorscale)
    data = []
    for i in range(b):
        rgb = to_rgb(images[i])
        xa, ya = theme.axis_ref(i * cols + 1)
        data.append({"type": "image", "z": rgb, "hoverinfo": "skip", "name": "input",
                     "xaxis": xa, "yaxis": ya})
        for j, m in enumerate(methods):
            xa, ya = theme.axis_ref(i * cols + j + 2)
            data.append({"type": "image", "z": overlay(rgb, maps[m][i], opacity, lut),
                         "name": m, "hovertemplate": f"{METHOD_TITLES.get(m, m)}<extra></extra>",
                         "xaxis": xa, "yaxis": ya})
        if row_labels:
            axes["yaxis" if i == 0 else f"yaxis{i * cols + 1}"]["title"] = {
                "text": row_labels[i], "font": {"size": 10}}
    cell = max(70, min(130, 1100 // cols))
    layout = theme.layout(height=60 + b * cell)
    layout.update(axes, annotations=theme.title_annotations(axes, titles),
                  margin={"l": 110 if row_labels else 10, "r": 10, "t": 40, "b": 10},
                  meta={"kind": "attribution_gallery", "methods": list(methods),
                        "opacity": float(opacity), "rows": int(b)})
    return theme.figure(data, layout)
