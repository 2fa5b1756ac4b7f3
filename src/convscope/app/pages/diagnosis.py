"""Diagnosis: what is wrong with the model, where, the evidence and what to try (Wang & Li), and
each layer's dendrogram / grid / KDE view behind the findings."""

from __future__ import annotations

import json

from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from ...figures.diagnosis import SEVERITY_COLORS, layer_view_figure, param_view_figure
from ...formats import diagnosis as fmt
from ..components import (
    FIGURE,
    NOTICE,
    Damage,
    damage_notice,
    error_figure,
    graph,
    picker_page,
    register_choice,
    register_run_picker,
    survive,
)
from . import Page

STAGES = {1: "low-abstraction outputs", 2: "high-abstraction outputs", 3: "conv parameters",
          4: "dense parameters"}


def layout() -> html.Div:
    return picker_page(
        "diag", "Diagnosis", "Findings in Wang & Li's order: low-abstraction outputs, then "
        "high-abstraction outputs, then conv parameters, then dense parameters. Click a layer "
        "to see its dendrogram, grid and distributions.",
        [html.Label(["Report", dcc.Dropdown(id="diag-key", clearable=False)],
                    className="control"),
         html.Label(["Layer", dcc.Dropdown(id="diag-layer", placeholder="a layer")],
                    className="control control-wide")],
        html.Div(id="diag-findings"),
        html.Div(id="diag-view-box", className="panel", style={"display": "none"},
                 children=[html.Div(id="diag-view-notes", className="muted"),
                           graph("diag-view"), graph("diag-param-view")]),
    )


def findings_list(report: dict, link: bool = True) -> html.Div:
    items = []
    for f in report.get("findings", []):
        sev = f.get("severity", "info")
        layer = f.get("layer") or ""
        layer_el = (html.A(layer, href="#diag-view-box", className="layer-link",
                           id={"type": "diag-open", "layer": layer}) if link and layer
                    else html.Code(layer))
        evidence = f.get("evidence") or {}
        ev = "; ".join(f"{k} = {_fmt(v)}" for k, v in evidence.items()
                       if not isinstance(v, (list, dict)))
        items.append(html.Div([
            html.Div([html.Span(sev, className="badge",
                                style={"background": SEVERITY_COLORS.get(sev, "#667085")}),
                      html.Code(f.get("code", ""), className="finding-code"), layer_el,
                      html.Span(STAGES.get(f.get("stage"), ""), className="muted")],
                     className="finding-head"),
            html.Div(f.get("message", ""), className="finding-message"),
            html.Div(["evidence: ", ev], className="muted") if ev else None,
            html.Div(["what to try: ", f.get("advice", "")], className="finding-advice")
            if f.get("advice") else None,
        ], className=f"finding finding-{sev}", **{"data-code": f.get("code", ""),
                                                    "data-layer": layer}))
    if not items:
        items = [html.Div("No findings: every rule stayed silent.", className="notice")]
    return html.Div(items, className="findings")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def register(app, state) -> None:
    register_run_picker(app, state, "diag", fmt.has_reports, "diagnosis",
                        "run.log_diagnosis(model, inputs)", fmt.TABLES)

    register_choice(app, state, "diag-run", "diag-key", fmt.keys)

    @app.callback(
        Output("diag-findings", "children"), Output("diag-layer", "options"),
        Input("diag-run", "value"), Input("diag-key", "value"),
    )
    @survive(NOTICE, [])
    def _findings(run, key):
        if not run or not key:
            return "", []
        reader = state.reader(run)
        if not fmt.has_report(reader, key):
            return "", []
        try:
            report = fmt.report_dict(reader, key)
        except fmt.NotAReportError as exc:  # parsed, but not a report: say so, show no layers
            return damage_notice([str(exc)]), []
        layers = fmt.view_layers(reader)
        n = len([f for f in report.get("findings", []) if f.get("severity") in ("error",
                                                                                "warning")])
        meta = report.get("meta") or {}
        scope = ""
        if meta.get("items"):
            procs = meta.get("processes", 1)
            scope = (f" Statistics over {meta['items']} images"
                     + (f", computed by {procs} processes" if procs and procs > 1 else "")
                     + (f"; figures from {meta['views_from']}" if meta.get("views_from")
                        else "") + ".")
        elif meta.get("input_shape"):
            scope = f" Measured on one batch of shape {meta['input_shape']}."
        head = html.Div(f"{n} problem(s) in {len(report.get('layers', []))} layer outputs and "
                        f"{len(report.get('params', []))} parameter tensors.{scope}",
                        className="muted", id="diag-summary")
        return [head, findings_list(report)], layers

    @app.callback(
        Output("diag-layer", "value"),
        Input({"type": "diag-open", "layer": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    @survive(no_update)
    def _open(clicks):
        if not ctx.triggered_id or not any(clicks or []):
            return no_update
        return ctx.triggered_id["layer"]

    @app.callback(
        Output("diag-view", "figure"), Output("diag-view", "style"),
        Output("diag-param-view", "figure"), Output("diag-param-view", "style"),
        Output("diag-view-box", "style"), Output("diag-view-notes", "children"),
        Input("diag-layer", "value"), State("diag-run", "value"),
    )
    @survive(FIGURE, {}, {}, {"display": "none"}, {}, NOTICE)
    def _view(layer, run):
        hidden = {"display": "none"}
        if not run or not layer:
            return {}, hidden, {}, hidden, hidden, ""
        reader = state.reader(run)
        out_fig, out_style, par_fig, par_style, notes = {}, hidden, {}, hidden, []
        dmg = Damage()
        if fmt.has_output_view(reader, layer):
            with dmg.guard(run, f"the view of {layer}"):
                # memory maps: the figure reads only what it draws (bounded answers)
                lv = fmt.output_view(reader, layer, mmap=True)
                view = lv.meta
                out_fig, out_style = layer_view_figure(view, lv.data, lv.density), {}
                notes += _texts(view.get("notes"))
                notes += out_fig.layout.meta["capped"]
                st = view.get("stats", {})
                if st:
                    notes.append("numbers: " + json.dumps(
                        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in st.items()
                         if not isinstance(v, (list, dict))}))
            if dmg and out_style is hidden:
                out_fig, out_style = error_figure([t for _, t in dmg.items]), {}
        pkey = fmt.param_view_for(reader, layer)
        if pkey is not None:
            before = len(dmg.items)
            with dmg.guard(run, f"the parameter view of {pkey}"):
                pv = fmt.param_view(reader, pkey, mmap=True)
                pview = pv.meta
                par_fig = param_view_figure(pview, pv.data, pv.density)
                par_style = {}
                pnotes = _texts(pview.get("notes")) + par_fig.layout.meta["capped"]
                notes += [f"parameters: {t}" for t in pnotes]
            if len(dmg.items) > before:
                par_fig, par_style = error_figure([t for _, t in dmg.items[before:]]), {}
        if out_style is hidden and par_style is hidden:
            notes.append(f"No view stored for {layer}: record with "
                         "run.log_diagnosis(model, inputs, views=True).")
        body = [html.Ul([html.Li(n) for n in notes])] if notes else []
        if dmg:
            body.insert(0, dmg.notice())
        return out_fig, out_style, par_fig, par_style, {}, body or ""


def _texts(items) -> list[str]:
    """A stored list of notes as strings (anything else in a damaged object: none)."""
    return [str(t) for t in items] if isinstance(items, list) else []


PAGE = Page(
    path="/diagnosis",
    title="Diagnosis",
    layout=layout,
    register=register,
    description="what is wrong with the model and what to try",
)
