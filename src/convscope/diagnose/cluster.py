"""Hierarchical clustering of channels (features, kernels) with Wang & Li (2020)'s cosine distance.

The distance between two channels ``A`` and ``B`` (each flattened over batch and space) is
``1 - <A, B> / (|A| |B|)``, in ``[0, 2]``; a channel that is all zero has no direction, so Wang & Li
puts it at the largest distance, **2**, from every other channel (0 from itself). Distances are
one matrix product of the normalised channel vectors, on the tensors' device; the single-linkage
tree is built by scipy on the CPU.

Single-linkage merge heights are the edge weights of the minimum spanning tree of the distance
matrix, so a layer with ``d`` dead channels has exactly ``d`` merges at height 2 on top of the
tree of its live channels; :func:`merge_height_stats` drops those to describe the live ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "Clustering",
    "channel_vectors",
    "cosine_distances",
    "cluster_vectors",
    "cluster_distances",
    "gram_distances",
    "channel_clustering",
    "cluster_rows",
    "merge_height_stats",
    "sample_indices",
]

#: Channels above this count are sampled (deterministically) before clustering.
MAX_CHANNELS = 512


def sample_indices(n: int, k: int, seed: int = 0, device: Any = None) -> torch.Tensor:
    """``k`` of ``range(n)`` chosen by a seeded random permutation, sorted; all of them when
    ``n <= k``. The same ``(n, k, seed)`` always gives the same indices."""
    if n <= k:
        return torch.arange(n, device=device)
    g = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=g)[:k].sort().values
    return idx.to(device) if device is not None else idx


def channel_vectors(x: torch.Tensor) -> torch.Tensor:
    """One row per channel: ``[B, C, *spatial]`` -> ``[C, B * prod(spatial)]``; ``[B, F]`` ->
    ``[F, B]`` (each feature's values over the batch)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a tensor [B, C, H, W] or [B, F], got {type(x).__name__}.")
    if x.dim() < 2:
        raise InputError(
            f"expected a tensor [B, C, H, W] or [B, F], got shape {list(x.shape)}; add a batch "
            "dimension with x.unsqueeze(0)."
        )
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def cosine_distances(vectors: torch.Tensor) -> torch.Tensor:
    """Wang & Li (2020)'s cosine distance between all rows: ``[N, D]`` -> ``[N, N]`` in ``[0, 2]``.

    ``d(a, b) = 1 - a.b / (|a| |b|)``; a row that is all zero is at distance 2 from every other
    row (0 from itself). Non-finite values count as 0. Computed as one matrix product on the
    rows' device (float64 for rows of dtype float64, float32 otherwise)."""
    if vectors.dim() != 2:
        raise InputError(f"cosine_distances expects [N, D], got shape {list(vectors.shape)}.")
    v = vectors if vectors.dtype == torch.float64 else vectors.float()
    v = torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    norm = v.norm(dim=1)
    live = norm > 0
    u = v / norm.clamp_min(torch.finfo(v.dtype).tiny).unsqueeze(1)
    d = 1.0 - u @ u.T
    d = (d + d.T) / 2
    d = d.clamp(0.0, 2.0)
    dead = ~live
    d = torch.where(dead.unsqueeze(0) | dead.unsqueeze(1), torch.full_like(d, 2.0), d)
    d.fill_diagonal_(0.0)
    return d


@dataclass
class Clustering:
    """A single-linkage tree over channels (see :func:`channel_clustering`).

    Attributes:
        labels: ``[n]`` the channel index (in the layer) of each clustered row; ``0..n-1`` unless
            the channels were sampled.
        condensed: ``[n (n-1) / 2]`` condensed cosine distances (scipy's ``pdist`` order).
        linkage: ``[n-1, 4]`` scipy linkage matrix (``Z``) over rows ``0..n-1``.
        leaves: ``[n]`` rows in dendrogram leaf order (left to right).
        heights: ``[n-1]`` merge heights in merge order (``linkage[:, 2]``).
        icoord, dcoord: the dendrogram's segment coordinates, exactly as
            ``scipy.cluster.hierarchy.dendrogram(Z, no_plot=True)`` gives them (one 4-point list
            per merge; x in leaf units of 10, y = merge height).
        n_total: channels in the layer before sampling.
        n_dead: all-zero channels among the clustered rows (each at distance 2 from the rest).
        sampled: whether the channels were sampled (``n < n_total``).
        note: why the tree is empty, or what was sampled; ``""`` otherwise.
    """

    labels: np.ndarray
    condensed: np.ndarray
    linkage: np.ndarray
    leaves: np.ndarray
    heights: np.ndarray
    icoord: list[list[float]] = field(default_factory=list)
    dcoord: list[list[float]] = field(default_factory=list)
    n_total: int = 0
    n_dead: int = 0
    sampled: bool = False
    note: str = ""

    @property
    def n(self) -> int:
        """Number of clustered rows."""
        return int(len(self.labels))

    @property
    def ok(self) -> bool:
        """Whether a tree exists (at least two rows that could be compared)."""
        return len(self.linkage) > 0

    def distance_matrix(self) -> np.ndarray:
        """The full ``[n, n]`` distance matrix (from :attr:`condensed`)."""
        from scipy.spatial.distance import squareform

        if self.n < 2:
            return np.zeros((self.n, self.n))
        return squareform(self.condensed, checks=False)

    def live_heights(self) -> np.ndarray:
        """Merge heights of the live channels' tree: the ``n_dead`` merges at height 2 that the
        dead channels add on top are dropped (single-linkage heights are minimum-spanning-tree
        edges, so this is exact)."""
        h = np.sort(self.heights)
        if self.n_dead:
            h = h[: max(0, len(h) - self.n_dead)]
        return h

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: numpy arrays for the array fields (store them as arrays), Python scalars
        and lists for the rest."""
        return {
            "labels": np.asarray(self.labels),
            "condensed": np.asarray(self.condensed),
            "linkage": np.asarray(self.linkage),
            "leaves": np.asarray(self.leaves),
            "heights": np.asarray(self.heights),
            "icoord": [list(map(float, r)) for r in self.icoord],
            "dcoord": [list(map(float, r)) for r in self.dcoord],
            "n_total": int(self.n_total),
            "n_dead": int(self.n_dead),
            "sampled": bool(self.sampled),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Clustering:
        """Inverse of :meth:`to_dict` (array fields may be lists)."""
        return cls(
            labels=np.asarray(d["labels"], dtype=np.int64),
            condensed=np.asarray(d["condensed"], dtype=np.float64),
            linkage=np.asarray(d["linkage"], dtype=np.float64).reshape(-1, 4),
            leaves=np.asarray(d["leaves"], dtype=np.int64),
            heights=np.asarray(d["heights"], dtype=np.float64),
            icoord=[list(r) for r in d.get("icoord", [])],
            dcoord=[list(r) for r in d.get("dcoord", [])],
            n_total=int(d.get("n_total", 0)),
            n_dead=int(d.get("n_dead", 0)),
            sampled=bool(d.get("sampled", False)),
            note=str(d.get("note", "")),
        )


def _empty(labels: np.ndarray, n_total: int, n_dead: int, sampled: bool, note: str) -> Clustering:
    n = len(labels)
    return Clustering(
        labels=labels,
        condensed=np.zeros(0),
        linkage=np.zeros((0, 4)),
        leaves=np.arange(n, dtype=np.int64),
        heights=np.zeros(0),
        n_total=n_total,
        n_dead=n_dead,
        sampled=sampled,
        note=note,
    )


def cluster_vectors(
    vectors: torch.Tensor,
    *,
    labels: Any = None,
    n_total: int | None = None,
    dendrogram: bool = True,
    note: str = "",
) -> Clustering:
    """Single-linkage clustering of the rows of ``vectors [N, D]`` under the cosine distance.

    ``labels`` names the rows (default ``0..N-1``); ``dendrogram=False`` skips the dendrogram
    coordinates (they cost a Python pass over the tree)."""
    n = int(vectors.shape[0])
    if n < 2:  # no tree; cluster_distances says why
        return cluster_distances(torch.zeros(n, n), labels=labels, n_total=n_total, note=note)
    d = cosine_distances(vectors)
    v = torch.nan_to_num(vectors.float(), nan=0.0, posinf=0.0, neginf=0.0)
    n_dead = int((v.norm(dim=1) == 0).sum())
    return cluster_distances(d, labels=labels, n_total=n_total, n_dead=n_dead,
                             dendrogram=dendrogram, note=note)


def gram_distances(gram: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Wang & Li (2020)'s cosine distances from the channels' Gram matrix ``G[i, j] = <A_i, A_j>``
    (``[N, N]``, summed over any number of batches): ``d = 1 - G_ij / sqrt(G_ii G_jj)``, with
    all-zero channels (``G_ii = 0``) at 2 from every other. Returns ``(d [N, N], n_dead)``."""
    g = gram.double()
    diag = g.diagonal().clamp_min(0)
    live = diag > 0
    norm = diag.sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    d = 1.0 - g / (norm.unsqueeze(0) * norm.unsqueeze(1))
    d = ((d + d.T) / 2).clamp(0.0, 2.0)
    dead = ~live
    d = torch.where(dead.unsqueeze(0) | dead.unsqueeze(1), torch.full_like(d, 2.0), d)
    d.fill_diagonal_(0.0)
    return d, int(dead.sum())


def cluster_distances(
    d: torch.Tensor,
    *,
    labels: Any = None,
    n_total: int | None = None,
    n_dead: int = 0,
    dendrogram: bool = True,
    note: str = "",
) -> Clustering:
    """Single-linkage clustering from a ``[N, N]`` distance matrix (see :func:`cluster_vectors`;
    ``n_dead``: rows that are all-zero channels, at distance 2 from the rest)."""
    from scipy.cluster.hierarchy import dendrogram as scipy_dendrogram
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from scipy.spatial.distance import squareform

    n = int(d.shape[0])
    labels = np.arange(n, dtype=np.int64) if labels is None else np.asarray(labels, np.int64)
    n_total = n if n_total is None else int(n_total)
    sampled = n < n_total
    if n < 2:
        return _empty(
            labels, n_total, 0, sampled,
            note or f"no clustering: {n} channel(s); a tree needs at least two.",
        )
    dm = d.double().cpu().numpy()
    condensed = squareform(dm, checks=False)
    z = scipy_linkage(condensed, method="single")
    out = Clustering(
        labels=labels,
        condensed=condensed,
        linkage=z,
        leaves=np.arange(n, dtype=np.int64),
        heights=z[:, 2].copy(),
        n_total=n_total,
        n_dead=int(n_dead),
        sampled=sampled,
        note=note,
    )
    if dendrogram:
        import sys

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10 * n + 1000))  # scipy walks the tree recursively
        try:
            dg = scipy_dendrogram(z, no_plot=True)
        finally:
            sys.setrecursionlimit(limit)
        out.leaves = np.asarray(dg["leaves"], dtype=np.int64)
        out.icoord = [list(map(float, r)) for r in dg["icoord"]]
        out.dcoord = [list(map(float, r)) for r in dg["dcoord"]]
    else:
        from scipy.cluster.hierarchy import leaves_list

        out.leaves = leaves_list(z).astype(np.int64)
    return out


def channel_clustering(
    x: torch.Tensor,
    *,
    max_channels: int = MAX_CHANNELS,
    max_values: int | None = None,
    seed: int = 0,
    dendrogram: bool = True,
) -> Clustering:
    """Cluster the channels of a layer output (or features of a 2-D output).

    Args:
        x: ``[B, C, H, W]`` (any number of trailing spatial dims) or ``[B, F]``.
        max_channels: more channels than this are sampled (seeded, sorted) and the sampling is
            reported in ``note``.
        max_values: if given, each channel vector is cut to this many positions (the same seeded
            positions for every channel).
        seed: seed of the sampling.
        dendrogram: compute the dendrogram coordinates.

    Returns:
        :class:`Clustering`; with fewer than two channels, or with a 2-D output of a single
        sample (every feature is one number), an empty tree whose ``note`` says why.
    """
    v = channel_vectors(x)
    c = int(v.shape[0])
    if x.dim() == 2 and x.shape[0] < 2:
        return _empty(
            np.arange(c, dtype=np.int64), c, 0, False,
            "no clustering: a 2-D output of one sample gives each feature a single value; "
            "pass a batch of at least two inputs.",
        )
    return cluster_rows(v, max_channels=max_channels, max_values=max_values, seed=seed,
                        dendrogram=dendrogram)


def cluster_rows(
    v: torch.Tensor,
    *,
    max_channels: int = MAX_CHANNELS,
    max_values: int | None = None,
    seed: int = 0,
    dendrogram: bool = True,
    unit: str = "channels",
    value: str = "values",
) -> Clustering:
    """Cluster the rows of ``v [N, D]`` (channels, or a weight's outputs), sampling more than
    ``max_channels`` rows and cutting rows longer than ``max_values`` to seeded positions; the
    sampling is reported in the note (``unit`` / ``value`` name the rows and their entries)."""
    n, m = int(v.shape[0]), int(v.shape[1])
    notes = []
    idx = sample_indices(n, max_channels, seed, device=v.device)
    if len(idx) < n:
        v = v.index_select(0, idx)
        notes.append(f"clustered {len(idx)} of {n} {unit} (seeded sample, seed={seed})")
    if max_values is not None and m > max_values:
        pos = sample_indices(m, max_values, seed + 1, device=v.device)
        v = v.index_select(1, pos)
        notes.append(f"{max_values} of {m} {value} per {unit.rstrip('s')} (seeded sample)")
    cl = cluster_vectors(
        v, labels=idx.cpu().numpy(), n_total=n, dendrogram=dendrogram, note="; ".join(notes)
    )
    cl.sampled = bool(notes)
    return cl


def merge_height_stats(cl: Clustering) -> dict[str, float | None]:
    """Distribution of the live channels' merge heights: ``median``, ``iqr`` (q75 - q25),
    ``q10``, ``q90`` and ``max``; all ``None`` when there is no live merge."""
    h = cl.live_heights()
    if len(h) == 0:
        return {"median": None, "iqr": None, "q10": None, "q90": None, "max": None}
    q10, q25, q50, q75, q90 = np.quantile(h, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "median": float(q50),
        "iqr": float(q75 - q25),
        "q10": float(q10),
        "q90": float(q90),
        "max": float(h.max()),
    }


def split_collapse(heights: Any, width: float) -> float | None:
    """How collapsed a tree's split points are (Wang & Li 2020, §1.3.2 and §1.3.4: a good tree's
    split points spread evenly and widely): the largest share of the merge heights that fit in
    one window of ``width`` (cosine distance). 1.0: every merge at about the same height (all
    units duplicates, or all equally far apart); about ``1 / (n - 1)`` when they spread evenly
    further apart than ``width``. ``None`` without a merge.

    Example: heights ``[0, 0.001, 0.002, 0.5, 0.9]`` with ``width=0.01`` give 3 / 5 = 0.6."""
    h = np.sort(np.asarray(heights, dtype=np.float64).ravel())
    h = h[np.isfinite(h)]
    if len(h) == 0:
        return None
    ends = np.searchsorted(h, h + float(width), side="right")
    return float((ends - np.arange(len(h))).max() / len(h))
