"""Training dynamics (Liu et al. 2018, DeepTracker): anomaly iterations in per-image validation
results, class clusters of per-class error curves, and the filters that changed most at those
iterations.

Pure numpy analysis; ``run.watch`` / ``run.log_validation`` record the inputs.
"""

from .anomaly import AnomalyResult, anomalies, default_d, stable_flips
from .clusters import ClusterResult, class_clusters, class_error, kmeans, standardize_rows
from .correlate import CORRELATE_COLUMNS, correlate

__all__ = [
    "AnomalyResult",
    "CORRELATE_COLUMNS",
    "ClusterResult",
    "anomalies",
    "class_clusters",
    "class_error",
    "correlate",
    "default_d",
    "kmeans",
    "stable_flips",
    "standardize_rows",
]
