"""The 3-D PCA projection of features, coloured by class (Li et al.'s embedding view)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from . import theme

__all__ = ["embedding_figure"]


def embedding_figure(
    df: pd.DataFrame,
    *,
    class_names: Sequence[str] | None = None,
    explained: Sequence[float] | None = None,
    title: str = "",
    height: int | None = 640,
) -> go.Figure:
    """Scatter3d of ``df`` (columns idx, pc1, pc2, pc3, label), one trace per class; each point's
    ``customdata`` is its item index (for hover thumbnails). ``height``: in pixels, or None to
    fill the element it is drawn in (the dashboard gives it most of the window)."""
    fig = go.Figure()
    labels = sorted(df["label"].unique())
    for i, lab in enumerate(labels):
        part = df[df["label"] == lab]
        name = (class_names[lab] if class_names is not None and 0 <= lab < len(class_names)
                else ("unlabelled" if lab < 0 else f"class {lab}"))
        z = part["pc3"] if "pc3" in part else [0.0] * len(part)
        fig.add_trace(go.Scatter3d(
            x=part["pc1"], y=part["pc2"], z=z, mode="markers", name=name,
            marker={"size": 2.5, "color": theme.color(i), "opacity": 0.8},
            customdata=part["idx"], meta={"label": int(lab)},
            hovertemplate=f"{name}<br>item %{{customdata}}<extra></extra>",
        ))
    ax = [f"PC{j + 1}" + (f" ({explained[j]:.1%})" if explained and j < len(explained) else "")
          for j in range(3)]
    fig.update_layout(scene={"xaxis_title": ax[0], "yaxis_title": ax[1], "zaxis_title": ax[2],
                             "camera": {"eye": {"x": 1.45, "y": 1.45, "z": 1.0}},
                             "aspectmode": "cube"},
                      legend={"itemsizing": "constant"})
    theme.apply(fig, height=height, title=title or None)
    # yanchor "top": the theme's "bottom" put the legend above the plot, and plotly then
    # pushed the 3-D scene down by the legend's height (cut off at the bottom)
    fig.update_layout(legend={"orientation": "v", "x": 1.0, "y": 1.0, "xanchor": "right",
                              "yanchor": "top"},
                      uirevision="embedding", autosize=height is None,
                      meta={"kind": "embedding", "points": int(len(df))})
    return fig
