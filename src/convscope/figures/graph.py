"""The model graph as dash-cytoscape elements: blocks folded until clicked, nodes coloured by type
and sized by a chosen per-layer figure (time or memory share).

Works on the stored graph dict (``Graph.to_dict()``) and the stored profile table; no model or
torch is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..graphs import Graph

__all__ = ["graph_elements", "GRAPH_STYLESHEET", "TYPE_COLORS", "type_category", "short_shape",
           "short_label", "LABEL_FONT_PX", "MIN_LABEL_PX", "MAX_LABEL_CHARS"]

#: font size of the node labels at zoom 1 (CSS pixels)
LABEL_FONT_PX = 12
#: a label whose rendered size (zoom × font size) is below this is not drawn (cytoscape's
#: ``min-zoomed-font-size``): every label on screen is at least this many pixels tall
MIN_LABEL_PX = 10
#: the longest layer name a node shows; longer names keep their end behind "…" (the full
#: name is the node's tooltip and its panel's title)
MAX_LABEL_CHARS = 22

TYPE_COLORS = {
    "conv": "#0072B2",
    "norm": "#009E73",
    "act": "#E69F00",
    "pool": "#CC79A7",
    "linear": "#D55E00",
    "merge": "#667085",
    "reshape": "#98A2B3",
    "block": "#EAF2FA",
    "io": "#101828",
    "other": "#56B4E9",
}


def type_category(node_type: str, op: str) -> str:
    t = node_type.lower()
    if op in ("input", "output"):
        return "io"
    if op == "block":
        return "block"
    if "conv" in t:
        return "conv"
    if "norm" in t:
        return "norm"
    if any(k in t for k in ("relu", "gelu", "silu", "sigmoid", "tanh", "swish", "hardswish",
                            "elu", "softmax", "mish")):
        return "act"
    if "pool" in t:
        return "pool"
    if "linear" in t:
        return "linear"
    if t in ("add", "iadd", "cat", "concat", "mul", "stack", "sub"):
        return "merge"
    if any(k in t for k in ("flatten", "view", "reshape", "permute", "transpose", "squeeze",
                            "dropout", "identity")):
        return "reshape"
    return "other"


def short_shape(shape: Iterable[int] | None) -> str:
    if not shape:
        return ""
    return "×".join(str(s) for s in list(shape)[1:]) or "scalar"


def short_label(name: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``name`` in at most ``limit`` characters: its last dotted parts (the most specific) after
    "…" (``"…denselayer12.conv1"``); a last part longer than that keeps its end."""
    if len(name) <= limit:
        return name
    parts = name.split(".")
    tail = parts[-1]
    for part in reversed(parts[:-1]):
        if len(part) + 1 + len(tail) + 1 > limit:
            break
        tail = part + "." + tail
    return "…" + (tail if len(tail) + 1 <= limit else tail[len(tail) - limit + 1:])


def graph_elements(
    graph: Graph | Mapping[str, Any],
    *,
    expanded: Iterable[str] = (),
    depth: int = 1,
    metric: Mapping[str, float] | None = None,
    selected: str | None = None,
) -> list[dict[str, Any]]:
    """Cytoscape elements of ``graph`` folded to ``depth``, with the ``expanded`` blocks opened.

    ``metric``: per module path a share in [0, 1] (e.g. ``time_share``); node sizes follow its
    square root. Each node's ``data`` carries ``id``, ``label`` (two lines: the name, shortened
    by :func:`short_label`, then type and output shape), ``full`` (the tooltip: full name, type,
    shape, parameters), ``type``, ``op``, ``category``, ``params``, ``shape`` and ``expandable``
    (a folded block).
    """
    g = graph if isinstance(graph, Graph) else Graph.from_dict(dict(graph))
    # A block is open when it or all its ancestors... simply: expand the named ones.
    view = g.collapse(blocks=depth, expand=_closure(g, expanded)) if depth is not None else g
    metric = dict(metric or {})
    top = max(metric.values(), default=0.0) or 1.0
    elements: list[dict[str, Any]] = []
    for node in view.nodes.values():
        cat = type_category(node.type, node.op)
        key = node.module or node.name
        share = metric.get(key)
        size = 34 if share is None else 22 + 46 * math.sqrt(max(share, 0.0) / top)
        label = node.name
        shape = short_shape(node.output_shape)
        params = int(node.params or 0)
        full = f"{node.name}\n{node.type}" + (f" → {shape}" if shape else "") + (
            f"\n{params:,} parameters" if params else "") + (
            "\nclick to open" if node.op == "block" else "")
        elements.append({
            "data": {
                "id": node.name,
                "label": f"{short_label(label)}\n{node.type}" + (f" {shape}" if shape else ""),
                "full": full,
                "type": node.type,
                "op": node.op,
                "category": cat,
                "params": params,
                "shape": shape,
                "size": round(size, 1),
                "share": share,
                "expandable": node.op == "block",
                "module": node.module or "",
            },
            "classes": " ".join(c for c in (cat, "selected" if node.name == selected else "")
                                if c),
        })
    for e in view.edges:
        elements.append({
            "data": {"source": e.src, "target": e.dst, "label": short_shape(e.shape)},
        })
    return elements


def _closure(g: Graph, expanded: Iterable[str]) -> list[str]:
    """Opening ``layer1.0`` also opens ``layer1``: expand every ancestor of each named block."""
    out: set[str] = set()
    for name in expanded:
        if name not in g.blocks:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            anc = ".".join(parts[:i])
            if anc in g.blocks:
                out.add(anc)
    return sorted(out)


GRAPH_STYLESHEET: list[dict[str, Any]] = [
    {"selector": "node", "style": {
        "label": "data(label)", "text-wrap": "wrap", "text-valign": "center",
        "text-halign": "center", "font-size": f"{LABEL_FONT_PX}px", "color": "#ffffff",
        "min-zoomed-font-size": MIN_LABEL_PX, "line-height": 1.25,
        "shape": "round-rectangle", "width": "label", "height": "label", "padding": "5px",
        "background-color": TYPE_COLORS["other"], "border-width": 0,
        "text-max-width": "220px",
    }},
    *[
        {"selector": f".{cat}", "style": {"background-color": color}}
        for cat, color in TYPE_COLORS.items() if cat not in ("block",)
    ],
    {"selector": ".block", "style": {
        "background-color": TYPE_COLORS["block"], "color": "#1d2330", "border-width": 2,
        "border-color": "#0072B2", "border-style": "dashed", "font-weight": "bold",
    }},
    {"selector": ".merge", "style": {"shape": "barrel"}},
    {"selector": ".io", "style": {"shape": "round-rectangle"}},
    {"selector": "node[share]", "style": {"min-width": "data(size)", "min-height": "data(size)"}},
    {"selector": ".selected", "style": {
        "border-width": 4, "border-color": "#D55E00", "border-style": "solid"}},
    {"selector": "edge", "style": {
        "curve-style": "bezier", "target-arrow-shape": "triangle", "width": 1.5,
        "line-color": "#98A2B3", "target-arrow-color": "#98A2B3", "label": "data(label)",
        # the shape on an edge repeats its source's: drawn only when zoomed in past 1.4
        "font-size": "7px", "min-zoomed-font-size": MIN_LABEL_PX,
        "color": "#667085", "text-background-color": "#ffffff", "text-background-opacity": 0.8,
    }},
]
