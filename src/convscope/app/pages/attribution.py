"""Attribution: saliency, DeconvNet, guided backprop, CAM, Grad-CAM, Grad-CAM++ and Score-CAM
maps of sample images side by side, with their quality metrics."""

from __future__ import annotations

import numpy as np
from dash import Input, Output, State, dash_table, dcc, html

from ...errors import StoreError
from ...figures.attribution import METHOD_TITLES, attribution_gallery
from ...formats import attribution as fmt
from ..components import (
    FIGURE,
    NOTICE,
    Damage,
    error_figure,
    graph,
    keep_or_first,
    picker_page,
    register_run_picker,
    shrink,
    survive,
)
from . import Page

#: Images (rows) shown at once; larger sets are paged.
PAGE_SIZE = 8
#: Pixels a side of the images and maps sent (larger ones are area-averaged).
MAX_SIDE = 128


def layout() -> html.Div:
    return picker_page(
        "attr", "Attribution", "Which pixels drive each prediction: gradient methods "
        "(input space, max |·| over channels) and class activation maps, each scaled to [0, 1] "
        "per image and overlaid on the input.",
        [
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
        ],
        html.Div(id="attr-key-notes"),
        html.Div([graph("attr-gallery")], className="panel", id="attr-body",
                 style={"display": "none"}),
        html.H3("Quality of the maps"),
        html.Div(id="attr-metrics"),
    )


def register(app, state) -> None:
    register_run_picker(app, state, "attr", fmt.has_sets, "attribution maps",
                        "run.log_attributions(model, images)", fmt.TABLES)

    @app.callback(
        Output("attr-key", "options"), Output("attr-key", "value"),
        Output("attr-key-notes", "children"),
        Input("attr-run", "value"), State("attr-key", "value"),
    )
    @survive([], None, NOTICE)
    def _keys(run, current):
        if not run:
            return [], None, None
        dmg = Damage()
        keys = [m.key for m in _metas(state.reader(run), dmg)]
        return keys, keep_or_first(current, keys), dmg.notice()

    @app.callback(
        Output("attr-methods", "options"), Output("attr-methods", "value"),
        Output("attr-page", "value"), Output("attr-page", "max"),
        Input("attr-run", "value"), Input("attr-key", "value"), State("attr-methods", "value"),
    )
    @survive([], [], 1, 1)
    def _methods(run, key, current):
        if not run or not key:
            return [], [], 1, 1
        meta = _meta(state.reader(run), key)
        opts = [{"label": METHOD_TITLES.get(m, m), "value": m} for m in meta.methods]
        keep = [m for m in (current or []) if m in meta.methods]
        pages = max(1, -(-int(meta.n) // PAGE_SIZE))
        return opts, keep or list(meta.methods), 1, pages

    @app.callback(
        Output("attr-gallery", "figure"), Output("attr-body", "style"),
        Output("attr-metrics", "children"), Output("attr-paging", "style"),
        Output("attr-pages", "children"),
        Input("attr-run", "value"), Input("attr-key", "value"), Input("attr-methods", "value"),
        Input("attr-opacity", "value"), Input("attr-page", "value"),
    )
    @survive(FIGURE, {}, NOTICE, {"display": "none"}, "")
    def _gallery(run, key, methods, opacity, page):
        if not run or not key:
            return {}, {"display": "none"}, "", {"display": "none"}, ""
        reader = state.reader(run)
        dmg = Damage()
        meta = _meta(reader, key)
        # the key as logged: the store maps it to its file (safe_key, or the old scheme's name)
        fkey = meta.key
        n = int(meta.n)
        pages = max(1, -(-n // PAGE_SIZE))
        page = min(max(1, int(page or 1)), pages)
        first, last = (page - 1) * PAGE_SIZE, min(n, page * PAGE_SIZE)
        images = None
        with dmg.guard(run, "the input images"):
            images = np.asarray(fmt.images(reader, fkey, mmap=True)[first:last],
                                dtype=np.float32)
        maps = {}
        for m in meta.methods:
            with dmg.guard(run, f"the {METHOD_TITLES.get(m, m)} maps"):
                maps[m] = np.asarray(fmt.maps(reader, fkey, m, mmap=True)[first:last],
                                     dtype=np.float32)
        # bounded response: cells are shown at most 130 px tall
        images = None if images is None else shrink(images, MAX_SIDE)
        maps = {m: shrink(v, MAX_SIDE) for m, v in maps.items()}
        if images is None and maps:  # the maps alone, over black
            b, h, w = next(iter(maps.values())).shape
            images = np.zeros((b, 3, h, w), np.float32)
        names = meta.class_names
        rows = []
        for i in range(first, last):
            def nm(c):
                return names[c] if names and 0 <= c < len(names) else str(c)
            lab = meta.labels[i]
            rows.append(f"{'true ' + nm(lab) if lab >= 0 else ''}<br>pred {nm(meta.pred[i])}")
        shown = [m for m in (methods or []) if m in maps]
        if images is None or (methods and not shown and dmg):
            fig = error_figure([t for _, t in dmg.items])
        else:
            fig = attribution_gallery(images, maps, methods=shown,
                                      opacity=float(0.5 if opacity is None else opacity),
                                      row_labels=rows)
        paging = {} if pages > 1 else {"display": "none"}
        text = f" page {page} of {pages}: images {first + 1}-{last} of {n}"
        table = None
        with dmg.guard(run, "the quality table"):
            dmg.check(reader, fmt.TABLES, run_file=False)
            table = _metrics_table(reader, key, meta)
        return fig, {}, [dmg.notice(), table], paging, text


def _metas(reader, dmg: Damage) -> list[fmt.AttributionInfo]:
    """The settings of every stored attribution set; damaged ones are left out (and named)."""
    out = []
    for k in fmt.set_files(reader):
        with dmg.guard(reader.name, f"attribution set {k}"):
            out.append(fmt.info(reader, k))
    return out


def _meta(reader, key: str) -> fmt.AttributionInfo:
    dmg = Damage()
    for meta in _metas(reader, dmg):
        if meta.key == key:
            return meta
    if dmg:
        raise StoreError("; ".join(t for _, t in dmg.items))
    raise StoreError(f"run {reader.name!r} has no attribution set {key!r}: pick another set.")


def _metrics_table(reader, key: str, meta: fmt.AttributionInfo):
    df = fmt.metrics(reader, key)
    if df.empty:
        return ""
    agg = {"drop": "mean", "increase": "mean"}
    if "pointing_hit" in df.columns and df["pointing_hit"].notna().any():
        agg["pointing_hit"] = "mean"
    t = df.groupby("method").agg(agg).reindex(meta.methods).reset_index()
    t["seconds"] = [meta.seconds.get(m, float("nan")) for m in t["method"]]
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
    notes = [html.Div(f"Grad-CAM, Grad-CAM++ and Score-CAM at layer {meta.layer}; CAM at "
                      f"{meta.cam_layer}. {meta.n} images.",
                      className="muted")]
    for m, how in (meta.modes or {}).items():  # e.g. Score-CAM exact or fast (None: old run)
        notes.append(html.Div(f"{METHOD_TITLES.get(m, m)} {how}", className="muted",
                              id=f"attr-mode-{m}"))
    for m, why in meta.skipped.items():
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
