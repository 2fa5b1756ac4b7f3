"""The dashboard shell: header with navigation and run selector, the page container, routing."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dash
from dash import Input, Output, State, dcc, html

from .._version import __version__
from .guard import PathGuard
from .pages import all_pages
from .state import AppState, selected_names

log = logging.getLogger("convscope.app")
ASSETS = Path(__file__).parent / "assets"
REFRESH_MS = 5000
DEFAULT_SELECTED = 4
#: Largest request body accepted (Flask answers 413 beyond): an upload at the Live page's limit
#: plus the rest of a callback request.
MAX_REQUEST_BYTES = 32 * 1024 * 1024


def create_app(logdir: str | Path, refresh_ms: int | None = None, *,
               trust_checkpoints: bool = False) -> dash.Dash:
    """Build the Dash app serving ``logdir`` (a directory of runs, or one run).

    The pages re-read the runs every ``refresh_ms`` milliseconds (default 5000, or
    ``$CONVSCOPE_REFRESH_MS``), so a run still being written updates in place.

    ``trust_checkpoints``: let the Live page unpickle whole-module checkpoints (runs recorded by
    older versions, or models no allow-listed builder rebuilds). Unpickling runs code from the
    run directory, so it is off by default and the page says how to opt in
    (``convscope serve --trust-checkpoints``). Request bodies are capped at
    :data:`MAX_REQUEST_BYTES` (HTTP 413 beyond).
    """
    if refresh_ms is None:
        refresh_ms = int(os.environ.get("CONVSCOPE_REFRESH_MS", REFRESH_MS))
    state = AppState(logdir)
    state.trust_checkpoints = bool(trust_checkpoints)
    pages = all_pages()
    app = dash.Dash(
        __name__,
        title="convscope",
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        update_title=None,
        on_error=_log_callback_error,
    )
    nav = [
        dcc.Link(p.title, href=p.path, className="nav-link", id=f"nav-{p.title.lower()}",
                 title=p.description)
        for p in pages
    ]
    app.layout = html.Div(
        [
            dcc.Location(id="url"),
            dcc.Interval(id="refresh", interval=refresh_ms),
            html.Header(
                [
                    html.Div(
                        [html.Span("convscope", className="brand"),
                         html.Span(f"v{__version__}", className="version")],
                        className="brand-box",
                    ),
                    html.Nav(nav, className="nav"),
                    html.Div(
                        dcc.Dropdown(id="run-select", multi=True, placeholder="select runs…"),
                        className="run-select-box",
                        title="Runs shown on every page",
                    ),
                ],
                className="header",
            ),
            html.Div(
                [html.Span(str(state.logdir), className="logdir", title="served logdir")],
                className="subheader",
            ),
            html.Main(id="page", className="page"),
            dcc.Store(id="run-select-memory", storage_type="local"),
        ],
        className="app",
    )
    by_path = {p.path: p for p in pages}

    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def _route(pathname):
        if not isinstance(pathname, str):  # only a crafted request sends anything else
            pathname = "" if pathname is None else repr(pathname)
        page = by_path.get(pathname.rstrip("/") or "/") if len(pathname) <= 256 else None
        if page is None:
            shown = pathname if len(pathname) <= 120 else pathname[:120] + "…"
            return html.Div(
                [html.H1("Page not found", className="page-title"),
                 html.P(["There is no page at ", html.Code(shown), ". Pages: "]
                        + [dcc.Link(p.title, href=p.path, className="inline-link")
                           for p in pages])],
            )
        return page.layout()

    for p in pages:
        app.clientside_callback(
            f"""function(path) {{
                const mine = {p.path!r};
                const cur = (path || '/').replace(/\\/$/, '') || '/';
                return cur === mine ? 'nav-link active' : 'nav-link';
            }}""",
            Output(f"nav-{p.title.lower()}", "className"),
            Input("url", "pathname"),
        )

    @app.callback(
        Output("run-select", "options"),
        Output("run-select", "value"),
        Input("refresh", "n_intervals"),
        State("run-select", "value"),
        State("run-select-memory", "data"),
    )
    def _runs(_n, selected, remembered):
        names = state.run_names()
        known = set(names)
        options = [{"label": n, "value": n} for n in reversed(names)]
        if selected is None:  # page load: the runs chosen last time, else the newest runs
            value = [s for s in selected_names(remembered) if s in known]
            if not value:
                value = names[-DEFAULT_SELECTED:]
            return options, value
        # drop deleted runs (and anything that is not a run name), keep the user's choice
        value = [s for s in selected_names(selected) if s in known]
        return options, (dash.no_update if value == selected else value)

    @app.callback(
        Output("run-select-memory", "data"),
        Input("run-select", "value"),
        prevent_initial_call=True,
    )
    def _remember(value):  # the selection persists across pages and reloads
        return value if value is not None else dash.no_update

    for p in pages:
        p.register(app, state)

    _add_file_route(app, state)
    _add_safety_nets(app)
    app.server.wsgi_app = PathGuard(app.server.wsgi_app)
    # the largest request a page sends is the Live page's upload (10 MB as a data URI, ~14 MB)
    app.server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.convscope_state = state  # for tests and embedding
    return app


def _log_callback_error(err: Exception) -> None:
    """Print a failing callback's traceback on the server's stderr, then fail the request."""
    log.error("dashboard callback failed", exc_info=err)
    raise err


#: Sent with every answer: no other site may show the dashboard in a frame (clickjacking).
#: Only ``frame-ancestors`` is set: Dash's page needs its inline scripts.
FRAME_HEADERS = (("X-Frame-Options", "DENY"),
                 ("Content-Security-Policy", "frame-ancestors 'none'"))


def _add_safety_nets(app: dash.Dash) -> None:
    """Framing headers on every answer, and a short 400 (not a 500 with a traceback in the log)
    for a request body nested too deeply to parse (``[[[[...`` or ``{"a":{"a":...``)."""
    import flask

    @app.server.after_request
    def _frame_headers(resp: flask.Response) -> flask.Response:
        for k, v in FRAME_HEADERS:
            resp.headers.setdefault(k, v)
        return resp

    @app.server.errorhandler(RecursionError)
    def _too_deep(_exc: RecursionError):
        log.warning("refused a request nested too deeply to process (%s %s)",
                    flask.request.method, flask.request.path[:200])
        return flask.Response(
            "convscope: the request is nested too deeply to process (a crafted body?). The "
            "dashboard's own pages never send such requests: reload the page.\n",
            status=400, mimetype="text/plain")


def _add_file_route(app: dash.Dash, state: AppState) -> None:
    """``/files/<run>/<path>``: raw files of a run (run.json, parquet parts, .npy arrays)."""
    import flask

    @app.server.route("/files/<run>/<path:rel>")
    def _file(run: str, rel: str):
        try:
            root = state.run_path(run).resolve()
        except Exception:
            flask.abort(404)
        target = (root / rel).resolve()
        if Path(rel).is_absolute() or not target.is_relative_to(root) or not target.is_file():
            flask.abort(404)
        return flask.send_file(target)
