"""CNNVis (Liu et al. 2017): neurons clustered inside each layer, influence between clusters of
adjacent layers, and edges bundled by biclustering -- the analysis behind a readable DAG view.

Liu et al. draw a CNN as a DAG whose layers open into *neuron clusters*: channels that respond
alike over a data set are grouped, each cluster shown by a representative and its size, and a
neuron x cluster matrix tells what feeds what. The edges between the clusters of two adjacent
layers are too many to read, so they are *bundled*: a biclustering of the influence matrix finds
groups of sources that feed the same group of targets, and each such group is drawn as one bundle
through a hub instead of ``|S| x |T|`` separate lines.

Pieces (tensors or arrays in, plain results out; nothing is stored):

* :func:`channel_descriptors` -- one data-set pass (:mod:`convscope.nn.passes`): per layer, each
  channel's spatial-mean activation per image, or per class when labels are given (CNNVis
  describes a neuron by its mean activation on each class);
* :func:`cluster_channels` -- k-means (k-means++ seeding, fixed seed) on the centred,
  unit-normalised descriptors, i.e. on the correlation between channels' response patterns; the
  number of clusters can be chosen or picked by the silhouette (Rousseeuw 1987);
* :func:`weight_influence` / :func:`gradient_influence` / :func:`influence` -- neuron x neuron
  influence between two layers: the L1 norm of the filter connecting them
  (``sum |W[j, i, :, :]|``, the weight-based edge of CNNVis) when the second layer is a
  convolution reading the first, else the first-order Taylor contribution
  ``E_images |sum_pos A_i * d(sum_pos B_j)/dA_i|`` (Molchanov et al. 2017);
* :func:`cluster_influence` -- the neuron x cluster and cluster x cluster matrices, sorted;
* :func:`spectral_cocluster` -- Dhillon's (2001) spectral co-clustering, with numpy's SVD;
* :func:`bundle_edges` -- the bundled two-layer drawing and :func:`count_crossings`, the number
  of crossing pairs of edges (an ``O(E log^2 E)`` inversion count);
* :func:`cnnvis` -- all of it for a list of layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..nn import (
    LayerSpec,
    Recorder,
    call_key,
    check_args,
    check_model,
    chunks,
    forward,
    layer_path,
    model_device,
    positive_int,
    restore_mode,
    split_call,
    unwrap,
)
from ..nn.passes import DatasetPass, Share, run_pass

__all__ = [
    "ChannelDescriptors",
    "ChannelDescriptorPass",
    "channel_descriptors",
    "ChannelClusters",
    "cluster_channels",
    "kmeans",
    "weight_influence",
    "gradient_influence",
    "influence",
    "ClusterInfluence",
    "cluster_influence",
    "spectral_cocluster",
    "Bundling",
    "bundle_edges",
    "count_crossings",
    "CNNVisPair",
    "CNNVisGraph",
    "cnnvis",
]


# ------------------------------------------------------------------------------------------------
# the data-set pass: per-channel descriptors


@dataclass
class ChannelDescriptors:
    """Per layer, the ``[C, D]`` matrix describing each channel (``D`` images, or classes).

    Attributes:
        layers: the layers' module paths, in the order asked.
        values: ``{layer: [C, D] float32}`` spatial-mean activations.
        by: ``"image"`` (one column per image) or ``"class"`` (one per class, the mean).
        classes: the class of each column (``by="class"``), else ``None``.
        n_images: how many images were seen.
    """

    layers: list[str]
    values: dict[str, Tensor]
    by: str
    classes: list[int] | None
    n_images: int


@dataclass
class _Partial:
    feats: dict[str, Tensor]  # layer -> [n, C]
    labels: Tensor | None  # [n] or None


class ChannelDescriptorPass(DatasetPass[_Partial, ChannelDescriptors]):
    """:func:`channel_descriptors` as a data-set pass: a share is a slice of the data set, the
    partials (per image, in data-set order) are concatenated, and :meth:`finish` averages per
    class when asked."""

    def __init__(self, model: nn.Module, layers: Sequence[LayerSpec] | LayerSpec, dataset: Any,
                 *, by: str = "auto", batch_size: int = 64, quiet: bool = False) -> None:
        model = unwrap(check_model(model))
        self.model = model
        specs = [layers] if isinstance(layers, (str, nn.Module, type)) or callable(layers) \
            else list(layers)
        if not specs:
            raise InputError("layers is empty: name at least one layer to describe.")
        self.layers = list(dict.fromkeys(layer_path(model, s) for s in specs))
        if by not in ("auto", "image", "class"):
            raise InputError(f"by must be 'auto', 'image' or 'class', got {by!r}.")
        self.by = by
        self.quiet = quiet
        super().__init__(dataset, batch_size, "channel descriptors")

    def run(self, share: Share) -> _Partial:
        from tqdm.auto import tqdm

        from ..nn import iter_batches

        piece, _ = self.piece(share)
        batches, total = iter_batches(piece, self.align)
        device = model_device(self.model)
        feats: dict[str, list[Tensor]] = {name: [] for name in self.layers}
        labels: list[Tensor] | None = []
        wanted = {call_key(*split_call(n)): n for n in self.layers}
        named = dict(self.model.named_modules())
        mods = {split_call(n)[0]: named[split_call(n)[0]] for n in self.layers}
        bar = tqdm(total=total, disable=self.quiet, desc="channel descriptors", unit="img")
        try:
            with torch.no_grad(), restore_mode(self.model, True), Recorder(
                mods, keys=set(wanted), stop=True, value=_spatial_mean
            ) as rec:
                for _, x, y in batches:
                    if x.dim() != 4 or not x.is_floating_point():
                        raise InputError(
                            f"images must be float [B, C, H, W], got {x.dtype} "
                            f"{list(x.shape)}."
                        )
                    check_args((x,), "images")
                    rec.run(forward, self.model, (x.to(device),), "channel descriptors")
                    for key, name in wanted.items():
                        if key not in rec.store:
                            raise InputError(
                                f"layer {name!r} did not run in the forward pass; choose a "
                                "layer the forward pass uses."
                            )
                        v = rec.store[key]
                        if not isinstance(v, Tensor):
                            raise InputError(
                                f"layer {name!r} outputs no [B, C, ...] tensor; choose a "
                                "convolutional layer."
                            )
                        feats[name].append(v.cpu())
                    if labels is not None and y is not None:
                        labels.append(y.reshape(-1).cpu().long())
                    else:
                        labels = None
                    bar.update(x.shape[0])
        finally:
            bar.close()
        if not feats[self.layers[0]]:
            raise InputError("the data set is empty: there is nothing to describe.")
        return _Partial({n: torch.cat(v) for n, v in feats.items()},
                        torch.cat(labels) if labels else None)

    def merge(self, partials: Sequence[_Partial]) -> _Partial:
        labels = None
        if all(p.labels is not None for p in partials):
            labels = torch.cat([p.labels for p in partials])  # type: ignore[misc]
        return _Partial({n: torch.cat([p.feats[n] for p in partials]) for n in self.layers},
                        labels)

    def finish(self, partial: _Partial) -> ChannelDescriptors:
        by = self.by
        if by == "auto":
            by = "class" if partial.labels is not None else "image"
        if by == "class" and partial.labels is None:
            raise InputError(
                "by='class' needs labels: pass a Dataset of (image, label) items, or by='image'."
            )
        n = int(partial.feats[self.layers[0]].shape[0])
        if by == "image":
            return ChannelDescriptors(self.layers, {k: v.t().contiguous()
                                                    for k, v in partial.feats.items()},
                                      "image", None, n)
        labels = partial.labels
        classes = sorted(set(labels.tolist()))  # type: ignore[union-attr]
        index = {c: i for i, c in enumerate(classes)}
        col = torch.tensor([index[int(c)] for c in labels], dtype=torch.long)  # type: ignore
        counts = torch.bincount(col, minlength=len(classes)).float()
        values = {}
        for k, v in partial.feats.items():
            sums = torch.zeros(len(classes), v.shape[1]).index_add_(0, col, v)
            values[k] = (sums / counts[:, None]).t().contiguous()
        return ChannelDescriptors(self.layers, values, "class", classes, n)


def _spatial_mean(out: Any) -> Any:
    if not isinstance(out, Tensor) or out.dim() < 2:
        return out
    v = out.detach().float()
    return v.flatten(2).mean(2) if v.dim() > 2 else v.clone()


def channel_descriptors(
    model: nn.Module,
    dataset: Any,
    layers: Sequence[LayerSpec] | LayerSpec,
    *,
    by: str = "auto",
    batch_size: int = 64,
    quiet: bool = False,
) -> ChannelDescriptors:
    """Describe every channel of ``layers`` by its responses over ``dataset``, in one pass (the
    forward stops after the last of the layers).

    Args:
        model: the network (eval mode, no gradients; restored afterwards).
        dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` (items ``image`` or
            ``(image, label, ...)``) or an iterable of batches.
        layers: one layer specification or a list (module paths, ``"path:k"``, modules ...).
        by: ``"class"`` (the mean per class, as CNNVis; needs labels), ``"image"`` (one column per
            image), ``"auto"`` (``"class"`` when the data set has labels).
        batch_size: images per forward pass.
        quiet: hide the progress bar.
    """
    return run_pass(ChannelDescriptorPass(model, layers, dataset, by=by, batch_size=batch_size,
                                          quiet=quiet))


# ------------------------------------------------------------------------------------------------
# clustering channels


def _normalise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rows centred and scaled to unit norm; and the mask of constant (dead) rows."""
    x = x.double()
    x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1)
    scale = x.abs().amax() if x.numel() else torch.tensor(0.0, dtype=torch.float64)
    dead = norm <= 1e-9 * max(float(scale), 1e-30) * math.sqrt(max(x.shape[1], 1))
    x = x / norm.clamp_min(1e-300)[:, None]
    x[dead] = 0
    return x, dead


def _sqdist(pts: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (pts * pts).sum(1)[:, None] - 2 * pts @ centres.T + (centres * centres).sum(1)[None, :]
    return np.maximum(d, 0)


def kmeans(x: Tensor | np.ndarray, k: int, *, seed: int = 0, n_init: int = 10,
           max_iter: int = 300) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding (Arthur & Vassilvitskii 2007), ``n_init`` seeded
    restarts, the lowest inertia kept; deterministic for a given ``seed``. Returns labels
    ``[N]`` numbered by first appearance. (NumPy: the inputs here are small -- channels of one
    layer, or the nodes of a bipartite graph.)"""
    pts = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    n = pts.shape[0]
    k = int(k)
    if not 1 <= k <= n:
        raise InputError(f"k must be between 1 and the number of points ({n}), got {k}.")
    rng = np.random.default_rng(int(seed))
    best: tuple[float, np.ndarray] | None = None
    for _ in range(max(1, int(n_init))):
        centres = pts[[int(rng.integers(n))]]
        d2 = _sqdist(pts, centres)[:, 0]
        for _ in range(1, k):
            total = float(d2.sum())
            pick = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
            centres = np.vstack([centres, pts[pick]])
            d2 = np.minimum(d2, _sqdist(pts, pts[[pick]])[:, 0])
        labels = _sqdist(pts, centres).argmin(1)
        for _ in range(int(max_iter)):
            counts = np.bincount(labels, minlength=k)
            onehot = np.zeros((n, k))
            onehot[np.arange(n), labels] = 1
            sums = onehot.T @ pts
            centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                               centres)
            new = _sqdist(pts, centres).argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
        inertia = float(((pts - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels)
    assert best is not None
    return _renumber(best[1])


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Labels numbered by first appearance (0, 1, ...)."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inv].astype(np.int64)


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (Rousseeuw 1987) with Euclidean distances on the normalised rows."""
    k = int(labels.max()) + 1
    n = len(labels)
    if k < 2 or k >= n:
        return -1.0
    d = np.sqrt(_sqdist(x, x))
    onehot = np.zeros((n, k))
    onehot[np.arange(n), labels] = 1
    sums = d @ onehot  # [N, k]
    counts = onehot.sum(0)
    own = counts[labels]
    a = sums[np.arange(n), labels] / np.maximum(own - 1, 1)
    other = sums / counts
    other[np.arange(n), labels] = np.inf
    b = other.min(1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-300)
    s[own <= 1] = 0
    return float(s.mean())


@dataclass
class ChannelClusters:
    """Channels of one layer grouped by their response patterns.

    Attributes:
        layer: the layer's module path ("" when clustered from a bare matrix).
        labels: ``[C]`` cluster of each channel; clusters are numbered by size, largest first.
        sizes: ``[K]`` channels per cluster.
        representatives: ``[K]`` per cluster, the channel closest to its centre (the one to draw
            with its preferred input or top image).
        order: ``[C]`` channels sorted by cluster, then by closeness to the centre.
        dead: ``[C]`` channels with a constant response (all in one cluster of their own).
        silhouette: mean silhouette of the clustering (``nan`` with one cluster).
    """

    layer: str
    labels: np.ndarray
    sizes: np.ndarray
    representatives: np.ndarray
    order: np.ndarray
    dead: np.ndarray
    silhouette: float

    @property
    def n_clusters(self) -> int:
        return int(len(self.sizes))

    def members(self, cluster: int) -> np.ndarray:
        """The channels of ``cluster``, closest to the centre first."""
        return self.order[self.labels[self.order] == int(cluster)]


def cluster_channels(
    descriptors: Tensor | np.ndarray,
    n_clusters: int | None = None,
    *,
    seed: int = 0,
    max_clusters: int = 12,
    layer: str = "",
) -> ChannelClusters:
    """Cluster the channels (rows of ``descriptors [C, D]``) by the correlation of their response
    patterns: rows are centred and scaled to unit norm, then grouped by :func:`kmeans`.

    Channels whose response is constant (dead) carry no pattern; they form one cluster of their
    own (counted in ``n_clusters``).

    Args:
        descriptors: ``[C, D]`` -- a :class:`ChannelDescriptors` ``values[layer]``.
        n_clusters: how many clusters (at most ``C``); ``None`` picks the count in
            ``2..max_clusters`` with the best mean silhouette.
        seed: the k-means seed (the result is deterministic).
        max_clusters: the largest count tried when ``n_clusters`` is None.
        layer: the layer's name, kept in the result.
    """
    x = torch.as_tensor(np.asarray(descriptors) if not isinstance(descriptors, Tensor)
                        else descriptors.detach().cpu())
    if x.dim() != 2 or x.shape[0] == 0:
        raise InputError(f"descriptors must be a [C, D] matrix, got shape {list(x.shape)}.")
    if not bool(torch.isfinite(x.double()).all()):
        raise InputError("descriptors hold NaN or inf; compute them from a finite model.")
    c = int(x.shape[0])
    if n_clusters is not None:
        n_clusters = positive_int(n_clusters, "n_clusters")
        if n_clusters > c:
            raise InputError(f"n_clusters={n_clusters} exceeds the {c} channels; pass <= {c}.")
    xn, dead = _normalise(x)
    live = (~dead).nonzero().reshape(-1)
    n_dead = int(dead.sum())
    labels = np.zeros(c, dtype=np.int64)
    sil = math.nan
    if len(live) > 0:
        pts = xn[live].numpy()
        if n_clusters is None:
            cands = range(2, min(int(max_clusters), len(live) - 1) + 1)
            scored = [(_silhouette(pts, kmeans(pts, k, seed=seed, n_init=3)), k) for k in cands]
            k_live = max(scored, key=lambda t: (t[0], -t[1]))[1] if scored else 1
        else:
            k_live = max(1, min(len(live), n_clusters - (1 if n_dead else 0)))
        lab = kmeans(pts, k_live, seed=seed)
        sil = _silhouette(pts, lab) if k_live > 1 else math.nan
        labels[live.numpy()] = lab
        if n_dead:
            labels[dead.numpy()] = k_live
    # clusters numbered by size (largest first), ties by smallest member
    ids = np.unique(labels)
    key = sorted(ids, key=lambda i: (-(labels == i).sum(), int(np.flatnonzero(labels == i)[0])))
    remap = {int(old): new for new, old in enumerate(key)}
    labels = np.array([remap[int(v)] for v in labels], dtype=np.int64)
    k = len(key)
    sizes = np.bincount(labels, minlength=k)
    reps = np.zeros(k, dtype=np.int64)
    closeness = np.zeros(c)
    xa = xn.numpy()
    for j in range(k):
        m = np.flatnonzero(labels == j)
        centre = xa[m].mean(0)
        sim = xa[m] @ centre
        closeness[m] = sim
        reps[j] = m[int(np.argmax(sim))]
    order = np.lexsort((np.arange(c), -closeness, labels))
    return ChannelClusters(layer, labels, sizes, reps, order, dead.numpy(), sil)


# ------------------------------------------------------------------------------------------------
# influence between two layers


def weight_influence(module: nn.Module) -> np.ndarray:
    """``[C_in, C_out]``: ``sum |W[j, i, ...]|`` for a convolution or linear layer -- the L1 norm
    of the filter through which input channel ``i`` feeds output channel ``j`` (grouped
    convolutions: zero between channels of different groups)."""
    if isinstance(module, nn.Linear):
        return module.weight.detach().abs().float().t().cpu().numpy()
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        w = module.weight.detach().abs().float().flatten(2).sum(2).cpu()  # [C_out, C_in/g]
        g = module.groups
        c_out, c_in_g = w.shape
        out = torch.zeros(c_in_g * g, c_out)
        per = c_out // g
        for gi in range(g):
            out[gi * c_in_g:(gi + 1) * c_in_g, gi * per:(gi + 1) * per] = w[gi * per:(gi + 1) * per].t()
        return out.numpy()
    raise InputError(
        f"weight influence needs a Conv or Linear layer, got {type(module).__name__}; use "
        "gradient_influence for other pairs of layers."
    )


def gradient_influence(
    model: nn.Module, inputs: Tensor, source: LayerSpec, target: LayerSpec, *,
    chunk: int = 64, quiet: bool = False,
) -> np.ndarray:
    """``[C_src, C_tgt]``: the first-order (Taylor) contribution of each source channel to each
    target channel's summed activation, ``mean_images |sum_pos A_i * dB_j/dA_i|`` (Molchanov et
    al. 2017), for any two layers where ``target`` runs after ``source``.

    The source's output is cut from the graph before it (so only the path ``source -> target``
    is differentiated) and the forward stops at ``target``. The target channels are seeded
    ``chunk`` at a time in one vectorised backward pass (``is_grads_batched``; one channel at a
    time where an operation has no batching rule): the cost is about ``C_tgt`` backward passes
    of the segment, so keep ``inputs`` to a few images.
    """
    from tqdm.auto import tqdm

    model = unwrap(check_model(model))
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        raise InputError("inputs must be a float [B, C, H, W] batch of images.")
    check_args((inputs,), "inputs")
    chunk = positive_int(chunk, "chunk")
    src, tgt = layer_path(model, source), layer_path(model, target)
    named = dict(model.named_modules())
    (sp, sk), (tp, tk) = split_call(src), split_call(tgt)
    leaf: dict[str, Tensor] = {}
    calls = {"n": 0}

    def cut(mod: nn.Module, args: Any, out: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == sk and isinstance(out, Tensor):
            a = out.detach().requires_grad_(True)
            leaf["a"] = a
            return a
        return None

    rec = Recorder({tp: named[tp]}, keys={call_key(tp, tk)}, stop=True, value=lambda v: v)
    x = inputs.detach().to(model_device(model))
    with restore_mode(model, True), torch.enable_grad(), rec:
        saved = [(p, p.requires_grad) for p in model.parameters()]
        h = named[sp].register_forward_hook(cut)
        try:
            for p, _ in saved:
                p.requires_grad_(False)
            rec.run(forward, model, (x,), "gradient_influence")
        finally:
            h.remove()
            for p, r in saved:
                p.requires_grad_(r)
    if "a" not in leaf or call_key(tp, tk) not in rec.store:
        raise InputError(f"layers {src!r} and {tgt!r} did not both run; choose layers that run.")
    a, b = leaf["a"], rec.store[call_key(tp, tk)]
    if not isinstance(b, Tensor) or not b.requires_grad:
        raise InputError(
            f"layer {tgt!r} does not depend on {src!r}: choose a target that runs after the "
            "source on the same path."
        )
    bsum = b.flatten(2).sum(2) if b.dim() > 2 else b  # [B, C_tgt]
    c_tgt = bsum.shape[1]
    out = np.zeros((a.shape[1], c_tgt))
    ad = a.detach()

    batched = True
    with tqdm(total=c_tgt, disable=quiet, desc="gradient influence", unit="ch") as bar:
        for sl in chunks(c_tgt, chunk):
            idx = torch.arange(sl.start, sl.stop, device=bsum.device)
            if batched:  # many target channels in one vectorised backward pass
                seeds = torch.zeros((len(idx),) + tuple(bsum.shape), dtype=bsum.dtype,
                                    device=bsum.device)
                seeds[torch.arange(len(idx)), :, idx] = 1
                try:
                    (g,) = torch.autograd.grad(bsum, a, seeds, retain_graph=True,
                                               is_grads_batched=True)
                    out[:, sl] = _channel_share(g, ad).T
                    bar.update(len(idx))
                    continue
                except RuntimeError:  # an op without a batching rule: one channel at a time
                    batched = False
            for j in idx.tolist():
                (g,) = torch.autograd.grad(bsum[:, j].sum(), a, retain_graph=True,
                                           allow_unused=True)
                if g is not None:
                    out[:, j] = _channel_share(g[None], ad)[0]
                bar.update(1)
    return out


def _channel_share(g: Tensor, a: Tensor) -> np.ndarray:
    """``[K, C_src]``: ``mean_images |sum_pos g_k * a|`` for ``K`` gradients ``g [K, B, C, ...]``
    of the source output ``a [B, C, ...]``."""
    contrib = (g * a[None]).double()
    if contrib.dim() > 3:
        contrib = contrib.flatten(3).sum(3)  # [K, B, C]
    return contrib.abs().mean(1).cpu().numpy()


def _feeds(model: nn.Module, inputs: Tensor, src: str, tgt: str) -> bool:
    """Whether module ``tgt`` reads exactly the output of ``src`` (on these inputs)."""
    from .capture import capture

    got = capture(model, inputs, [src], inputs_of=[split_call(tgt)[0]])
    a = got.get(src)
    b = got.get(call_key(split_call(tgt)[0] + ":input", split_call(tgt)[1]))
    return isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape \
        and torch.equal(a, b)


def influence(
    model: nn.Module, inputs: Tensor, source: LayerSpec, target: LayerSpec, *,
    method: str = "auto", quiet: bool = False,
) -> tuple[np.ndarray, str]:
    """``([C_src, C_tgt] influence, method used)`` between two layers.

    ``method``: ``"weights"`` (:func:`weight_influence` of ``target``, which must be a
    convolution or linear layer reading ``source``'s output), ``"gradient"``
    (:func:`gradient_influence`), ``"auto"`` (weights when ``target`` is a convolution that reads
    exactly ``source``'s output on ``inputs``, else gradient).
    """
    model = unwrap(check_model(model))
    src, tgt = layer_path(model, source), layer_path(model, target)
    if method not in ("auto", "weights", "gradient"):
        raise InputError(f"method must be 'auto', 'weights' or 'gradient', got {method!r}.")
    mod = dict(model.named_modules())[split_call(tgt)[0]]
    if method == "auto":
        direct = isinstance(mod, (nn.Conv2d, nn.Linear)) and _feeds(model, inputs, src, tgt)
        method = "weights" if direct else "gradient"
    if method == "weights":
        return weight_influence(mod), "weights"
    return gradient_influence(model, inputs, src, tgt, quiet=quiet), "gradient"


@dataclass
class ClusterInfluence:
    """Influence aggregated over clusters (CNNVis's neuron x cluster matrix).

    Attributes:
        neuron_cluster: ``[C_src, K_tgt]`` summed influence of each source channel on each
            target cluster.
        cluster_cluster: ``[K_src, K_tgt]`` summed over the source clusters too.
        row_order: ``[C_src]`` source channels sorted by cluster, then by the target cluster they
            feed most, then by strength (draw ``neuron_cluster[row_order]``).
        col_order: ``[K_tgt]`` target clusters sorted by the barycentre of the source clusters
            feeding them (fewer crossings when drawn between the layers).
    """

    neuron_cluster: np.ndarray
    cluster_cluster: np.ndarray
    row_order: np.ndarray
    col_order: np.ndarray


def cluster_influence(m: np.ndarray | Tensor, src: ChannelClusters,
                      tgt: ChannelClusters) -> ClusterInfluence:
    """Sum a neuron x neuron influence ``m [C_src, C_tgt]`` over the clusters of both layers."""
    m = np.asarray(m.detach().cpu() if isinstance(m, Tensor) else m, dtype=np.float64)
    if m.shape != (len(src.labels), len(tgt.labels)):
        raise InputError(
            f"influence has shape {list(m.shape)}, expected [{len(src.labels)}, "
            f"{len(tgt.labels)}] (source channels x target channels)."
        )
    ct = np.zeros((len(tgt.labels), tgt.n_clusters))
    ct[np.arange(len(tgt.labels)), tgt.labels] = 1
    cs_ = np.zeros((len(src.labels), src.n_clusters))
    cs_[np.arange(len(src.labels)), src.labels] = 1
    nc = m @ ct
    cc = cs_.T @ nc
    strongest = nc.argmax(1) if nc.shape[1] else np.zeros(len(src.labels), dtype=np.int64)
    row_order = np.lexsort((np.arange(len(src.labels)), -nc.max(1, initial=0), strongest,
                            src.labels))
    w = cc.sum(0)
    bary = (np.arange(src.n_clusters)[:, None] * cc).sum(0) / np.where(w > 0, w, 1)
    col_order = np.lexsort((np.arange(tgt.n_clusters), bary))
    return ClusterInfluence(nc, cc, row_order, col_order)


# ------------------------------------------------------------------------------------------------
# biclustering and bundling


def _check_matrix(a: Any, what: str) -> np.ndarray:
    a = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"expected a non-empty [R, C] matrix, got shape {list(a.shape)}.")
    if (a < 0).any() or not np.isfinite(a).all():
        raise InputError(f"{what} needs a finite non-negative matrix (use |influence|).")
    return a


@dataclass
class _Spectrum:
    """The scaled singular vectors of ``D_r^-1/2 A D_c^-1/2`` (Dhillon 2001), computed once."""

    zu: np.ndarray  # [R, m] rows' embedding: D_r^-1/2 u_2.. (fixed signs)
    zv: np.ndarray  # [C, m] columns' embedding

    @classmethod
    def of(cls, a: np.ndarray, m: int) -> _Spectrum:
        eps = 1e-12 * max(float(a.max()), 1e-300)
        r = 1.0 / np.sqrt(a.sum(1) + eps)
        c = 1.0 / np.sqrt(a.sum(0) + eps)
        u, _, vt = np.linalg.svd(r[:, None] * a * c[None, :], full_matrices=False)
        u, v = u[:, 1:1 + m], vt[1:1 + m].T
        # a fixed sign per vector (its largest entry positive): deterministic embeddings
        pick_u = np.abs(u).max(0) >= np.abs(v).max(0) if u.size else np.zeros(0, bool)
        sign = np.sign(np.where(pick_u, u[np.abs(u).argmax(0), range(u.shape[1])],
                                v[np.abs(v).argmax(0), range(v.shape[1])])) if u.size else \
            np.ones(0)
        sign[sign == 0] = 1
        return cls(r[:, None] * u * sign, c[:, None] * v * sign)

    def cocluster(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = self.zu.shape[0]
        if n == 1:
            return np.zeros(r, dtype=np.int64), np.zeros(self.zv.shape[0], dtype=np.int64)
        k = int(math.ceil(math.log2(n)))
        z = np.vstack([self.zu[:, :k], self.zv[:, :k]])
        lab = kmeans(z, n, seed=seed)
        return lab[:r], lab[r:]


def spectral_cocluster(a: np.ndarray | Tensor, n: int, *, seed: int = 0) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """Dhillon's (2001) spectral co-clustering of a non-negative matrix ``a [R, C]`` into ``n``
    biclusters: ``D_r^-1/2 A D_c^-1/2`` is decomposed by SVD, rows and columns are embedded by
    the singular vectors ``2 .. 1 + ceil(log2 n)`` (scaled back by ``D^-1/2``) and clustered
    together by :func:`kmeans`. Returns ``(row_labels [R], col_labels [C])``."""
    a = _check_matrix(a, "biclustering")
    n = positive_int(n, "n")
    if n > min(a.shape):
        raise InputError(f"n={n} biclusters exceed min(rows, columns) = {min(a.shape)}.")
    return _Spectrum.of(a, int(math.ceil(math.log2(n)))).cocluster(n, seed)


def count_crossings(top: np.ndarray, bottom: np.ndarray) -> int:
    """How many pairs of straight edges cross in a two-line drawing: edge ``e`` joins position
    ``top[e]`` on one line to ``bottom[e]`` on the other; edges ``e, f`` cross iff
    ``(top[e] - top[f]) * (bottom[e] - bottom[f]) < 0`` (edges sharing an end do not cross).

    An inversion count by a bottom-up merge, vectorised with numpy: ``O(E log^2 E)``."""
    t = np.asarray(top, dtype=np.float64).reshape(-1)
    b = np.asarray(bottom, dtype=np.float64).reshape(-1)
    if t.shape != b.shape:
        raise InputError("top and bottom must give one position per edge.")
    e = len(t)
    if e < 2:
        return 0
    seq = b[np.lexsort((b, t))]  # by top, ties by bottom (a tie in top is no crossing)
    vals = np.unique(seq, return_inverse=True)[1].astype(np.int64)  # dense ranks
    n = int(vals.max()) + 1
    total = 0
    width = 1
    idx = np.arange(e)
    while width < e:
        block = idx // (2 * width)
        right = (idx // width) % 2 == 1
        keys = block * n + vals
        left_keys = keys[~right]  # sorted: blocks in order, each half sorted
        rk = keys[right]
        rb = block[right]
        le = np.searchsorted(left_keys, rk, side="right")  # left entries <= r (and earlier)
        start = np.searchsorted(left_keys, rb * n, side="left")
        end = np.searchsorted(left_keys, (rb + 1) * n, side="left")
        total += int(((end - start) - (le - start)).sum())
        vals = np.sort(keys) - block * n  # merge: each block sorted (block order is kept)
        width *= 2
    return total


@dataclass
class Bundling:
    """A two-layer drawing of the edges of a non-negative matrix ``a [R, C]`` (sources on the
    top line, targets on the bottom one), plain and bundled by biclusters.

    Each kept edge ``(i, j)`` whose source and target fall in the same bicluster ``b`` is drawn
    through the hub of ``b`` on the middle line: one segment ``source -> hub`` per source and one
    ``hub -> target`` per target, however many edges they carry; the other edges stay straight.

    Attributes:
        row_labels / col_labels: the bicluster of each source / target.
        row_pos / col_pos: ``[R]`` / ``[C]`` positions in ``(0, 1)`` on the top / bottom line:
            grouped by bicluster, then ordered by the spectral embedding.
        hub_pos: ``[n]`` hub positions on the middle line.
        edges: ``[E, 2]`` kept edges ``(source, target)``; ``weights``: ``[E]``.
        bundled: ``[E]`` whether each edge goes through its bicluster's hub.
    """

    row_labels: np.ndarray
    col_labels: np.ndarray
    row_pos: np.ndarray
    col_pos: np.ndarray
    hub_pos: np.ndarray
    edges: np.ndarray
    weights: np.ndarray
    bundled: np.ndarray
    threshold: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def n_bundles(self) -> int:
        return int(len(self.hub_pos))

    @property
    def false_edges(self) -> int:
        """Edges a bundle suggests that are not there: ``sum_b |S_b| |T_b|`` minus the kept
        edges inside the biclusters (a bundle reads as "every source feeds every target")."""
        area = sum(int((self.row_labels == b).sum()) * int((self.col_labels == b).sum())
                   for b in range(self.n_bundles))
        return area - int(self.bundled.sum())

    def segments(self) -> dict[str, np.ndarray]:
        """What to draw: ``upper [S, 2]`` (source, bicluster) and ``lower [T, 2]`` (bicluster,
        target) bundle segments, each once; ``plain [P, 2]`` straight edges (source, target)."""
        e, bd = self.edges, self.bundled
        hubs = self.row_labels[e[bd, 0]]
        upper = np.unique(np.stack([e[bd, 0], hubs], 1), axis=0) if bd.any() else \
            np.zeros((0, 2), np.int64)
        lower = np.unique(np.stack([hubs, e[bd, 1]], 1), axis=0) if bd.any() else \
            np.zeros((0, 2), np.int64)
        return {"upper": upper, "lower": lower, "plain": e[~bd]}

    def plain_crossings(self, order: str = "bundled") -> int:
        """Crossings of every kept edge drawn straight, nodes in the bundled drawing's order
        (``order="bundled"``) or in index order (``"index"``)."""
        if order == "index":
            rp = (np.arange(len(self.row_pos)) + 0.5) / len(self.row_pos)
            cp = (np.arange(len(self.col_pos)) + 0.5) / len(self.col_pos)
        elif order == "bundled":
            rp, cp = self.row_pos, self.col_pos
        else:
            raise InputError(f"order must be 'bundled' or 'index', got {order!r}.")
        return count_crossings(rp[self.edges[:, 0]], cp[self.edges[:, 1]])

    def bundled_crossings(self) -> int:
        """Crossings of the bundled drawing: pairs of drawn segments (bundle segments counted
        once, straight edges whole) that cross, in the upper half, the lower half, or on the
        middle line (two straight edges meeting there and swapping sides)."""
        seg = self.segments()
        p = seg["plain"]
        pt, pb = self.row_pos[p[:, 0]], self.col_pos[p[:, 1]]
        pm = (pt + pb) / 2
        up_t = np.concatenate([self.row_pos[seg["upper"][:, 0]], pt])
        up_m = np.concatenate([self.hub_pos[seg["upper"][:, 1]], pm])
        lo_m = np.concatenate([self.hub_pos[seg["lower"][:, 0]], pm])
        lo_b = np.concatenate([self.col_pos[seg["lower"][:, 1]], pb])
        total = count_crossings(up_t, up_m) + count_crossings(lo_m, lo_b)
        # straight edges meeting on the middle line: they cross there when they swap sides
        if len(p) > 1:  # grouped by meeting point; 4 * group keeps the groups apart
            _, grp = np.unique(np.round(pm, 12), return_inverse=True)
            total += count_crossings(4.0 * grp + pt, 4.0 * grp + pb)
        return total


def _positions(labels: np.ndarray, embed: np.ndarray, group_rank: np.ndarray) -> np.ndarray:
    """Positions in (0, 1): by the rank of the node's group, then by its embedding value."""
    n = len(labels)
    order = np.lexsort((np.arange(n), embed, group_rank[labels]))
    pos = np.empty(n)
    pos[order] = (np.arange(n) + 0.5) / n
    return pos


def _layout(spec: _Spectrum, rl: np.ndarray, cl: np.ndarray,
            n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node positions on both lines and hub positions for biclusters ``rl`` / ``cl``: grouped by
    bicluster, ordered inside by the first spectral embedding (Fiedler-like ordering)."""
    fu = spec.zu[:, 0] if spec.zu.shape[1] else np.zeros(spec.zu.shape[0])
    fv = spec.zv[:, 0] if spec.zv.shape[1] else np.zeros(spec.zv.shape[0])
    # biclusters ordered by the mean embedding of their members (rows and columns together)
    mean = np.array([np.concatenate([fu[rl == b], fv[cl == b]]).mean()
                     if (rl == b).any() or (cl == b).any() else 0.0 for b in range(n)])
    rank = np.argsort(np.argsort(mean, kind="stable"), kind="stable")
    rp = _positions(rl, fu, rank)
    cp = _positions(cl, fv, rank)
    hub = np.zeros(n)
    for b in range(n):
        parts = [x for x in (rp[rl == b], cp[cl == b]) if len(x)]
        hub[b] = np.mean([x.mean() for x in parts]) if parts else (rank[b] + 0.5) / n
    # nudge the hubs off the midpoints of straight edges (no three-way meetings at a hub)
    hub = hub + 1e-7 * (np.arange(n) + math.pi) / n
    return rp, cp, hub


def bundle_edges(
    a: np.ndarray | Tensor,
    n_bundles: int | None = None,
    *,
    threshold: float | None = None,
    seed: int = 0,
    max_bundles: int = 8,
) -> Bundling:
    """Bundle the edges of an influence matrix ``a [R, C]`` (sources x targets) by spectral
    co-clustering (CNNVis, Liu et al. 2017: biclusters become bundles).

    Args:
        a: non-negative influence, e.g. :attr:`ClusterInfluence.cluster_cluster` or a neuron x
            neuron matrix from :func:`influence`.
        n_bundles: biclusters; ``None`` tries ``2..max_bundles`` and keeps the count with the
            lowest ``bundled crossings + false edges`` (:attr:`Bundling.false_edges`): fewer
            bundles always cross less, but a bundle over unrelated nodes suggests edges that are
            not there.
        threshold: edges with weight ``>= threshold`` are drawn; ``None``: the mean of ``a``
            (the above-average edges).
        seed: the k-means seed.
        max_bundles: the largest count tried when ``n_bundles`` is None.
    """
    a = _check_matrix(a, "bundling")
    thr = float(a.mean()) if threshold is None else float(threshold)
    ii, jj = np.nonzero((a >= thr) & (a > 0))
    edges = np.stack([ii, jj], 1).astype(np.int64)
    weights = a[ii, jj]
    limit = min(a.shape)
    if n_bundles is not None:
        n_bundles = positive_int(n_bundles, "n_bundles")
        if n_bundles > limit:
            raise InputError(f"n_bundles={n_bundles} exceeds min(rows, columns) = {limit}.")
        counts = [n_bundles]
    else:
        counts = list(range(2, min(int(max_bundles), limit) + 1)) or [1]
    spec = _Spectrum.of(a, max(1, int(math.ceil(math.log2(max(counts))))))  # one SVD
    best: Bundling | None = None
    best_x = None
    for n in counts:
        rl, cl = spec.cocluster(n, seed)
        rp, cp, hub = _layout(spec, rl, cl, n)
        bd = rl[edges[:, 0]] == cl[edges[:, 1]]
        cand = Bundling(rl, cl, rp, cp, hub, edges, weights, bd, thr)
        x = cand.bundled_crossings() + cand.false_edges if len(counts) > 1 else 0
        if best is None or x < best_x:  # type: ignore[operator]
            best, best_x = cand, x
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------
# all of it for a list of layers


@dataclass
class CNNVisPair:
    """Two adjacent layers of the CNNVis view."""

    source: str
    target: str
    method: str  # "weights" or "gradient"
    influence: np.ndarray  # [C_src, C_tgt]
    clusters: ClusterInfluence
    bundling: Bundling  # of clusters.cluster_cluster


@dataclass
class CNNVisGraph:
    """What :func:`cnnvis` returns: the clusters of every layer and, for each pair of adjacent
    layers (in the order given), the influence, its cluster matrices and the bundled edges."""

    layers: list[str]
    descriptors: ChannelDescriptors
    clusters: dict[str, ChannelClusters]
    pairs: list[CNNVisPair]

    def recluster(self, layer: str, n_clusters: int | None, *, seed: int = 0) -> CNNVisGraph:
        """The same view with ``layer`` split into ``n_clusters`` (no data-set pass, no model):
        the pairs touching the layer are re-aggregated and re-bundled."""
        if layer not in self.clusters:
            raise InputError(f"{layer!r} is not one of the view's layers: {self.layers}.")
        clusters = dict(self.clusters)
        clusters[layer] = cluster_channels(self.descriptors.values[layer], n_clusters, seed=seed,
                                           layer=layer)
        pairs = []
        for p in self.pairs:
            if layer in (p.source, p.target):
                ci = cluster_influence(p.influence, clusters[p.source], clusters[p.target])
                p = CNNVisPair(p.source, p.target, p.method, p.influence, ci,
                               _bundle_clusters(ci.cluster_cluster, seed))
            pairs.append(p)
        return CNNVisGraph(self.layers, self.descriptors, clusters, pairs)


def _bundle_clusters(cc: np.ndarray, seed: int) -> Bundling:
    return bundle_edges(cc, None if min(cc.shape) > 1 else 1, seed=seed)


def cnnvis(
    model: nn.Module,
    dataset: Any,
    layers: Sequence[LayerSpec],
    n_clusters: int | None | dict[str, int | None] = None,
    *,
    by: str = "auto",
    influence_method: str = "auto",
    influence_images: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    quiet: bool = False,
) -> CNNVisGraph:
    """The CNNVis view (Liu et al. 2017) of ``layers``: channel clusters per layer, and for each
    pair of consecutive layers the influence, neuron x cluster / cluster x cluster matrices and
    the cluster edges bundled by biclustering.

    Args:
        model: the network (eval mode; restored afterwards).
        dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` or an iterable of batches.
        layers: the layers, in the order to draw them (consecutive entries are paired).
        n_clusters: per layer (a dict) or for all: the count, or ``None`` (by silhouette).
        by: descriptors per ``"class"``, ``"image"`` or ``"auto"`` (:func:`channel_descriptors`).
        influence_method: ``"auto"``, ``"weights"`` or ``"gradient"`` (:func:`influence`).
        influence_images: images (the first ones of the data set) used for the gradient
            influence and to check whether a convolution reads a layer directly.
        batch_size: images per forward pass.
        seed: the k-means seed.
        quiet: hide the progress bars.
    """
    from ..nn import iter_batches

    model = unwrap(check_model(model))
    if isinstance(layers, (str, nn.Module)) or len(layers) < 1:
        raise InputError("layers must be a list of at least one layer, in drawing order.")
    paths = [layer_path(model, s) for s in layers]
    desc = channel_descriptors(model, dataset, paths, by=by, batch_size=batch_size, quiet=quiet)
    clusters = {}
    for p in paths:
        k = n_clusters.get(p) if isinstance(n_clusters, dict) else n_clusters
        k = None if k is None else min(int(k), int(desc.values[p].shape[0]))
        clusters[p] = cluster_channels(desc.values[p], k, seed=seed, layer=p)
    pairs = []
    if len(paths) > 1:
        want = positive_int(influence_images, "influence_images")
        batches, _ = iter_batches(dataset, want)
        x = next(iter(batches))[1][:want].to(model_device(model))
        for s, t in zip(paths[:-1], paths[1:], strict=True):
            m, how = influence(model, x, s, t, method=influence_method, quiet=quiet)
            ci = cluster_influence(m, clusters[s], clusters[t])
            pairs.append(CNNVisPair(s, t, how, m, ci, _bundle_clusters(ci.cluster_cluster, seed)))
    return CNNVisGraph(paths, desc, clusters, pairs)
