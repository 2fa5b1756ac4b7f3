"""Small building blocks shared by the pages (cards, notices, tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dash import dcc, html


def page_header(title: str, subtitle: str = "") -> html.Div:
    return html.Div(
        [html.H1(title, className="page-title"), html.P(subtitle, className="page-subtitle")],
        className="page-header",
    )


def missing(what: str, call: str, runs: Sequence[str] | None = None) -> html.Div:
    """A notice that names the call which records the missing data."""
    who = ", ".join(runs) if runs else "The selected runs"
    return html.Div(
        [
            html.Strong(f"{who}: no {what} recorded yet. "),
            html.Span("Record them with "),
            html.Code(call),
            html.Span("."),
        ],
        className="notice missing-data",
    )


def notice(text: Any, kind: str = "info") -> html.Div:
    return html.Div(text, className=f"notice notice-{kind}")


def no_runs_selected() -> html.Div:
    return notice("Select one or more runs in the run selector at the top of the page.")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def graph(id_: Any, config: dict[str, Any] | None = None, **kwargs: Any) -> dcc.Graph:
    """A dcc.Graph with convscope's plotly config (PNG export at 2x, no plotly logo)."""
    base = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    return dcc.Graph(id=id_, config={**base, **(config or {})}, **kwargs)


def run_picker(id_: str) -> html.Label:
    """A page-level chooser of one run among those selected in the header."""
    return html.Label(
        ["Run", dcc.Dropdown(id=id_, clearable=False, placeholder="a selected run")],
        className="control",
    )


def pick_run(state: Any, selected: Sequence[str] | None, current: str | None,
             has: Any) -> tuple[list[dict[str, str]], str | None, list[str]]:
    """Options and value of a run picker: the selected runs for which ``has(reader)`` is true.

    Returns (options, value, lacking) where ``lacking`` names selected runs without the data.
    """
    readers = state.readers(list(selected or []))
    ok = [r.name for r in readers if has(r)]
    lacking = [r.name for r in readers if r.name not in ok]
    value = current if current in ok else (ok[0] if ok else None)
    return [{"label": n, "value": n} for n in ok], value, lacking
