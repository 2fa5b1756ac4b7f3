"""One look for every convscope figure: colours, fonts, margins."""

from __future__ import annotations

import plotly.graph_objects as go

# Colour-blind-safe qualitative palette (Okabe-Ito, then Tableau for more series).
PALETTE = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F",
]
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def apply(fig: go.Figure, *, height: int | None = None, title: str | None = None) -> go.Figure:
    """Apply convscope's layout defaults to ``fig`` in place and return it."""
    fig.update_layout(
        template="plotly_white",
        font={"family": FONT, "size": 12},
        margin={"l": 55, "r": 20, "t": 50 if title else 30, "b": 45},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        hoverlabel={"namelength": -1},
    )
    if title:
        fig.update_layout(title={"text": title, "x": 0.01, "font": {"size": 15}})
    if height:
        fig.update_layout(height=height)
    return fig
