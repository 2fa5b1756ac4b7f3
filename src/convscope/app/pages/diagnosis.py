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

#: Wang & Li (2020)'s analysis order; old runs stored the stage as its number (1-4).
STAGE_ORDER = ("low-abstraction outputs", "high-abstraction outputs", "conv parameters",
               "dense parameters")
STAGES = dict(enumerate(STAGE_ORDER, start=1))
#: Severities, most severe first (``note`` marks a limit of the analysis, not a fault).
SEVERITIES = ("error", "warning", "info", "note")
_PLURAL = {"error": "errors", "warning": "warnings", "info": "info", "note": "notes"}
#: A stage without errors or warnings starts folded when it holds more info findings than this
#: (its summary line still counts them; a filter opens it).
OPEN_INFO_MAX = 8


def layout() -> html.Div:
    return picker_page(
        "diag", "Diagnosis", "Findings in Wang & Li's (2020) order: low-abstraction outputs, "
        "then high-abstraction outputs, then conv parameters, then dense parameters; grouped by "
        "layer, notes folded away. Click a layer to see its dendrogram, grid and distributions.",
        [html.Label(["Report", dcc.Dropdown(id="diag-key", clearable=False)],
                    className="control"),
         html.Label(["Layer view", dcc.Dropdown(id="diag-layer", placeholder="a layer")],
                    className="control control-wide")],
        html.Div([
            html.Div(id="diag-head"),
            html.Div([html.Span("Show findings of", className="muted"),
                      html.Label(["layer or block", dcc.Dropdown(
                          id="diag-filter-layer", placeholder="every layer")],
                          className="control control-wide"),
                      html.Label(["code", dcc.Dropdown(id="diag-filter-code",
                                                       placeholder="every code")],
                                 className="control")],
                     className="diag-filters", id="diag-filters", style={"display": "none"}),
        ], className="diag-bar"),
        html.Div(id="diag-findings"),
        html.Div(id="diag-view-box", className="panel", style={"display": "none"},
                 children=[html.Div(id="diag-view-notes", className="muted"),
                           graph("diag-view"), graph("diag-param-view")]),
    )


def stage_name(stage) -> str:
    """A finding's stage as its name (old runs stored the number)."""
    if isinstance(stage, int) and not isinstance(stage, bool):
        return STAGES.get(stage, "")
    return stage if isinstance(stage, str) else ""


def _finding_card(f: dict, advised: set[str] | None = None, *, link: bool = True,
                  show_layer: bool = True) -> html.Div:
    """One finding: severity, code, (layer,) message, evidence and what to try. ``advised``:
    codes whose advice was shown above (shown once per code on a page)."""
    sev = f.get("severity", "info")
    layer = f.get("layer") or ""
    code = f.get("code", "")
    evidence = f.get("evidence") or {}
    ev = "; ".join(f"{k} = {_fmt(v)}" for k, v in evidence.items()
                   if not isinstance(v, (list, dict))) if isinstance(evidence, dict) else ""
    head = [html.Span(sev, className="badge",
                      style={"background": SEVERITY_COLORS.get(sev, "#667085")}),
            html.Code(code, className="finding-code")]
    if show_layer:
        head.append(html.A(layer, href="#diag-view-box", className="layer-link",
                           id={"type": "diag-open", "layer": layer, "where": ""})
                    if link and layer
                    else html.Code(layer))
        head.append(html.Span(stage_name(f.get("stage")), className="muted"))
    head.append(html.Span(f.get("message", ""), className="finding-message"))
    if ev:
        head.append(html.Span(["evidence: ", ev], className="muted finding-evidence"))
    advice = f.get("advice") or ""
    body = [html.Div(head, className="finding-head")]
    if advice and (advised is None or code not in advised):
        body.append(html.Div(["what to try: ", advice], className="finding-advice"))
        if advised is not None:
            advised.add(code)
    return html.Div(body, className=f"finding finding-{sev}",
                    **{"data-code": code, "data-layer": layer, "data-severity": sev})


def findings_list(report: dict, link: bool = True) -> html.Div:
    """Findings as a flat list of cards (the Model page's panel of one layer)."""
    items = [_finding_card(f, link=link) for f in report.get("findings", [])]
    if not items:
        items = [html.Div("No findings: every rule stayed silent.", className="notice")]
    return html.Div(items, className="findings")


def severity_counts(findings: list[dict]) -> dict[str, int]:
    """Findings per severity, most severe first (every severity, zeros included; an unknown
    severity after them)."""
    out = dict.fromkeys(SEVERITIES, 0)
    for f in findings:
        sev = f.get("severity", "info")
        out[sev] = out.get(sev, 0) + 1
    return out


def counts_bar(findings: list[dict]) -> html.Div:
    """The headline: how many findings of each severity."""
    chips = []
    for sev, n in severity_counts(findings).items():
        word = _PLURAL.get(sev, sev) if n != 1 else sev
        chips.append(html.Span([html.Span(str(n), className="sev-n"), f" {word}"],
                               className="sev-count" + (" sev-zero" if n == 0 else ""),
                               style={"--sev": SEVERITY_COLORS.get(sev, "#667085")},
                               **{"data-severity": sev, "data-count": str(n)}))
    return html.Div(chips, className="sev-counts", id="diag-counts")


def _matches(layer: str, prefix: str) -> bool:
    """``layer`` is ``prefix`` or inside it (``features.5`` holds ``features.5.0.block.3`` and
    ``features.5:2``)."""
    return layer == prefix or layer.startswith(prefix + ".") or layer.startswith(prefix + ":")


def layer_filter_options(findings: list[dict]) -> list[dict]:
    """The layer filter's choices in the findings' order: every block that holds findings of
    two or more layers (the shortest name of each such set: ``features.5``, not also
    ``features.5.0`` when that holds the same layers), then every layer with findings, each
    with its count."""
    layers = list(dict.fromkeys(f.get("layer") or "" for f in findings))
    layers = [x for x in layers if x]
    per_layer: dict[str, int] = {}
    for f in findings:
        if f.get("layer"):
            per_layer[f["layer"]] = per_layer.get(f["layer"], 0) + 1
    blocks: dict[str, list[str]] = {}
    for layer in layers:
        parts = layer.split(":")[0].split(".")
        for i in range(1, len(parts)):
            blocks.setdefault(".".join(parts[:i]), []).append(layer)
    seen: set[tuple[str, ...]] = set()
    out = []
    for block, members in blocks.items():  # shorter names first within a branch
        key = tuple(members)
        if len(members) < 2 or key in seen or block in per_layer:
            continue
        seen.add(key)
        n = sum(per_layer[m] for m in members)
        out.append({"label": f"{block} (block: {n} findings in {len(members)} layers)",
                    "value": block})
    out += [{"label": f"{layer} ({per_layer[layer]})", "value": layer} for layer in layers]
    return out


def code_filter_options(findings: list[dict]) -> list[dict]:
    """The code filter's choices: each code with its severity and count, most severe first."""
    count: dict[str, int] = {}
    sev: dict[str, str] = {}
    for f in findings:
        c = f.get("code", "")
        count[c] = count.get(c, 0) + 1
        sev.setdefault(c, f.get("severity", "info"))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    codes = sorted(count, key=lambda c: (rank.get(sev[c], len(rank)), c))
    return [{"label": f"{c} ({sev[c]}, {count[c]})", "value": c} for c in codes]


def filter_findings(findings: list[dict], layer: str | None = None, code: str | None = None
                    ) -> list[dict]:
    """The findings in ``layer`` (a layer or a block holding it) with ``code`` (None: any)."""
    return [f for f in findings
            if (not layer or _matches(f.get("layer") or "", layer))
            and (not code or f.get("code") == code)]


def group_findings(findings: list[dict]) -> list[tuple[str, list[tuple[str, list[dict]]]]]:
    """``[(stage, [(layer, [finding, ...]), ...]), ...]``: stages in Wang & Li's order (an
    unknown stage last), layers in the order of their first finding, findings in stored
    order."""
    stages: dict[str, dict[str, list[dict]]] = {}
    for f in findings:
        stages.setdefault(stage_name(f.get("stage")), {}).setdefault(
            f.get("layer") or "", []).append(f)
    rank = {s: i for i, s in enumerate(STAGE_ORDER)}
    order = sorted(stages, key=lambda s: rank.get(s, len(rank)))
    return [(s, list(stages[s].items())) for s in order]


def _tally(findings: list[dict]) -> str:
    c = severity_counts(findings)
    return ", ".join(f"{n} {_PLURAL.get(s, s) if n != 1 else s}" for s, n in c.items() if n)


def _layer_group(layer: str, fs: list[dict], advised: set[str], open_notes: bool,
                 where: str = "") -> html.Div:
    main = [f for f in fs if f.get("severity") != "note"]
    notes = [f for f in fs if f.get("severity") == "note"]
    # one link per (stage, layer): a layer can appear in two stages (outputs and parameters)
    head = [html.A(layer, href="#diag-view-box", className="layer-link", title="open its view",
                   id={"type": "diag-open", "layer": layer, "where": where}) if layer
            else html.Span("(no layer)", className="muted")]
    body: list = [_finding_card(f, advised, show_layer=False) for f in main]
    if notes:
        body.append(html.Details(
            [html.Summary(f"{len(notes)} note{'s' if len(notes) != 1 else ''}: "
                          + ", ".join(dict.fromkeys(f.get("code", "") for f in notes)),
                          className="notes-summary")]
            + [_finding_card(f, advised, show_layer=False) for f in notes],
            open=open_notes, className="notes"))
    return html.Div([html.Div(head, className="group-head"),
                     html.Div(body, className="group-body")],
                    className="finding-group" + ("" if main else " notes-only"),
                    **{"data-layer": layer})


def _opens(findings: list[dict]) -> bool:
    """A stage starts open when it holds an error or a warning, or a few info findings."""
    c = severity_counts(findings)
    return bool(c["error"] or c["warning"]) or 0 < c["info"] <= OPEN_INFO_MAX


def grouped_findings(findings: list[dict], *, filtered: bool = False) -> html.Div:
    """Findings grouped by stage (Wang & Li's order), then by layer; each layer's notes folded
    in a ``<details>``, and the layers with notes only folded together at the end of their
    stage. A stage starts open when it holds an error or a warning or at most
    :data:`OPEN_INFO_MAX` info findings. ``filtered``: the findings were chosen by a filter, so
    everything is shown open."""
    if not findings:
        return html.Div(html.Div("No findings match the filter." if filtered else
                                 "No findings: every rule stayed silent.", className="notice"),
                        className="findings")
    advised: set[str] = set()
    sections = []
    for stage, layers in group_findings(findings):
        fs = [f for _, group in layers for f in group]
        real = [(lay, g) for lay, g in layers if any(f.get("severity") != "note" for f in g)]
        quiet = [(lay, g) for lay, g in layers if lay not in dict(real)]
        content = [_layer_group(lay, g, advised, filtered, stage) for lay, g in real]
        if quiet:
            groups = [_layer_group(lay, g, advised, True, stage) for lay, g in quiet]
            if real:
                n = sum(len(g) for _, g in quiet)
                content.append(html.Details(
                    [html.Summary(f"{len(quiet)} more layer{'s' if len(quiet) != 1 else ''} "
                                  f"with notes only ({n} note{'s' if n != 1 else ''})",
                                  className="notes-summary")] + groups,
                    open=filtered, className="notes notes-layers"))
            else:
                content += groups
        sections.append(html.Details(
            [html.Summary([html.Span(stage or "other findings", className="stage-name"),
                           html.Span(f"{len(layers)} layer{'s' if len(layers) != 1 else ''}"
                                     f" · {_tally(fs)}", className="muted")],
                          className="stage-summary")] + content,
            open=filtered or _opens(fs), className="stage",
            **{"data-stage": stage}))
    return html.Div(sections, className="findings findings-grouped")


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
        Output("diag-head", "children"), Output("diag-filter-layer", "options"),
        Output("diag-filter-code", "options"), Output("diag-filters", "style"),
        Output("diag-filter-layer", "value"), Output("diag-filter-code", "value"),
        Input("diag-run", "value"), Input("diag-key", "value"),
        Input("diag-filter-layer", "value"), Input("diag-filter-code", "value"),
    )
    @survive(NOTICE, [], "", [], [], {"display": "none"}, None, None)
    def _findings(run, key, layer, code):
        hidden = {"display": "none"}
        nothing = ("", [], "", [], [], hidden, None, None)
        if not run or not key:
            return nothing
        if ctx.triggered_id in ("diag-run", "diag-key"):
            layer = code = None  # another report: its layers and codes differ
        reader = state.reader(run)
        if not fmt.has_report(reader, key):
            return nothing
        try:
            report = fmt.report_dict(reader, key)
        except fmt.NotAReportError as exc:  # parsed, but not a report: say so, show no layers
            return (damage_notice([str(exc)]),) + nothing[1:]
        layers = fmt.view_layers(reader)
        findings = [f for f in report.get("findings", []) if isinstance(f, dict)]
        n = len([f for f in findings if f.get("severity") in ("error", "warning")])
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
        summary = html.Div(f"{n} problem(s) in {len(report.get('layers', []))} layer outputs "
                           f"and {len(report.get('params', []))} parameter tensors.{scope}",
                           className="muted", id="diag-summary")
        layer_opts, code_opts = layer_filter_options(findings), code_filter_options(findings)
        layer = layer if isinstance(layer, str) and layer in {o["value"] for o in layer_opts} \
            else None
        code = code if isinstance(code, str) and code in {o["value"] for o in code_opts} \
            else None
        shown = filter_findings(findings, layer, code)
        body = []
        if layer or code:
            what = " and ".join(x for x in (f"layer {layer}" if layer else "",
                                            f"code {code}" if code else "") if x)
            body.append(html.Div(f"Showing {len(shown)} of {len(findings)} findings ({what}); "
                                 "clear the filter to see all.", className="muted",
                                 id="diag-filtered"))
        body.append(grouped_findings(shown, filtered=bool(layer or code)))
        head = [summary, counts_bar(findings)]
        return body, layers, head, layer_opts, code_opts, {}, layer, code

    @app.callback(
        Output("diag-layer", "value"),
        Input({"type": "diag-open", "layer": ALL, "where": ALL}, "n_clicks"),
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
