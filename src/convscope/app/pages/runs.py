"""Runs: every run in the logdir with its creation time, size and contents."""

from __future__ import annotations

from dash import Input, Output, html

from ...store.reader import TABLE_SOURCES
from ..components import fmt_bytes, notice, page_header
from . import Page


def layout() -> html.Div:
    return html.Div(
        [
            page_header("Runs", "Every run in the logdir. Pick runs in the selector above."),
            html.Div(id="runs-table"),
        ]
    )


def _contents(info) -> list:
    chips = [
        html.Span(f"{t} ({n:,} rows)", className="chip", title=TABLE_SOURCES.get(t, t))
        for t, n in info.tables.items()
    ]
    chips += [html.Span(f"{k} (arrays)", className="chip chip-arrays") for k in info.array_kinds]
    return chips or [html.Span("empty", className="muted")]


def register(app, state) -> None:
    @app.callback(
        Output("runs-table", "children"),
        Input("refresh", "n_intervals"),
        Input("run-select", "value"),
    )
    def _table(_n, selected):
        infos = state.runs()
        if not infos:
            return notice(
                [
                    f"No runs in {state.logdir} yet. Create one with ",
                    html.Code("cs.Run(logdir=...)"),
                    " or run ",
                    html.Code("convscope demo"),
                    ".",
                ]
            )
        selected = set(selected or [])
        rows = []
        for info in reversed(infos):  # newest first
            status = info.status
            problems = html.Ul([html.Li(p) for p in info.problems], className="problems")
            rows.append(
                html.Tr(
                    [
                        html.Td(html.Span(info.name, className="run-name")),
                        html.Td(info.created.replace("T", " ")),
                        html.Td(status, className=f"status-{status}"),
                        html.Td(fmt_bytes(info.size_bytes), className="num"),
                        html.Td(_contents(info)),
                        html.Td(problems if info.problems else "", className="problems-cell"),
                    ],
                    className="selected" if info.name in selected else "",
                    **{"data-run": info.name},
                )
            )
        head = html.Thead(
            html.Tr(
                [
                    html.Th(h)
                    for h in ("run", "created", "status", "size", "contents", "problems")
                ]
            )
        )
        return html.Table([head, html.Tbody(rows)], className="table runs")


PAGE = Page(
    path="/",
    title="Runs",
    layout=layout,
    register=register,
    description="the runs in the logdir",
)
