"""Model: the network as an interactive graph; clicking a layer opens its panel (shapes,
parameters, feature maps of the sample images, and what later recordings add)."""

from __future__ import annotations

import json
import math
from typing import Any

import dash_cytoscape as cyto
import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update

from ...errors import StoreError
from ...figures.features import preferred_grid, unit_pane
from ...figures.graph import (
    GRAPH_STYLESHEET,
    LABEL_FONT_PX,
    MIN_LABEL_PX,
    TYPE_COLORS,
    graph_elements,
)
from ...figures.maps import cell_at, channel_zoom, feature_map_grid, image_strip
from ...formats import ARRAYS_TABLE, structure
from ...formats import diagnosis as diag_format
from ...formats import feature_maps as fm_format
from ...formats import preferred_inputs as pi_format
from ...formats import top_examples as te_format
from ..components import (
    FIGURE,
    NOTICE,
    Damage,
    RequestReader,
    error_figure,
    graph,
    missing,
    picker_page,
    register_run_picker,
    shrink,
    survive,
)
from . import Page
from .model_cnnvis import chain_container, cnnvis_section, register_cnnvis  # CNNVis
from .model_params import params_section
from .model_projections import projections_section, register_projections  # DeconvNet
from .model_units import compute_section, register_units  # units on demand

cyto.load_extra_layouts()

# Response bounds of the layer panel (ResNet-50's layer4 has 2048 channels).
MAX_GRID_CHANNELS = 128  #: feature-map columns shown at once
MAX_GRID_CELLS = 200_000  #: feature-map values sent at once (fewer columns for large maps)
MAX_GRID_IMAGES = 16  #: feature-map rows (sample images) shown
MAX_PREFERRED = 16  #: optimised inputs in the grid (every unit stays pickable)
MAX_CROPS = 16  #: top-example crops in a unit's pane
MAX_THUMB = 96  #: pixels a side of the images sent (area-averaged above)
MAX_ZOOM_VALUES = 250_000  #: values of one zoomed channel (larger maps are subsampled)

# The graph's view (see _VIEW_JS). Default: the whole graph when its labels are then at least
# MIN_LABEL_PX tall, else zoom READ_ZOOM (labels LABEL_FONT_PX tall) from the input down; "Fit"
# shows the whole graph (labels under MIN_LABEL_PX are not drawn; hover a node for its name).
READ_ZOOM = 1.0
FIT_PADDING = 24  #: pixels around the graph at fit
#: rankSep 8 (was 20): with the canvas fitted to the window (GRAPH_HEIGHT, 590 px at 1400 x 900)
#: the demo's 13 stacked nodes still fit it whole with labels >= MIN_LABEL_PX
GRAPH_LAYOUT = {"name": "dagre", "rankDir": "TB", "nodeSep": 16, "rankSep": 8,
                "animate": False}

#: The canvas fills the window below the controls and legend (~260 px at 1400 px wide; 40 px of
#: panel border and page padding below, 10 px to spare): the page does not scroll; >= 420 px.
GRAPH_HEIGHT = "max(420px, calc(100vh - 310px))"

SIZE_OPTIONS = {"": "type only", "time_share": "time share", "memory_share": "memory share",
                "param_share": "parameter share"}


def layout() -> html.Div:
    legend = html.Div(
        [html.Span([html.Span(className="swatch", style={"background": c}), cat],
                   className="legend-item")
         for cat, c in TYPE_COLORS.items()],
        className="legend",
    )
    return picker_page(
        "model", "Model", "The network's data flow. Click a block (dashed) to open it; click a "
        "layer to see its feature maps.",
        [
            html.Label(["Size nodes by", dcc.Dropdown(
                id="model-size", options=[{"label": v, "value": k}
                                          for k, v in SIZE_OPTIONS.items()],
                value="", clearable=False)], className="control"),
            html.Label(["Fold to depth", dcc.RadioItems(
                id="model-depth", options=[{"label": "stages", "value": 1},
                                           {"label": "blocks", "value": 2},
                                           {"label": "layers", "value": 99}],
                value=1, inline=True)], className="control"),
            html.Label(["Find a layer", dcc.Dropdown(id="model-find", placeholder="layer path")],
                       className="control control-wide"),
            html.Button("Fit", id="model-fit", className="button",
                        title="show the whole graph (hover a node for its name)"),
            html.Button("Collapse all", id="model-collapse", className="button"),
        ],
        html.Div(id="model-graph-notice"),
        legend,
        html.Div(
            [
                html.Div(cyto.Cytoscape(
                    id="model-graph", elements=[], stylesheet=GRAPH_STYLESHEET,
                    layout={**GRAPH_LAYOUT, "fit": False},
                    # the page lays the graph out itself (_VIEW_JS), once the elements are in
                    autoRefreshLayout=False,
                    style={"width": "100%", "height": GRAPH_HEIGHT},
                    minZoom=0.01, maxZoom=3, wheelSensitivity=0.3,
                ), className="panel graph-panel"),
                html.Div(id="model-panel", className="panel side-panel",
                         children=html.P("Click a layer.", className="muted")),
            ],
            className="two-col",
        ),
        dcc.Store(id="model-expanded", data=[]),
        dcc.Store(id="model-view"),
        dcc.Store(id="model-selected"),
        chain_container(),  # CNNVis
    )


def register(app, state) -> None:
    # the layer panel's callbacks read the open layer and its run: (layer, run)
    open_layer = (State("model-selected", "data"), State("model-run", "value"))

    register_run_picker(app, state, "model", structure.has_graph, "model graph",
                        structure.SOURCE, PANEL_TABLES)

    app.clientside_callback(
        _VIEW_JS, Output("model-view", "data"),
        Input("model-graph", "elements"), Input("model-fit", "n_clicks"),
        Input("model-find", "value"),
    )

    @app.callback(
        Output("model-expanded", "data"), Output("model-selected", "data"),
        Input("model-graph", "tapNodeData"), Input("model-find", "value"),
        Input("model-collapse", "n_clicks"), Input("model-run", "value"),
        State("model-expanded", "data"), prevent_initial_call=True,
    )
    @survive(no_update, no_update)
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

    @app.callback(Output("model-find", "options"), Input("model-run", "value"))
    @survive([])
    def _find_options(run):
        """Find's options depend on the run only: sent again on every graph change, they
        re-rendered an open list under the user's pointer (and lost what was typed)."""
        if not run:
            return []
        gd = structure.graph(state.reader(run))
        return [{"label": n, "value": n} for n in sorted({b["name"] for b in gd["blocks"]
                                                          if b["name"]})]

    @app.callback(
        Output("model-graph", "elements"), Output("model-graph-notice", "children"),
        Input("model-run", "value"), Input("model-expanded", "data"),
        Input("model-size", "value"), Input("model-depth", "value"),
        Input("model-selected", "data"),
    )
    @survive([], NOTICE)
    def _elements(run, expanded, size_by, depth, selected):
        if not run:
            return [], None
        reader = state.reader(run)
        gd = structure.graph(reader)
        metric = None
        dmg = Damage()
        # the column is an identifier: only the fixed set of size options is ever looked up
        if isinstance(size_by, str) and size_by in SIZE_OPTIONS and size_by \
                and structure.has_profile(reader):
            with dmg.guard(run, "the profile (node sizes)"):
                metric = structure.shares(reader, size_by)
        els = graph_elements(gd, expanded=expanded or [], depth=depth or 1, metric=metric,
                             selected=selected)
        return els, dmg.notice()

    @app.callback(
        Output("model-panel", "children"),
        Input("model-selected", "data"), State("model-run", "value"),
    )
    @survive(NOTICE)
    def _panel(layer, run):
        if not run or not layer:
            return html.P("Click a layer (or pick one under 'Find a layer').", className="muted")
        return layer_panel(state.reader(run), layer)

    @app.callback(
        Output("fi-unit", "value"),
        Input("fi-grid", "clickData"), *open_layer,
        prevent_initial_call=True,
    )
    @survive(no_update)
    def _pick(click, layer, run):
        """Clicking an optimised input picks its unit (the pane, the projections follow)."""
        unit = _clicked_unit(state, click, layer, run)
        return no_update if unit is None else unit

    @app.callback(
        Output("fi-pane", "figure"),
        Input("fi-unit", "value"), *open_layer,
        prevent_initial_call=True,
    )
    @survive(FIGURE)
    def _unit(unit, layer, run):
        if unit is None or not layer or not run:
            return no_update
        dmg = Damage()
        fig = _pane(RequestReader(state.reader(run)), layer, int(unit), dmg)
        return fig if not dmg else error_figure([t for _, t in dmg.items]) if fig is None \
            else _with_problems(fig, dmg)

    @app.callback(
        Output("fm-grid", "figure"),
        Input("fm-order", "value"), *open_layer,
        prevent_initial_call=True,
    )
    @survive(FIGURE)
    def _reorder(order, layer, run):
        return _grid_figure(state.reader(run), layer, order)

    @app.callback(
        Output("fm-zoom", "figure"), Output("fm-zoom", "style"),
        Input("fm-grid", "clickData"), State("fm-grid", "figure"), *open_layer,
        prevent_initial_call=True,
    )
    @survive(FIGURE, {"display": "block"})
    def _zoom(click, fig, layer, run):
        if not click or not fig:
            return no_update, no_update
        meta = fig["layout"]["meta"]
        pt = click["points"][0]
        row, col = cell_at(pt["x"], pt["y"], meta["h"], meta["w"])
        if not (0 <= row < meta["n"] and 0 <= col < meta["c"]):
            return no_update, no_update
        stored_col = meta["order"][col]
        if not isinstance(run, str) or not isinstance(layer, str) or not isinstance(
                stored_col, int) or isinstance(stored_col, bool):
            return no_update, no_update
        maps = _zoom_maps(state.reader(run), layer, stored_col)
        return (channel_zoom(maps, 0, int(meta["channels"][stored_col])),
                {"display": "block"})

    register_projections(app, state)  # DeconvNet
    register_cnnvis(app, state)  # CNNVis
    register_units(app, state)  # units on demand


# Lays the graph out once cytoscape holds the new elements, then sets the view:
# - a layer picked under "Find a layer": centred (zoomed in to READ_ZOOM if needed);
# - after a click: the clicked node (or the first node of the block it opened) stays where it was;
# - a new set of nodes (another run, depth or "Collapse all"): the default view (see READ_ZOOM);
# - "Fit": the whole graph.
# Hovering a node shows its full name, type, shape and parameters (the canvas' title).
_VIEW_JS = """
function(elements, fitClicks, found) {
  const dc = window.dash_clientside;
  const el = document.getElementById('model-graph');
  if (!el || !el._cyreg) { return dc.no_update; }
  const cy = el._cyreg.cy;
  const LAYOUT = $LAYOUT, FONT = $FONT, MIN = $MIN, READ = $READ, PAD = $PAD;
  const trig = (dc.callback_context.triggered || []).map(t => t.prop_id);
  let st = cy.scratch('_convscope');
  if (!st) {
    st = {ids: null, focus: null, anchor: null, gen: 0};
    cy.scratch('_convscope', st);
    cy.on('tap', 'node', e => {
      st.anchor = {id: e.target.id(), pos: Object.assign({}, e.target.renderedPosition())};
    });
    cy.on('mouseover', 'node', e => { el.title = e.target.data('full') || e.target.id(); });
    cy.on('mouseout', 'node', () => { el.title = ''; });
  }
  const findNode = name => {
    const n = cy.getElementById(name);
    return n.length ? n : cy.nodes().filter(m => m.data('module') === name).first();
  };
  const defaultView = () => {
    if (!cy.nodes().length) { return; }
    cy.fit(cy.nodes(), PAD);
    if (cy.zoom() * FONT >= MIN) { return; }
    cy.zoom(READ);
    const z = cy.zoom(), w = cy.width(), bb = cy.nodes().boundingBox();
    const first = cy.nodes().min(n => n.position('y')).ele;
    const cx = bb.w * z <= w - 2 * PAD ? (bb.x1 + bb.x2) / 2 : first.position('x');
    cy.pan({x: w / 2 - z * cx, y: PAD - z * bb.y1});
  };
  const view = changed => {
    if (st.focus) {
      const n = findNode(st.focus);
      if (n.length) {
        st.focus = null; st.anchor = null;
        cy.zoom(Math.max(cy.zoom(), READ));
        cy.center(n);
        return;
      }
    }
    if (st.anchor) {
      const a = st.anchor;
      st.anchor = null;
      let t = cy.getElementById(a.id);
      if (!t.length) {
        const inside = cy.nodes().filter(n => n.id().startsWith(a.id + '.'));
        t = inside.length ? inside.min(n => n.position('y')).ele : t;
      }
      if (t.length) {
        const z = cy.zoom(), p = t.position();
        cy.pan({x: a.pos.x - z * p.x, y: a.pos.y - z * p.y});
        return;
      }
    }
    if (changed) { defaultView(); }
  };
  if (trig.includes('model-fit.n_clicks')) {
    cy.fit(cy.elements(), PAD);
    return Date.now();
  }
  if (trig.includes('model-find.value') && found) { st.focus = found; }
  if (!trig.includes('model-graph.elements')) { return dc.no_update; }
  const want = (elements || []).filter(e => e.data && e.data.source === undefined)
    .map(e => e.data.id);
  const key = want.slice().sort().join('\\n');
  const gen = ++st.gen;  // only the latest elements are laid out
  let tries = 0;
  const go = () => {
    if (gen !== st.gen) { return; }
    if (cy.nodes().length !== want.length || want.some(id => !cy.getElementById(id).length)) {
      if (tries++ < 400) { setTimeout(go, 25); }
      return;
    }
    const changed = key !== st.ids;
    st.ids = key;
    const lay = cy.layout(Object.assign({}, LAYOUT, {fit: false}));
    lay.one('layoutstop', () => view(changed));
    lay.run();
  };
  setTimeout(go, 0);
  return Date.now();
}
"""
for _name, _value in {"$LAYOUT": json.dumps(GRAPH_LAYOUT), "$FONT": LABEL_FONT_PX,
                      "$MIN": MIN_LABEL_PX, "$READ": READ_ZOOM, "$PAD": FIT_PADDING}.items():
    _VIEW_JS = _VIEW_JS.replace(_name, str(_value))


def _zoom_maps(reader, layer: str, column: int) -> np.ndarray:
    """Stored column ``column`` of the layer's feature maps as ``[n, 1, h, w]`` float32, read
    memory-mapped: at most MAX_GRID_IMAGES images and about MAX_ZOOM_VALUES values (larger maps
    are subsampled by a stride), so a file declaring a huge array costs no more."""
    maps = fm_format.maps(reader, layer, mmap=True)
    if maps.ndim != 4 or not 0 <= column < maps.shape[1]:
        raise StoreError(f"the feature maps of {layer} in run {reader.name!r} have shape "
                         f"{tuple(maps.shape)}, without column {column}: record them again "
                         f"with {fm_format.SOURCE}.")
    n, _, h, w = maps.shape
    n = min(n, MAX_GRID_IMAGES)
    step = max(1, math.ceil(math.sqrt(n * h * w / MAX_ZOOM_VALUES)))
    return np.array(maps[:n, column: column + 1, ::step, ::step], dtype=np.float32)


def _fmt_shape(shapes) -> str:
    return ", ".join("[" + ", ".join(str(s) for s in sh) + "]" for sh in shapes) or "—"


def _grid_figure(reader, layer: str, order: str):
    meta = fm_format.layer_meta(reader, layer)
    if meta is None:
        raise StoreError(f"the feature maps of {layer} are not in run {reader.name!r}'s arrays "
                         f"index (tables/{ARRAYS_TABLE}): record them with {fm_format.SOURCE}.")
    maps = fm_format.maps(reader, layer, mmap=True)
    channels = [int(c) for c in meta["channels"]]
    cols = list(range(len(channels)))
    if order == "mean":
        means = meta["channel_mean"]
        cols = sorted(cols, key=lambda k: -means[k])
    # bounded response: at most MAX_GRID_CHANNELS columns and MAX_GRID_IMAGES rows
    n = min(maps.shape[0], MAX_GRID_IMAGES)
    cols = cols[:_grid_columns(maps.shape)]
    sub = np.asarray(maps[:n][:, cols], dtype=np.float32)
    fig = feature_map_grid(sub, [channels[k] for k in cols])
    # clicks map back to the stored columns (the zoom reads the stored array)
    fig.update_layout(meta={**fig.layout.meta, "order": cols, "channels": channels,
                            "shown": len(cols), "stored": len(channels)})
    return fig


def _grid_columns(shape: tuple) -> int:
    """How many channels of stored maps ``[N, C, h, w]`` the grid shows."""
    n, c, h, w = shape
    per_column = max(1, min(n, MAX_GRID_IMAGES) * h * w)
    return max(1, min(c, MAX_GRID_CHANNELS, MAX_GRID_CELLS // per_column))


def _grid_note(maps_shape: tuple, stored: int) -> str:
    parts = []
    shown = _grid_columns(maps_shape)
    if stored > shown:
        parts.append(f"showing {shown} of {stored} stored channels (order by mean "
                     "activation to see the most active)")
    if maps_shape[0] > MAX_GRID_IMAGES:
        parts.append(f"showing {MAX_GRID_IMAGES} of {maps_shape[0]} images")
    return "; ".join(parts)


def layer_panel(reader, layer: str) -> html.Div:
    reader = reader if isinstance(reader, RequestReader) else RequestReader(reader)
    run = reader.name
    dmg = Damage()
    damaged = dmg.check(reader, PANEL_TABLES, run_file=False)
    gd = None
    with dmg.guard(run, "the model graph"):
        gd = structure.graph(reader)
    node = block = None
    if isinstance(gd, dict):
        node = next((n for n in gd.get("nodes", [])
                     if n["name"] == layer or n.get("module") == layer), None)
        block = next((b for b in gd.get("blocks", []) if b["name"] == layer), None)
    facts = []
    with dmg.guard(run, "the layer's facts"):
        if node:
            facts += [("type", node["type"]), ("input", _fmt_shape(node["input_shapes"])),
                      ("output", _fmt_shape(node["output_shapes"])),
                      ("parameters", f"{node['params']:,}")]
        elif block:
            facts += [("type", block["type"]), ("parameters", f"{block['params']:,}"),
                      ("contains", f"{len(block['children'])} modules")]
    if structure.has_profile(reader):
        with dmg.guard(run, "the layer's profile"):
            p = structure.profile_row(reader, layer)
            if p is not None:
                facts += [("forward", _ms(p["forward_s"])),
                          ("backward", _ms(p["backward_s"])),
                          ("time share", f"{p['time_share']:.1%}"),
                          ("memory", f"{int(p['memory_bytes']):,} B ({p['memory_share']:.1%})")]
    children = [
        html.H2(layer, className="panel-title", id="panel-layer"),
        html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in facts], className="facts"),
    ]
    with dmg.guard(run, "the feature maps"):
        children += _feature_maps_section(reader, layer, dmg, ARRAYS_TABLE in damaged)
    for extra in PANEL_SECTIONS:
        with dmg.guard(run, (extra.__doc__ or extra.__name__).split("(")[0].strip()):
            section = extra(reader, layer)
            if section is not None:
                children.append(section)
    if dmg:
        children.insert(1, dmg.notice())
    return html.Div(children, id="layer-panel", **{"data-layer": layer})


def _feature_maps_section(reader, layer: str, dmg: Damage, index_damaged: bool) -> list:
    meta = fm_format.layer_meta(reader, layer)
    if meta is None:
        if index_damaged:  # the notice names the damaged part of the arrays index
            return [html.H3("Feature maps"), html.Div(
                "Feature maps cannot be listed: the run's arrays table is damaged (see above).",
                className="muted")]
        return [missing("feature maps for this layer", fm_format.SOURCE, [reader.name])]
    note = []
    if meta.get("capped_channels"):
        note.append(f"{len(meta['channels'])} most active of "
                    f"{meta['original_shape'][1]} channels")
    if meta.get("downsampled"):
        note.append(f"downsampled from {meta['original_shape'][2]}×"
                    f"{meta['original_shape'][3]}")
    out = [html.H3("Feature maps")]
    with dmg.guard(reader.name, "the sample images"):
        samples = fm_format.samples(reader, mmap=True)
        out.append(graph("fm-samples", figure=image_strip(
            _thumbs(samples[:MAX_GRID_IMAGES])), config={"staticPlot": True}))
    grid = None
    with dmg.guard(reader.name, "the feature maps"):
        maps_shape = fm_format.maps(reader, layer, mmap=True).shape
        grid = _grid_figure(reader, layer, "index")
        capped = _grid_note(maps_shape, len(meta["channels"]))
        if capped:
            note.append(capped)
    out.insert(1, html.Div("rows = sample images, columns = channels; click a map to zoom"
                           + (" · " + "; ".join(note) if note else ""), className="muted"))
    if grid is not None:
        out += [
            html.Label(["Order channels by ", dcc.RadioItems(
                id="fm-order", options=[{"label": "index", "value": "index"},
                                        {"label": "mean activation", "value": "mean"}],
                value="index", inline=True)], className="control"),
            graph("fm-grid", figure=grid),
            graph("fm-zoom", style={"display": "none"}),
        ]
    return out


def _ms(seconds) -> str:
    """Seconds as milliseconds; a time the profile did not measure (NaN: e.g. the backward of
    ``log_model(..., backward=False)``) as a dash."""
    try:
        v = float(seconds)
    except (TypeError, ValueError):
        return "—"
    return f"{v * 1e3:.3f} ms" if math.isfinite(v) else "—"


def _diagnosis_section(reader, layer: str):
    """The diagnosis findings about this layer (and a link to its full view)."""
    keys = diag_format.keys(reader)
    if not keys:
        return None
    from .diagnosis import findings_list

    report = diag_format.report_dict(reader, keys[0])
    mine = [f for f in report.get("findings", []) if f.get("layer") in (layer, layer + ":1")]
    body = findings_list({"findings": mine}, link=False) if mine else html.Div(
        "No finding about this layer.", className="muted")
    return html.Div([html.H3("Diagnosis"), body,
                     dcc.Link("all findings and this layer's dendrogram →", href="/diagnosis",
                              className="muted")])


def _features_section(reader, layer: str):
    """Preferred inputs (activation maximisation) and top-k dataset crops of the layer's units."""
    pref = pi_format.meta(reader, layer)
    crops = te_format.crops_meta(reader, layer)
    if pref is None and crops is None:
        return None
    dmg = Damage()
    children = [html.H3("What its units prefer")]
    units: list[int] = []
    if pref is not None:
        units = [int(u) for u in pref["units"]]
        with dmg.guard(reader.name, "the preferred inputs"):
            images = pi_format.images(reader, layer, mmap=True)
            shown = min(len(units), MAX_PREFERRED)
            values = pref.get("values")
            more = (f"; showing {shown} of {len(units)} units (pick any below)"
                    if shown < len(units) else "")
            children += [
                html.Div(f"optimised inputs (activation maximisation, {pref['seconds']:.1f} s "
                         f"for {len(units)} units; value reached in brackets; click one to "
                         f"pick its unit){more}",
                         className="muted"),
                graph("fi-grid", figure=preferred_grid(
                    _thumbs(images[:shown]), units[:shown],
                    values[:shown] if values is not None else None),
                    config={"displayModeBar": False, "scrollZoom": False},
                    style={"cursor": "pointer"}),
            ]
    if crops is not None and not units:
        with dmg.guard(reader.name, "the top examples"):
            n_ch = te_format.crops(reader, layer, mmap=True).shape[0]
            units = list(range(n_ch))
    if units:
        pane = _pane(reader, layer, units[0], dmg)
        children += [
            html.Label(["Unit ", dcc.Dropdown(id="fi-unit", options=units, value=units[0],
                                              clearable=False, style={"width": "120px"})],
                       className="control"),
            graph("fi-pane", figure=pane if pane is not None else error_figure(
                [t for _, t in dmg.items]), config={"staticPlot": True}),
        ]
    if dmg:
        children.insert(1, dmg.notice())
    return html.Div(children, id="features-section")


def _clicked_unit(state, click: Any, layer: Any, run: Any) -> int | None:
    """The unit of the optimised input clicked in ``fi-grid`` (its trace number indexes the
    layer's stored units, of which the grid shows the first :data:`MAX_PREFERRED`), or None for
    anything else a client may post."""
    if not isinstance(layer, str) or not isinstance(run, str) or not isinstance(click, dict):
        return None
    points = click.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    curve = points[0].get("curveNumber")
    if not isinstance(curve, int) or isinstance(curve, bool) or not 0 <= curve < MAX_PREFERRED:
        return None
    pref = pi_format.meta(state.reader(run), layer)
    if pref is None or curve >= len(pref["units"]):
        return None
    return int(pref["units"][curve])


def _pane(reader, layer: str, unit: int, dmg: Damage):
    """The unit pane, or None when nothing of it could be loaded (``dmg`` names why)."""
    run = reader.name
    pref = pi_format.meta(reader, layer)
    preferred = None
    if pref is not None and unit in pref["units"]:
        with dmg.guard(run, "the preferred input"):
            preferred = _thumbs(pi_format.images(reader, layer, mmap=True)[
                pref["units"].index(unit)][None])[0]
    crops, values = None, None
    if te_format.crops_meta(reader, layer) is not None:
        with dmg.guard(run, "the top examples"):
            stored = te_format.crops(reader, layer, mmap=True)
            if not 0 <= unit < stored.shape[0]:
                raise StoreError(f"unit {unit} is not among the {stored.shape[0]} stored units "
                                 f"of {layer}: pick another unit.")
            crops = _thumbs(stored[unit][:MAX_CROPS])
        if crops is not None and te_format.has_table(reader):
            with dmg.guard(run, "the top examples' values"):
                got = te_format.channel_values(reader, layer, int(unit), int(len(crops)))
                if len(got) == len(crops):
                    keep = [i for i, v in enumerate(got) if np.isfinite(v)]
                    crops, values = crops[keep], [got[i] for i in keep]
    if preferred is None and crops is None:
        return None
    return unit_pane(unit, preferred, crops, values)


def _with_problems(fig, dmg: Damage):
    """A figure with the damaged files it lacks named in its title."""
    fig.update_layout(title={"text": "<br>".join(t for _, t in dmg.items), "font": {
        "size": 10, "color": "#b42318"}}, meta={**(fig.layout.meta or {}),
                                                 "problems": [t for _, t in dmg.items]})
    return fig


def _thumbs(images) -> np.ndarray:
    """Images as sent: at most MAX_THUMB pixels a side (shown about 110 px tall)."""
    return shrink(images, MAX_THUMB)


# Later capabilities (preferred inputs, diagnosis) add sections: f(reader, layer) -> component.
PANEL_SECTIONS: list = [_features_section, compute_section, projections_section,
                        cnnvis_section, params_section, _diagnosis_section]
# The tables the layer panel reads (their damaged parts are named on the page).
PANEL_TABLES = [structure.PROFILE_TABLE, ARRAYS_TABLE, te_format.TABLE]


PAGE = Page(
    path="/model",
    title="Model",
    layout=layout,
    register=register,
    description="the network graph; click a layer for its feature maps",
)
