"""Per-layer resources as ring (barpolar) charts of each child's share, for drilling down from the
model to stages, blocks and leaves (Li et al.'s resource view)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from . import theme

__all__ = ["children_of", "resource_rings", "ring_colors", "ring_legend", "RING_METRICS",
           "ORDER_SCALE"]

RING_METRICS = {"memory_share": "memory", "time_share": "time"}
#: The colours of more children than the palette holds: execution order, first to last.
ORDER_SCALE = "Viridis"


def ring_colors(n: int) -> list[str]:
    """The colour of each of ``n`` children, in execution order: one palette colour each while
    they fit (every colour names one child), else a sequential scale from the first child to
    the last (the colour then tells the position in execution order)."""
    if n <= len(theme.PALETTE):
        return [theme.color(i) for i in range(n)]
    return sample_colorscale(ORDER_SCALE, [i / (n - 1) for i in range(n)], colortype="rgb")


def ring_legend(profile: pd.DataFrame, parent: str = "") -> dict:
    """What the ring colours mean: ``{"parent", "by": "child" | "order", "scale", "items":
    [{"name", "type", "color", "memory_share", "time_share"}, ...]}``, items in execution
    order with the colours :func:`resource_rings` draws."""
    kids = children_of(profile, parent)
    colors = ring_colors(len(kids))
    items = [{"name": str(name), "type": str(typ),
              "color": col, "memory_share": float(mem), "time_share": float(tim)}
             for name, typ, mem, tim, col in zip(kids["name"], kids["type"],
                                                 kids["memory_share"], kids["time_share"],
                                                 colors, strict=True)]
    return {"parent": parent, "by": "child" if len(kids) <= len(theme.PALETTE) else "order",
            "scale": ORDER_SCALE, "items": items}


def children_of(profile: pd.DataFrame, parent: str) -> pd.DataFrame:
    """Rows of ``profile`` whose parent module is ``parent`` (``""`` = the model's children)."""
    par = profile["parent"].fillna("\x00")  # the model row has no parent
    return profile[(par == parent) & (profile["name"] != parent)]


def resource_rings(profile: pd.DataFrame, parent: str = "") -> go.Figure:
    """Two rings, memory and time: one bar per child of ``parent``, its share of the whole
    model (leaf totals), clockwise from the top in execution order, the same colour for the
    same child in both rings (:func:`ring_colors`; :func:`ring_legend` says which). Hover
    shows bytes and seconds."""
    kids = children_of(profile, parent)
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "polar"}, {"type": "polar"}]],
                        subplot_titles=["memory share", "time share (forward + backward)"])
    n = max(len(kids), 1)
    width = 360.0 / n
    colors = ring_colors(len(kids))
    for col, (metric, label) in enumerate(RING_METRICS.items(), start=1):
        fig.add_trace(go.Barpolar(
            r=kids[metric].tolist(),
            theta=[i * width for i in range(len(kids))],
            width=[width * 0.92] * len(kids),
            marker={"color": colors,
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
                            "names": kids["name"].tolist(), "colors": colors})
    return fig
