"""Resources: each layer's share of memory and time as ring charts, drilling down from stages to
blocks to leaves, with a sortable table beside them."""

from __future__ import annotations

from dash import Input, Output, State, ctx, dash_table, dcc, html, no_update

from ...figures.resources import children_of, resource_rings, ring_legend
from ...formats import structure
from ..components import (
    FIGURE,
    NOTICE,
    Damage,
    error_figure,
    fmt_bytes,
    graph,
    picker_page,
    register_run_picker,
    survive,
)
from . import Page

COLUMNS = [
    ("name", "layer"), ("type", "type"), ("params", "params"), ("memory_bytes", "memory (B)"),
    ("memory_share", "memory share"), ("forward_s", "forward (s)"),
    ("backward_s", "backward (s)"), ("time_share", "time share"),
]


def layout() -> html.Div:
    return picker_page(
        "res", "Resources", "Memory (tensor sizes) and compute time per layer, as shares of "
        "the whole model. Click a ring segment or a table row to drill down.",
        [html.Div(id="res-crumbs", className="crumbs")],
        html.Div(id="res-body", style={"display": "none"}, children=[
            html.Div([graph("res-rings"), html.Div(id="res-legend")], className="panel"),
            html.Div([
                dash_table.DataTable(
                    id="res-table", sort_action="native", row_selectable=False,
                    columns=[{"name": label, "id": cid, "type": "numeric" if cid not in (
                        "name", "type") else "text", **({"format": {"specifier": ".1%"}}
                        if cid.endswith("share") else {"format": {"specifier": ".3~g"}}
                        if cid.endswith("_s") else {})} for cid, label in COLUMNS],
                    style_table={"overflowX": "auto", "maxHeight": "60vh", "overflowY": "auto"},
                    style_cell={"fontSize": 12, "padding": "4px 8px",
                                "fontFamily": "system-ui, sans-serif"},
                    style_header={"fontWeight": 600, "backgroundColor": "#f9fafb"},
                    style_cell_conditional=[{"if": {"column_id": c}, "textAlign": "left"}
                                            for c in ("name", "type")],
                ),
                html.Div(id="res-notes", className="muted"),
            ], className="panel"),
        ], className="two-col two-col-even"),
        dcc.Store(id="res-parent", data=""),
    )


def register(app, state) -> None:
    register_run_picker(app, state, "res", structure.has_profile, "profile", structure.SOURCE,
                        [structure.PROFILE_TABLE])

    @app.callback(
        Output("res-parent", "data"),
        Input("res-rings", "clickData"), Input("res-table", "active_cell"),
        Input("res-run", "value"),
        State("res-parent", "data"), State("res-table", "derived_virtual_data"),
        prevent_initial_call=True,
    )
    @survive(no_update)
    def _drill(click, cell, run, parent, rows):
        trig = ctx.triggered_id
        if trig == "res-run":
            return ""
        if run is None:
            return no_update
        prof = structure.profile(state.reader(run))
        target = None
        if trig == "res-rings" and click:
            target = click["points"][0]["customdata"][0]
        elif trig == "res-table" and cell and rows:
            target = rows[cell["row"]]["name"]
        if target is None:
            return no_update
        if children_of(prof, target).empty:
            return no_update  # a leaf: nothing below it
        return target

    @app.callback(
        Output("res-parent", "data", allow_duplicate=True),
        Input("res-up", "n_clicks"), State("res-parent", "data"),
        prevent_initial_call=True,
    )
    @survive(no_update)
    def _up(n, parent):
        if not n or not parent:
            return no_update
        return parent.rsplit(".", 1)[0] if "." in parent else ""

    @app.callback(
        Output("res-rings", "figure"), Output("res-table", "data"),
        Output("res-crumbs", "children"), Output("res-notes", "children"),
        Output("res-body", "style"), Output("res-legend", "children"),
        Input("res-run", "value"), Input("res-parent", "data"),
    )
    @survive(FIGURE, [], [], NOTICE, {}, "")
    def _show(run, parent):
        if not run:
            return {}, [], [], "", {"display": "none"}, ""
        reader = state.reader(run)
        dmg = Damage()
        prof = dmg.load(reader, [structure.PROFILE_TABLE], structure.has_profile,
                        lambda: structure.profile(reader), "the profile")
        if prof is None:
            return (error_figure([t for _, t in dmg.items]), [], [], dmg.notice(), {}, "")
        parent = parent or ""
        kids = children_of(prof, parent)
        fig = resource_rings(prof, parent)
        rows = kids[[c for c, _ in COLUMNS]].to_dict("records")
        crumbs = [html.Span("model" if not parent else f"model › {parent.replace('.', ' › ')}",
                            className="crumb-path")]
        if parent:
            crumbs.append(html.Button("↑ up", id="res-up", className="button"))
        else:
            crumbs.append(html.Button("↑ up", id="res-up", className="button",
                                      style={"display": "none"}))
        attrs = {}
        with dmg.guard(run, "the profile's settings"):
            attrs = structure.profile_attrs(reader)
        total = prof[prof["level"] == "model"]
        notes = []
        if len(total):
            t = total.iloc[0]
            notes.append(f"whole model: {fmt_bytes(float(t['memory_bytes']))}, "
                         f"{int(t['params']):,} parameters. ")
        if attrs:
            notes.append(
                f"Leaf forward times sum to {attrs.get('forward_coverage', float('nan')):.1%} of "
                f"the measured whole forward ({attrs.get('whole_forward_s', 0) * 1e3:.2f} ms, "
                f"input {attrs.get('input_shapes')}, {attrs.get('repeat')} passes). "
                f"Memory: {attrs.get('memory_note', '')}.")
        if dmg:
            notes.append(dmg.notice())
        return fig, rows, crumbs, notes, {}, legend_block(ring_legend(prof, parent))


def legend_block(legend: dict) -> html.Div:
    """The rings' legend: what a colour, a bar's angle and its length mean, then one swatch per
    child in execution order (the colours the rings draw)."""
    items = legend["items"]
    where = f"of {legend['parent']}" if legend["parent"] else "of the model"
    if legend["by"] == "child":
        colour = (f"Colour: one per child {where}, the same in both rings; "
                  f"the {len(items)} children go clockwise from the top in execution order.")
    else:
        colour = (f"Colour: position in execution order, from the first child (dark purple, at "
                  f"the top) clockwise to the last (yellow) of the {len(items)} children {where}"
                  " (more than the palette's colours); hover a bar for its name.")
    note = html.Div([html.Strong("Legend. "), colour, " A bar's length is that child's share "
                     "of the whole model's memory (left) or time (right); click one to open it."],
                    className="muted ring-legend-note")
    chips = [html.Span([html.Span(className="swatch", style={"background": it["color"]}),
                        it["name"],
                        html.Span(f" memory {it['memory_share']:.0%}, time "
                                  f"{it['time_share']:.0%}", className="muted")],
                       className="legend-item", title=f"{it['name']} ({it['type']}): memory "
                       f"{it['memory_share']:.1%}, time {it['time_share']:.1%}",
                       **{"data-name": it["name"], "data-color": it["color"]})
             for it in items]
    return html.Div([note, html.Div(chips, className="legend ring-legend")], id="res-legend-box")


PAGE = Page(
    path="/resources",
    title="Resources",
    layout=layout,
    register=register,
    description="per-layer memory and time shares",
)
