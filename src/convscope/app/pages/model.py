"""Model: the network as an interactive graph; clicking a layer opens its panel (shapes,
parameters, feature maps of the sample images, and what later recordings add)."""

from __future__ import annotations

import dash_cytoscape as cyto
import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...figures.features import preferred_grid, unit_pane
from ...figures.graph import GRAPH_STYLESHEET, TYPE_COLORS, graph_elements
from ...figures.maps import cell_at, channel_zoom, feature_map_grid, image_strip
from ..components import graph, missing, no_runs_selected, page_header, pick_run, run_picker
from . import Page

cyto.load_extra_layouts()

SIZE_OPTIONS = {"": "type only", "time_share": "time share", "memory_share": "memory share",
                "param_share": "parameter share"}


def _has_graph(reader) -> bool:
    return reader.has_object("graph", "model")


def layout() -> html.Div:
    legend = html.Div(
        [html.Span([html.Span(className="swatch", style={"background": c}), cat],
                   className="legend-item")
         for cat, c in TYPE_COLORS.items()],
        className="legend",
    )
    return html.Div(
        [
            page_header("Model", "The network's data flow. Click a block (dashed) to open it; "
                        "click a layer to see its feature maps."),
            html.Div(
                [
                    run_picker("model-run"),
                    html.Label(["Size nodes by", dcc.Dropdown(
                        id="model-size", options=[{"label": v, "value": k}
                                                  for k, v in SIZE_OPTIONS.items()],
                        value="", clearable=False)], className="control"),
                    html.Label(["Fold to depth", dcc.RadioItems(
                        id="model-depth", options=[{"label": "stages", "value": 1},
                                                   {"label": "blocks", "value": 2},
                                                   {"label": "layers", "value": 99}],
                        value=1, inline=True)], className="control"),
                    html.Label(["Find a layer", dcc.Dropdown(id="model-find",
                                                             placeholder="layer path")],
                               className="control control-wide"),
                    html.Button("Collapse all", id="model-collapse", className="button"),
                ],
                className="controls",
            ),
            html.Div(id="model-status"),
            legend,
            html.Div(
                [
                    html.Div(cyto.Cytoscape(
                        id="model-graph", elements=[], stylesheet=GRAPH_STYLESHEET,
                        layout={"name": "dagre", "rankDir": "TB", "nodeSep": 18,
                                "rankSep": 28, "animate": False},
                        style={"width": "100%", "height": "78vh"},
                        minZoom=0.05, maxZoom=3, wheelSensitivity=0.3,
                    ), className="panel graph-panel"),
                    html.Div(id="model-panel", className="panel side-panel",
                             children=html.P("Click a layer.", className="muted")),
                ],
                className="two-col",
            ),
            dcc.Store(id="model-expanded", data=[]),
            dcc.Store(id="model-selected"),
        ]
    )


def register(app, state) -> None:
    @app.callback(
        Output("model-run", "options"), Output("model-run", "value"),
        Output("model-status", "children"),
        Input("run-select", "value"), State("model-run", "value"),
    )
    def _runs(selected, current):
        if not selected:
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, _has_graph)
        note = missing("model graph", "run.log_model(model, example_inputs)", lacking) \
            if lacking else None
        return options, value, note

    @app.callback(
        Output("model-expanded", "data"), Output("model-selected", "data"),
        Input("model-graph", "tapNodeData"), Input("model-find", "value"),
        Input("model-collapse", "n_clicks"), Input("model-run", "value"),
        State("model-expanded", "data"), prevent_initial_call=True,
    )
    def _tap(node, found, _collapse, _run, expanded):
        expanded = list(expanded or [])
        trigger = ctx.triggered_id
        if trigger == "model-collapse" or trigger == "model-run":
            return [], None
        if trigger == "model-find":
            if not found:
                return no_update, no_update
            parts = found.split(".")
            opened = [".".join(parts[:i]) for i in range(1, len(parts))]
            return sorted(set(expanded) | set(opened)), found
        if not node:
            return no_update, no_update
        name = node.get("module") or node["id"]
        if node.get("expandable"):
            expanded = sorted(set(expanded) ^ {name})
        return expanded, name

    @app.callback(
        Output("model-graph", "elements"), Output("model-find", "options"),
        Input("model-run", "value"), Input("model-expanded", "data"),
        Input("model-size", "value"), Input("model-depth", "value"),
        Input("model-selected", "data"),
    )
    def _elements(run, expanded, size_by, depth, selected):
        if not run:
            return [], []
        reader = state.reader(run)
        gd = reader.object("graph", "model")
        metric = None
        if size_by and reader.has_table("profile"):
            prof = reader.query(
                f'SELECT name, "{size_by}" AS v FROM profile WHERE model = ?', ["model"])
            metric = dict(zip(prof["name"], prof["v"].astype(float), strict=True))
        els = graph_elements(gd, expanded=expanded or [], depth=depth or 1, metric=metric,
                             selected=selected)
        names = sorted({b["name"] for b in gd["blocks"] if b["name"]})
        return els, [{"label": n, "value": n} for n in names]

    @app.callback(
        Output("model-panel", "children"),
        Input("model-selected", "data"), State("model-run", "value"),
    )
    def _panel(layer, run):
        if not run or not layer:
            return html.P("Click a layer (or pick one under 'Find a layer').", className="muted")
        reader = state.reader(run)
        return layer_panel(reader, layer)

    @app.callback(
        Output("fi-pane", "figure"),
        Input("fi-unit", "value"), State("model-selected", "data"), State("model-run", "value"),
        prevent_initial_call=True,
    )
    def _unit(unit, layer, run):
        if unit is None or not layer or not run:
            return no_update
        return _pane(state.reader(run), layer, int(unit))

    @app.callback(
        Output("fm-grid", "figure"),
        Input("fm-order", "value"), State("model-selected", "data"), State("model-run", "value"),
        prevent_initial_call=True,
    )
    def _reorder(order, layer, run):
        return _grid_figure(state.reader(run), layer, order)

    @app.callback(
        Output("fm-zoom", "figure"), Output("fm-zoom", "style"),
        Input("fm-grid", "clickData"), State("fm-grid", "figure"),
        State("model-selected", "data"), State("model-run", "value"),
        prevent_initial_call=True,
    )
    def _zoom(click, fig, layer, run):
        if not click or not fig:
            return no_update, no_update
        meta = fig["layout"]["meta"]
        pt = click["points"][0]
        row, col = cell_at(pt["x"], pt["y"], meta["h"], meta["w"])
        if not (0 <= row < meta["n"] and 0 <= col < meta["c"]):
            return no_update, no_update
        stored_col = meta["order"][col]
        maps = state.reader(run).array("feature_maps", layer)
        return (channel_zoom(maps, stored_col, meta["channels"][stored_col]),
                {"display": "block"})


def _fmt_shape(shapes) -> str:
    return ", ".join("[" + ", ".join(str(s) for s in sh) + "]" for sh in shapes) or "—"


def _grid_figure(reader, layer: str, order: str):
    idx = reader.arrays("feature_maps")
    row = idx[idx["key"] == layer].iloc[0]
    maps = reader.array("feature_maps", layer).astype(np.float32)
    meta = row["meta"]
    channels = meta["channels"]
    cols = list(range(len(channels)))
    if order == "mean":
        means = meta["channel_mean"]
        cols = sorted(cols, key=lambda k: -means[k])
    return feature_map_grid(maps, channels, order=cols)


def layer_panel(reader, layer: str) -> html.Div:
    gd = reader.object("graph", "model")
    node = next((n for n in gd["nodes"] if n["name"] == layer or n.get("module") == layer), None)
    block = next((b for b in gd["blocks"] if b["name"] == layer), None)
    facts = []
    if node:
        facts += [("type", node["type"]), ("input", _fmt_shape(node["input_shapes"])),
                  ("output", _fmt_shape(node["output_shapes"])),
                  ("parameters", f"{node['params']:,}")]
    elif block:
        facts += [("type", block["type"]), ("parameters", f"{block['params']:,}"),
                  ("contains", f"{len(block['children'])} modules")]
    if reader.has_table("profile"):
        prof = reader.query("SELECT * FROM profile WHERE name = ? AND model = ?",
                            [layer, "model"])
        if len(prof):
            p = prof.iloc[0]
            facts += [("forward", f"{p['forward_s'] * 1e3:.3f} ms"),
                      ("backward", f"{p['backward_s'] * 1e3:.3f} ms"),
                      ("time share", f"{p['time_share']:.1%}"),
                      ("memory", f"{int(p['memory_bytes']):,} B ({p['memory_share']:.1%})")]
    children = [
        html.H2(layer, className="panel-title", id="panel-layer"),
        html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in facts], className="facts"),
    ]
    idx = reader.arrays("feature_maps")
    if len(idx) and layer in set(idx["key"]):
        meta = idx[idx["key"] == layer].iloc[0]["meta"]
        note = []
        if meta["capped_channels"]:
            note.append(f"{len(meta['channels'])} most active of "
                        f"{meta['original_shape'][1]} channels")
        if meta["downsampled"]:
            note.append(f"downsampled from {meta['original_shape'][2]}×"
                        f"{meta['original_shape'][3]}")
        samples = reader.array("samples", "feature_maps")
        children += [
            html.H3("Feature maps"),
            html.Div("rows = sample images, columns = channels; click a map to zoom"
                     + (" · " + "; ".join(note) if note else ""), className="muted"),
            graph("fm-samples", figure=image_strip(samples), config={"staticPlot": True}),
            html.Label(["Order channels by ", dcc.RadioItems(
                id="fm-order", options=[{"label": "index", "value": "index"},
                                        {"label": "mean activation", "value": "mean"}],
                value="index", inline=True)], className="control"),
            graph("fm-grid", figure=_grid_figure(reader, layer, "index")),
            graph("fm-zoom", style={"display": "none"}),
        ]
    else:
        children.append(missing("feature maps for this layer",
                                "run.log_feature_maps(model, images)", [reader.name]))
    for extra in PANEL_SECTIONS:
        section = extra(reader, layer)
        if section is not None:
            children.append(section)
    return html.Div(children, id="layer-panel", **{"data-layer": layer})


def _diagnosis_section(reader, layer: str):
    """The diagnosis findings about this layer (and a link to its full view)."""
    keys = reader.objects("diagnosis")
    if not keys:
        return None
    from .diagnosis import findings_list

    report = reader.object("diagnosis", keys[0])
    mine = [f for f in report.get("findings", []) if f.get("layer") in (layer, layer + ":1")]
    body = findings_list({"findings": mine}, link=False) if mine else html.Div(
        "No finding about this layer.", className="muted")
    return html.Div([html.H3("Diagnosis"), body,
                     dcc.Link("all findings and this layer's dendrogram →", href="/diagnosis",
                              className="muted")])


def _index_meta(reader, kind: str, layer: str) -> dict | None:
    idx = reader.arrays(kind)
    if not len(idx) or layer not in set(idx["key"]):
        return None
    return idx[idx["key"] == layer].iloc[0]["meta"]


def _features_section(reader, layer: str):
    """Preferred inputs (activation maximisation) and top-k dataset crops of the layer's units."""
    pref = _index_meta(reader, "preferred_inputs", layer)
    crops = _index_meta(reader, "top_crops", layer)
    if pref is None and crops is None:
        return None
    children = [html.H3("What its units prefer")]
    units: list[int] = []
    if pref is not None:
        images = reader.array("preferred_inputs", layer).astype(np.float32)
        units = list(pref["units"])
        children += [
            html.Div(f"optimised inputs (activation maximisation, {pref['seconds']:.1f} s for "
                     f"{len(units)} units; value reached in brackets)", className="muted"),
            graph("fi-grid", figure=preferred_grid(images, units, pref.get("values")),
                  config={"staticPlot": True}),
        ]
    if crops is not None:
        n_ch = reader.array("top_crops", layer, mmap=True).shape[0]
        units = units or list(range(n_ch))
    children += [
        html.Label(["Unit ", dcc.Dropdown(id="fi-unit", options=units, value=units[0],
                                          clearable=False, style={"width": "120px"})],
                   className="control"),
        graph("fi-pane", figure=_pane(reader, layer, units[0]), config={"staticPlot": True}),
    ]
    return html.Div(children, id="features-section")


def _pane(reader, layer: str, unit: int):
    pref = _index_meta(reader, "preferred_inputs", layer)
    preferred = None
    if pref is not None and unit in pref["units"]:
        preferred = reader.array("preferred_inputs", layer)[pref["units"].index(unit)]
    crops, values = None, None
    if _index_meta(reader, "top_crops", layer) is not None:
        crops = reader.array("top_crops", layer, mmap=True)[unit].astype(np.float32)
        rows = reader.query("SELECT value FROM top_examples WHERE layer = ? AND channel = ? "
                            "ORDER BY rank", [layer, int(unit)])
        values = rows["value"].tolist()
        keep = [i for i, v in enumerate(values) if np.isfinite(v)]
        crops, values = crops[keep], [values[i] for i in keep]
    return unit_pane(unit, preferred, crops, values)


# Later capabilities (preferred inputs, diagnosis) add sections: f(reader, layer) -> component.
PANEL_SECTIONS: list = [_features_section, _diagnosis_section]


PAGE = Page(
    path="/model",
    title="Model",
    layout=layout,
    register=register,
    description="the network graph; click a layer for its feature maps",
)
