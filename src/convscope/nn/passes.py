"""The one data-set pass protocol and its two drivers.

Every whole-data-set analysis of convscope (top examples, attribution over a data set, diagnosis
statistics, preferred inputs of many units) has the same shape:

1. :meth:`Pass.run` does the work of one **share** -- a contiguous slice ``[start, stop)`` of the
   items (images of a data set, or units) -- and returns a **partial** result;
2. :meth:`Pass.merge` combines the partials of consecutive shares *exactly*: merging the partials
   of any split into shares gives the partial of the whole (tests check this against one pass);
3. :meth:`Pass.finish` turns the merged partial into the result the user gets.

:meth:`Pass.shares` cuts the items into shares (:func:`~convscope.nn.dist.shard_bounds`, in
blocks of :attr:`Pass.align` -- the batch size for a data set, so every share runs the batches
one process would). Two drivers run any pass:

* :func:`run_pass` -- one process: one share covering everything, then ``finish``;
* :func:`run_sharded` -- under ``torch.distributed`` (``torchrun``): rank ``r`` runs share ``r``,
  the partials are gathered (:func:`~convscope.nn.dist.gather_objects`, on the CPU), merged in
  rank order and finished on every rank, so every rank gets the result one process gives. With
  one process it is :func:`run_pass`.

:func:`run_split` runs the shares of a world one after another in this process (what the ranks
of :func:`run_sharded` do in parallel): the way to test a pass's ``merge`` without processes.

.. code-block:: python

    from convscope.nn import DatasetPass, iter_batches, run_sharded

    class CountPass(DatasetPass):       # the number of images: a toy pass
        def run(self, share):
            piece, offset = self.piece(share)
            return sum(int(x.shape[0]) for _, x, _ in iter_batches(piece, self.align)[0])

        def merge(self, partials):
            return sum(partials)

    run_sharded(CountPass(images, batch_size=64, what="count"))   # every rank: len(images)
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import ConvscopeError, InputError
from .dist import gather_objects, rank_world, shard_bounds

__all__ = ["Share", "Pass", "DatasetPass", "run_pass", "run_sharded", "run_split", "to_device"]

P = TypeVar("P")  # a partial result
R = TypeVar("R")  # the finished result


@dataclass(frozen=True)
class Share:
    """One share of a pass's items: ``[start, stop)`` (``stop=None``: to the end, the whole
    data when ``start == 0``; the only share of :func:`run_pass`, which also walks iterables
    of unknown length), and which ``rank`` of ``world`` runs it."""

    start: int = 0
    stop: int | None = None
    rank: int = 0
    world: int = 1

    @property
    def whole(self) -> bool:
        """Whether this share is all of the items, untouched (no slicing needed)."""
        return self.start == 0 and self.stop is None

    def __len__(self) -> int:
        if self.stop is None:
            raise InputError("the whole share has no length of its own: use the pass's size().")
        return max(0, self.stop - self.start)

    def slice(self, items: Any) -> Any:
        """``items[start:stop]`` (the items themselves for the whole share)."""
        return items if self.whole else items[self.start:self.stop]


class Pass(ABC, Generic[P, R]):
    """A pass over ``size()`` items, run on shares, merged exactly, finished once.

    Subclasses implement :meth:`run` and :meth:`merge` (and :meth:`finish` when the result is
    not the merged partial itself); :meth:`size` is needed only to cut shares (sharded runs).
    Partials travel between processes pickled: keep them to tensors, numbers, strings,
    dataclasses, lists, tuples and dicts of those (:func:`to_device` moves them to the CPU).
    """

    #: what the pass computes, for messages ("top examples", ...).
    what: str = "pass"
    #: shares start at multiples of this (a data set's batch size).
    align: int = 1

    def size(self) -> int:
        """How many items the pass covers (to cut shares); raises :class:`InputError` when
        they cannot be counted or split."""
        raise InputError(f"{self.what} cannot be split into shares: it has no size.")

    def shares(self, world: int) -> list[Share]:
        """The ``world`` contiguous shares, in rank order (:func:`shard_bounds` in blocks of
        :attr:`align`; the first ranks take the remainder; some may be empty)."""
        n = self.size()
        return [Share(*shard_bounds(n, r, world, align=max(1, int(self.align))), r, world)
                for r in range(int(world))]

    @abstractmethod
    def run(self, share: Share) -> P:
        """The partial result of one non-empty share."""

    @abstractmethod
    def merge(self, partials: Sequence[P]) -> P:
        """One partial from the partials of consecutive shares, in order (at least one)."""

    def finish(self, partial: P) -> R:
        """The result from the partial of all items (default: the partial itself)."""
        return partial  # type: ignore[return-value]


class DatasetPass(Pass[P, R]):
    """A pass over the images of a data set: a tensor ``[N, C, H, W]``, a map-style
    ``Dataset`` or (in one process only) an iterable of batches such as a ``DataLoader``.

    Shares are slices in blocks of ``batch_size``; :meth:`piece` gives a share's part of the
    data set and the offset that turns its running indices into the data set's.
    """

    def __init__(self, dataset: Any, batch_size: int, what: str) -> None:
        from .forwarding import positive_int

        self.dataset = dataset
        self.align = positive_int(batch_size, "batch_size")
        self.what = what

    def size(self) -> int:
        import torch
        from torch.utils.data import Dataset

        d = self.dataset
        if not isinstance(d, (torch.Tensor, Dataset)) or not hasattr(d, "__len__"):
            raise InputError(
                f"{self.what} needs a tensor [N, C, H, W] or a map-style Dataset with a length to "
                f"split it across processes, got {type(d).__name__}: pass loader.dataset instead "
                "of a loader.")
        n = len(d)
        if n == 0:
            raise InputError(f"the data set is empty: there is nothing to compute ({self.what}).")
        return n

    def piece(self, share: Share) -> tuple[Any, int]:
        """``(part of the data set, index offset)`` of ``share`` (the data set itself and 0 for
        the whole share)."""
        if share.whole:
            return self.dataset, 0
        from .batches import slice_dataset

        return slice_dataset(self.dataset, share.start,
                             self.size() if share.stop is None else share.stop)


def to_device(obj: Any, device: Any) -> Any:
    """``obj`` with every tensor inside moved to ``device``: tensors, dicts, lists, tuples and
    dataclass instances are walked (a new container is made; other values are kept as they
    are)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_device(v, device) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: to_device(getattr(obj, f.name), device)
                   for f in dataclasses.fields(obj) if f.init}
        return dataclasses.replace(obj, **changes)
    return obj


def run_pass(p: Pass[Any, R]) -> R:
    """Run ``p`` in this process: one share covering every item, then :meth:`Pass.finish`."""
    return p.finish(p.run(Share()))


def run_split(p: Pass[Any, R], world: int) -> R:
    """Run the ``world`` shares of ``p`` one after another in this process, merge and finish:
    what :func:`run_sharded` computes with ``world`` processes (for tests and checks)."""
    parts = [p.run(s) for s in p.shares(world) if len(s)]
    if not parts:
        raise InputError(f"{p.what}: every share is empty, there is nothing to compute.")
    return p.finish(p.merge(parts))


def run_sharded(p: Pass[Any, R], group: Any = None) -> R:
    """Run ``p`` split across the ranks of ``torch.distributed`` (of ``group``).

    A collective: every rank must call it with the same pass (the same items). Rank ``r`` runs
    share ``r`` of :meth:`Pass.shares`; the partials are moved to the CPU, gathered in rank
    order, merged and finished on every rank, so every rank returns the result of one process.
    When a rank's share fails, every rank raises (the failing rank its own error, the others a
    :class:`~convscope.errors.ConvscopeError` naming it) instead of waiting for it. Without
    ``torch.distributed`` or with one process this is :func:`run_pass`.
    """
    rank, world = rank_world(group)
    if world == 1:
        return run_pass(p)
    share = p.shares(world)[rank]
    mine: tuple[str, Any] = ("empty", None)
    failure: BaseException | None = None
    if len(share):
        try:
            mine = ("ok", to_device(p.run(share), "cpu"))
        except Exception as exc:  # told to the other ranks, then raised here
            failure = exc
            mine = ("error", f"{type(exc).__name__}: {exc}")
    gathered = gather_objects(mine, group)
    errors = [(r, msg) for r, (kind, msg) in enumerate(gathered) if kind == "error"]
    if failure is not None:
        raise failure
    if errors:
        r, msg = errors[0]
        raise ConvscopeError(f"{p.what} failed on rank {r} ({msg}); fix what that rank reports "
                             "and run the job again.")
    parts = [value for kind, value in gathered if kind == "ok"]
    if not parts:
        raise InputError(f"{p.what}: every share is empty, there is nothing to compute.")
    return p.finish(p.merge(parts))
