"""Sharded analyses for several processes (``torchrun``): every rank takes a contiguous share.

.. code-block:: python

    # torchrun --nproc_per_node=4 analyse.py
    import torch.distributed as dist
    import convscope as cs
    from convscope.distributed import top_examples_sharded, maximize_sharded

    dist.init_process_group("gloo")  # or "nccl" with one GPU per rank
    te = top_examples_sharded(model, "layer3", images, k=9)       # same on every rank
    imgs = maximize_sharded(model, "layer3", range(64), seed=0)    # [64, C, H, W], unit order

* :func:`top_examples_sharded` — each rank ranks its contiguous slice of the data set (indices
  shifted by the slice's start, ``offset=``), the partial results are gathered with
  ``all_gather_object`` and combined with the exact :func:`convscope.features.merge`: the result is
  the one a single process gives (same indices, values and crops).
* :func:`maximize_sharded` — the units are split across ranks; every unit's random start comes
  from its own generator (:func:`convscope.features.unit_seed`), so the images are those a single
  process makes with the same ``seed``, gathered back in the original unit order.

Without ``torch.distributed`` (or with a world of one process) both are the plain single-process
functions. Every rank must call them (they are collectives); all ranks get the whole result.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .nn.dist import gather_objects, rank_world, shard, shard_bounds

__all__ = [
    "rank_world",
    "shard",
    "shard_bounds",
    "gather_objects",
    "top_examples_sharded",
    "maximize_sharded",
    "attributions_sharded",
    "diagnose_sharded",
]


def _to(te: Any, device: Any) -> Any:
    from dataclasses import replace

    return replace(
        te,
        values=te.values.to(device),
        indices=te.indices.to(device),
        locations=te.locations.to(device),
        boxes=te.boxes.to(device),
        crops=None if te.crops is None else te.crops.to(device),
    )


def top_examples_sharded(
    model: Any,
    layer: str,
    dataset: Any,
    k: int = 9,
    *,
    batch_size: int = 64,
    crops: bool = True,
    quiet: bool = False,
    group: Any = None,
) -> Any:
    """:func:`convscope.features.top_examples` with the data set split across ranks.

    Args:
        model: the network, the same weights on every rank (a DDP wrapper is fine).
        layer: module path of the layer to rank.
        dataset: a tensor ``[N, C_in, H, W]`` or a map-style ``Dataset`` of known length, the
            same on every rank (iterables and ``DataLoader`` cannot be split: pass the data set).
        k: images kept per channel.
        batch_size: images per forward pass; shares start at multiples of it, so every rank runs
            the same batches a single process would.
        crops: keep receptive-field crops.
        quiet: hide the progress bar.
        group: a ``torch.distributed`` process group (default: the world).

    Returns:
        the :class:`~convscope.features.TopExamples` of the whole data set, on every rank (on
        the model's device), identical to a single process's.
    """
    import torch
    from torch.utils.data import Dataset

    from .features import merge, top_examples
    from .nn import model_device, slice_dataset, unwrap

    model = unwrap(model)
    if not isinstance(dataset, (torch.Tensor, Dataset)) or not hasattr(dataset, "__len__"):
        raise InputError(
            f"top_examples_sharded needs a tensor [N, C, H, W] or a map-style Dataset with a "
            f"length, got {type(dataset).__name__}: pass loader.dataset instead of a loader.")
    rank, world = rank_world(group)
    if world == 1:
        return top_examples(model, layer, dataset, k, batch_size=batch_size, crops=crops,
                            quiet=quiet)
    n = len(dataset)
    if n == 0:
        raise InputError("the data set is empty: there is nothing to rank.")
    a, b = shard_bounds(n, rank, world, align=int(batch_size))
    part = None
    if b > a:
        piece, offset = slice_dataset(dataset, a, b)
        part = top_examples(model, layer, piece, k, batch_size=batch_size, crops=crops,
                            offset=offset, quiet=quiet)
        part = _to(part, "cpu")
    parts = [p for p in gather_objects(part, group) if p is not None]
    result = parts[0]
    for p in parts[1:]:
        result = merge(result, p)
    return _to(result, model_device(model))


def maximize_sharded(
    model: Any,
    layer: str | None,
    units: Any,
    *,
    seed: int = 0,
    return_values: bool = False,
    group: Any = None,
    **kwargs: Any,
) -> Any:
    """:func:`convscope.features.maximize` with the units split across ranks.

    Each rank optimises a contiguous share of ``units``; unit ``u``'s start comes from
    ``unit_seed(seed, u)`` whichever rank runs it, so the gathered images equal a single
    process's with the same ``seed`` (up to floating-point rounding of batched convolutions).
    Keyword arguments go to ``maximize`` (``steps=``, ``lr=``, ``size=``, ``param=`` ...).

    Returns:
        images ``[N, C, H, W]`` in the order of ``units`` on every rank (on the model's device);
        with ``return_values``, ``(images, values [N])``.
    """
    import torch

    from .features import maximize
    from .features.maximize import check_units
    from .nn import model_device, unwrap

    model = unwrap(model)
    all_units = check_units(units)
    rank, world = rank_world(group)
    if world == 1:
        return maximize(model, layer, all_units, seed=seed, return_values=return_values,
                        **kwargs)
    mine = shard(all_units, rank, world)
    part = None
    if mine:
        images, values = maximize(model, layer, mine, seed=seed, return_values=True, **kwargs)
        part = (images.detach().cpu(), values.detach().cpu())
    parts = [p for p in gather_objects(part, group) if p is not None]
    device = model_device(model)
    images = torch.cat([p[0] for p in parts]).to(device)
    values = torch.cat([p[1] for p in parts]).to(device)
    return (images, values) if return_values else images



def _share(dataset: Any, batch_size: int, group: Any, what: str
           ) -> tuple[int, int, Any, int]:
    """``(start, stop, piece, offset)``: this rank's share ``[start, stop)`` of a tensor or
    map-style data set, in blocks of ``batch_size`` (so every rank runs the batches one process
    would), and the offset that turns the piece's running indices into the data set's."""
    import torch
    from torch.utils.data import Dataset

    from .nn import slice_dataset


    if not isinstance(dataset, (torch.Tensor, Dataset)) or not hasattr(dataset, "__len__"):
        raise InputError(
            f"{what} needs a tensor [N, C, H, W] or a map-style Dataset with a length, got "
            f"{type(dataset).__name__}: pass loader.dataset instead of a loader.")
    rank, world = rank_world(group)
    n = len(dataset)
    if n == 0:
        raise InputError("the data set is empty: there is nothing to analyse.")
    a, b = shard_bounds(n, rank, world, align=int(batch_size))
    piece, offset = slice_dataset(dataset, a, b) if b > a else (None, a)
    return a, b, piece, offset


def attributions_sharded(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 64,
    masks: Any = None,
    labels: Any = None,
    target: Any = None,
    quiet: bool = False,
    group: Any = None,
    **kwargs: Any,
) -> Any:
    """:func:`convscope.explain.dataset.attribute_all` with the images split across ranks.

    Every image's maps and metrics depend on that image alone, so each rank explains a
    contiguous share (in blocks of ``batch_size``, the batches one process runs), the shares are
    gathered in rank order and concatenated: the result is one process's, on every rank.
    ``masks``, ``labels`` and a per-image ``target`` cover the whole data set (each rank takes
    its slice). Keyword arguments go to ``attribute_all`` (``methods=``, ``layer=`` ...).

    Returns:
        :class:`~convscope.explain.dataset.AttributionSet` of the whole data set on every rank
        (on the model's device).
    """
    import torch

    from .explain.dataset import AttributionSet, attribute_all
    from .nn import model_device, unwrap

    model = unwrap(model)
    rank, world = rank_world(group)
    if world == 1:
        return attribute_all(model, dataset, batch_size=batch_size, masks=masks, labels=labels,
                             target=target, quiet=quiet, **kwargs)
    a, b, piece, offset = _share(dataset, batch_size, group, "attributions_sharded")
    part = None
    if piece is not None:

        def cut(v: Any) -> Any:
            if v is None or isinstance(v, int) or callable(v):
                return v
            return torch.as_tensor(v)[a:b]

        part = attribute_all(model, piece, batch_size=batch_size, masks=cut(masks),
                             labels=cut(labels), target=cut(target), offset=offset,
                             quiet=quiet, **kwargs).to("cpu")
    parts = [p for p in gather_objects(part, group) if p is not None]
    return AttributionSet.cat(parts).to(model_device(model))


def diagnose_sharded(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 64,
    quiet: bool = False,
    group: Any = None,
    **kwargs: Any,
) -> Any:
    """:func:`convscope.diagnose.diagnose_dataset` with the data set split across ranks.

    Each rank accumulates the layer-output statistics (counts, sums, sums of squares, extrema,
    per-channel liveness, the channels' Gram matrix, input-similarity sums) over its share; the
    partial statistics are gathered and merged (:meth:`~convscope.diagnose.OutputMoments.merge`:
    counts and sums add, extrema take the max, liveness ORs), and every rank builds the same
    report. Counts are exact; sums equal one process's up to float64 rounding of the order of
    addition. Keyword arguments go to ``diagnose_dataset`` (``layers=``, ``params=``,
    ``thresholds=`` ...).

    Returns:
        :class:`~convscope.diagnose.Report` of the whole data set on every rank.
    """
    import time

    from .diagnose.dataset import accumulate_outputs, diagnose_dataset, merge_outputs, report_of
    from .nn import unwrap

    model = unwrap(model)
    rank, world = rank_world(group)
    if world == 1:
        return diagnose_dataset(model, dataset, batch_size=batch_size, quiet=quiet, **kwargs)
    t0 = time.perf_counter()
    piece = _share(dataset, batch_size, group, "diagnose_sharded")[2]
    views = bool(kwargs.pop("views", False))
    params = kwargs.pop("params", None)  # the rest goes to accumulate_outputs
    first = _first_images(dataset, batch_size)
    part = None
    if piece is not None:
        part = accumulate_outputs(model, piece, batch_size=batch_size, quiet=quiet,
                                  example=first, **kwargs)
        part = {k: v.to("cpu") for k, v in part.items()}
    merged = merge_outputs(gather_objects(part, group))
    report = report_of(model, merged, layers=kwargs.get("layers"), seed=kwargs.get("seed", 0),
                       views_inputs=first if views else None,
                       thresholds=kwargs.get("thresholds"), params=params)
    report.meta.update({"seconds": time.perf_counter() - t0, "processes": world})
    return report


def _first_images(dataset: Any, batch_size: int) -> Any:
    """The data set's first batch: every rank chooses layers and reference sizes from it."""
    from .nn import iter_batches

    batches, _ = iter_batches(dataset, batch_size)
    return next(iter(batches))[1]
