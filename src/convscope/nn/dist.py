"""``torch.distributed`` in one place: this process's rank and the world size, gathering
objects from every rank, and the contiguous share of ``n`` items each rank takes."""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import InputError

__all__ = ["dist_or_none", "env_rank_world", "gather_objects", "rank_world", "shard",
           "shard_bounds"]


def dist_or_none() -> Any:
    """``torch.distributed`` when it is initialised, else ``None`` (torch is not imported
    for this: without it there is no process group)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist
    return None


def rank_world(group: Any = None) -> tuple[int, int]:
    """``(rank, world size)`` of this process in ``torch.distributed`` (of ``group``), or
    ``(0, 1)`` when it is not initialised."""
    dist = dist_or_none()
    if dist is None:
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def env_rank_world() -> tuple[int, int]:
    """``(rank, world size)`` from ``torch.distributed`` when it is initialised, else from the
    ``RANK`` / ``WORLD_SIZE`` variables ``torchrun`` sets (``(0, 1)`` without them)."""
    dist = dist_or_none()
    if dist is not None:
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def shard_bounds(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``n`` items that ``rank`` of ``world`` takes.

    Items are dealt in blocks of ``align`` (the last block may be short): the first
    ``blocks % world`` ranks get one block more than the others, so shares differ by at most one
    block and together cover ``range(n)`` once, in order.
    """
    n, rank, world, align = int(n), int(rank), int(world), int(align)
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}.")
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank must be in [0, world) with world >= 1, got rank={rank}, "
                         f"world={world}.")
    if align < 1:
        raise InputError(f"align must be >= 1, got {align}.")
    blocks = -(-n // align)
    per, extra = divmod(blocks, world)
    first = rank * per + min(rank, extra)
    count = per + (1 if rank < extra else 0)
    return min(n, first * align), min(n, (first + count) * align)


def shard(items: Any, rank: int, world: int, align: int = 1) -> Any:
    """This rank's contiguous share of ``items`` (anything sliceable with a length: a list, a
    range, a tensor ``[N, ...]``, an array): ``items[start:stop]`` with the bounds of
    :func:`shard_bounds`. ``shard(range(10), 1, 3)`` is ``range(4, 7)``."""
    try:
        n = len(items)
    except TypeError:
        raise InputError(f"shard needs a sized, sliceable collection, got "
                         f"{type(items).__name__}.") from None
    a, b = shard_bounds(n, rank, world, align)
    return items[a:b]


def gather_objects(obj: Any, group: Any = None) -> list[Any]:
    """Every rank's ``obj`` in rank order (``all_gather_object``); ``[obj]`` without
    ``torch.distributed``. Tensors inside should be on the CPU (they are pickled)."""
    dist = dist_or_none()
    if dist is None or dist.get_world_size(group) == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out
