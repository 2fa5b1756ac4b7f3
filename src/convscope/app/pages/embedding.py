"""Embedding: a 3-D PCA projection of features, coloured by class; hovering a point shows the
image it came from."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update

from ...figures.embedding import embedding_figure
from ...figures.images import png_data_uri
from ..components import graph, missing, no_runs_selected, page_header, pick_run, run_picker
from . import Page


def layout() -> html.Div:
    return html.Div([
        page_header("Embedding", "Features projected on their first three principal components "
                    "(PCA via SVD of the covariance). Drag to rotate; hover for the image."),
        html.Div([run_picker("emb-run"),
                  html.Label(["Features", dcc.Dropdown(id="emb-name", clearable=False)],
                             className="control")], className="controls"),
        html.Div(id="emb-status"),
        html.Div([graph("emb-graph", clear_on_unhover=True),
                  dcc.Tooltip(id="emb-tip", direction="right")], className="panel",
                 id="emb-body", style={"display": "none"}),
        html.Div(id="emb-notes", className="muted"),
    ])


def register(app, state) -> None:
    def has_embedding(r) -> bool:
        return r.has_table("embedding")

    @app.callback(
        Output("emb-run", "options"), Output("emb-run", "value"), Output("emb-status", "children"),
        Input("run-select", "value"), State("emb-run", "value"),
    )
    def _runs(selected, current):
        if not selected:
            return [], None, no_runs_selected()
        options, value, lacking = pick_run(state, selected, current, has_embedding)
        note = missing("embeddings", "run.log_embedding(features, labels, images=...)",
                       lacking) if lacking else None
        return options, value, note

    @app.callback(Output("emb-name", "options"), Output("emb-name", "value"),
                  Input("emb-run", "value"), State("emb-name", "value"))
    def _names(run, current):
        if not run:
            return [], None
        names = state.reader(run).query(
            "SELECT DISTINCT name FROM embedding ORDER BY name")["name"].tolist()
        return names, current if current in names else (names[0] if names else None)

    @app.callback(Output("emb-graph", "figure"), Output("emb-notes", "children"),
                  Output("emb-body", "style"),
                  Input("emb-run", "value"), Input("emb-name", "value"))
    def _figure(run, name):
        if not run or not name:
            return {}, "", {"display": "none"}
        reader = state.reader(run)
        df = reader.query("SELECT * FROM embedding WHERE name = ? ORDER BY idx", [name])
        meta = reader.object("embedding", name) if reader.has_object("embedding", name) else {}
        ev = meta.get("explained_variance_ratio") or []
        fig = embedding_figure(df, class_names=meta.get("class_names"), explained=ev)
        note = (f"{len(df):,} items, {meta.get('dim', '?')}-d features; the three components "
                f"explain {sum(ev):.1%} of the variance.") if ev else ""
        return fig, note, {}

    @app.callback(Output("emb-tip", "show"), Output("emb-tip", "bbox"),
                  Output("emb-tip", "children"),
                  Input("emb-graph", "hoverData"),
                  State("emb-run", "value"), State("emb-name", "value"))
    def _tip(hover, run, name):
        if not hover or not run:
            return False, no_update, no_update
        pt = hover["points"][0]
        idx = int(pt["customdata"]) if not isinstance(pt["customdata"], list) \
            else int(pt["customdata"][0])
        reader = state.reader(run)
        meta = reader.object("embedding", name) if reader.has_object("embedding", name) else {}
        label = pt.get("data", {}).get("name") if isinstance(pt.get("data"), dict) else None
        body = [html.Div(f"item {idx}" + (f" · {label}" if label else ""), className="tip-text")]
        if meta.get("has_images"):
            thumbs = reader.array("embedding_images", name, mmap=True)
            body.insert(0, html.Img(src=png_data_uri(thumbs[idx], scale=2), className="tip-img",
                                    id="emb-tip-img"))
        return True, pt.get("bbox"), body


PAGE = Page(
    path="/embedding",
    title="Embedding",
    layout=layout,
    register=register,
    description="3-D PCA of features, coloured by class",
)
