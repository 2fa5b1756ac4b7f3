"""Training: DeepTracker's validation, layer and correlation views. Zooming the step axis of the
validation or layer view filters the others to that range."""

from __future__ import annotations

import warnings

from dash import Input, Output, State, ctx, dcc, html, no_update

from ...figures.training import (
    correlation_figure,
    filter_figure,
    layer_figure,
    validation_figure,
)
from ...formats import training as fmt
from ...formats.training import FILTER_COLUMNS, LAYER_COLUMNS, most_changed_rows
from ...track import correlate
from ..components import (
    FIGURE,
    Damage,
    error_figure,
    graph,
    keep_or_first,
    notice,
    picker_page,
    register_run_picker,
    survive,
)
from . import Page


def layout() -> html.Div:
    return picker_page(
        "trn", "Training", "Per-class validation error with anomaly iterations (images that "
        "flip after being stable), per-layer weight and gradient statistics, and the filters "
        "that changed most at the anomalies. Zoom the step axis of one view to filter the "
        "others.",
        [
            html.Label(["Layer statistic", dcc.Dropdown(
                id="trn-stat", options=list(LAYER_COLUMNS), value="update_ratio",
                clearable=False)], className="control"),
            html.Label(["Clusters (k)", dcc.Slider(id="trn-k", min=1, max=8, step=1, value=4,
                                                   marks=None, tooltip={"placement": "bottom"})],
                       className="control"),
            html.Label(["Anomaly threshold", dcc.Slider(
                id="trn-threshold", min=1, max=20, step=1, value=5, marks=None,
                tooltip={"placement": "bottom"})], className="control"),
            html.Div(id="trn-range-text", className="muted"),
            html.Button("Reset range", id="trn-reset", className="button"),
        ],
        html.Div(graph("trn-validation"), className="panel", id="trn-validation-box",
                 style={"display": "none"}),
        html.Div(graph("trn-correlation"), className="panel", id="trn-correlation-box",
                 style={"display": "none"}),
        html.Div(graph("trn-layers"), className="panel", id="trn-layers-box",
                 style={"display": "none"}),
        html.Div([
            html.Label(["Filters of layer", dcc.Dropdown(id="trn-filter-layer")],
                       className="control control-wide"),
            html.Label(["Filter statistic", dcc.Dropdown(id="trn-filter-value",
                                                         options=list(FILTER_COLUMNS),
                                                         value="cos_prev", clearable=False)],
                       className="control"),
        ], className="controls", id="trn-filter-controls", style={"display": "none"}),
        html.Div([html.Div(id="trn-filters-note"), graph("trn-filters")], className="panel",
                 id="trn-filters-box", style={"display": "none"}),
        dcc.Store(id="trn-range"),
    )


def _range_from(relayout) -> list[float] | None | str:
    if not relayout:
        return "keep"
    if relayout.get("xaxis.autorange") or relayout.get("autosize"):
        return None if "xaxis.autorange" in relayout else "keep"
    lo = relayout.get("xaxis.range[0]")
    hi = relayout.get("xaxis.range[1]")
    if lo is None and "xaxis.range" in relayout:
        lo, hi = relayout["xaxis.range"]
    if lo is None:
        return "keep"
    return [float(lo), float(hi)]


def register(app, state) -> None:
    register_run_picker(app, state, "trn", fmt.has_training, "training dynamics",
                        "run.watch(model) and run.log_validation(step, ids, labels, "
                        "predictions)", TABLES)

    @app.callback(
        Output("trn-range", "data"),
        Input("trn-validation", "relayoutData"), Input("trn-layers", "relayoutData"),
        Input("trn-reset", "n_clicks"), Input("trn-run", "value"),
        State("trn-range", "data"), prevent_initial_call=True,
    )
    @survive(no_update)
    def _range(rv, rl, _reset, _run, current):
        trig = ctx.triggered_id
        if trig in ("trn-reset", "trn-run"):
            return None
        rng = _range_from(rv if trig == "trn-validation" else rl)
        if rng == "keep" or rng == current:  # echoes of a redraw are not a new selection
            return no_update
        return rng

    @app.callback(
        Output("trn-validation", "figure"), Output("trn-validation-box", "style"),
        Output("trn-correlation", "figure"), Output("trn-correlation-box", "style"),
        Output("trn-range-text", "children"),
        Input("trn-run", "value"), Input("trn-k", "value"), Input("trn-threshold", "value"),
        Input("trn-range", "data"), Input("refresh", "n_intervals"),
    )
    @survive(FIGURE, {}, {}, {"display": "none"}, no_update)
    def _validation(run, k, threshold, rng, _n):
        hidden = {"display": "none"}
        text = (f"steps {rng[0]:.0f} – {rng[1]:.0f}" if rng else "all steps")
        if not run:
            return {}, hidden, {}, hidden, text
        reader = state.reader(run)
        dmg = Damage()
        dmg.check(reader, fmt.VALIDATION_TABLES, run_file=False)
        if not fmt.has_validation(reader):
            if dmg:  # parts exist but none is readable: say so, never "nothing recorded"
                return error_figure([t for _, t in dmg.items]), {}, {}, hidden, text
            return {}, hidden, {}, hidden, text
        with dmg.guard(run, "the validation view"):
            return _validation_view(reader, k, threshold, rng, text)
        return error_figure([t for _, t in dmg.items]), {}, {}, hidden, text

    def _validation_view(reader, k, threshold, rng, text):
        hidden = {"display": "none"}
        err = reader.class_error()
        if rng:
            err = err[(err.index >= rng[0]) & (err.index <= rng[1])]
        if err.empty:
            return {}, hidden, {}, hidden, text + " (no checkpoint in range)"
        cl = reader.class_clusters(k=int(k or 4))
        anomalies = reader.anomalies(threshold=int(threshold or 5)).frame
        if rng:
            anomalies = anomalies[(anomalies["step"] >= rng[0]) & (anomalies["step"] <= rng[1])]
        names = _class_names(reader)
        classes = list(err.columns)
        cluster_of = dict(zip(cl.classes.tolist(), cl.labels.tolist(), strict=True))
        vfig = validation_figure(err, x_range=rng, order=[c for c in cl.classes_ordered if c in classes],
                                 clusters=[cluster_of[c] for c in classes],
                                 anomalies=anomalies, class_names=names)
        cfig, cstyle = {}, hidden
        if fmt.has_filters(reader) and len(anomalies):
            # DeepTracker's correlation (convscope.track.correlate): each anomaly step -> the
            # nearest recorded filter step at or after it (that snapshot's change covers the
            # anomaly), then the 10 filters that changed most there over all layers. The
            # reader supplies only those steps' top 10 (in DuckDB), not every filter row.
            changes = fmt.filter_changes_near(reader, anomalies, k=10)
            with warnings.catch_warnings():  # anomalies after the last snapshot: skipped
                warnings.simplefilter("ignore", UserWarning)
                top = correlate(anomalies, changes, top=10, scope="overall")
            if len(top):
                cfig = correlation_figure(top, reader.watched_layers(), names)
                cstyle = {}
        return vfig, {}, cfig, cstyle, text

    @app.callback(
        Output("trn-layers", "figure"), Output("trn-layers-box", "style"),
        Output("trn-filter-layer", "options"), Output("trn-filter-layer", "value"),
        Output("trn-filter-controls", "style"),
        Input("trn-run", "value"), Input("trn-stat", "value"), Input("trn-range", "data"),
        Input("refresh", "n_intervals"), State("trn-filter-layer", "value"),
    )
    @survive(FIGURE, {}, [], None, {"display": "none"})
    def _layers(run, stat, rng, _n, flayer):
        hidden = {"display": "none"}
        if not run:
            return {}, hidden, [], None, hidden
        reader = state.reader(run)
        dmg = Damage()
        if dmg.check(reader, [fmt.LAYERS_TABLE], run_file=False) \
                and not fmt.has_layers(reader):
            return error_figure([t for _, t in dmg.items]), {}, [], None, hidden
        if not fmt.has_layers(reader):
            return {}, hidden, [], None, hidden
        layers = reader.watched_layers()
        series = reader.layer_series(stat or "update_ratio", max_points=300,
                                     steps=(int(rng[0]), int(rng[1] + 1)) if rng else None)
        fig = layer_figure(series, stat, layers,
                           x_range=rng if rng else None)
        has_f = fmt.has_filters(reader)
        value = keep_or_first(flayer, layers)
        return fig, {}, layers, value, ({} if has_f else hidden)

    @app.callback(
        Output("trn-filters", "figure"), Output("trn-filters-box", "style"),
        Output("trn-filters-note", "children"),
        Input("trn-filter-layer", "value"), Input("trn-filter-value", "value"),
        Input("trn-range", "data"), State("trn-run", "value"),
    )
    @survive(FIGURE, {}, None)
    def _filters(layer, value, rng, run):
        if not run or not layer or not fmt.has_filters(state.reader(run)):
            return {}, {"display": "none"}, None
        value = value or "cos_prev"
        steps, filters, mat = state.reader(run).filter_matrix(
            layer, value, max_steps=MAX_FILTER_STEPS,
            steps=(int(rng[0]), int(rng[1] + 1)) if rng else None)
        total = len(filters)
        note = None
        if total > MAX_FILTER_ROWS:  # bounded answer: the filters that changed most
            keep = most_changed_rows(mat, value, MAX_FILTER_ROWS)
            filters, mat = filters[keep], mat[keep]
            how = "lowest cos_prev" if value == "cos_prev" else f"widest range of {value}"
            note = notice(f"Showing the {len(filters)} of {total} filters of {layer} that "
                          f"changed most ({how} over the steps shown); zoom the step axis "
                          "of the validation or layer view to rank them within a range.")
        fig = filter_figure(steps, filters, mat, layer, value)
        if total > MAX_FILTER_ROWS:
            # evenly spaced rows for the chosen filters, labelled by their numbers
            fig.update_yaxes(type="category", categoryorder="array",
                             categoryarray=[str(f) for f in filters])
            fig.update_traces(y=[str(f) for f in filters])
            fig.update_layout(title_text=f"Filters of {layer}: {value} — {len(filters)} of "
                              f"{total} (changed most)")
            meta = dict(fig.layout.meta or {})
            fig.update_layout(meta={**meta, "shown": len(filters), "total": total})
        return fig, {}, note


def _class_names(reader) -> list[str] | None:
    """The class names of run.json's config (None when absent, or when run.json is damaged:
    the status notice names it)."""
    try:
        names = reader.config.get("class_names")
        return [str(n) for n in names] if isinstance(names, list) and names else None
    except Exception:
        return None


TABLES = fmt.TABLES
MAX_FILTER_STEPS = 300  #: step buckets of the filter view
MAX_FILTER_ROWS = 256  #: filters drawn per answer (256 x 300 float32: ~0.4 MB)


PAGE = Page(
    path="/training",
    title="Training",
    layout=layout,
    register=register,
    description="DeepTracker views: validation, layers, correlation",
)
