"""Sharded analyses for several processes (``torchrun``): every rank takes a contiguous share.

.. code-block:: python

    # torchrun --nproc_per_node=4 analyse.py
    import torch.distributed as dist
    import convscope as cs
    from convscope.distributed import top_examples_sharded, maximize_sharded

    dist.init_process_group("gloo")  # or "nccl" with one GPU per rank
    te = top_examples_sharded(model, "layer3", images, k=9)       # same on every rank
    imgs = maximize_sharded(model, "layer3", range(64), seed=0)    # [64, C, H, W], unit order

Each function is one pass of :mod:`convscope.nn.passes` run by its one sharded driver
(:func:`~convscope.nn.passes.run_sharded`): rank ``r`` runs share ``r`` (a contiguous slice of the
data set in blocks of ``batch_size``, or of the units), the partial results are gathered with
``all_gather_object``, merged exactly and finished on every rank, so the result is the one a
single process gives:

* :func:`top_examples_sharded` -- :class:`~convscope.features.top.TopExamplesPass` (indices
  shifted by the share's start; partials combined with :func:`convscope.features.merge`);
* :func:`maximize_sharded` -- :class:`~convscope.features.preferred.PreferredInputsPass` (every
  unit's random start comes from its own generator, :func:`convscope.features.unit_seed`);
* :func:`attributions_sharded` -- :class:`~convscope.explain.dataset.AttributionPass`
  (concatenated with :meth:`~convscope.explain.dataset.AttributionSet.cat`);
* :func:`diagnose_sharded` -- :class:`~convscope.diagnose.dataset.DiagnosisPass` (statistics
  merged with :func:`~convscope.diagnose.merge_outputs`).

Without ``torch.distributed`` (or with a world of one process) they are the plain
single-process functions. Every rank must call them (they are collectives); all ranks get the
whole result.
"""

from __future__ import annotations

from typing import Any

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
    from .features.top import TopExamplesPass
    from .nn.passes import run_sharded

    p = TopExamplesPass(model, layer, dataset, k, batch_size=batch_size, crops=crops,
                        quiet=quiet)
    p.size()  # a tensor or a sized Dataset, also with one process
    return run_sharded(p, group)


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
    from .features.preferred import preferred_inputs

    images, values = preferred_inputs(model, layer, units, seed=seed, sharded=True,
                                      group=group, **kwargs)
    return (images, values) if return_values else images


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
        (on the model's device; ``images``, when kept, on the CPU).
    """
    from .explain.dataset import AttributionPass
    from .nn.passes import run_sharded

    return run_sharded(AttributionPass(model, dataset, batch_size=batch_size, masks=masks,
                                       labels=labels, target=target, quiet=quiet, **kwargs),
                       group)


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
        :class:`~convscope.diagnose.Report` of the whole data set on every rank
        (``meta["processes"]``: the number of ranks, when more than one).
    """
    from .diagnose.dataset import DiagnosisPass
    from .nn.passes import run_sharded

    report = run_sharded(DiagnosisPass(model, dataset, batch_size=batch_size, quiet=quiet,
                                       **kwargs), group)
    world = rank_world(group)[1]
    if world > 1:
        report.meta["processes"] = world
    return report
