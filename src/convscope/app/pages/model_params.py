"""The Model page's "Parameters" section of a conv or linear layer's panel: Wang & Li (2020,
figures 7 and 10)'s picture of its weights, as the diagnosis stored it (``run.log_diagnosis``):
the outputs' dendrogram (cosine distance, single linkage) beside the weight grid whose rows follow
the tree's leaf order (conv: c_out row blocks × c_in column blocks of kh × kw cells, each scaled to
0–1, the bias as the last column; linear: the raw f_out × (f_in + 1) heatmap), and a density
curve per output.

The answer is bounded as on the Diagnosis page (:func:`convscope.figures.diagnosis.
param_view_figure`: at most ``MAX_GRID_VALUES`` grid values of evenly spaced whole outputs and
inputs, ``MAX_CURVES`` curves, the tree pruned to the drawn outputs), and the page lists what was
left out. A conv or linear layer without a stored view gets a notice naming the call that
records it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dash import html

from ...figures.diagnosis import param_view_figure
from ...formats import diagnosis as diag_format
from ...formats import structure
from ..components import Damage, error_figure, graph, missing

__all__ = ["params_section", "is_param_type"]

#: Module types whose weights Wang & Li's parameter view draws (by class name, as the graph
#: stores them): conv, transposed conv and linear layers (lazy ones too).
_PARAM_TYPE = re.compile(r"^(Lazy)?(Conv(Transpose)?[123]d|Linear)$")
#: The longest layer name looked up (a request can post anything).
MAX_LAYER_CHARS = 500


def is_param_type(type_name: Any) -> bool:
    """Whether a graph node's type is a conv, transposed conv or linear layer."""
    return isinstance(type_name, str) and bool(_PARAM_TYPE.match(type_name))


def _node_type(reader: Any, layer: str) -> str | None:
    """The type of the graph node called ``layer`` (None: no graph or no such node)."""
    if not structure.has_graph(reader):
        return None
    gd = structure.graph(reader)
    nodes = gd.get("nodes") if isinstance(gd, dict) else None
    for n in nodes if isinstance(nodes, list) else []:
        if isinstance(n, dict) and layer in (n.get("name"), n.get("module")):
            return n.get("type") if isinstance(n.get("type"), str) else None
    return None


def params_section(reader: Any, layer: Any):
    """The layer's parameters (Wang & Li 2020: the outputs' dendrogram beside the weight grid in
    leaf order); None for a layer without weights to draw."""
    if not isinstance(layer, str) or not layer or len(layer) > MAX_LAYER_CHARS:
        return None
    has_view = diag_format.has_param_view(reader, layer)
    if not has_view:
        if not is_param_type(_node_type(reader, layer)):
            return None
        # only a layer of the stored graph gets here: its name is safe to show
        call = ("run.log_diagnosis(model, images, params=" + json.dumps([layer]) + ")"
                if diag_format.has_reports(reader) else diag_format.SOURCE.replace(
                    "inputs", "images"))
        return html.Div([html.H3("Parameters"),
                         missing("parameter view of this layer (Wang & Li's weight grid and "
                                 "outputs' dendrogram)", call, [reader.name])],
                        id="params-section", **{"data-layer": layer, "data-state": "missing"})
    dmg = Damage()
    children: list = [html.H3("Parameters")]
    fig, notes, meta = None, [], {}
    with dmg.guard(reader.name, "the parameter view"):
        pv = diag_format.param_view(reader, diag_format.param_view_for(reader, layer), mmap=True)
        meta = pv.meta
        fig = param_view_figure(meta, pv.data, pv.density, compact=True)
        notes = [str(t) for t in meta.get("notes") or [] if isinstance(t, str)]
        notes += list(fig.layout.meta["capped"])
    kind = meta.get("kind", "")
    what = ("c_out row blocks × c_in column blocks, each kh × kw cell scaled to 0–1"
            if kind in ("conv", "deconv") else "the raw f_out × f_in weights")
    bias = ", the bias as the last column" if meta.get("has_bias") else ""
    key = meta.get("key")
    children.append(html.Div(
        f"Wang & Li (2020): {what}{bias}; the outputs' dendrogram (cosine distance, single "
        "linkage) at the left, rows in its leaf order; a density curve per output below"
        + (f" (diagnosis report '{key}')" if isinstance(key, str) and key else "") + ".",
        className="muted"))
    if dmg:
        children.append(dmg.notice())
    children.append(graph("params-fig", figure=fig if fig is not None else error_figure(
        [t for _, t in dmg.items])))
    if notes:
        children.append(html.Ul([html.Li(t) for t in notes], className="muted",
                                id="params-notes"))
    return html.Div(children, id="params-section", **{"data-layer": layer,
                                                     "data-state": "drawn" if fig else "damaged"})
