"""Training: DeepTracker's validation, layer and correlation views. Zooming the step axis of the
validation or layer view filters the others to that range."""

from __future__ import annotations

import pandas as pd
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...figures.training import (
    correlation_figure,
    filter_figure,
    layer_figure,
    validation_figure,
)
from ...track.columns import FILTER_COLUMNS, LAYER_COLUMNS
from ..components import graph, missing, no_runs_selected, page_header, pick_run, run_picker
from . import Page


def _has_training(reader) -> bool:
    return reader.has_table("validation") or reader.has_table("watch_layers")


def layout() -> html.Div:
    return html.Div([
        page_header("Training", "Per-class validation error with anomaly iterations (images "
                    "that flip after being stable), per-layer weight and gradient statistics, "
                    "and the filters that changed most at the anomalies. Zoom the step axis of "
                    "one view to filter the others."),
        html.Div([
            run_picker("trn-run"),
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
        ], className="controls"),
        html.Div(id="trn-status"),
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
        html.Div(graph("trn-filters"), className="panel", id="trn-filters-box",
                 style={"display": "none"}),
        dcc.Store(id="trn-range"),
    ])


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
    @app.callback(
        Output("trn-run", "options"), Output("trn-run", "value"), Output("trn-status", "children"),
        Input("run-select", "value"), State("trn-run", "value"),
    )
    def _runs(selected, current):
        if not selected:
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, _has_training)
        note = missing("training dynamics", "run.watch(model) and run.log_validation(step, ids, "
                       "labels, predictions)", lacking) if lacking else None
        return options, value, note

    @app.callback(
        Output("trn-range", "data"),
        Input("trn-validation", "relayoutData"), Input("trn-layers", "relayoutData"),
        Input("trn-reset", "n_clicks"), Input("trn-run", "value"),
        State("trn-range", "data"), prevent_initial_call=True,
    )
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
    def _validation(run, k, threshold, rng, _n):
        hidden = {"display": "none"}
        text = (f"steps {rng[0]:.0f} – {rng[1]:.0f}" if rng else "all steps")
        if not run:
            return {}, hidden, {}, hidden, text
        reader = state.reader(run)
        if not reader.has_table("validation"):
            return {}, hidden, {}, hidden, text
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
        if reader.has_table("watch_filters") and len(anomalies):
            # each anomaly step -> the nearest recorded filter step at or after it (that
            # snapshot's change covers the anomaly), then the top 10 filters there, in DuckDB
            rec = reader.recorded_filter_steps()
            at = {int(s): int(rec[i]) for s in anomalies["step"].unique()
                  if (i := int(rec.searchsorted(s))) < len(rec)}
            if at:
                top = reader.top_filters_at(sorted(set(at.values())), k=10)
                classes = anomalies.groupby("step")["class"].apply(list).to_dict()
                rows = []
                for s, r in sorted(at.items()):
                    part = top[top["step"] == r].assign(step=s)
                    part["classes"] = [classes.get(s, [])] * len(part)
                    rows.append(part)
                top = pd.concat(rows, ignore_index=True) if rows else top
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
    def _layers(run, stat, rng, _n, flayer):
        hidden = {"display": "none"}
        if not run:
            return {}, hidden, [], None, hidden
        reader = state.reader(run)
        if not reader.has_table("watch_layers"):
            return {}, hidden, [], None, hidden
        layers = reader.watched_layers()
        series = reader.layer_series(stat or "update_ratio", max_points=300,
                                     steps=(int(rng[0]), int(rng[1] + 1)) if rng else None)
        fig = layer_figure(series, stat, layers,
                           x_range=rng if rng else None)
        has_f = reader.has_table("watch_filters")
        value = flayer if flayer in layers else (layers[0] if layers else None)
        return fig, {}, layers, value, ({} if has_f else hidden)

    @app.callback(
        Output("trn-filters", "figure"), Output("trn-filters-box", "style"),
        Input("trn-filter-layer", "value"), Input("trn-filter-value", "value"),
        Input("trn-range", "data"), State("trn-run", "value"),
    )
    def _filters(layer, value, rng, run):
        if not run or not layer or not state.reader(run).has_table("watch_filters"):
            return {}, {"display": "none"}
        steps, filters, mat = state.reader(run).filter_matrix(
            layer, value or "cos_prev", max_steps=300,
            steps=(int(rng[0]), int(rng[1] + 1)) if rng else None)
        return filter_figure(steps, filters, mat, layer, value), {}


def _class_names(reader) -> list[str] | None:
    names = reader.config.get("class_names")
    return list(names) if names else None


PAGE = Page(
    path="/training",
    title="Training",
    layout=layout,
    register=register,
    description="DeepTracker views: validation, layers, correlation",
)
