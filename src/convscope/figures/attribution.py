"""The attribution gallery: rows = images, columns = the input and each method's map overlaid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
    """``images [B, C, H, W]``; ``maps`` ``{method: [B, H, W] in [0, 1]}``."""
    methods = [m for m in (methods or list(maps)) if m in maps]
    b = images.shape[0]
    cols = 1 + len(methods)
    titles = ["input"] + [METHOD_TITLES.get(m, m) for m in methods]
    fig = make_subplots(rows=b, cols=cols, column_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.01)
    lut = colormap_lut(colorscale)
    for i in range(b):
        rgb = to_rgb(images[i])
        fig.add_trace(go.Image(z=rgb, hoverinfo="skip", name="input"), row=i + 1, col=1)
        for j, m in enumerate(methods):
            fig.add_trace(go.Image(z=overlay(rgb, maps[m][i], opacity, lut), name=m,
                                   hovertemplate=f"{METHOD_TITLES.get(m, m)}<extra></extra>"),
                          row=i + 1, col=j + 2)
        if row_labels:
            fig.update_yaxes(title_text=row_labels[i], title_font={"size": 10}, row=i + 1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    cell = max(70, min(130, 1100 // cols))
    theme.apply(fig, height=60 + b * cell)
    fig.update_layout(margin={"l": 110 if row_labels else 10, "r": 10, "t": 40, "b": 10},
                      meta={"kind": "attribution_gallery", "methods": list(methods),
                            "opacity": float(opacity), "rows": int(b)})
    return fig
