"""Model structure, feature maps and per-layer resources.

* :func:`graph` — the data-flow graph (leaf modules + functional ops, skip connections as real
  edges, foldable into blocks), recorded with torch.fx or, where fx cannot trace, with hooks.
* :func:`capture` / :func:`capture_inputs` — outputs (inputs) of chosen layers in one pass.
* :func:`default_feature_layer`, :func:`collect_features` — embedding features over a loader.
* :func:`profile` — per-layer and per-block parameter/activation/gradient bytes and forward /
  backward times (exported as ``cs.profile``).
* :mod:`~convscope.model.cnnvis` — CNNVis (Liu et al. 2017): channel clusters per layer, their
  influence matrices and biclustered edge bundles (``cnnvis.cnnvis``, docs/cnnvis.md).
* :func:`leaf_modules`, :func:`resolve_layers` — layer discovery by path, type or predicate.
"""

from __future__ import annotations

from ..graphs import Block, Edge, Graph, Node
from ..nn import leaf_modules, resolve_layers
from . import cnnvis
from .capture import capture, capture_inputs, collect_features, default_feature_layer, recording
from .cnnvis import CNNVisGraph, bundle_edges, cluster_channels, count_crossings
from .graph import graph
from .profile import profile

__all__ = [
    "Block",
    "CNNVisGraph",
    "bundle_edges",
    "cluster_channels",
    "cnnvis",
    "count_crossings",
    "Edge",
    "Graph",
    "Node",
    "capture",
    "capture_inputs",
    "collect_features",
    "default_feature_layer",
    "graph",
    "leaf_modules",
    "profile",
    "recording",
    "resolve_layers",
]
