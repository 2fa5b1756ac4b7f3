"""One look for every convscope figure: colours, fonts, margins."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from ..errors import InputError

# Colour-blind-safe qualitative palette (Okabe-Ito, then Tableau for more series).
PALETTE = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
    "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1", "#76B7B2", "#EDC948", "#9C755F",
]
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def layout(*, height: int | None = None, title: str | None = None) -> dict:
    """convscope's layout defaults as a plain dict: merge a figure's own settings into it and
    build the figure once with :func:`figure` (one validation instead of one per update)."""
    out = {
        "template": "plotly_white",
        "font": {"family": FONT, "size": 12},
        "margin": {"l": 55, "r": 20, "t": 50 if title else 30, "b": 45},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
        "hoverlabel": {"namelength": -1},
    }
    if title:
        out["title"] = {"text": title, "x": 0.01, "font": {"size": 15}}
    if height:
        out["height"] = height
    return out


def apply(fig: go.Figure, *, height: int | None = None, title: str | None = None) -> go.Figure:
    """Apply convscope's layout defaults to ``fig`` in place and return it."""
    fig.update_layout(layout(height=height, title=title))
    return fig


def figure(data: list[dict], layout: dict) -> go.Figure:
    """A figure built in one validated step from plain trace and layout dicts.

    Each ``fig.update_*`` call or ``make_subplots`` re-walks plotly's property tree (a gallery
    of 70 cells took ~0.25 s that way); one construction from dicts validates everything once
    and gives the same figure. A registered template (``layout["template"]``, a name) is
    attached the way plotly attaches its default template: as the registered, already
    validated object, without a second validation (that alone cost ~10-20 ms per figure).
    """
    template = layout.get("template")
    if not (isinstance(template, str) and template in pio.templates):
        return go.Figure(data=data, layout=layout)
    fig = go.Figure(data=data, layout={k: v for k, v in layout.items() if k != "template"})
    lay = fig.layout
    validate = getattr(lay, "_validate", True)
    lay._validate = False  # as plotly's BaseFigure._initialize_layout_template does
    try:
        lay.template = pio.templates[template]
    finally:
        lay._validate = validate
    return fig


def trusted_figure(data: list[dict], layout: dict) -> go.Figure:
    """:func:`figure` without plotly's per-property validation, for builders that emit many
    traces of a fixed, known-valid shape (a KDE panel of 128 curves spent ~40 ms validating
    them). Values are kept as given, so give them in the form validation would produce (e.g.
    :func:`colorscale` for a named colorscale); a builder using this should be tested to give
    the same ``to_plotly_json()`` as a validated construction."""
    template = layout.get("template")
    named = isinstance(template, str) and template in pio.templates
    fig = go.Figure(data=data, layout={k: v for k, v in layout.items()
                                       if not (named and k == "template")}, _validate=False)
    if named:
        fig.layout.template = pio.templates[template]  # already validated, as in figure()
    return fig


_COLORSCALES: dict[str, list[list]] = {}


def colorscale(name: str) -> list[list]:
    """A named plotly colorscale (``"Viridis"``) as validation expands it: ``[[0.0, "#440154"],
    ..., [1.0, "#fde725"]]``."""
    if name not in _COLORSCALES:
        _COLORSCALES[name] = [list(p) for p in go.Heatmap(colorscale=name).colorscale]
    return [list(p) for p in _COLORSCALES[name]]


def axis_ref(n: int) -> tuple[str, str]:
    """The trace-side axis names (``xaxis=``, ``yaxis=``) of the ``n``-th subplot (1-based)."""
    return ("x", "y") if n == 1 else (f"x{n}", f"y{n}")


def grid(rows: int, cols: int, *, horizontal_spacing: float, vertical_spacing: float,
         shared_xaxes: bool = False) -> dict[str, dict]:
    """The axes of a ``rows`` x ``cols`` grid exactly as ``plotly.subplots.make_subplots``
    (start cell top-left) lays them out, as layout entries ``{"xaxis": {...}, "yaxis": {...},
    "xaxis2": ...}``. Cell ``(r, c)`` (0-based, row 0 at the top) is subplot number
    ``r * cols + c + 1``; :func:`axis_ref` names its axes for a trace, :func:`title_annotations`
    places titles over cells. ``shared_xaxes``: every column's axes follow its bottom cell's
    (``matches``), and only the bottom row keeps tick labels."""
    for name, n, spacing in (("horizontal", cols, horizontal_spacing),
                             ("vertical", rows, vertical_spacing)):
        if n > 1 and not 0 <= spacing <= 1 / (n - 1):
            raise InputError(f"{name}_spacing {spacing} does not fit {n} subplots: pass a "
                             f"value between 0 and {1 / (n - 1):.4g}.")
    # the same float expressions as make_subplots, so the domains are bit-identical
    width = (1.0 - horizontal_spacing * (cols - 1)) / cols
    height = (1.0 - vertical_spacing * (rows - 1)) / rows
    x0 = [sum([width] * c) + c * horizontal_spacing for c in range(cols)]
    y0 = [sum([height] * r) + r * vertical_spacing for r in range(rows)]
    out: dict[str, dict] = {}
    for r in range(rows):  # row 0 is the top one: make_subplots builds rows bottom-up
        ys, ye = y0[rows - 1 - r], y0[rows - 1 - r] + height
        ys = 0.0 if -0.01 < ys < 0.0 else ys
        ye = 1.0 if 1.0 < ye < 1.01 else ye
        for c in range(cols):
            n = r * cols + c + 1
            xa, ya = axis_ref(n)
            # clamped to [0, 1] as make_subplots clamps its axes (rounding can give an end of
            # 1.0000000000000002, e.g. 7 columns 0.01 apart, which plotly refuses)
            xaxis = {"anchor": ya, "domain": [max(0.0, x0[c]), min(1.0, x0[c] + width)]}
            if shared_xaxes and r < rows - 1:
                xaxis["matches"] = axis_ref((rows - 1) * cols + c + 1)[0]
                xaxis["showticklabels"] = False
            out["xaxis" if n == 1 else f"xaxis{n}"] = xaxis
            out["yaxis" if n == 1 else f"yaxis{n}"] = {"anchor": xa, "domain": [ys, ye]}
    return out


def title_annotations(axes: dict[str, dict], titles: list[str], *, size: int = 16
                      ) -> list[dict]:
    """make_subplots' subplot titles: ``titles[i]`` centred over subplot ``i + 1`` of ``axes``
    (from :func:`grid`); empty titles are skipped."""
    out = []
    for i, text in enumerate(titles):
        n = i + 1
        xaxis = axes.get("xaxis" if n == 1 else f"xaxis{n}")
        if not text or xaxis is None:
            continue
        yaxis = axes["yaxis" if n == 1 else f"yaxis{n}"]
        out.append({"y": yaxis["domain"][1], "xref": "paper", "x": sum(xaxis["domain"]) / 2.0,
                    "yref": "paper", "text": text, "showarrow": False, "font": {"size": size},
                    "xanchor": "center", "yanchor": "bottom"})
    return out
