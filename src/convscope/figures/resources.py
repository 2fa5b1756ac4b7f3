"""Per-layer resources as ring (barpolar) charts of each child's share, for drilling down from the
model to stages, blocks and leaves (Li et al.'s resource view)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme

__all__ = ["children_of", "resource_rings", "RING_METRICS"]

RING_METRICS = {"memory_share": "memory", "time_share": "time"}


def children_of(profile: pd.DataFrame, parent: str) -> pd.DataFrame:
    """Rows of ``profile`` whose parent module is ``parent`` (``""`` = the model's children)."""
    par = profile["parent"].fillna("\x00")  # the model row has no parent
    return profile[(par == parent) & (profile["name"] != parent)]


def resource_rings(profile: pd.DataFrame, parent: str = "") -> go.Figure:
    """Two rings, memory and time: one bar per child of ``parent``, its share of the whole
    model (leaf totals), clockwise in execution order. Hover shows bytes and seconds."""
    kids = children_of(profile, parent)
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "polar"}, {"type": "polar"}]],
                        subplot_titles=["memory share", "time share (forward + backward)"])
    n = max(len(kids), 1)
    width = 360.0 / n
    for col, (metric, label) in enumerate(RING_METRICS.items(), start=1):
        fig.add_trace(go.Barpolar(
            r=kids[metric].tolist(),
            theta=[i * width for i in range(len(kids))],
            width=[width * 0.92] * len(kids),
            marker={"color": [theme.color(i) for i in range(len(kids))],
                    "line": {"color": "white", "width": 1}},
            customdata=list(zip(kids["name"], kids["type"], kids["memory_bytes"],
                                kids["time_s"], kids["level"], strict=True)),
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>"
                           f"{label} share %{{r:.1%}}<br>memory %{{customdata[2]:,}} B<br>"
                           "time %{customdata[3]:.3g} s<extra></extra>"),
            name=label, showlegend=False,
        ), row=1, col=col)
    polar = {"hole": 0.35, "angularaxis": {"showticklabels": False, "direction": "clockwise",
                                           "rotation": 90},
             "radialaxis": {"tickformat": ".0%", "angle": 90, "tickfont": {"size": 9}}}
    fig.update_layout(polar=polar, polar2=polar)
    theme.apply(fig, height=430)
    fig.update_layout(meta={"kind": "resource_rings", "parent": parent,
                            "names": kids["name"].tolist()})
    return fig
