"""CNNVis (Liu et al. 2017) on the Model page: a clicked layer's channel clusters in the layer
panel (each with a representative image and its size, the cluster x cluster influence to the
neighbouring layers, the number of clusters changeable) and, below the graph, the recorded chain
of layers as columns of cluster boxes whose edges are bundled by biclustering, with the plain
and bundled crossing counts.

Recorded by ``run.log_cnnvis(model, dataset)`` (:mod:`convscope.formats.cnnvis`). Reclustering
runs :func:`convscope.model.cnnvis.cluster_channels` on the stored descriptors in the request:
the count is validated (an int, 2 .. :data:`MAX_CLUSTERS`, at most the layer's channels) and a
layer of more than :data:`MAX_RECLUSTER_CHANNELS` channels keeps its recorded clustering, so
each request's work is bounded (descriptors hold at most 128 columns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from dash import Input, Output, State, dcc, html, no_update

from ...errors import InputError
from ...figures.cnnvis import (
    ChainGap,
    chain_figure,
    chain_layout,
    cluster_cards,
    cluster_matrix,
    pattern_image,
)
from ...formats import cnnvis as cv_format
from ...formats import preferred_inputs as pi_format
from ...formats import top_examples as te_format
from ..components import NOTICE, Damage, RequestReader, graph, shrink, survive

__all__ = ["cnnvis_section", "chain_container", "register_cnnvis", "check_count",
           "page_clusters", "page_view", "clusters_body", "chain_body", "MAX_CLUSTERS",
           "MAX_RECLUSTER_CHANNELS", "MAX_CHAIN_LAYERS"]

MAX_CLUSTERS = 16  #: the largest count the page offers (and accepts)
MAX_RECLUSTER_CHANNELS = 2048  #: layers with more channels keep their recorded clustering
MAX_CHAIN_LAYERS = 12  #: columns drawn in the chain view
CARD_SIDE = 64  #: pixels a side of a cluster card's image
BOX_SIDE = 24  #: pixels a side of the image in a chain box


def check_count(value: Any, channels: int) -> int:
    """A cluster count posted by the page: ``0`` (the recorded clustering) or an int in
    ``2 .. min(MAX_CLUSTERS, channels)``; anything else raises :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"the number of clusters must be an integer, got "
                         f"{repr(value)[:40]}: pick one in the list.")
    if value == 0:
        return 0
    top = min(MAX_CLUSTERS, int(channels))
    if not 2 <= value <= top:
        shown = value if abs(value) < 10**12 else "a huge number"
        raise InputError(f"the number of clusters must be between 2 and {top}, got {shown}: "
                         "pick one in the list.")
    if channels > MAX_RECLUSTER_CHANNELS:
        raise InputError(f"this layer has {channels} channels, more than the "
                         f"{MAX_RECLUSTER_CHANNELS} the page reclusters: record another count "
                         f"with {cv_format.SOURCE.replace(')', ', clusters=k)')}.")
    return value


def _stored_clusters(doc: dict, layer: str) -> Any:
    from ...model.cnnvis import ChannelClusters

    s = cv_format.clusters(doc, layer)
    return ChannelClusters(layer, s.labels, s.sizes, s.representatives, s.order, s.dead,
                           math.nan if s.silhouette is None else s.silhouette)


def page_clusters(reader: Any, key: str, layer: str, k: int, doc: dict | None = None) -> Any:
    """The clusters of ``layer`` the page shows for count ``k`` (0: as recorded; else
    :func:`~convscope.model.cnnvis.cluster_channels` on the stored descriptors, the view's
    seed)."""
    from ...model.cnnvis import cluster_channels

    doc = doc or cv_format.meta(reader, key)
    channels = doc["clusters"][layer]["channels"]
    k = check_count(k, channels)
    if k == 0:
        return _stored_clusters(doc, layer)
    desc = cv_format.descriptors(reader, key, layer, doc)
    return cluster_channels(desc, k, seed=int(doc.get("seed") or 0), layer=layer)


@dataclass
class PageView:
    """A recorded view as the page draws it: the layers (at most MAX_CHAIN_LAYERS), their
    clusters (one possibly reclustered), and per gap the cluster influence and its bundling."""

    key: str
    doc: dict
    layers: list[str]
    clusters: dict[str, Any]
    influence: list[Any]  # ClusterInfluence per gap
    bundling: list[Any]  # Bundling per gap
    methods: list[str]
    encodings: list[str]
    truncated: int  # layers of the view not drawn


def page_view(reader: Any, key: str, override: tuple[str, int] | None = None) -> PageView:
    """Load view ``key`` and aggregate it: stored clusters (``override = (layer, k)``: that
    layer reclustered), cluster x cluster influence and the bundled edges of every gap."""
    from ...model.cnnvis import bundle_edges, cluster_influence

    doc = cv_format.meta(reader, key)
    layers = doc["layers"][:MAX_CHAIN_LAYERS]
    clusters = {}
    for layer in layers:
        k = override[1] if override is not None and override[0] == layer else 0
        clusters[layer] = page_clusters(reader, key, layer, k, doc)
    infl, bund, methods, encodings = [], [], [], []
    seed = int(doc.get("seed") or 0)
    for i in range(len(layers) - 1):
        pair = cv_format.influence(reader, key, i, doc)
        ci = cluster_influence(pair.influence, clusters[layers[i]], clusters[layers[i + 1]])
        cc = ci.cluster_cluster
        infl.append(ci)
        bund.append(bundle_edges(cc, None if min(cc.shape) > 1 else 1, seed=seed))
        methods.append(pair.method)
        encodings.append(pair.encoding if pair.rank is None else
                         f"rank {pair.rank} (error {pair.error or 0:.1%})")
    return PageView(key, doc, layers, clusters, infl, bund, methods, encodings,
                    len(doc["layers"]) - len(layers))


def _gap(b: Any) -> ChainGap:
    return ChainGap(b.edges, b.weights, b.bundled, b.row_labels, b.col_labels, b.row_pos,
                    b.col_pos, b.hub_pos)


def chain_crossings(view: PageView) -> list[dict]:
    """Per gap of the drawn chain: edges, bundles, and crossings -- ``plain_index`` (every
    edge straight, clusters in index order), ``plain`` (every edge straight, clusters where
    the chain view draws them) and ``bundled`` (the chain view's drawing)."""
    from ...model.cnnvis import Bundling, count_crossings

    gaps = [_gap(b) for b in view.bundling]
    pos, hubs = chain_layout([view.clusters[la].n_clusters for la in view.layers], gaps)
    out = []
    for g, b in enumerate(view.bundling):
        drawn = Bundling(b.row_labels, b.col_labels, pos[g], pos[g + 1], hubs[g], b.edges,
                         b.weights, b.bundled, b.threshold)
        out.append({"source": view.layers[g], "target": view.layers[g + 1],
                    "edges": int(len(b.edges)), "bundles": b.n_bundles,
                    "plain_index": b.plain_crossings("index"),
                    "plain": count_crossings(pos[g][b.edges[:, 0]], pos[g + 1][b.edges[:, 1]]),
                    "bundled": drawn.bundled_crossings()})
    return out


def _images(reader: Any, key: str, layer: str, cl: Any, doc: dict, side: int,
            dmg: Damage) -> tuple[list[np.ndarray], list[str], list[int]]:
    """Per cluster an image: the preferred input of its member closest to the centre that has
    one, else its representative's top example, else the representative's response pattern."""
    run = reader.name
    pref = pi_format.meta(reader, layer)
    units: list[int] = [int(u) for u in pref["units"]] if pref is not None else []
    pimgs = crops = desc = None
    if units:
        with dmg.guard(run, "the preferred inputs"):
            pimgs = pi_format.images(reader, layer, mmap=True)
    if te_format.crops_meta(reader, layer) is not None:
        with dmg.guard(run, "the top examples"):
            crops = te_format.crops(reader, layer, mmap=True)
            if crops.ndim != 5:
                crops = None
    have = set(units) if pimgs is not None else set()
    images, kinds, shown = [], [], []
    for j in range(cl.n_clusters):
        rep = int(cl.representatives[j])
        member = next((int(c) for c in cl.members(j) if int(c) in have), None)
        if member is not None:
            images.append(shrink(np.asarray(pimgs[units.index(member)]), side))
            kinds.append("preferred")
            shown.append(member)
        elif crops is not None and rep < crops.shape[0]:
            images.append(shrink(np.asarray(crops[rep][0]), side))
            kinds.append("top")
            shown.append(rep)
        else:
            if desc is None:
                desc = cv_format.descriptors(reader, key, layer, doc)
            images.append(pattern_image(desc[rep]))
            kinds.append("pattern")
            shown.append(rep)
    return images, kinds, shown


def _counts_line(c: dict) -> str:
    return (f"{c['edges']} edges above the mean influence, {c['bundles']} bundles; crossings: "
            f"plain {c['plain_index']} (index order), {c['plain']} (drawn order) → bundled "
            f"{c['bundled']}")


def clusters_body(reader: Any, key: str, layer: str, k: int) -> list:
    """The clusters part of the layer's section for count ``k`` (0: as recorded)."""
    reader = reader if isinstance(reader, RequestReader) else RequestReader(reader)
    view = page_view(reader, key, (layer, k) if k else None)
    doc = view.doc
    if layer not in view.layers:
        return [html.Div(f"{layer} is beyond the {MAX_CHAIN_LAYERS} layers drawn.",
                         className="muted")]
    cl = view.clusters[layer]
    dmg = Damage()
    images, kinds, shown = _images(reader, key, layer, cl, doc, CARD_SIDE, dmg)
    sil = cl.silhouette
    how = (f"by their mean response per class ({len(doc.get('classes') or [])} classes)"
           if doc.get("by") == "class" else f"by their response to {doc.get('n_images')} images")
    pooled = (f", pooled into {doc.get('columns')} columns" if doc.get("pooled_from") else "")
    out = [html.Div(
        f"{cl.n_clusters} clusters of {len(cl.labels)} channels, grouped {how}{pooled} "
        f"(k-means on their correlation)" + (f"; silhouette {sil:.2f}" if np.isfinite(sil)
                                              else "") + ("" if k else ", as recorded") + ".",
        className="muted", id="cnnvis-summary"),
        graph("cnnvis-cards", figure=cluster_cards(images, [int(s) for s in cl.sizes], shown,
                                                   kinds, layer=layer),
              config={"staticPlot": True})]
    crossings = chain_crossings(view)
    i = view.layers.index(layer)
    for g, title in ((i, "feeds"), (i - 1, "is fed by")):
        if not 0 <= g < len(view.bundling):
            continue
        b, ci = view.bundling[g], view.influence[g]
        src, tgt = view.layers[g], view.layers[g + 1]
        ro = np.argsort(b.row_pos, kind="stable")
        co = np.argsort(b.col_pos, kind="stable")
        other = tgt if g == i else src
        out += [
            html.H4(f"{layer} {title} {other}", className="cnnvis-pair"),
            html.Div(f"cluster × cluster influence ({view.methods[g]}, "
                     f"{view.encodings[g]}), rows and columns in bicluster order; "
                     + _counts_line(crossings[g]), className="muted"),
            graph(f"cnnvis-matrix-{'out' if g == i else 'in'}", figure=cluster_matrix(
                ci.cluster_cluster, ro, co, [int(s) for s in view.clusters[src].sizes],
                [int(s) for s in view.clusters[tgt].sizes], source=src, target=tgt),
                config={"displayModeBar": False}),
        ]
    if dmg:
        out.insert(0, dmg.notice())
    return out


def cnnvis_section(reader: Any, layer: str) -> Any:
    """The CNNVis clusters of the layer (Liu et al. 2017)"""
    keys = cv_format.keys(reader)
    if not keys:
        return None
    key = cv_format.view_of(reader, layer)
    title = html.H3("Clusters (CNNVis)")
    if key is None:
        layers = cv_format.meta(reader, keys[0])["layers"]
        return html.Div([title, html.Div(
            "Channel clusters are recorded for " + ", ".join(layers) + ": click one of them "
            "(the chain view below the graph shows them all).", className="muted")],
            id="cnnvis-section")
    doc = cv_format.meta(reader, key)
    channels = doc["clusters"][layer]["channels"]
    recorded = len(doc["clusters"][layer]["sizes"])
    options = [{"label": f"as recorded ({recorded})", "value": 0}]
    if channels <= MAX_RECLUSTER_CHANNELS:
        options += [{"label": str(k), "value": k}
                    for k in range(2, min(MAX_CLUSTERS, channels) + 1)]
    return html.Div([
        title,
        html.Div("Channels that respond alike over the data set form a cluster (Liu et al. "
                 "2017); each card shows a member's preferred input (pref), else the top image of "
                 "the cluster's representative channel (top), else its response pattern (pat), "
                 "with the channel shown.", className="muted"),
        html.Label(["Clusters ", dcc.Dropdown(id="cnnvis-k", options=options, value=0,
                                              clearable=False, style={"width": "170px"})],
                   className="control"),
        dcc.Loading(html.Div(clusters_body(reader, key, layer, 0), id="cnnvis-clusters")),
    ], id="cnnvis-section")


def chain_body(reader: Any, key: str, selected: str | None,
               override: tuple[str, int] | None) -> list:
    """The chain view of view ``key`` (``override``: one layer reclustered)."""
    reader = reader if isinstance(reader, RequestReader) else RequestReader(reader)
    view = page_view(reader, key, override)
    crossings = chain_crossings(view)
    dmg = Damage()
    thumbs = []
    for layer in view.layers:
        thumbs.append(_images(reader, key, layer, view.clusters[layer], view.doc, BOX_SIDE,
                              dmg)[0])
    fig = chain_figure(view.layers, [[int(s) for s in view.clusters[la].sizes]
                                     for la in view.layers],
                       [[int(r) for r in view.clusters[la].representatives]
                        for la in view.layers],
                       [_gap(b) for b in view.bundling], crossings, selected=selected,
                       thumbs=thumbs)
    rows = [html.Tr([html.Th(h) for h in ("source → target", "influence", "edges", "bundles",
                                          "plain, index order", "plain, drawn order",
                                          "bundled")])]
    for c, m in zip(crossings, view.methods, strict=True):
        rows.append(html.Tr([html.Td(f"{c['source']} → {c['target']}"), html.Td(m),
                             html.Td(c["edges"]), html.Td(c["bundles"]),
                             html.Td(c["plain_index"]), html.Td(c["plain"]),
                             html.Td(html.B(c["bundled"]))]))
    note = f" (the first {MAX_CHAIN_LAYERS} of {len(view.doc['layers'])} layers)" \
        if view.truncated else ""
    out = [
        html.H3("CNNVis: clusters of the recorded layers and their bundled edges" + note),
        html.Div("Each column is a layer, each box a cluster of its channels (height by size, "
                 "#cluster·channels). Edges join clusters of adjacent layers whose influence is "
                 "above the mean; edges whose clusters fall in one bicluster of the influence "
                 "matrix (spectral co-clustering, Dhillon 2001) are bundled through its hub "
                 "(Liu et al. 2017). Click 'every edge straight' in the legend to compare.",
                 className="muted"),
        graph("cnnvis-chain-graph", figure=fig, config={"displayModeBar": False}),
        html.Table(rows, className="facts", id="cnnvis-crossings"),
    ]
    if override is not None:
        out.insert(1, html.Div(f"{override[0]} reclustered into {override[1]} clusters.",
                               className="muted"))
    if dmg:
        out.insert(0, dmg.notice())
    return out


def chain_container() -> html.Div:
    """The chain view's place on the Model page (empty for a run without CNNVis)."""
    return html.Div([dcc.Store(id="cnnvis-count"), html.Div(id="cnnvis-chain-body")],
                    id="cnnvis-chain")


def recluster(state: Any, k: Any, layer: Any, run: Any) -> tuple[Any, Any]:
    """The ``cnnvis-k`` callback: (the section's clusters, the count store)."""
    if not isinstance(run, str) or not isinstance(layer, str) or not run or not layer:
        return no_update, no_update
    reader = RequestReader(state.reader(run))
    key = cv_format.view_of(reader, layer)
    if key is None:
        return no_update, no_update
    channels = cv_format.meta(reader, key)["clusters"][layer]["channels"]
    k = check_count(k, channels)
    return clusters_body(reader, key, layer, k), {"run": run, "layer": layer, "k": k}


def chain(state: Any, run: Any, layer: Any, count: Any) -> Any:
    """The chain view callback's answer (None for a run without CNNVis)."""
    if not isinstance(run, str) or not run:
        return None
    reader = RequestReader(state.reader(run))
    keys = cv_format.keys(reader)
    if not keys:
        return None
    layer = layer if isinstance(layer, str) else None
    key = (cv_format.view_of(reader, layer) if layer else None) or keys[0]
    override = None
    if isinstance(count, dict) and count.get("run") == run and layer is not None \
            and count.get("layer") == layer:
        doc = cv_format.meta(reader, key)
        if layer in doc["layers"]:
            k = check_count(count.get("k"), doc["clusters"][layer]["channels"])
            override = (layer, k) if k else None
    return chain_body(reader, key, layer, override)


def register_cnnvis(app: Any, state: Any) -> None:
    @app.callback(
        Output("cnnvis-clusters", "children"), Output("cnnvis-count", "data"),
        Input("cnnvis-k", "value"), State("model-selected", "data"), State("model-run", "value"),
        prevent_initial_call=True,
    )
    @survive(NOTICE, no_update)
    def _recluster(k, layer, run):
        return recluster(state, k, layer, run)

    @app.callback(
        Output("cnnvis-chain-body", "children"),
        Input("model-run", "value"), Input("model-selected", "data"),
        Input("cnnvis-count", "data"),
    )
    @survive(NOTICE)
    def _chain(run, layer, count):
        return chain(state, run, layer, count)
