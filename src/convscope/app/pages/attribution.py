"""Attribution: saliency, DeconvNet, guided backprop, CAM, Grad-CAM, Grad-CAM++ and Score-CAM
maps of sample images side by side, with their quality metrics."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, dash_table, dcc, html

from ...figures.attribution import METHOD_TITLES, attribution_gallery
from ..components import graph, missing, no_runs_selected, page_header, pick_run, run_picker
from . import Page

#: Images (rows) shown at once; larger sets are paged.
PAGE_SIZE = 8


def _has(reader) -> bool:
    return bool(reader.objects("attributions"))


def layout() -> html.Div:
    return html.Div([
        page_header("Attribution", "Which pixels drive each prediction: gradient methods "
                    "(input space, max |·| over channels) and class activation maps, each "
                    "scaled to [0, 1] per image and overlaid on the input."),
        html.Div([
            run_picker("attr-run"),
            html.Label(["Sample set", dcc.Dropdown(id="attr-key", clearable=False)],
                       className="control"),
            html.Label(["Methods", dcc.Checklist(id="attr-methods", inline=True,
                                                 className="checklist")],
                       className="control control-wide"),
            html.Label(["Opacity", dcc.Slider(id="attr-opacity", min=0, max=1, step=0.05,
                                              value=0.5, marks={0: "0", 0.5: "0.5", 1: "1"})],
                       className="control"),
            html.Label(["Images", dcc.Input(id="attr-page", type="number", min=1, step=1,
                                            value=1, debounce=True, style={"width": "5em"}),
                        html.Span(id="attr-pages", className="muted")],
                       className="control", id="attr-paging", style={"display": "none"}),
        ], className="controls"),
        html.Div(id="attr-status"),
        html.Div([graph("attr-gallery")], className="panel", id="attr-body",
                 style={"display": "none"}),
        html.H3("Quality of the maps"),
        html.Div(id="attr-metrics"),
    ])


def register(app, state) -> None:
    @app.callback(
        Output("attr-run", "options"), Output("attr-run", "value"),
        Output("attr-status", "children"),
        Input("run-select", "value"), State("attr-run", "value"),
    )
    def _runs(selected, current):
        if not selected:
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, _has)
        note = missing("attribution maps", "run.log_attributions(model, images)", lacking) \
            if lacking else None
        return options, value, note

    @app.callback(
        Output("attr-key", "options"), Output("attr-key", "value"),
        Input("attr-run", "value"), State("attr-key", "value"),
    )
    def _keys(run, current):
        if not run:
            return [], None
        keys = [state.reader(run).object("attributions", k)["key"]
                for k in state.reader(run).objects("attributions")]
        return keys, current if current in keys else (keys[0] if keys else None)

    @app.callback(
        Output("attr-methods", "options"), Output("attr-methods", "value"),
        Output("attr-page", "value"), Output("attr-page", "max"),
        Input("attr-run", "value"), Input("attr-key", "value"), State("attr-methods", "value"),
    )
    def _methods(run, key, current):
        if not run or not key:
            return [], [], 1, 1
        meta = _meta(state.reader(run), key)
        opts = [{"label": METHOD_TITLES.get(m, m), "value": m} for m in meta["methods"]]
        keep = [m for m in (current or []) if m in meta["methods"]]
        pages = max(1, -(-int(meta["n"]) // PAGE_SIZE))
        return opts, keep or list(meta["methods"]), 1, pages

    @app.callback(
        Output("attr-gallery", "figure"), Output("attr-body", "style"),
        Output("attr-metrics", "children"), Output("attr-paging", "style"),
        Output("attr-pages", "children"),
        Input("attr-run", "value"), Input("attr-key", "value"), Input("attr-methods", "value"),
        Input("attr-opacity", "value"), Input("attr-page", "value"),
    )
    def _gallery(run, key, methods, opacity, page):
        if not run or not key:
            return {}, {"display": "none"}, "", {"display": "none"}, ""
        reader = state.reader(run)
        meta = _meta(reader, key)
        fkey = meta["file_key"]
        n = int(meta["n"])
        pages = max(1, -(-n // PAGE_SIZE))
        page = min(max(1, int(page or 1)), pages)
        first, last = (page - 1) * PAGE_SIZE, min(n, page * PAGE_SIZE)
        images = np.asarray(reader.array("attr_images", fkey, mmap=True)[first:last], dtype=np.float32)
        maps = {m: np.asarray(reader.array("attributions", f"{fkey}.{m}", mmap=True)[first:last],
                              dtype=np.float32)
                for m in meta["methods"]}
        names = meta.get("class_names")
        rows = []
        for i in range(first, last):
            def nm(c):
                return names[c] if names and 0 <= c < len(names) else str(c)
            lab = meta["labels"][i]
            rows.append(f"{'true ' + nm(lab) if lab >= 0 else ''}<br>pred {nm(meta['pred'][i])}")
        fig = attribution_gallery(images, maps, methods=methods or [],
                                  opacity=float(0.5 if opacity is None else opacity),
                                  row_labels=rows)
        paging = {} if pages > 1 else {"display": "none"}
        text = f" page {page} of {pages}: images {first + 1}-{last} of {n}"
        return fig, {}, _metrics_table(reader, key, meta), paging, text


def _meta(reader, key: str) -> dict:
    for k in reader.objects("attributions"):
        meta = reader.object("attributions", k)
        if meta["key"] == key:
            return meta
    raise KeyError(key)


def _metrics_table(reader, key: str, meta: dict):
    df = reader.query("SELECT * FROM attribution_metrics WHERE key = ?", [key])
    if df.empty:
        return ""
    agg = {"drop": "mean", "increase": "mean"}
    if "pointing_hit" in df.columns and df["pointing_hit"].notna().any():
        agg["pointing_hit"] = "mean"
    t = df.groupby("method").agg(agg).reindex(meta["methods"]).reset_index()
    t["seconds"] = [meta["seconds"].get(m, float("nan")) for m in t["method"]]
    t["method"] = [METHOD_TITLES.get(m, m) for m in t["method"]]
    cols = [{"name": "method", "id": "method"},
            {"name": "average drop (lower is better)", "id": "drop", "type": "numeric",
             "format": {"specifier": ".1%"}},
            {"name": "increase in confidence", "id": "increase", "type": "numeric",
             "format": {"specifier": ".1%"}}]
    if "pointing_hit" in t.columns:
        cols.append({"name": "pointing game (hit rate)", "id": "pointing_hit",
                     "type": "numeric", "format": {"specifier": ".1%"}})
    cols.append({"name": "seconds", "id": "seconds", "type": "numeric",
                 "format": {"specifier": ".3f"}})
    notes = [html.Div(f"Grad-CAM, Grad-CAM++ and Score-CAM at layer {meta['layer']}; CAM at "
                      f"{meta.get('cam_layer', meta['layer'])}. {meta['n']} images.",
                      className="muted")]
    for m, why in (meta.get("skipped") or {}).items():
        notes.append(html.Div(f"{METHOD_TITLES.get(m, m)} skipped: {why}", className="muted"))
    return html.Div([dash_table.DataTable(id="attr-table", data=t.to_dict("records"),
                                          columns=cols, sort_action="native",
                                          style_cell={"fontSize": 12, "padding": "4px 8px"}),
                     *notes])


PAGE = Page(
    path="/attribution",
    title="Attribution",
    layout=layout,
    register=register,
    description="saliency, DeconvNet, guided backprop and CAM maps",
)
