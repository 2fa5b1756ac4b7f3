"""Embedding: a 3-D PCA projection of features, coloured by class; hovering a point shows the
image it came from."""

from __future__ import annotations

from dash import Input, Output, State, dcc, html, no_update

from ...figures.embedding import embedding_figure
from ...figures.images import png_data_uri
from ...formats import embedding as emb_format
from ..components import (
    FIGURE,
    NOTICE,
    Damage,
    error_figure,
    graph,
    picker_page,
    register_choice,
    register_run_picker,
    survive,
)
from . import Page

#: Points drawn at most (a 50,000-point Scatter3d is ~1 MB per answer and slow to rotate).
MAX_POINTS = 20_000


def layout() -> html.Div:
    return picker_page(
        "emb", "Embedding", "Features projected on their first three principal components "
        "(PCA via SVD of the covariance). Drag to rotate, scroll to zoom; hover for the "
        "image; click a class in the legend to hide it.",
        [html.Label(["Features", dcc.Dropdown(id="emb-name", clearable=False)],
                    className="control"),
         html.Div(id="emb-notes", className="muted emb-notes")],
        # the scatter takes the window's height (CSS .emb-graph-box), not a fixed box
        html.Div([html.Div(graph("emb-graph", clear_on_unhover=True, responsive=True,
                                 style={"height": "100%"}), className="emb-graph-box"),
                  dcc.Tooltip(id="emb-tip", direction="right")], className="panel",
                 id="emb-body", style={"display": "none"}),
    )


def register(app, state) -> None:
    register_run_picker(app, state, "emb", emb_format.has, "embeddings",
                        "run.log_embedding(features, labels, images=...)", [emb_format.TABLE])

    register_choice(app, state, "emb-run", "emb-name", emb_format.names)

    @app.callback(Output("emb-graph", "figure"), Output("emb-notes", "children"),
                  Output("emb-body", "style"),
                  Input("emb-run", "value"), Input("emb-name", "value"))
    @survive(FIGURE, NOTICE, {})
    def _figure(run, name):
        if not run or not name:
            return {}, "", {"display": "none"}
        reader = state.reader(run)
        dmg = Damage()
        df = dmg.load(reader, [emb_format.TABLE], emb_format.has,
                      lambda: emb_format.frame(reader, name), "the embedding")
        meta = _meta(reader, name, dmg)
        if df is None:
            return error_figure([t for _, t in dmg.items]), dmg.notice(), {}
        ev = meta.get("explained_variance_ratio") or []
        total = len(df)
        if total > MAX_POINTS:  # bounded response: every k-th item (classes keep their shares)
            df = df.iloc[:: -(-total // MAX_POINTS)]
        fig = embedding_figure(df, class_names=meta.get("class_names"), explained=ev,
                               height=None)
        note = (f"{total:,} items, {meta.get('dim', '?')}-d features; the three components "
                f"explain {sum(ev):.1%} of the variance.") if ev else f"{total:,} items."
        if len(df) < total:
            note += (f" Showing {len(df):,} of {total:,} points (one item in "
                     f"{-(-total // MAX_POINTS)}).")
        return fig, [note, dmg.notice()] if dmg else note, {}

    @app.callback(Output("emb-tip", "show"), Output("emb-tip", "bbox"),
                  Output("emb-tip", "children"),
                  Input("emb-graph", "hoverData"),
                  State("emb-run", "value"), State("emb-name", "value"))
    @survive(False, no_update, no_update)
    def _tip(hover, run, name):
        if not hover or not run:
            return False, no_update, no_update
        pt = hover["points"][0]
        idx = int(pt["customdata"]) if not isinstance(pt["customdata"], list) \
            else int(pt["customdata"][0])
        reader = state.reader(run)
        dmg = Damage()
        meta = _meta(reader, name, dmg)
        label = pt.get("data", {}).get("name") if isinstance(pt.get("data"), dict) else None
        body = [html.Div(f"item {idx}" + (f" · {label}" if label else ""), className="tip-text")]
        if emb_format.has_images(reader, name, meta):
            with dmg.guard(run, "the thumbnail"):
                thumbs = emb_format.thumbnails(reader, name, mmap=True)
                if 0 <= idx < len(thumbs):
                    body.insert(0, html.Img(src=png_data_uri(thumbs[idx], scale=2),
                                            className="tip-img", id="emb-tip-img"))
        if dmg:
            body.append(html.Div([t for _, t in dmg.items], className="tip-text damage-notice"))
        return True, pt.get("bbox"), body


def _meta(reader, name: str, dmg: Damage) -> dict:
    """The embedding's settings (class names, variance), or {} when missing or damaged."""
    with dmg.guard(reader.name, "the embedding's settings"):
        return emb_format.meta(reader, name)
    return {}


PAGE = Page(
    path="/embedding",
    title="Embedding",
    layout=layout,
    register=register,
    description="3-D PCA of features, coloured by class",
)
