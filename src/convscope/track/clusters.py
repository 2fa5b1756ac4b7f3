"""Per-class error over training and k-means clusters of classes (DeepTracker's validation view).

DeepTracker's validation view is a heatmap: one row per class, one column per checkpoint, colour =
the class's validation error there. Rows are grouped by k-means (k = 4) over the *standardised*
per-class error vectors, so classes that are learned along similar curves sit together.

* :func:`class_error` turns a ``[T, N]`` correctness matrix into the ``[T, C]`` error matrix.
* :func:`class_clusters` clusters its columns (each class is a point in ``R^T``) with a numpy
  k-means (k-means++ seeding, several restarts, Lloyd iterations), and returns a row order for the
  heatmap.

Standardisation (the default, ``standardize=True``): each class's error curve ``e_c`` (length
``T``) becomes the z-score over time ``(e_c - mean_t(e_c)) / std_t(e_c)``, with the population
standard deviation (``ddof=0``). A constant curve (``max == min``) becomes all zeros. Clusters thus
group classes by the *shape* of their learning curve (when they are learned, when they regress),
not by their overall difficulty; the order returned puts easier clusters and classes first.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from .anomaly import as_correct, as_labels

__all__ = ["ClusterResult", "class_clusters", "class_error", "kmeans", "standardize_rows"]


def class_error(correct: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-class error rate at every checkpoint.

    Args:
        correct: ``[T, N]`` boolean (or 0/1), True when image ``n`` is classified correctly at
            checkpoint ``t``.
        labels: ``[N]`` integer class of each image.

    Returns:
        ``(error, classes)``: ``error`` is ``[T, C]`` float64 with ``error[t, j]`` = fraction of
        the images of class ``classes[j]`` misclassified at checkpoint ``t``; ``classes`` is
        ``[C]``, the sorted unique labels (classes without images do not appear).
    """
    c = as_correct(correct)
    t, n = c.shape
    lab = as_labels(labels, n)
    classes, inv, sizes = np.unique(lab, return_inverse=True, return_counts=True)
    if n == 0:
        return np.zeros((t, 0), dtype=np.float64), classes
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    # wrong counts per class: sum over each class's (contiguous, after sorting) block of columns
    wrong = np.add.reduceat(~c[:, order], starts, axis=1, dtype=np.int64)
    return wrong / sizes[None, :], classes


def standardize_rows(x: Any) -> np.ndarray:
    """Z-score each row over its columns: ``(x - mean) / std`` with ``ddof=0``.

    Rows with ``max == min`` (constant) become zeros, so the result is finite for any finite input.

    Args:
        x: ``[M, T]`` finite floats.

    Returns:
        ``[M, T]`` float64.
    """
    a = np.asarray(x, dtype=np.float64)
    const = np.ptp(a, axis=1) == 0 if a.shape[1] else np.ones(a.shape[0], dtype=bool)
    mean = a.mean(axis=1, keepdims=True) if a.shape[1] else np.zeros((a.shape[0], 1))
    std = a.std(axis=1, keepdims=True) if a.shape[1] else np.ones((a.shape[0], 1))
    std[const] = 1.0
    z = (a - mean) / std
    z[const] = 0.0
    return z


def _sqdist(x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """``[M, K]`` squared Euclidean distances, clipped at 0."""
    c_sq = np.einsum("ij,ij->i", centers, centers)
    dist = x_sq[:, None] - 2.0 * (x @ centers.T) + c_sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    return dist


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, x_sq: np.ndarray) -> np.ndarray:
    """Greedy k-means++ seeding: each new centre is the best of ``2 + ln k`` D^2-sampled tries."""
    m = x.shape[0]
    trials = 2 + int(math.log(k))
    idx = [int(rng.integers(m))]
    closest = _sqdist(x, x[idx], x_sq)[:, 0]
    for _ in range(1, k):
        pot = closest.sum()
        if pot <= 0.0:  # every point coincides with a chosen centre; pick any other point
            cand = rng.choice(np.setdiff1d(np.arange(m), idx), size=1)
        else:
            cum = np.cumsum(closest)
            cand = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
            cand = np.minimum(cand, m - 1)
        dc = np.minimum(closest[None, :], _sqdist(x, x[cand], x_sq).T)  # [trials, M]
        best = int(np.argmin(dc.sum(axis=1)))
        idx.append(int(cand[best]))
        closest = dc[best]
    return x[idx].copy()


def _lloyd(
    x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray, max_iter: int
) -> tuple[np.ndarray, np.ndarray, float, int]:
    k = centers.shape[0]
    labels = np.argmin(_sqdist(x, centers, x_sq), axis=1)
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        onehot = (labels[None, :] == np.arange(k)[:, None]).astype(np.float64)  # [k, M]
        sizes = onehot.sum(axis=1)
        sums = onehot @ x
        empty = sizes == 0
        if empty.any():  # move each empty centre onto the point farthest from its own centre
            d_own = ((x - centers[labels]) ** 2).sum(axis=1)
            far = np.argsort(-d_own, kind="stable")
            for j, p in zip(np.flatnonzero(empty), far, strict=False):
                sums[j] = x[p]
                sizes[j] = 1.0
        centers = sums / sizes[:, None]
        new = np.argmin(_sqdist(x, centers, x_sq), axis=1)
        done = np.array_equal(new, labels)
        labels = new  # always the nearest centre of the final centres
        if done:
            break
    inertia = float(((x - centers[labels]) ** 2).sum())
    return labels, centers, inertia, n_iter


def kmeans(
    x: Any, k: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 300
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Plain k-means in numpy: k-means++ seeding, Lloyd iterations, best of ``n_init`` restarts.

    Iterations stop when no assignment changes (or after ``max_iter``). An empty cluster is
    re-seeded with the point farthest from its centre. ``k`` must not exceed the number of
    distinct points (:func:`class_clusters` clamps it).

    Args:
        x: ``[M, D]`` finite floats.
        k: number of clusters, ``1 <= k <= M``.
        seed: seed of ``numpy.random.default_rng``; the result is a function of ``(x, k, seed,
            n_init, max_iter)``.

    Returns:
        ``(labels [M], centers [k, D], inertia, n_iter)`` of the restart with the lowest inertia
        (sum of squared distances of points to their centre).
    """
    a = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= a.shape[0]:
        raise InputError(f"k must be between 1 and the number of points ({a.shape[0]}), got {k}.")
    rng = np.random.default_rng(seed)
    a_sq = np.einsum("ij,ij->i", a, a)
    best: tuple[np.ndarray, np.ndarray, float, int] | None = None
    for _ in range(max(1, int(n_init))):
        init = _kmeans_pp(a, k, rng, a_sq)
        res = _lloyd(a, init, a_sq, max_iter)
        if best is None or res[2] < best[2]:
            best = res
    assert best is not None
    return best


@dataclass
class ClusterResult:
    """Classes grouped by k-means over their standardised error curves (see :func:`class_clusters`).

    Attributes:
        labels: ``[C]`` cluster of each class (column of ``error``), ``0 .. k-1``. Clusters are
            numbered by increasing mean error of their classes, so the numbering is stable.
        centroids: ``[k, T]`` cluster centres in the clustered (standardised) space.
        inertia: sum of squared distances of the classes' points to their centroid.
        order: ``[C]`` column indices of ``error`` for the heatmap rows: cluster 0's classes first,
            within a cluster by increasing mean error (ties: lower index first).
        classes: ``[C]`` class label of each column (``arange(C)`` unless given).
        points: ``[C, T]`` the points clustered (standardised error curves).
        k: clusters used; ``k_requested``: clusters asked for. ``k < k_requested`` when there were
            fewer classes, or fewer distinct curves, than asked for (a warning says so).
        n_iter: Lloyd iterations of the best restart.
        standardized: whether the curves were z-scored.
    """

    labels: np.ndarray
    centroids: np.ndarray
    inertia: float
    order: np.ndarray
    classes: np.ndarray
    points: np.ndarray
    k: int
    k_requested: int
    n_iter: int
    standardized: bool

    @property
    def classes_ordered(self) -> np.ndarray:
        """Class labels in heatmap-row order (``classes[order]``)."""
        return self.classes[self.order]

    def members(self, cluster: int) -> np.ndarray:
        """Class labels of one cluster, in heatmap-row order."""
        o = self.order
        return self.classes[o[self.labels[o] == cluster]]

    def to_frame(self) -> pd.DataFrame:
        """One row per class in heatmap order: ``class``, ``cluster``, ``row``, ``column``."""
        return pd.DataFrame(
            {
                "class": self.classes[self.order],
                "cluster": self.labels[self.order],
                "row": np.arange(len(self.order)),
                "column": self.order,
            }
        )


def class_clusters(
    error: Any,
    k: int = 4,
    seed: int = 0,
    *,
    classes: Any = None,
    standardize: bool = True,
    n_init: int = 10,
    max_iter: int = 300,
) -> ClusterResult:
    """Cluster classes by their error curves over training (DeepTracker: k-means, k = 4).

    Each class (column of ``error``) is a point in ``R^T``. With ``standardize=True`` (default,
    as in DeepTracker) the point is the class's z-scored error curve: ``(e - mean_t e) / std_t e``
    with the population std (``ddof=0``); a constant curve becomes all zeros. The points are then
    clustered by :func:`kmeans` (k-means++ seeding, ``n_init`` restarts, best inertia kept),
    which is deterministic for a given ``seed``.

    ``k`` is clamped to the number of classes and to the number of distinct points (e.g. all
    curves constant -> one point -> ``k = 1``); a ``UserWarning`` says so and
    :attr:`ClusterResult.k` holds the value used.

    Args:
        error: ``[T, C]`` per-class error (from :func:`class_error`), finite.
        k: clusters wanted (default 4).
        seed: random seed of the k-means++ seeding.
        classes: ``[C]`` labels of the columns, default ``arange(C)``.
        standardize: z-score each class curve first (default True); False clusters raw curves.
        n_init: k-means restarts (default 10).
        max_iter: Lloyd iterations per restart at most (default 300).

    Returns:
        :class:`ClusterResult` (cluster of each class, centroids, inertia, heatmap row order).
    """
    e = np.asarray(error, dtype=np.float64)
    if e.ndim != 2:
        raise InputError(
            f"error must be a 2-D array [T checkpoints, C classes], got shape {e.shape}; "
            "use class_error(correct, labels)[0]."
        )
    t, n_cls = e.shape
    if n_cls == 0 or t == 0:
        raise InputError(
            f"error has shape {e.shape}: need at least one checkpoint and one class to cluster."
        )
    if not np.all(np.isfinite(e)):
        raise InputError(
            "error contains NaN or inf; drop classes without images (class_error never "
            "returns those) or fill the gaps before clustering."
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k must be an integer >= 1, got {k!r}.")
    cls = np.arange(n_cls) if classes is None else np.asarray(classes)
    if cls.shape != (n_cls,):
        raise InputError(
            f"classes must have one label per column of error ({n_cls}), got shape {cls.shape}."
        )

    points = standardize_rows(e.T) if standardize else e.T.copy()
    k_req = int(k)
    k_use = min(k_req, n_cls)
    why = f"only {n_cls} class" + ("es" if n_cls != 1 else "")
    if k_use > 1:
        n_distinct = len(np.unique(points, axis=0))
        if n_distinct < k_use:
            after = " after standardisation" if standardize else ""
            k_use, why = n_distinct, f"only {n_distinct} distinct error curve" + (
                "s" if n_distinct != 1 else ""
            ) + after
    if k_use < k_req:
        warnings.warn(f"class_clusters: k={k_req} reduced to {k_use} ({why}).", stacklevel=2)

    labels, centroids, inertia, n_iter = kmeans(
        points, k_use, seed=seed, n_init=n_init, max_iter=max_iter
    )

    # canonical numbering: clusters by increasing mean raw error of their classes
    mean_err = e.mean(axis=0)
    sizes = np.bincount(labels, minlength=k_use)
    cl_mean = np.bincount(labels, weights=mean_err, minlength=k_use) / np.maximum(sizes, 1)
    first = np.full(k_use, n_cls)
    np.minimum.at(first, labels, np.arange(n_cls))
    perm = np.lexsort((first, cl_mean))  # perm[new] = old
    relabel = np.empty(k_use, dtype=np.int64)
    relabel[perm] = np.arange(k_use)
    labels = relabel[labels]
    centroids = centroids[perm]
    order = np.lexsort((np.arange(n_cls), mean_err, labels))

    return ClusterResult(
        labels=labels,
        centroids=centroids,
        inertia=inertia,
        order=order,
        classes=cls,
        points=points,
        k=k_use,
        k_requested=k_req,
        n_iter=n_iter,
        standardized=bool(standardize),
    )
