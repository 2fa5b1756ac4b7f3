"""Scalars: line charts of logged numbers, several runs overlaid.

Bounded per request: at most :data:`MAX_RUNS` runs (the most recently created of the selected
ones), :data:`MAX_SERIES` (run, tag) series and :data:`TOTAL_POINTS` points in all (long series
are averaged into buckets in DuckDB); a note says what was left out and how to see it.
"""

from __future__ import annotations

from dash import Input, Output, dcc, html

from ...figures.scalars import X_AXES, scalar_figure
from ...formats import scalars as sc_format
from ..components import (
    NOTICE,
    Damage,
    graph,
    missing,
    no_runs_selected,
    page_header,
    survive,
)
from . import Page
from .runs import created_time

MAX_POINTS = 2000  #: points of one series, at most
MAX_TAGS = 50  #: series per run drawn, at most
MAX_RUNS = 10  #: runs overlaid per answer (the most recently created of the selected ones)
MAX_SERIES = 100  #: (run, tag) series per answer
TOTAL_POINTS = 10_000  #: points per answer, shared by the series (each gets at least MIN_POINTS)
MIN_POINTS = 50


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
    @survive([])
    def _tags(selected, _n):
        tags: set[str] = set()
        for r in drawn_runs(state, selected)[0]:
            with Damage().guard(r.name):  # the figure's callback names the damage
                tags.update(sc_format.tags(r))
        return [{"label": t, "value": t} for t in sorted(tags)]

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
    @survive({}, {"display": "none"}, NOTICE)
    def _figure(selected, smoothing, x, tags, _n):
        readers, n_selected = drawn_runs(state, selected)
        if not readers:
            return {}, {"display": "none"}, no_runs_selected()
        lacking = []
        dmg = Damage()
        wanted: dict[str, list[str]] = {}  # run -> its tags to draw
        capped: dict[str, int] = {}  # run -> its number of tags, where not all are drawn
        per_run = max(1, min(MAX_TAGS, MAX_SERIES // len(readers)))
        for r in readers:
            damaged = dmg.check(r, [sc_format.TABLE])
            run_tags: list[str] = []
            with dmg.guard(r.name, "scalars"):
                run_tags = sc_format.tags(r)
            if not run_tags and not damaged:
                lacking.append(r.name)
            if tags:
                run_tags = [t for t in run_tags if t in tags]
            if len(run_tags) > per_run:  # bounded response: pick tags to see the others
                capped[r.name] = len(run_tags)
                run_tags = run_tags[:per_run]
            wanted[r.name] = run_tags
        n_series = sum(len(v) for v in wanted.values())
        points = max(MIN_POINTS, min(MAX_POINTS, TOTAL_POINTS // max(n_series, 1)))
        series: dict = {}
        downsampled = False
        for r in readers:
            for tag in wanted[r.name]:
                with dmg.guard(r.name, f"scalar {tag!r}"):
                    df = sc_format.series(r, tag, max_points=points)
                    downsampled |= bool((df["vmin"] != df["vmax"]).any())
                    series.setdefault(tag, {})[r.name] = df
        notes = []
        if lacking:
            notes.append(missing("scalars", sc_format.SOURCE, lacking))
        if dmg:
            notes.append(dmg.notice())
        if not series:
            return {}, {"display": "none"}, notes
        if n_selected > len(readers):
            notes.append(html.Div(
                f"Showing {len(readers)} of {n_selected} selected runs (the most recently "
                f"created); select at most {MAX_RUNS} runs to compare others.",
                className="notice notice-info scalars-capped"))
        for run, n in capped.items():
            notes.append(html.Div(f"{run}: showing {per_run} of {n} tags; pick tags above to "
                                  "see others.", className="muted scalars-capped"))
        if downsampled:
            notes.append(html.Div(
                f"Long series are shown as the means of {points:,} buckets.", className="muted"
            ))
        fig = scalar_figure(series, smoothing=float(smoothing or 0), x=x or "step")
        return fig, {"display": "block"}, notes


def drawn_runs(state, selected) -> tuple[list, int]:
    """``(readers, n)``: the readers of the runs drawn, in selection order, and the number of
    selected runs found in the logdir. At most :data:`MAX_RUNS` runs are drawn: the most
    recently created ones (chosen from run.json, without opening the others)."""
    if not isinstance(selected, list):
        return [], 0
    known = set(state.run_names())
    names = list(dict.fromkeys(s for s in selected if isinstance(s, str) and s in known))
    n = len(names)
    if n > MAX_RUNS:
        root = state.logdir
        newest = sorted(names, key=lambda m: (created_time(root / m), m), reverse=True)
        keep = set(newest[:MAX_RUNS])
        names = [m for m in names if m in keep]
    return state.readers(names), n


PAGE = Page(
    path="/scalars",
    title="Scalars",
    layout=layout,
    register=register,
    description="loss, accuracy and other logged numbers",
)
