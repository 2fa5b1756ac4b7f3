"""Images and maps stored as the pages draw them: at most :data:`DISPLAY_SIDE` pixels a side
(area-averaged by an integer factor, as the Model page's thumbnails are) and as ``uint8`` with a
value range per item (``value = lo + q / 255 * (hi - lo)``), so an item keeps 256 levels between
its own minimum and maximum, the range the pages' min-max scaling spreads over 0-255.

:class:`Decoded` reads such an array back as ``float16`` values without decoding more than is
indexed (the pages index memory-mapped arrays: a unit's crops, a column of maps).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import StoreError

__all__ = ["DISPLAY_SIDE", "ENCODING", "OUT_DTYPE", "shrink", "encode", "Decoded", "Gathered",
           "dedup_rows"]

#: Pixels a side of the largest thumbnail the Model page draws (its ``MAX_THUMB``: crops and
#: preferred inputs are sent at most this large, area-averaged by an integer factor).
DISPLAY_SIDE = 96
#: The ``encoding`` meta of arrays stored this way (arrays without it are the old float16 ones).
ENCODING = "uint8-range"
#: What decoded values are (the dtype the old arrays were stored in).
OUT_DTYPE = np.float16


def shrink(x: Any, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """``[..., H, W]`` as float32, area-averaged by the smallest integer factor ``f`` that brings
    both sides to at most ``max_side`` (``H // f`` by ``W // f``; the last ``H % f`` rows and
    ``W % f`` columns are dropped, as the Model page's thumbnails do); unchanged when already
    small enough."""
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape[-2:]
    f = -(-max(h, w) // int(max_side))
    if f <= 1:
        return x
    h2, w2 = h // f * f, w // f * f
    x = x[..., :h2, :w2]
    return x.reshape(*x.shape[:-2], h2 // f, f, w2 // f, f).mean(axis=(-3, -1))


def encode(x: Any, axes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x`` as ``uint8`` with one range per item: ``axes`` are the axes reduced for the range
    (e.g. ``(1, 2, 3)`` for images ``[N, C, H, W]``: one range per image). Returns ``(q, lo, hi)``
    with ``lo`` and ``hi`` float32 of ``x``'s shape with ``axes`` kept as size 1; non-finite
    values are stored as ``lo``."""
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x)
    axes = tuple(int(a) for a in axes)
    if x.size == 0:
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
        return x.astype(np.uint8), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    lo = np.min(np.where(finite, x, np.inf), axis=axes, keepdims=True)
    hi = np.max(np.where(finite, x, -np.inf), axis=axes, keepdims=True)
    empty = ~np.isfinite(lo)
    lo, hi = np.where(empty, 0.0, lo).astype(np.float32), np.where(empty, 0.0, hi).astype(
        np.float32)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((np.where(finite, x, lo) - lo) / span * 255.0)
    return np.clip(q, 0, 255).astype(np.uint8), lo, hi


def _decode(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (lo + q.astype(np.float32) * ((hi - lo) / np.float32(255.0))).astype(OUT_DTYPE)


class Decoded:
    """A stored ``uint8`` array ``q`` read as ``lo + q / 255 * (hi - lo)`` (``lo``, ``hi``
    broadcast to ``q``'s shape), decoded to ``float16`` only where indexed: ``view[key]`` is a
    numpy array, ``np.asarray(view)`` decodes all of it."""

    dtype = np.dtype(OUT_DTYPE)

    def __init__(self, q: np.ndarray, lo: Any, hi: Any, what: str = "array") -> None:
        self.q = q
        try:
            self.lo = np.broadcast_to(np.asarray(lo, dtype=np.float32), q.shape)
            self.hi = np.broadcast_to(np.asarray(hi, dtype=np.float32), q.shape)
        except ValueError:
            raise StoreError(f"the value ranges of {what} do not fit its shape "
                             f"{tuple(q.shape)}: record it again.") from None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def ndim(self) -> int:
        return self.q.ndim

    @property
    def size(self) -> int:
        return int(self.q.size)

    def __len__(self) -> int:
        return len(self.q)

    def __getitem__(self, key: Any) -> np.ndarray:
        return _decode(np.asarray(self.q[key]), self.lo[key], self.hi[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


class Gathered:
    """Rows of a :class:`Decoded` ``[M, ...]`` laid out by ``slots`` (int ``[*lead]``, -1 for
    an empty slot, read as zeros): the logical array ``[*lead, ...]``, decoded where indexed."""

    dtype = np.dtype(OUT_DTYPE)

    def __init__(self, rows: Decoded, slots: np.ndarray, what: str = "array") -> None:
        slots = np.asarray(slots)
        if slots.dtype.kind not in "iu" or (slots.size and int(slots.max()) >= len(rows)):
            raise StoreError(f"the slot index of {what} points past its {len(rows)} stored "
                             "rows: record it again.")
        self.rows, self.slots = rows, slots

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.slots.shape) + tuple(self.rows.shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.slots)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        lead = self.slots.ndim
        if any(k is None or k is Ellipsis for k in key) or len(key) > self.ndim:
            return np.asarray(self)[key]  # rare forms: decode all
        s = self.slots[key[:lead]]
        out = self.rows[np.clip(s, 0, None)]
        if np.any(s < 0):
            out[s < 0] = 0
        rest = key[lead:]
        return out[(slice(None),) * np.ndim(s) + rest] if rest else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[tuple(slice(None) for _ in range(self.slots.ndim))]
        return out if dtype is None else out.astype(dtype)

    def astype(self, dtype: Any) -> np.ndarray:
        return np.asarray(self, dtype=dtype)


def dedup_rows(*parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Identical rows stored once: ``parts`` are arrays ``[M, ...]`` whose rows together make
    one item; returns ``(first, inverse)``: the index of each distinct item's first occurrence
    and, per row, the position of its item in ``first``."""
    m = len(parts[0])
    seen: dict[bytes, int] = {}
    first: list[int] = []
    inverse = np.empty(m, dtype=np.int64)
    flat = [np.ascontiguousarray(p).reshape(m, -1) for p in parts]
    for i in range(m):
        h = hashlib.blake2b(digest_size=16)
        for p in flat:
            h.update(p[i].tobytes())
        d = h.digest()
        j = seen.get(d)
        if j is None:
            j = seen[d] = len(first)
            first.append(i)
        inverse[i] = j
    return np.asarray(first, dtype=np.int64), inverse
