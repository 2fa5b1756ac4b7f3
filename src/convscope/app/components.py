"""Small building blocks shared by the pages (cards, notices, tables); the frame and callbacks
every run page shares (:func:`picker_page`, :func:`register_run_picker`, :func:`register_choice`);
and the way pages survive damaged runs: :class:`Damage` collects the damaged files a page met (table parts from
``RunReader.problems``, unreadable table directories, a bad ``run.json``, and every
``StoreError`` raised while loading an array or object) and :func:`damage_notice` names them;
``with damage.guard(run):`` lets one damaged item drop out while the rest of a panel renders, and
:func:`survive` is every callback's last line of defence (a notice, never an HTTP 500).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from ..errors import ConvscopeError
from ..store.layout import RUN_FILE, TABLES_DIR, read_json

log = logging.getLogger("convscope.app")


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


def pick_run(state: Any, selected: Any, current: Any,
             has: Any) -> tuple[list[dict[str, str]], str | None, list[str]]:
    """Options and value of a run picker: the selected runs for which ``has(reader)`` is true.

    Returns (options, value, lacking) where ``lacking`` names selected runs without the data.
    ``selected`` is the header's run selector value as a request sent it: anything but a list
    of run names (capped by ``AppState.readers``) selects nothing.
    """
    return _pick(state.readers(selected), current, has)


def _pick(readers: Sequence[Any], current: Any, has: Any
          ) -> tuple[list[dict[str, str]], str | None, list[str]]:
    def ok_(r: Any) -> bool:
        try:
            return bool(has(r))
        except Exception:  # a damaged run: the page's notice names its files
            return False

    ok = [r.name for r in readers if ok_(r)]
    lacking = [r.name for r in readers if r.name not in ok]
    return [{"label": n, "value": n} for n in ok], keep_or_first(current, ok), lacking


# -- damaged runs -------------------------------------------------------------------------------
_PART_PROBLEM = re.compile(r"^(?P<file>\S+) is not a readable Parquet file \((?P<why>.*)\)$",
                           re.S)


def table_dir_problem(run_dir: Path, table: str) -> str | None:
    """Why ``tables/<table>`` of a run cannot be listed (a file, a dangling link, no
    permission), or None when it is a readable directory or absent."""
    d = Path(run_dir) / TABLES_DIR / table
    rel = f"{TABLES_DIR}/{table}"
    try:
        if d.is_symlink() and not d.exists():
            return f"{rel} is a dangling link (to {os.readlink(d)}): restore the table " \
                   "directory or remove the link."
        if not d.exists():
            return None
        if not d.is_dir():
            return f"{rel} is not a directory: restore the table directory from a backup " \
                   "or move the file away."
        with os.scandir(d) as it:
            next(it, None)
    except OSError as exc:
        return f"{rel} is unreadable ({exc.strerror or exc}): check its permissions."
    return None


def table_dir_problems(run_dir: Path) -> list[str]:
    """:func:`table_dir_problem` for every entry of the run's ``tables/`` directory."""
    root = Path(run_dir) / TABLES_DIR
    try:
        names = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{TABLES_DIR}/ is unreadable ({exc.strerror or exc}): check its permissions."]
    return [p for n in names if (p := table_dir_problem(run_dir, n))]


def table_problems(reader: Any, tables: Iterable[str]) -> dict[str, list[str]]:
    """``{table: [damaged file (reason), ...]}`` for the given tables of one run, files named
    relative to the run directory (only tables with damage appear)."""
    wanted = list(dict.fromkeys(tables))
    out: dict[str, list[str]] = {}
    try:
        problems = list(reader.problems)
    except Exception as exc:  # an unreadable tables/ directory
        problems = []
        log.debug("reader.problems failed", exc_info=exc)
    for p in problems:
        p = p.removeprefix(f"{TABLES_DIR}/")
        table = p.split("/", 1)[0]
        if table not in wanted:
            continue
        m = _PART_PROBLEM.match(p)
        text = (f"{TABLES_DIR}/{m['file']} ({m['why']})" if m else f"{TABLES_DIR}/{p}")
        out.setdefault(table, [])
        if text not in out[table]:
            out[table].append(text)
    for t in wanted:
        prob = table_dir_problem(reader.path, t)
        if prob:
            out.setdefault(t, []).append(prob)
    return out


def run_file_problem(reader: Any) -> str | None:
    """Why the run's ``run.json`` is unusable, or None."""
    try:
        meta = read_json(Path(reader.path) / RUN_FILE)
    except (OSError, ValueError) as exc:
        return f"{RUN_FILE} is unreadable ({exc}): the run's settings and class names are " \
               "unknown; restore run.json or record the run again."
    if not isinstance(meta, dict):
        return f"{RUN_FILE} is damaged (it holds a {type(meta).__name__}, not an object): " \
               "restore run.json or record the run again."
    return None


class Damage:
    """The damaged files one callback met, per run, in the order met."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, run: str, text: str) -> None:
        if (run, text) not in self.items:
            self.items.append((run, text))

    def runs(self) -> set[str]:
        return {r for r, _ in self.items}

    def check(self, reader: Any, tables: Iterable[str] = (), *, run_file: bool = True
              ) -> dict[str, list[str]]:
        """Record the damage of ``tables`` (and of ``run.json``) of one run; returns
        ``{table: [problems]}`` for the damaged tables."""
        found = table_problems(reader, tables)
        for table, probs in found.items():
            for p in probs:
                self.add(reader.name, f"{table} table is damaged: {p}")
        if run_file:
            prob = run_file_problem(reader)
            if prob:
                self.add(reader.name, prob)
        return found

    def load(self, reader: Any, tables: Iterable[str], has: Callable[[Any], Any],
             load: Callable[[], Any], what: str) -> Any:
        """``load()`` under :meth:`guard` after :meth:`check` of ``tables`` (and ``run.json``);
        None when it failed, and without trying when a table is damaged and ``has(reader)`` is
        false (nothing readable is left: the notice says why)."""
        if self.check(reader, tables) and not has(reader):
            return None
        with self.guard(reader.name, what):
            return load()
        return None

    @contextmanager
    def guard(self, run: str, what: str = "this view") -> Iterator[None]:
        """Run the block; a failure while loading drops the block and is recorded (a
        ``ConvscopeError`` by its own message, anything else as a failed view), so the rest
        of the callback still renders."""
        try:
            yield
        except PreventUpdate:
            raise
        except ConvscopeError as exc:
            self.add(run, str(exc))
        except Exception as exc:  # malformed but parseable data, or a bug: keep the page up
            log.error("dashboard: %s of run %s failed", what, run, exc_info=exc)
            self.add(run, _unexpected(what, exc))

    def notice(self) -> html.Div | None:
        return damage_notice(self.items)


def _unexpected(what: str, exc: BaseException) -> str:
    text = str(exc)
    if len(text) > 300:
        text = text[:300] + "…"
    return (f"could not show {what} ({type(exc).__name__}: {text}); the run's files may be "
            "damaged: record it again, or report a bug if they are intact (the server log "
            "has the traceback).")


def damage_notice(items: Sequence[tuple[str, str]] | Sequence[str]) -> html.Div | None:
    """A visible list of damaged files (``(run, text)`` pairs or plain texts); None if none."""
    if not items:
        return None
    lines = []
    for it in items:
        if isinstance(it, tuple):
            run, text = it
            lines.append(html.Li([html.Strong(f"{run}: "), text]))
        else:
            lines.append(html.Li(it))
    return html.Div(
        [html.Strong("Damaged files: shown without them. "), html.Ul(lines, className="problems")],
        className="notice notice-bad damage-notice",
    )


def damaged_table(what: str, problems: Sequence[str], run: str) -> html.Div:
    """Instead of "no X recorded yet" when the table's parts exist but are damaged."""
    return html.Div([html.Strong(f"{run}: {what} table is damaged: "),
                     html.Span("; ".join(problems))], className="notice notice-bad damage-notice")


def error_figure(texts: Sequence[str] | str, height: int = 160) -> go.Figure:
    """A figure that says, in place of a plot, which files are damaged."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    fig = go.Figure()
    fig.add_annotation(text="<br>".join(_wrap(t) for t in texts), showarrow=False, x=0.5,
                       y=0.5, xref="paper", yref="paper", font={"color": "#b42318", "size": 12})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      plot_bgcolor="white", paper_bgcolor="white",
                      meta={"kind": "damaged", "problems": texts})
    return fig


def _wrap(text: str, width: int = 110) -> str:
    words, lines, cur = text.split(" "), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    lines.append(cur)
    return "<br>".join(lines)


NOTICE = object()  #: :func:`survive` puts its damage notice in this output
FIGURE = object()  #: :func:`survive` puts an :func:`error_figure` in this output


def survive(*fallback: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A callback's last line of defence: if it raises (``PreventUpdate`` aside), answer
    ``fallback`` (one value per output) with :data:`NOTICE` / :data:`FIGURE` slots filled with
    what failed, instead of an HTTP 500. Apply it below ``@app.callback``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except PreventUpdate:
                raise
            except Exception as exc:
                if isinstance(exc, ConvscopeError):
                    text = str(exc)
                else:
                    log.error("dashboard callback %s failed", fn.__name__, exc_info=exc)
                    text = _unexpected("this view", exc)
                out = [damage_notice([text]) if v is NOTICE else error_figure(text)
                       if v is FIGURE else v for v in fallback]
                return out[0] if len(out) == 1 else tuple(out)

        return wrapper

    return deco


def picker_status(state: Any, selected: Any, current: Any, has: Any,
                  what: str, call: str, tables: Iterable[str] = ()
                  ) -> tuple[list[dict[str, str]], str | None, list[Any]]:
    """A page's run picker with its status: "no <what> recorded yet" for the selected runs that
    lack the data, and a notice naming the damaged files of ``tables`` (and ``run.json``). A run
    whose table is damaged is reported as damaged, never as lacking the data."""
    readers = state.readers(selected)  # once: cleaned and capped names, each looked up once
    options, value, lacking = _pick(readers, current, has)
    dmg = Damage()
    damaged: set[str] = set()
    for r in readers:
        with dmg.guard(r.name, "the run's files"):
            if dmg.check(r, tables):
                damaged.add(r.name)
    truly = [n for n in lacking if n not in damaged]
    notes: list[Any] = [missing(what, call, truly)] if truly else []
    if dmg:
        notes.append(dmg.notice())
    return options, value, notes


def picker_page(prefix: str, title: str, subtitle: str, controls: Sequence[Any],
                *body: Any) -> html.Div:
    """A page built around a run picker: its header, a row of controls led by the picker
    ``<prefix>-run``, the picker's notices ``<prefix>-status`` (both filled by
    :func:`register_run_picker` with the same ``prefix``), then ``body``."""
    return html.Div([
        page_header(title, subtitle),
        html.Div([run_picker(f"{prefix}-run"), *controls], className="controls"),
        html.Div(id=f"{prefix}-status"),
        *body,
    ])


def register_run_picker(app: Any, state: Any, prefix: str,
                        has: Callable[[Any], Any] | None = None, what: str = "",
                        call: str = "", tables: Iterable[str] = (), *,
                        status: Callable[[Any, Any], Any] | None = None) -> None:
    """Register a page's run-picker callback: the header's ``run-select`` fills the options and
    value of ``<prefix>-run`` (made by :func:`run_picker`) and the notices of
    ``<prefix>-status``, by :func:`picker_status` (``has``, ``what``, ``call``, ``tables``).

    A page that says more (the Live page's trust note) passes ``status(selected, current) ->
    (options, value, notes)`` instead of ``has``, ``what``, ``call`` and ``tables``. No selected
    run: "select one or more runs"; a failure: a damage notice (:func:`survive`).
    """
    tables = list(tables)

    @app.callback(
        Output(f"{prefix}-run", "options"), Output(f"{prefix}-run", "value"),
        Output(f"{prefix}-status", "children"),
        Input("run-select", "value"), State(f"{prefix}-run", "value"),
    )
    @survive([], None, NOTICE)
    def _runs(selected: Any, current: Any) -> Any:
        if not selected:
            return [], None, no_runs_selected()
        if status is not None:
            return status(selected, current)
        return picker_status(state, selected, current, has, what, call, tables)


def keep_or_first(current: Any, options: Sequence[Any]) -> Any:
    """A dropdown's value: ``current`` while it is still among ``options``, else the first
    option (None when there is none)."""
    return current if current in options else (options[0] if options else None)


def register_choice(app: Any, state: Any, run_id: str, choice_id: str,
                    options_of: Callable[[Any], Sequence[str]]) -> None:
    """Register the callback that offers ``options_of(reader)`` of the run picked in
    ``run_id`` as the options of dropdown ``choice_id`` (its value kept by
    :func:`keep_or_first`); nothing picked or a failure: no options."""

    @app.callback(Output(choice_id, "options"), Output(choice_id, "value"),
                  Input(run_id, "value"), State(choice_id, "value"))
    @survive([], None)
    def _choices(run: Any, current: Any) -> Any:
        if not run:
            return [], None
        options = options_of(state.reader(run))
        return options, keep_or_first(current, options)


def shrink(images: Any, max_side: int) -> Any:
    """``[..., H, W]`` as float32, area-averaged by an integer factor so no side exceeds
    ``max_side`` (bounds what a callback sends; small images come back unchanged). The
    average is a sum of the ``f x f`` strided views (5-10x faster than a mean over a reshaped
    array's strided axes, on uint8 images read from a memory map)."""
    import numpy as np

    x = np.asarray(images)
    h, w = x.shape[-2:]
    f = -(-max(h, w) // max_side)
    if f <= 1:
        return x.astype(np.float32, copy=False)
    h2, w2 = h // f, w // f
    out = np.zeros(x.shape[:-2] + (h2, w2), dtype=np.float32)
    for i in range(f):
        for j in range(f):
            out += x[..., i:h2 * f:f, j:w2 * f:f]
    out *= 1.0 / (f * f)
    return out


class RequestReader:
    """A run's reader for the length of one callback: the arrays index of each kind is read
    once (a layer panel asks for it six times: one DuckDB query and a JSON parse of every
    row's meta each time); everything else goes to the reader. Never kept across requests, so
    a run still being written shows its new arrays on the next request."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self._arrays: dict[Any, Any] = {}

    def arrays(self, kind: str | None = None) -> Any:
        if kind not in self._arrays:
            self._arrays[kind] = self._reader.arrays(kind)
        return self._arrays[kind]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)
