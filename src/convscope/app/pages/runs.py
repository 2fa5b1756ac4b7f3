"""Runs: every run in the logdir with its creation time, size and contents.

Bounded per request: listing a run costs a walk of its files, so at most :data:`MAX_RUNS` runs
are listed (the most recently created, plus every selected run), with a note that says how
many the logdir holds.
"""

from __future__ import annotations

from pathlib import Path

from dash import Input, Output, html

from ...formats.catalog import TABLE_SOURCES
from ...store.layout import RUN_FILE, is_run_dir, read_json
from ...store.reader import RunInfo
from ..components import NOTICE, fmt_bytes, notice, page_header, survive
from . import Page

MAX_RUNS = 100  #: rows of the run table per answer (each costs a walk of the run's files)


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


def created_time(path: Path) -> float:
    """When the run was created (seconds since the epoch; run.json's mtime for runs without
    ``created_unix``, 0 when run.json is unreadable): cheap, for choosing the newest runs."""
    try:
        meta = read_json(path / RUN_FILE)
        if isinstance(meta, dict) and isinstance(meta.get("created_unix"), (int, float)):
            return float(meta["created_unix"])
        return (path / RUN_FILE).stat().st_mtime
    except (OSError, ValueError):
        return 0.0


def listed_runs(names: list[str], selected: set[str], paths: dict[str, Path],
                limit: int = MAX_RUNS) -> list[str]:
    """The runs to list, in ``names`` order: all of them when there are at most ``limit``;
    else the selected ones and the most recently created others, ``limit`` in all (more only
    when more than ``limit`` are selected)."""
    if len(names) <= limit:
        return list(names)
    keep = [n for n in names if n in selected]
    rest = sorted((n for n in names if n not in selected),
                  key=lambda n: (created_time(paths[n]), n), reverse=True)
    chosen = set(keep) | set(rest[: max(limit - len(keep), 0)])
    return [n for n in names if n in chosen]


def register(app, state) -> None:
    @app.callback(
        Output("runs-table", "children"),
        Input("refresh", "n_intervals"),
        Input("run-select", "value"),
    )
    @survive(NOTICE)
    def _table(_n, selected):
        names = state.run_names()
        selected = {s for s in (selected or []) if isinstance(s, str)}
        root = state.logdir
        single = is_run_dir(root)  # the logdir is itself a run
        paths = {n: root if single else root / n for n in names}
        shown = listed_runs(names, selected, paths)
        infos = []
        for name in shown:
            path = paths[name]
            try:
                info = RunInfo.of(path)  # names damaged parts and table entries (tables/...)
            except Exception as exc:  # e.g. an unreadable run directory
                info = RunInfo(name=name, path=path, status="damaged")
                info.problems.append(f"the run cannot be listed ({exc}): check its files.")
            infos.append(info)
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
        table = html.Table([head, html.Tbody(rows)], className="table runs")
        if len(shown) == len(names):
            return table
        note = notice(f"Showing {len(shown)} of {len(names)} runs in the logdir: the most "
                      "recently created ones and the selected ones. Select a run in the "
                      "selector above to list it here, or move old runs out of the logdir.",
                      "info")
        return html.Div([html.Div(note, id="runs-capped"), table])


PAGE = Page(
    path="/",
    title="Runs",
    layout=layout,
    register=register,
    description="the runs in the logdir",
)
