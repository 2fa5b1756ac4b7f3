"""Training: DeepTracker's views (Liu et al. 2018): validation (cluster rows -> classes ->
images), correlation by anomaly class, the layers x iterations x classes cube, alerts, layer and
filter views. Zooming the step axis of the validation or layer view filters every view to that
range."""

from __future__ import annotations

import math
import threading
import warnings

import pandas as pd
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...figures.images import png_data_uri
from ...figures.training import (
    class_images_figure,
    correlation_figure,
    cube_figure,
    filter_figure,
    layer_figure,
    validation_figure,
)
from ...formats import training as fmt
from ...formats.training import FILTER_COLUMNS, LAYER_COLUMNS, most_changed_rows
from ...track import ALERT_KINDS, correlate, correlation_cube
from ..components import (
    FIGURE,
    NOTICE,
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
        "trn", "Training", "DeepTracker (Liu et al. 2018): per-class validation error with "
        "cluster rows that open into their classes and their images, anomaly iterations "
        "(triangles: down = a class's images forgotten together and staying wrong, up = "
        "learned; by default only forgetting is marked, a healthy run's learning bursts are "
        "expected), where the most-changed filters "
        "sit by anomaly class, the layers \u00d7 iterations \u00d7 classes cube, alerts on "
        "update ratios and gradient norms, and per-layer and per-filter statistics. Zoom the "
        "step axis of the validation or layer view: every view follows that step range.",
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
            html.Label(["Flips", dcc.RadioItems(
                id="trn-flips", options=[{"label": v, "value": k} for k, v in FLIPS.items()],
                value=DEFAULT_FLIPS, inline=True)], className="control"),
            html.Div(id="trn-range-text", className="muted"),
            html.Button("Reset range", id="trn-reset", className="button"),
        ],
        html.Div(id="trn-alerts", className="panel", style={"display": "none"}),
        html.Div([
            html.Div([
                html.Label(["Open clusters", dcc.Checklist(id="trn-open", options=[], value=[],
                                                           inline=True)],
                           className="control control-wide"),
                html.Label(["Images of class", dcc.Dropdown(id="trn-class", options=[],
                                                            clearable=True)],
                           className="control"),
            ], className="controls"),
            graph("trn-validation"),
        ], className="panel", id="trn-validation-box", style={"display": "none"}),
        html.Div([html.Div(id="trn-images-note"), graph("trn-images")], className="panel",
                 id="trn-images-box", style=FOLDED),
        html.Div(graph("trn-correlation"), className="panel", id="trn-correlation-box",
                 style=FOLDED),
        html.Div([
            html.Div([
                html.Label(["Cube: layer slice", dcc.Dropdown(id="trn-cube-layer", options=[])],
                           className="control control-wide"),
                html.Label(["Cube: class slice", dcc.Dropdown(id="trn-cube-class", options=[])],
                           className="control"),
            ], className="controls"),
            graph("trn-cube"),
        ], className="panel", id="trn-cube-box", style=FOLDED),
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
        dcc.Store(id="trn-rows"),
    )


def _range_from(relayout) -> list[float] | None | str:
    if not isinstance(relayout, dict) or not relayout:
        return "keep"
    if relayout.get("xaxis.autorange") or relayout.get("autosize"):
        return None if "xaxis.autorange" in relayout else "keep"
    lo = relayout.get("xaxis.range[0]")
    hi = relayout.get("xaxis.range[1]")
    if lo is None and "xaxis.range" in relayout:
        got = relayout["xaxis.range"]
        if not isinstance(got, list) or len(got) != 2:
            return "keep"
        lo, hi = got
    if lo is None:
        return "keep"
    rng = _rng([lo, hi])
    return rng if rng is not None else "keep"


# -- input validation (a client can post anything) ---------------------------------------------
def _int(value, lo: int, hi: int, default: int) -> int:
    """``value`` as an int in [lo, hi]; ``default`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if not math.isfinite(value) or value != int(value):
        return default
    return int(value) if lo <= value <= hi else default


def _rng(value) -> list[float] | None:
    """A step range ``[lo, hi]`` of two finite numbers (swapped when reversed); None for
    anything else (= all steps)."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if isinstance(value[0], bool) or isinstance(value[1], bool) or isinstance(value[0], str) \
            or isinstance(value[1], str) or not (math.isfinite(lo) and math.isfinite(hi)) \
            or max(abs(lo), abs(hi)) > 2 ** 62:
        return None
    return [min(lo, hi), max(lo, hi)]


def _in_range(df: pd.DataFrame, rng, col: str = "step") -> pd.DataFrame:
    return df[(df[col] >= rng[0]) & (df[col] <= rng[1])] if rng else df


# -- caches shared by the callbacks (the anomalies and the correlation table of one validation
# matrix, threshold and filter log; a few entries, replaced when new parts land) ---------------
_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, make):
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit[1]
    value = make()
    with _cache_lock:
        if len(_cache) > 24:
            _cache.clear()
        _cache[key] = (key, value)
    return value


#: the flip directions an anomaly counts (convscope.track.anomalies' ``direction``)
FLIPS = {"to_wrong": "forgotten", "to_right": "learned", "both": "both"}
DEFAULT_FLIPS = "to_wrong"


def _flips(value) -> str:
    return value if isinstance(value, str) and value in FLIPS else DEFAULT_FLIPS


def _anomalies(reader, threshold: int, flips: str = DEFAULT_FLIPS) -> pd.DataFrame:
    vm = reader.validation_matrix()  # cached by the reader until new parts land
    return _cached(("anomalies", str(reader.path), id(vm), vm.correct.shape, threshold, flips),
                   lambda: (vm, reader.anomalies(threshold=threshold,
                                                 direction=flips).frame))[1]


def _clusters(reader, k: int):
    """``reader.class_clusters(k)`` once per validation matrix and k (both the hierarchy and
    the validation view need it)."""
    vm = reader.validation_matrix()
    return _cached(("clusters", str(reader.path), id(vm), vm.correct.shape, k),
                   lambda: (vm, reader.class_clusters(k=k)))[1]


def _watched_layers(reader) -> list[str]:
    """``reader.watched_layers()`` once per set of watch parts."""
    return _cached(("layers", str(reader.path), fmt.watch_parts_key(reader)),
                   lambda: (None, reader.watched_layers()))[1]


def _correlation(reader, threshold: int, flips: str = DEFAULT_FLIPS) -> pd.DataFrame:
    """``correlate(anomalies, ..., top=10, scope='overall')`` over the whole run (the
    callbacks cut it to the step range)."""
    vm = reader.validation_matrix()
    parts = fmt.filter_parts_key(reader)

    def make():
        anomalies = _anomalies(reader, threshold, flips)
        if not len(anomalies):
            return vm, anomalies.iloc[:0]
        # DeepTracker's correlation (convscope.track.correlate): each anomaly step -> the
        # nearest recorded filter step at or after it (that snapshot's change covers the
        # anomaly), then the 10 filters that changed most there over all layers. The
        # reader supplies only those steps' top 10, not every filter row.
        changes = fmt.filter_changes_near(reader, anomalies, k=10)
        with warnings.catch_warnings():  # anomalies after the last snapshot: skipped
            warnings.simplefilter("ignore", UserWarning)
            return vm, correlate(anomalies, changes, top=10, scope="overall")

    return _cached(("correlation", str(reader.path), id(vm), vm.correct.shape, threshold,
                    flips, parts), make)[1]


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
        if rng == "keep" or rng == _rng(current):  # echoes of a redraw: not a new selection
            return no_update
        return rng

    @app.callback(
        Output("trn-open", "options"), Output("trn-open", "value"),
        Output("trn-class", "options"), Output("trn-class", "value"),
        Output("trn-cube-class", "options"),
        Input("trn-run", "value"), Input("trn-k", "value"),
        Input("trn-validation", "clickData"),
        State("trn-open", "value"), State("trn-rows", "data"), State("trn-class", "value"),
    )
    @survive([], [], [], None, [])
    def _hierarchy(run, k, click, opened, rows, cls):
        """The clusters that can open and the classes whose images can show; a click on a
        cluster row opens or closes it, a click on a class row shows its images."""
        if not run or not fmt.has_validation(state.reader(run)):
            return [], [], [], None, []
        reader = state.reader(run)
        cl = _clusters(reader, _int(k, 1, 8, 4))
        names = _class_names(reader)
        classes = [int(c) for c in cl.classes_ordered]
        class_opts = [{"label": _label(c, names), "value": c} for c in classes]
        clusters = sorted({int(x) for x in cl.labels.tolist()})
        counts = {c: int((cl.labels == c).sum()) for c in clusters}
        open_opts = [{"label": f"cluster {c} ({counts[c]})", "value": c} for c in clusters]
        valid = set(clusters)
        opened = [int(o) for o in opened[:64] if _int(o, 0, 64, -1) in valid] \
            if isinstance(opened, list) else []
        cls = cls if _int(cls, -2**62, 2**62, None) in set(classes) else None
        trig = ctx.triggered_id
        if trig in ("trn-run", "trn-k") or trig is None:
            # a new clustering: small runs start open (all classes visible), large ones closed
            opened = clusters if len(classes) <= 12 else []
            return open_opts, opened, class_opts, cls, class_opts
        row = _clicked_row(click, rows)
        if row is None:
            return open_opts, opened, class_opts, cls, class_opts
        if row["kind"] == "cluster" and row["id"] in valid:
            opened = sorted(set(opened) ^ {row["id"]})
        elif row["kind"] == "class" and row["id"] in set(classes):
            cls = row["id"]
        return open_opts, opened, class_opts, cls, class_opts

    @app.callback(
        Output("trn-validation", "figure"), Output("trn-validation-box", "style"),
        Output("trn-range-text", "children"), Output("trn-rows", "data"),
        Input("trn-run", "value"), Input("trn-k", "value"), Input("trn-threshold", "value"),
        Input("trn-range", "data"), Input("trn-open", "value"),
        Input("refresh", "n_intervals"), Input("trn-flips", "value"),
    )
    @survive(FIGURE, {}, no_update, None)
    def _validation(run, k, threshold, rng, opened, _n, flips):
        hidden = {"display": "none"}
        rng = _rng(rng)
        text = (f"steps {rng[0]:.0f} \u2013 {rng[1]:.0f}" if rng else "all steps")
        if not run:
            return {}, hidden, text, None
        reader = state.reader(run)
        dmg = Damage()
        dmg.check(reader, fmt.VALIDATION_TABLES, run_file=False)
        if not fmt.has_validation(reader):
            if dmg:  # parts exist but none is readable: say so, never "nothing recorded"
                return error_figure([t for _, t in dmg.items]), {}, text, None
            return {}, hidden, text, None
        with dmg.guard(run, "the validation view"):
            err = _in_range(reader.class_error().reset_index(), rng).set_index("step")
            if err.empty:
                return {}, hidden, text + " (no checkpoint in range)", None
            cl = _clusters(reader, _int(k, 1, 8, 4))
            anomalies = _in_range(_anomalies(reader, _int(threshold, 1, 1000, 5),
                                             _flips(flips)), rng)
            classes = list(err.columns)
            cluster_of = dict(zip(cl.classes.tolist(), cl.labels.tolist(), strict=True))
            opened = [int(o) for o in opened if _int(o, 0, 64, None) is not None] \
                if isinstance(opened, list) else []
            fig = validation_figure(
                err, x_range=rng, order=[c for c in cl.classes_ordered if c in classes],
                clusters=[cluster_of[c] for c in classes], anomalies=anomalies,
                class_names=_class_names(reader), open_clusters=opened)
            return fig, {}, text, fig.layout.meta["rows"]
        return error_figure([t for _, t in dmg.items]), {}, text, None

    @app.callback(
        Output("trn-images", "figure"), Output("trn-images-box", "style"),
        Output("trn-images-note", "children"),
        Input("trn-run", "value"), Input("trn-class", "value"), Input("trn-range", "data"),
        Input("refresh", "n_intervals"),
    )
    @survive(FIGURE, {}, None)
    def _images(run, cls, rng, _n):
        hidden = FOLDED
        if not run or cls is None or not fmt.has_validation(state.reader(run)):
            return {}, hidden, None
        reader = state.reader(run)
        cls = _int(cls, -2**62, 2**62, None)
        if cls is None or cls not in set(reader.validation_matrix().labels.tolist()):
            return {}, hidden, None
        strips = fmt.class_image_strips(reader, cls, steps=_rng(rng), max_images=MAX_IMAGES,
                                        max_steps=MAX_IMAGE_STEPS)
        note = None
        thumbs = {}
        if fmt.has_validation_thumbnails(reader):
            thumbs = {i: png_data_uri(a[..., 0] if a.shape[-1] == 1 else a)
                      for i, a in fmt.load_validation_thumbnails(reader, strips.ids).items()}
        if not thumbs:
            note = notice("This run stored no validation pixels (run.log_validation keeps "
                          "only ids, labels and predictions), so the images are listed by id. "
                          "Store thumbnails with convscope.formats.training."
                          "write_validation_thumbnails(run, ids, images, labels) (at most "
                          f"{fmt.MAX_THUMBNAILS:,}, {fmt.THUMBNAIL_SIDE} px; convscope demo "
                          "does).")
        fig = class_images_figure(strips, thumbs, _label(cls, _class_names(reader)))
        return fig, {}, note

    @app.callback(
        Output("trn-correlation", "figure"), Output("trn-correlation-box", "style"),
        Output("trn-cube", "figure"), Output("trn-cube-box", "style"),
        Input("trn-run", "value"), Input("trn-threshold", "value"), Input("trn-range", "data"),
        Input("trn-cube-layer", "value"), Input("trn-cube-class", "value"),
        Input("refresh", "n_intervals"), Input("trn-flips", "value"),
    )
    @survive(FIGURE, {}, FIGURE, {})
    def _correlation_views(run, threshold, rng, layer, cls, _n, flips):
        hidden = FOLDED
        if not run:
            return {}, hidden, {}, hidden
        reader = state.reader(run)
        if not (fmt.has_validation(reader) and fmt.has_filters(reader)):
            return {}, hidden, {}, hidden
        top = _in_range(_correlation(reader, _int(threshold, 1, 1000, 5), _flips(flips)),
                        _rng(rng))
        if not len(top):
            return {}, hidden, {}, hidden
        layers = _watched_layers(reader)
        names = _class_names(reader)
        cfig = correlation_figure(top, layers, names)
        cube = correlation_cube(top, layers=layers)
        layer = layer if isinstance(layer, str) and layer in layers else None
        cls = _int(cls, -2**62, 2**62, None)
        cls = cls if cls is not None and cls in set(cube.classes.tolist()) else None
        return cfig, {}, cube_figure(cube, layer, cls, names), {}

    @app.callback(
        Output("trn-alerts", "children"), Output("trn-alerts", "style"),
        Input("trn-run", "value"), Input("trn-range", "data"), Input("refresh", "n_intervals"),
    )
    @survive(NOTICE, {})
    def _alerts(run, rng, _n):
        hidden = {"display": "none"}
        if not run or not fmt.has_layers(state.reader(run)):
            return None, hidden
        alerts = fmt.training_alerts(state.reader(run))
        rng = _rng(rng)
        if rng:  # alerts overlapping the range
            alerts = alerts[(alerts["last_step"] >= rng[0]) & (alerts["first_step"] <= rng[1])]
        return _alerts_table(alerts), {}

    @app.callback(
        Output("trn-layers", "figure"), Output("trn-layers-box", "style"),
        Output("trn-filter-layer", "options"), Output("trn-filter-layer", "value"),
        Output("trn-filter-controls", "style"), Output("trn-cube-layer", "options"),
        Input("trn-run", "value"), Input("trn-stat", "value"), Input("trn-range", "data"),
        Input("refresh", "n_intervals"), State("trn-filter-layer", "value"),
    )
    @survive(FIGURE, {}, [], None, {"display": "none"}, [])
    def _layers(run, stat, rng, _n, flayer):
        hidden = {"display": "none"}
        rng = _rng(rng)
        stat = stat if stat in LAYER_COLUMNS else "update_ratio"
        if not run:
            return {}, hidden, [], None, hidden, []
        reader = state.reader(run)
        dmg = Damage()
        if dmg.check(reader, [fmt.LAYERS_TABLE], run_file=False) \
                and not fmt.has_layers(reader):
            return error_figure([t for _, t in dmg.items]), {}, [], None, hidden, []
        if not fmt.has_layers(reader):
            return {}, hidden, [], None, hidden, []
        layers = _watched_layers(reader)
        series = reader.layer_series(stat, max_points=300,
                                     steps=(int(rng[0]), int(rng[1] + 1)) if rng else None)
        # float32 values (the stored precision): half the bytes of the answer's binary arrays
        series = series.astype({"value": "float32", "vmin": "float32", "vmax": "float32"})
        fig = layer_figure(series, stat, layers,
                           x_range=rng if rng else None)
        has_f = fmt.has_filters(reader)
        value = keep_or_first(flayer, layers)
        return fig, {}, layers, value, ({} if has_f else hidden), layers

    @app.callback(
        Output("trn-filters", "figure"), Output("trn-filters-box", "style"),
        Output("trn-filters-note", "children"),
        Input("trn-filter-layer", "value"), Input("trn-filter-value", "value"),
        Input("trn-range", "data"), State("trn-run", "value"),
    )
    @survive(FIGURE, {}, None)
    def _filters(layer, value, rng, run):
        rng = _rng(rng)
        if not run or not isinstance(layer, str) or not layer \
                or not fmt.has_filters(state.reader(run)):
            return {}, {"display": "none"}, None
        value = value if value in FILTER_COLUMNS else "cos_prev"
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


def _label(c, names) -> str:
    return str(names[int(c)]) if names and 0 <= int(c) < len(names) else f"class {c}"


def _clicked_row(click, rows) -> dict | None:
    """The validation row a click landed on (its ``y`` is the row's label), or None."""
    if not isinstance(click, dict) or not isinstance(rows, list) or len(rows) > 10_000:
        return None
    points = click.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    y = points[0].get("y")
    if not isinstance(y, str):
        return None
    row = next((r for r in rows if isinstance(r, dict) and r.get("label") == y), None)
    if not isinstance(row, dict) or row.get("kind") not in ("cluster", "class"):
        return None
    rid = _int(row.get("id"), -2**62, 2**62, None)
    return None if rid is None else {"kind": row["kind"], "id": rid}


def _alerts_table(alerts: pd.DataFrame) -> list:
    """The alerts as a table: kind, layer, step range, worst value, bound."""
    head = html.Div([html.B("Alerts: "), "update ratios above 1e-1, or below 1e-5 while the "
                     "other layers move (healthy: about 1e-3; all layers below: the learning "
                     "rate has decayed), and exploding or vanishing gradient norms (above "
                     "10\u00d7 or below 1/100 of the layer's median)"], className="muted")
    if not len(alerts):
        return [head, html.Div("No alerts in this step range.", className="muted",
                               id="trn-alerts-none")]
    shown = alerts.head(MAX_ALERTS)
    body = [html.Tr([html.Td(k, className="alert-kind"), html.Td(ALERT_KINDS[k]),
                     html.Td(layer, className="alert-layer"),
                     html.Td(f"{a} \u2013 {b}", className="num alert-steps"),
                     html.Td(str(n), className="num"),
                     html.Td(f"{v:.3g}", className="num"), html.Td(f"{t:.3g}", className="num")])
            for k, layer, a, b, n, v, t in shown.itertuples(index=False)]
    more = [html.Div(f"... and {len(alerts) - MAX_ALERTS} more (narrow the step range).",
                     className="muted")] if len(alerts) > MAX_ALERTS else []
    return [head, html.Table([
        html.Thead(html.Tr([html.Th(h) for h in ("kind", "meaning", "layer", "steps",
                                                  "recorded steps", "worst value", "bound")])),
        html.Tbody(body)], className="table", id="trn-alerts-table"), *more]


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
#: A panel folded away but still laid out at its full width (its side padding kept) (``display: none`` would make plotly
#: draw a figure that arrives with it at its 700 px default)
FOLDED = {"visibility": "hidden", "height": 0, "overflow": "hidden", "paddingTop": 0,
          "paddingBottom": 0, "marginTop": 0, "marginBottom": 0, "borderTopWidth": 0,
          "borderBottomWidth": 0}
MAX_IMAGES = 40  #: images of a class drawn with their strips (most flips first)
MAX_IMAGE_STEPS = 300  #: checkpoints per strip (evenly spaced when the range has more)
MAX_ALERTS = 50  #: alert rows listed


PAGE = Page(
    path="/training",
    title="Training",
    layout=layout,
    register=register,
    description="DeepTracker views: validation, images, correlation, cube, alerts, layers",
)
