"""Wang & Li (2020)'s visualisation-based diagnosis of CNNs.

* Views (the data behind the figures): :func:`output_view` (grid of maps / heatmap of features,
  channel tree, KDE per channel), :func:`param_view` and :func:`param_grid` (Wang & Li's weight
  grid with the bias as a last column, tree and KDE along the outputs).
* Building blocks: :func:`cosine_distances` (Wang & Li (2020)'s distance; all-zero channels at 2),
  :func:`channel_clustering` (single linkage, scipy format), :func:`kde` (batched Gaussian KDE).
* Numbers per layer: :func:`output_stats`, :func:`param_stats`.
* Rules -> findings: :func:`diagnose` (model + inputs), :func:`diagnose_activations` (stored
  outputs and weights only), :func:`diagnose_checkpoint`, :func:`diagnose_dataset` (every item
  of a data set, with mergeable :class:`OutputMoments`); thresholds in :class:`Thresholds`;
  the result is a :class:`Report`.
"""

from __future__ import annotations

import sys as _sys
import types as _types

from .cluster import (
    Clustering,
    channel_clustering,
    channel_vectors,
    cluster_vectors,
    cosine_distances,
    merge_height_stats,
)
from .core import default_layers, diagnose, diagnose_activations, diagnose_checkpoint
from .dataset import (
    DiagnosisPass,
    OutputMoments,
    accumulate_outputs,
    diagnose_dataset,
    merge_outputs,
    report_of,
)
from .kde import KDE, kde
from .report import Report
from .rules import ADVICE, CODES, SEVERITIES, STAGES, Finding
from .stats import LayerStats, ParamStats, input_similarity, output_stats, param_stats
from .thresholds import Thresholds
from .views import OutputView, ParamView, output_view, param_grid, param_view

__all__ = [
    "ADVICE",
    "CODES",
    "Clustering",
    "Finding",
    "KDE",
    "DiagnosisPass",
    "OutputMoments",
    "LayerStats",
    "OutputView",
    "ParamStats",
    "ParamView",
    "Report",
    "SEVERITIES",
    "STAGES",
    "Thresholds",
    "accumulate_outputs",
    "channel_clustering",
    "channel_vectors",
    "cluster_vectors",
    "cosine_distances",
    "default_layers",
    "diagnose",
    "diagnose_activations",
    "diagnose_checkpoint",
    "diagnose_dataset",
    "input_similarity",
    "kde",
    "merge_height_stats",
    "merge_outputs",
    "output_stats",
    "output_view",
    "param_grid",
    "param_stats",
    "param_view",
    "report_of",
]


class _CallableModule(_types.ModuleType):
    """``cs.diagnose(model, inputs)`` is :func:`diagnose`; the module's names stay reachable."""

    def __call__(self, *args, **kwargs):
        return diagnose(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
