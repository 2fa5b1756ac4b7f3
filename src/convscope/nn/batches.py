"""Batching: the one way to walk a data set in batches, shared by every whole-data-set pass
(top examples, attribution over a data set, diagnosis statistics), its slicing into shares, and
the chunking of a tensor's first dimension."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import InputError
from .forwarding import positive_int

__all__ = ["chunks", "iter_batches", "dataset_length", "slice_dataset"]


def _split(item: Any) -> tuple[Tensor, Any]:
    """``(image, label or None)`` of one data set item or batch."""
    label = None
    if isinstance(item, dict):
        label = item.get("label", item.get("target", item.get("y")))
        item = item.get("image", item.get("input", item.get("x")))
    elif isinstance(item, (tuple, list)):
        label = item[1] if len(item) > 1 else None
        item = item[0]
    if not isinstance(item, Tensor):
        raise InputError(
            f"data set items must be image tensors, (image, label, ...) tuples or dicts with an "
            f"'image' entry, got {type(item).__name__}."
        )
    return item, label


def _labels(values: list[Any]) -> Tensor | None:
    if not values or any(v is None for v in values):
        return None
    try:
        return torch.as_tensor([int(v) for v in values], dtype=torch.long)
    except (TypeError, ValueError):
        return None


def chunks(n: int, size: int) -> Iterator[slice]:
    """``slice(a, b)`` of consecutive blocks of ``size`` items covering ``range(n)`` in order
    (the last one may be short)."""
    n, size = int(n), max(1, int(size))
    for a in range(0, n, size):
        yield slice(a, min(n, a + size))


def dataset_length(dataset: Any) -> int | None:
    """Items in a tensor ``[N, ...]`` or a sized data set; ``None`` for a plain iterable."""
    if isinstance(dataset, Tensor):
        return int(dataset.shape[0])
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        return len(dataset)  # type: ignore[arg-type]
    if hasattr(dataset, "dataset") and hasattr(dataset.dataset, "__len__"):  # a DataLoader
        return len(dataset.dataset)
    return None


def slice_dataset(dataset: Any, a: int, b: int) -> tuple[Any, int]:
    """``(piece, offset)``: the items ``[a, b)`` of a tensor or map-style data set, and the
    offset to add to the piece's running indices to get the data set's (0 when the piece is a
    :class:`~torch.utils.data.Subset`, whose indices are reported as the parent's)."""
    if isinstance(dataset, Tensor):
        return dataset[a:b], a
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, list(dataset.indices[a:b])), 0
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        return Subset(dataset, range(a, b)), 0
    raise InputError(
        f"cannot split a {type(dataset).__name__} into shares: pass a tensor [N, C, H, W] or a "
        "map-style Dataset with a length (loader.dataset instead of a DataLoader)."
    )


def iter_batches(
    dataset: Any, batch_size: int, offset: int = 0
) -> tuple[Iterator[tuple[Tensor, Tensor, Tensor | None]], int | None]:
    """``(batches, total)``: batches yield ``(indices [B], images [B, C, H, W], labels [B] or
    None)``.

    ``dataset``: a tensor ``[N, C, H, W]`` (no labels), a map-style ``Dataset`` (items
    ``image``, ``(image, label, ...)`` or ``{"image": ..., "label": ...}``; a ``Subset`` reports
    its parent's indices) or an iterable of batches such as a ``DataLoader`` without shuffling
    (indices count from ``offset``). ``total`` is the number of items when known."""
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(dataset, Tensor):
        if dataset.dim() != 4:
            raise InputError(
                f"a tensor data set must be [N, C, H, W], got shape {list(dataset.shape)}."
            )
        n = int(dataset.shape[0])

        def gen_t() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
            for sl in chunks(n, batch_size):
                a, b = sl.start, sl.stop
                yield torch.arange(a + offset, b + offset), dataset[a:b], None

        return gen_t(), n
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        n = len(dataset)  # type: ignore[arg-type]
        base = dataset.indices if isinstance(dataset, Subset) else None

        def gen_d() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
            for sl in chunks(n, batch_size):
                a, b = sl.start, sl.stop
                items = [_split(dataset[i]) for i in range(a, b)]
                x = torch.stack([it[0] for it in items])
                idx = (torch.as_tensor([int(base[i]) for i in range(a, b)]) if base is not None
                       else torch.arange(a, b))
                yield idx + offset, x, _labels([it[1] for it in items])

        return gen_d(), n
    if isinstance(dataset, Iterable):

        def gen_i() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
            pos = offset
            for batch in dataset:
                if isinstance(batch, Tensor):
                    x, y = batch, None
                else:
                    x, y = _split(batch)
                if x.dim() == 3:
                    x = x.unsqueeze(0)
                labels = None
                if isinstance(y, Tensor) and y.dim() <= 1 and y.numel() == x.shape[0]:
                    labels = y.reshape(-1).long()
                yield torch.arange(pos, pos + x.shape[0]), x, labels
                pos += x.shape[0]

        return gen_i(), dataset_length(dataset)
    raise InputError(
        f"dataset must be a tensor [N, C, H, W], a torch Dataset or an iterable of batches, got "
        f"{type(dataset).__name__}."
    )
