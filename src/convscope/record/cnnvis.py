"""``run.log_cnnvis``: CNNVis (Liu et al. 2017) -- the channels of a chain of layers clustered
by their responses over a data set, and the influence between adjacent layers, stored so the
Model page can draw each layer's clusters and the bundled edges between them, and recluster
with another count.

The analysis is :mod:`convscope.model.cnnvis`; the layout on disk is
:mod:`convscope.formats.cnnvis` (descriptors pooled to at most 128 columns and rounded to
float16; large influence matrices kept at rank 64). The clusters are computed on the
descriptors *as stored*, so the page's recluster with the same count gives them back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["log_cnnvis", "default_cnnvis_layers", "DEFAULT_LAYERS", "CNNVIS_BUDGET"]

#: how many convolutions :func:`default_cnnvis_layers` takes
DEFAULT_LAYERS = 5
#: seconds ``log_cnnvis`` is stated to take with its defaults (torchvision ResNet-18 at 224²,
#: 64 images, 2-core CPU; provisional until benchmarked on a quiet machine)
CNNVIS_BUDGET = 60.0


def default_cnnvis_layers(model: Any, n: int = DEFAULT_LAYERS) -> list[str]:
    """The first ``n`` convolutions along the main path after the stem, in module order: the
    convolutions reading the image (at most 4 input channels) are skipped, then a ``Conv2d`` is
    taken when it reads as many channels as the previous one taken writes, so shortcut
    convolutions (a ResNet's ``downsample``) are skipped too. For a ResNet: the first stage's
    convolutions (torchvision ResNet-18: ``layer1.0.conv1`` .. ``layer1.1.conv2`` and
    ``layer2.0.conv1``). The stem is left out because its maps are the largest (112² at 224²
    input): the gradient influence into the next layer would cost 4x as much as stage 1."""
    from torch import nn

    chain: list[str] = []
    prev = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if (prev is None and m.in_channels <= 4) or (prev is not None and m.in_channels != prev):
            continue
        chain.append(name)
        prev = m.out_channels
        if len(chain) >= n:
            break
    if len(chain) < 2:
        raise InputError(
            f"found {len(chain)} chained Conv2d layer(s) in {type(model).__name__}: pass "
            "layers=[...] (at least two module paths, in drawing order) to log_cnnvis.")
    return chain


def _count(clusters: Any, layer: str) -> int | None:
    from ..nn import positive_int

    k = clusters.get(layer) if isinstance(clusters, Mapping) else clusters
    return positive_int(k, f"clusters for {layer}", allow_none=True)


def log_cnnvis(run: Run, model: Any, dataset: Any, layers: Any = None, *,
               clusters: int | None | Mapping[str, int | None] = None, by: str = "auto",
               influence: str = "auto", influence_images: int = 4, batch_size: int = 64,
               seed: int = 0, key: str | None = None, quiet: bool | None = None,
               clock: Any = None) -> Any:
    """Record the CNNVis view of ``layers`` (see :meth:`convscope.Run.log_cnnvis`). Returns
    the :class:`~convscope.model.cnnvis.CNNVisGraph` computed on the stored descriptors."""
    import numpy as np
    import torch

    from ..formats import cnnvis as fmt
    from ..model.cnnvis import (
        ChannelDescriptors,
        CNNVisGraph,
        CNNVisPair,
        bundle_edges,
        channel_descriptors,
        cluster_channels,
        cluster_influence,
    )
    from ..model.cnnvis import influence as measure
    from ..nn import check_model, iter_batches, layer_path, model_device, positive_int, unwrap
    from ..store.layout import check_name
    from .budget import open_budget

    quiet = run.quiet if quiet is None else bool(quiet)
    key = check_name(fmt.DEFAULT_KEY if key is None else key, "CNNVis view name")
    model = unwrap(check_model(model))
    if influence not in ("auto", "weights", "gradient"):
        raise InputError(f"influence must be 'auto', 'weights' or 'gradient', got {influence!r}.")
    want = positive_int(influence_images, "influence_images")
    if layers is None:
        paths = default_cnnvis_layers(model)
    else:
        specs = [layers] if isinstance(layers, (str, torch.nn.Module)) else list(layers)
        paths = list(dict.fromkeys(layer_path(model, s) for s in specs))
    if isinstance(clusters, Mapping):
        clusters = {layer_path(model, k): v for k, v in clusters.items()}
    counts = {p: _count(clusters, p) for p in paths}
    try:
        n_images: int | None = len(dataset)
    except TypeError:
        n_images = None
    what = f"{len(paths)} layers" + (f" x {n_images} images" if n_images is not None else "")
    t0 = time.perf_counter()
    with open_budget("log_cnnvis", CNNVIS_BUDGET,
                     "fewer layers, influence_images=2 or a subset of the data set", what,
                     total=len(paths), unit="step", clock=clock) as tracker:
        desc = channel_descriptors(model, dataset, paths, by=by, batch_size=batch_size,
                                   quiet=quiet)
        tracker.advance(1)
        stored: dict[str, np.ndarray] = {}
        pooled = None
        found = {}
        for p in paths:
            stored[p], pooled = fmt.store_descriptors(desc.values[p].numpy())
            k = counts[p]
            c = int(stored[p].shape[0])
            found[p] = cluster_channels(stored[p], None if k is None else min(k, c), seed=seed,
                                        layer=p)
        pairs = []
        if len(paths) > 1:
            batches, _ = iter_batches(dataset, want)
            x = next(iter(batches))[1][:want].to(model_device(model))
            for s, t in zip(paths[:-1], paths[1:], strict=True):
                m, how = measure(model, x, s, t, method=influence, quiet=quiet)
                ci = cluster_influence(m, found[s], found[t])
                cc = ci.cluster_cluster
                pairs.append(CNNVisPair(s, t, how, m, ci, bundle_edges(
                    cc, None if min(cc.shape) > 1 else 1, seed=seed)))
                tracker.advance(1)
    view = fmt.CNNVisView(
        key=key, layers=paths, descriptors=stored,
        clusters={p: fmt.LayerClusters(p, c.labels, c.sizes, c.representatives, c.order,
                                       c.dead, c.silhouette, counts[p])
                  for p, c in found.items()},
        pairs=[fmt.Pair(p.source, p.target, p.method, p.influence) for p in pairs],
        by=desc.by, classes=desc.classes, n_images=desc.n_images, pooled_from=pooled,
        seed=seed, seconds=time.perf_counter() - t0,
        settings={"influence": influence, "influence_images": want, "by": by,
                  "clusters": clusters, "batch_size": batch_size})
    fmt.write(run, view)
    values = {p: torch.from_numpy(v) for p, v in stored.items()}
    return CNNVisGraph(paths, ChannelDescriptors(paths, values, desc.by, desc.classes,
                                                 desc.n_images), found, pairs)
