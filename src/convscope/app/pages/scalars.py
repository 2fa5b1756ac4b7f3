"""Scalars: line charts of logged numbers, several runs overlaid."""

from __future__ import annotations

from dash import Input, Output, dcc, html

from ...figures.scalars import X_AXES, scalar_figure
from ..components import graph, missing, no_runs_selected, page_header
from . import Page

MAX_POINTS = 2000


def layout() -> html.Div:
    return html.Div(
        [
            page_header("Scalars", "Logged numbers over steps or time; runs overlaid."),
            html.Div(
                [
                    html.Label(["Smoothing", dcc.Slider(
                        id="scalars-smoothing", min=0, max=0.99, step=0.01, value=0.6,
                        marks={0: "0", 0.5: "0.5", 0.9: "0.9", 0.99: "0.99"},
                        tooltip={"placement": "bottom"}, persistence=True,
                    )], className="control control-wide"),
                    html.Label(["Horizontal axis", dcc.RadioItems(
                        id="scalars-x",
                        options=[{"label": v, "value": k} for k, v in X_AXES.items()],
                        value="step", inline=True, persistence=True,
                    )], className="control"),
                    html.Label(["Tags", dcc.Dropdown(
                        id="scalars-tags", multi=True, placeholder="all tags",
                        persistence=True,
                    )], className="control control-wide"),
                ],
                className="controls",
            ),
            html.Div(id="scalars-status"),
            graph("scalars-graph", style={"display": "none"}),
        ]
    )


def register(app, state) -> None:
    @app.callback(
        Output("scalars-tags", "options"),
        Input("run-select", "value"),
        Input("refresh", "n_intervals"),
    )
    def _tags(selected, _n):
        tags = sorted({t for r in state.readers(selected) for t in r.scalar_tags()})
        return [{"label": t, "value": t} for t in tags]

    @app.callback(
        Output("scalars-graph", "figure"),
        Output("scalars-graph", "style"),
        Output("scalars-status", "children"),
        Input("run-select", "value"),
        Input("scalars-smoothing", "value"),
        Input("scalars-x", "value"),
        Input("scalars-tags", "value"),
        Input("refresh", "n_intervals"),
    )
    def _figure(selected, smoothing, x, tags, _n):
        readers = state.readers(selected)
        if not readers:
            return {}, {"display": "none"}, no_runs_selected()
        series: dict = {}
        downsampled = False
        lacking = []
        for r in readers:
            run_tags = r.scalar_tags()
            if not run_tags:
                lacking.append(r.name)
            for tag in run_tags:
                if tags and tag not in tags:
                    continue
                df = r.scalar_series(tag, max_points=MAX_POINTS)
                downsampled |= bool((df["vmin"] != df["vmax"]).any())
                series.setdefault(tag, {})[r.name] = df
        notes = []
        if lacking:
            notes.append(missing("scalars", "run.log_scalars(step, loss=..., acc=...)", lacking))
        if not series:
            return {}, {"display": "none"}, notes
        if downsampled:
            notes.append(html.Div(
                f"Long series are shown as the means of {MAX_POINTS} buckets.", className="muted"
            ))
        fig = scalar_figure(series, smoothing=float(smoothing or 0), x=x or "step")
        return fig, {"display": "block"}, notes


PAGE = Page(
    path="/scalars",
    title="Scalars",
    layout=layout,
    register=register,
    description="loss, accuracy and other logged numbers",
)
