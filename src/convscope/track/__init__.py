"""Training dynamics (Liu et al. 2018, DeepTracker): anomaly iterations in per-image validation
results, class clusters of per-class error curves, the filters that changed most at those
iterations (and the layers x iterations x classes cube), and alerts on update ratios and
gradient norms.

Pure numpy analysis; ``run.watch`` / ``run.log_validation`` record the inputs.
"""

from .alerts import ALERT_COLUMNS, ALERT_KINDS, training_alerts
from .anomaly import AnomalyResult, anomalies, default_d, stable_flips
from .clusters import ClusterResult, class_clusters, class_error, kmeans, standardize_rows
from .correlate import CORRELATE_COLUMNS, CorrelationCube, correlate, correlation_cube

__all__ = [
    "ALERT_COLUMNS",
    "ALERT_KINDS",
    "CorrelationCube",
    "correlation_cube",
    "training_alerts",
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
