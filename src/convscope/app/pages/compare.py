"""Compare: two runs side by side -- their diagnosis findings (new, gone, changed severity),
attribution metrics (with the change marked), preferred inputs, their generated image grids at
the same step (one slider; a GAN run's samples over training) and the layer x layer CKA
matrices either run holds (``run.log_cka``; Kornblith et al. 2019)."""

from __future__ import annotations

import math

import numpy as np
from dash import Input, Output, State, dcc, html

from ...figures.compare import cka_figure
from ...figures.generated import grid_data_uri
from ...figures.images import png_data_uri, to_rgb
from ...formats import cka as cka_format
from ...formats import generated as gen_format
from ...formats import preferred_inputs as pi_format
from ...formats.compare import compare, compare_generated
from ..components import FIGURE, NOTICE, Damage, graph, notice, page_header, survive
from ..state import selected_names
from . import Page

#: metric changes at least this large are marked
MARK_DELTA = 0.05
#: preferred-input thumbnails per run and layer
THUMBS = 8
#: findings listed at most (the rest counted)
MAX_FINDINGS = 200
#: a generated grid's side as shown, at most (larger grids are area-averaged)
GEN_SIDE = 512
#: labelled marks of the generated-grid slider, at most
GEN_MARKS = 8
_STATUS = {"new": ("+ new in B", "cmp-new"), "gone": ("− gone from A", "cmp-gone"),
           "changed": ("~ severity changed", "cmp-changed"), "kept": ("= in both", "cmp-kept")}


def layout() -> html.Div:
    return html.Div([
        page_header("Compare", "Two of the selected runs side by side: what changed in the "
                    "diagnosis, the attribution metrics and the preferred inputs, and how alike "
                    "the layers of two models are (linear CKA)."),
        html.Div([
            html.Label(["Run A (reference)", dcc.Dropdown(id="cmp-a", clearable=False)],
                       className="control"),
            html.Label(["Run B (compared)", dcc.Dropdown(id="cmp-b", clearable=False)],
                       className="control"),
            dcc.Checklist(id="cmp-all", options=[{"label": " list the findings both runs share",
                                                  "value": "kept"}], value=[],
                          className="control"),
        ], className="controls"),
        html.Div(id="cmp-status"),
        html.Div(id="cmp-body"),
        html.Div([  # F: generated image grids of A and B at one step
            html.H3("Generated images", className="section-title"),
            html.Div(id="cmp-gen-note", className="muted"),
            html.Label(["Step", dcc.Slider(id="cmp-gen-step", min=0, max=0, step=1, value=0,
                                           marks={}, included=False, allow_direct_input=False)],
                       className="control control-wide"),
            html.Div([html.Div([html.Div(id="cmp-gen-cap-a", className="muted"),
                                html.Img(id="cmp-gen-a", className="cmp-gen-img",
                                         style={"imageRendering": "pixelated",
                                                "maxWidth": "100%"})], className="cmp-col"),
                      html.Div([html.Div(id="cmp-gen-cap-b", className="muted"),
                                html.Img(id="cmp-gen-b", className="cmp-gen-img",
                                         style={"imageRendering": "pixelated",
                                                "maxWidth": "100%"})], className="cmp-col")],
                     className="cmp-pair"),
        ], id="cmp-gen-box", className="panel", style={"display": "none"}),
        html.Div([
            html.H3("Layer similarity (linear CKA)", className="section-title"),
            html.Label(["Matrix", dcc.Dropdown(id="cmp-cka", clearable=False)],
                       className="control"),
            html.Div(id="cmp-cka-note", className="muted"),
            graph("cmp-cka-graph"),
        ], id="cmp-cka-box", className="panel", style={"display": "none"}),
    ])


def _table(header: list[str], rows: list[html.Tr], tid: str) -> html.Table:
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)],
                      className="table", id=tid)


def _findings(c, show_kept: bool) -> html.Div:
    f = c.findings if show_kept else c.findings[c.findings["status"] != "kept"]
    n = c.counts()
    summary = html.P([html.Strong(f"{n['new']} new"), " in B, ", html.Strong(f"{n['gone']} gone"),
                      " from A, ", html.Strong(f"{n['changed']} changed"), " severity, ",
                      f"{n['kept']} in both."], id="cmp-counts")
    if not len(c.findings):
        return html.Div([html.H3("Diagnosis findings", className="section-title"),
                         notice("Neither run has a diagnosis report: record one with "
                                "run.log_diagnosis(model, images).")])
    rows = []
    for r in f.head(MAX_FINDINGS).itertuples(index=False):
        label, cls = _STATUS[r.status]
        sev = r.severity_a if r.status == "gone" else r.severity_b if r.status == "new" else \
            f"{r.severity_a} → {r.severity_b}" if r.status == "changed" else r.severity_a
        rows.append(html.Tr([html.Td(label, className=cls), html.Td(r.report),
                             html.Td(r.layer or "(model)"), html.Td(r.code), html.Td(sev),
                             html.Td(r.message)], className=f"cmp-row {cls}",
                            **{"data-status": r.status}))
    more = [] if len(f) <= MAX_FINDINGS else [html.P(f"… and {len(f) - MAX_FINDINGS} more.",
                                                     className="muted")]
    return html.Div([html.H3("Diagnosis findings", className="section-title"), summary,
                     _table(["", "report", "layer", "code", "severity", "finding"], rows,
                            "cmp-findings"), *more])


def _metrics(c) -> html.Div:
    title = html.H3("Attribution metrics", className="section-title")
    if not len(c.metrics):
        return html.Div([title, notice("No attribution set under the same key in both runs: "
                                       "record run.log_attributions(model, images, labels=...) "
                                       "in each.")])
    rows = []
    for m in c.metrics.itertuples(index=False):
        marked = abs(m.delta) >= MARK_DELTA
        rows.append(html.Tr([html.Td(m.set), html.Td(m.method), html.Td(m.metric),
                             html.Td(f"{m.a:.4f}", className="num"),
                             html.Td(f"{m.b:.4f}", className="num"),
                             html.Td(f"{m.delta:+.4f}", className="num" + (
                                 " cmp-marked" if marked else ""))],
                            **{"data-marked": "1" if marked else "0"}))
    return html.Div([title, html.P(f"Means over each set's images (drop: deletion score drop; "
                                   f"increase, pointing_hit: rates). Changes of "
                                   f"{MARK_DELTA} or more are marked.", className="muted"),
                     _table(["set", "method", "metric", "A", "B", "B − A"], rows,
                            "cmp-metrics")])


def _thumbs(reader, layer: str) -> list[html.Img]:
    imgs = pi_format.images(reader, layer, mmap=True)
    n = min(THUMBS, int(imgs.shape[0]))
    return [html.Img(src=png_data_uri(to_rgb(np.asarray(imgs[i], dtype=np.float32)),
                                      scale=max(1, 64 // max(1, int(imgs.shape[-1])))),
                     className="cmp-thumb") for i in range(n)]


def _preferred(c, ra, rb, dmg: Damage) -> html.Div:
    title = html.H3("Preferred inputs", className="section-title")
    if not len(c.preferred):
        return html.Div([title, notice("Neither run has preferred inputs: record them with "
                                       "run.log_preferred_inputs(model, layers).")])
    blocks = []
    for p in c.preferred.itertuples(index=False):
        cols = []
        for reader, present, value, units in ((ra, p.in_a, p.value_a, p.units_a),
                                              (rb, p.in_b, p.value_b, p.units_b)):
            body: list = [html.Div(f"{reader.name}: " + (
                f"{units} units, mean objective {value:.4g}" if present and
                not math.isnan(value) else "not recorded"), className="muted")]
            if present:
                with dmg.guard(reader.name, f"the preferred inputs of {p.layer}"):
                    body.append(html.Div(_thumbs(reader, p.layer), className="cmp-thumbs"))
            cols.append(html.Div(body, className="cmp-col"))
        changed = p.in_a != p.in_b or (p.in_a and p.in_b and abs(p.value_b - p.value_a) > 1e-6)
        blocks.append(html.Div([html.H4(p.layer + ("  (changed)" if changed else "")),
                                html.Div(cols, className="cmp-pair")],
                               className="cmp-layer", **{"data-layer": p.layer}))
    return html.Div([title, *blocks])


def register(app, state) -> None:
    register_generated(app, state)  # F

    @app.callback(
        Output("cmp-a", "options"), Output("cmp-a", "value"),
        Output("cmp-b", "options"), Output("cmp-b", "value"), Output("cmp-status", "children"),
        Input("run-select", "value"), State("cmp-a", "value"), State("cmp-b", "value"),
    )
    @survive([], None, [], None, NOTICE)
    def _runs(selected, a, b):
        names = [n for n in selected_names(selected) if n in set(state.run_names())]
        opts = [{"label": n, "value": n} for n in names]
        if not names:
            return opts, None, opts, None, notice(
                "Select two runs in the header to compare them (the first is A, the "
                "reference).")
        a = a if a in names else names[0]
        if len(names) < 2:  # one run: its own CKA matrices only
            return opts, a, opts, None, notice(
                "Select two runs in the header to compare their findings, metrics and "
                "preferred inputs; the CKA matrices of this run are shown below.")
        b = b if b in names and b != a else next(n for n in names if n != a)
        return opts, a, opts, b, None

    @app.callback(
        Output("cmp-body", "children"), Output("cmp-cka", "options"), Output("cmp-cka", "value"),
        Output("cmp-cka-box", "style"),
        Input("cmp-a", "value"), Input("cmp-b", "value"), Input("cmp-all", "value"),
        State("run-select", "value"),
    )
    @survive(NOTICE, [], None, {"display": "none"})
    def _body(a, b, show_kept, selected):
        names = set(selected_names(selected)) & set(state.run_names())
        if a not in names:
            return None, [], None, {"display": "none"}
        if b not in names:  # one run selected: only its CKA matrices
            options = [{"label": f"{a}: {k}", "value": f"a:{k}"}
                       for k in cka_format.keys(state.reader(a))]
            return None, options, options[0]["value"] if options else None, \
                {} if options else {"display": "none"}
        if a == b:
            return notice("Run A and run B are the same run: pick another B."), [], None, \
                {"display": "none"}
        ra, rb = state.reader(a), state.reader(b)
        dmg = Damage()
        c = compare(ra, rb)
        kept = isinstance(show_kept, list) and "kept" in show_kept
        body = [_findings(c, kept), _metrics(c), _preferred(c, ra, rb, dmg)]
        body += [notice(n) for n in c.notes]
        if dmg:
            body.append(dmg.notice())
        options = [{"label": f"{a}: {k}", "value": f"a:{k}"} for k in c.cka_a] + \
                  [{"label": f"{b}: {k}", "value": f"b:{k}"} for k in c.cka_b]
        if not options:
            body.append(html.Div([html.H3("Layer similarity (linear CKA)",
                                          className="section-title"),
                                  notice("Neither run holds a CKA matrix: record one with "
                                         "run.log_cka(model, other_model, images).")]))
            return body, [], None, {"display": "none"}
        return body, options, options[0]["value"], {}

    @app.callback(
        Output("cmp-cka-graph", "figure"), Output("cmp-cka-note", "children"),
        Input("cmp-cka", "value"), State("cmp-a", "value"), State("cmp-b", "value"),
        State("run-select", "value"),
    )
    @survive(FIGURE, NOTICE)
    def _cka(choice, a, b, selected):
        names = set(selected_names(selected)) & set(state.run_names())
        if not isinstance(choice, str) or choice[:2] not in ("a:", "b:"):
            return {}, None
        run = a if choice[0] == "a" else b
        if run not in names:
            return {}, None
        reader = state.reader(run)
        key = choice[2:]
        if key not in cka_format.keys(reader):  # only a stored key is ever loaded
            return {}, notice(f"{reader.name} has no CKA matrix {key!r}.")
        m = cka_format.load(reader, key)
        diag = ""
        if m.layers_a == m.layers_b:
            d = np.diagonal(m.matrix)
            diag = (f" Same layers on both axes: the diagonal (each layer against its namesake) "
                    f"ranges {d.min():.3f}–{d.max():.3f}; the lowest is "
                    f"{m.layers_a[int(d.argmin())]}.")
        note = (f"{m.label_a} (rows) × {m.label_b} (columns), {m.n_images} images in batches "
                f"of {m.batch_size}: 1 = the same representation up to a rotation and a "
                f"scale.{diag}")
        return cka_figure(m.matrix, m.layers_a, m.layers_b, m.label_a, m.label_b), note


def _gen_marks(steps: list[int]) -> dict[int, str]:
    k = max(1, -(-len(steps) // GEN_MARKS))
    return {i: str(steps[i]) for i in sorted(set(range(0, len(steps), k)) | {len(steps) - 1})}


def _gen_pair(state, selected, a, b):
    """The readers of A and B and their generated grids, or None unless both are selected
    runs that hold grids."""
    names = set(selected_names(selected)) & set(state.run_names())
    if not (isinstance(a, str) and isinstance(b, str)) or a == b or a not in names or \
            b not in names:
        return None
    ra, rb = state.reader(a), state.reader(b)
    g = compare_generated(ra, rb)
    return (ra, rb, g) if g.both() else None


def register_generated(app, state) -> None:
    """The Generated images panel: one slider over the steps of either run; each run's grid at
    its step nearest to the slider's."""

    @app.callback(
        Output("cmp-gen-step", "max"), Output("cmp-gen-step", "marks"),
        Output("cmp-gen-step", "value"), Output("cmp-gen-note", "children"),
        Output("cmp-gen-box", "style"),
        Input("cmp-a", "value"), Input("cmp-b", "value"), State("run-select", "value"),
    )
    @survive(0, {}, 0, NOTICE, {})
    def _gen_steps(a, b, selected):
        pair = _gen_pair(state, selected, a, b)
        if pair is None:
            return 0, {}, 0, None, {"display": "none"}
        g = pair[2]
        steps = g.steps()
        verdict = g.verdict()
        note = [f"One slider over the steps of either run ({len(steps)}); each run shows its "
                "grid at the step nearest to it. "]
        if verdict:
            note += [html.Strong(f"Last grids: {verdict}.", id="cmp-gen-verdict",
                                 **{"data-which": g.more_diverse() or ""}),
                     " Diversity is not quality: noise is diverse too."]
        return len(steps) - 1, _gen_marks(steps), len(steps) - 1, note, {}

    @app.callback(
        Output("cmp-gen-a", "src"), Output("cmp-gen-cap-a", "children"),
        Output("cmp-gen-b", "src"), Output("cmp-gen-cap-b", "children"),
        Input("cmp-gen-step", "value"), Input("cmp-a", "value"), Input("cmp-b", "value"),
        State("run-select", "value"),
    )
    @survive(None, NOTICE, None, None)
    def _gen_grids(value, a, b, selected):
        if isinstance(value, bool) or not isinstance(value, int):
            return None, None, None, None
        pair = _gen_pair(state, selected, a, b)
        if pair is None:
            return None, None, None, None
        ra, rb, g = pair
        steps = g.steps()
        if not 0 <= value < len(steps):
            return None, notice(f"Step index {value} is not one of the {len(steps)} steps: "
                                "move the slider."), None, None
        want = steps[value]
        out = []
        for reader, step in zip((ra, rb), g.at(want), strict=True):
            grid = gen_format.load(reader, step)
            h, w = grid.image.shape[-2:]
            cap = [html.Strong(reader.name), f": step {step}"]
            if step != want:
                cap.append(f" (nearest to {want})")
            if grid.grid:
                cap.append(f", diversity {gen_format.diversity(grid.image, grid.grid):.4f}")
            scale = max(1, min(4, GEN_SIDE // max(h, w)))
            out += [grid_data_uri(grid.image, GEN_SIDE, scale=scale),
                    html.Span(cap, **{"data-step": str(step)})]
        return tuple(out)


PAGE = Page(
    path="/compare",
    title="Compare",
    layout=layout,
    register=register,
    description="two runs side by side: findings, metrics, preferred inputs, generated "
                "images, CKA",
)
