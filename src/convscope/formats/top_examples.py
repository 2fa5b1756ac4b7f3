"""Top examples (Zeiler & Fergus 2014): what ``run.log_top_examples(model, layers, dataset)``
records.

Contract:

* table ``top_examples``: one row per (layer, channel, rank): ``layer`` string, ``channel``
  int32, ``rank`` int32 (1 = strongest), ``index`` int64 (dataset index), ``value`` float32
  (the activation; NaN where fewer than k images were seen), ``y``, ``x`` int32 (location in
  the layer's output), ``y0``, ``x0``, ``y1``, ``x1`` int32 (receptive-field box in input
  pixels);
* with crops, as the Model page draws them (:mod:`.quantized`): each crop area-averaged by an
  integer factor to at most 96 pixels a side (``DISPLAY_SIDE``), as ``uint8`` with its own value
  range, and identical crops stored once (channels often share an image's window; a deep
  layer's windows are whole images):

  - ``arrays/top_crops/<layer>.npy``: the distinct crops ``[M, C_in, h, w]`` uint8, meta
    ``layer``, ``k``, ``n_seen``, ``field`` (the receptive field, as text), ``encoding``
    (``"uint8-range"``) and ``shape`` (``[C, k, C_in, h, w]``, what :func:`crops` returns);
  - ``arrays/top_crops_range/<layer>.npy``: ``[M, 2]`` float32 ``(lo, hi)`` per crop (a value is
    ``lo + q / 255 * (hi - lo)``);
  - ``arrays/top_crops_slots/<layer>.npy``: ``[C, k]`` int32, the crop of each (channel, rank).

  Runs recorded before this hold ``arrays/top_crops/<layer>.npy`` ``[C, k, C_in, h, w]`` float16
  at full size, without ``encoding``; :func:`crops` reads both as ``[C, k, C_in, h, w]`` float16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidValueError, StoreError
from .base import Sink, key_meta
from .quantized import DISPLAY_SIDE, ENCODING, Decoded, Gathered, dedup_rows, encode, shrink

__all__ = ["TABLE", "CROPS_KIND", "RANGE_KIND", "SLOTS_KIND", "DTYPE", "SOURCE", "TopExamples",
           "write", "load", "layers", "has_table", "rows", "channel_values", "crops_meta",
           "crops"]

TABLE = "top_examples"
CROPS_KIND = "top_crops"
RANGE_KIND = "top_crops_range"
SLOTS_KIND = "top_crops_slots"
DTYPE = np.float16  #: what :func:`crops` returns (and the dtype older runs stored crops in)
SOURCE = "run.log_top_examples(model, layers, dataset)"


@dataclass(frozen=True)
class TopExamples:
    """The ``k`` strongest images of each of ``C`` channels of ``layer``: ``values [C, k]``
    float32, ``indices [C, k]`` int64, ``locations [C, k, 2]`` (y, x), ``boxes [C, k, 4]``
    (y0, x0, y1, x1), ``crops [C, k, C_in, h, w]`` or None, images seen and the receptive
    field (text)."""

    layer: str
    values: np.ndarray
    indices: np.ndarray
    locations: np.ndarray
    boxes: np.ndarray
    crops: np.ndarray | None = None
    n_seen: int | None = None
    field: str | None = None


def write(sink: Sink, result: TopExamples) -> None:
    layer = result.layer
    vals = np.asarray(result.values, dtype=np.float32)
    c, kk = vals.shape
    locs, boxes = np.asarray(result.locations), np.asarray(result.boxes)
    sink.log_rows(TABLE, {
        "layer": np.array([layer] * (c * kk), dtype=object),
        "channel": np.repeat(np.arange(c, dtype=np.int32), kk),
        "rank": np.tile(np.arange(1, kk + 1, dtype=np.int32), c),
        "index": np.asarray(result.indices).reshape(-1).astype(np.int64),
        "value": vals.reshape(-1),
        "y": locs[..., 0].reshape(-1).astype(np.int32),
        "x": locs[..., 1].reshape(-1).astype(np.int32),
        "y0": boxes[..., 0].reshape(-1).astype(np.int32),
        "x0": boxes[..., 1].reshape(-1).astype(np.int32),
        "y1": boxes[..., 2].reshape(-1).astype(np.int32),
        "x1": boxes[..., 3].reshape(-1).astype(np.int32),
    })
    if result.crops is not None:
        _write_crops(sink, result, kk)


def _write_crops(sink: Sink, result: TopExamples, kk: int) -> None:
    full, want = np.asarray(result.crops), list(np.shape(result.values))
    if full.ndim != 5 or list(full.shape[:2]) != want:
        raise InvalidValueError(f"crops must be [C, k, C_in, h, w] for values {want}, got "
                         f"{list(full.shape)}: pass the crops top_examples returned.")
    small = shrink(full, DISPLAY_SIDE)  # [C, k, C_in, h, w], at most the page's thumbnail
    c, k = small.shape[:2]
    flat = small.reshape(c * k, *small.shape[2:])
    q, lo, hi = encode(flat, axes=(1, 2, 3))
    ranges = np.concatenate([lo.reshape(-1, 1), hi.reshape(-1, 1)], 1)
    first, slot = dedup_rows(q, ranges)
    sink.log_array(RANGE_KIND, result.layer, ranges[first], dtype=np.float32,
                   meta={"layer": result.layer})
    sink.log_array(SLOTS_KIND, result.layer, slot.reshape(c, k), dtype=np.int32,
                   meta={"layer": result.layer})
    sink.log_array(CROPS_KIND, result.layer, q[first], dtype=np.uint8, meta={
        "layer": result.layer, "k": kk, "n_seen": result.n_seen, "field": result.field,
        "encoding": ENCODING, "shape": [int(v) for v in small.shape]})


def has_table(reader: Any) -> bool:
    return reader.has_table(TABLE)


def layers(reader: Any) -> list[str]:
    """Layers with top examples (rows or crops), sorted."""
    out = set()
    if has_table(reader):
        out |= set(reader.query(f"SELECT DISTINCT layer FROM {TABLE}")["layer"].tolist())
    idx = reader.arrays(CROPS_KIND)
    if len(idx):
        out |= set(idx["key"].tolist())
    return sorted(out)


def rows(reader: Any, layer: str) -> pd.DataFrame:
    """The rows of ``layer`` by channel and rank (one per cell: a layer recorded twice keeps
    one of its recordings' rows per cell)."""
    df = reader.query(f"SELECT * FROM {TABLE} WHERE layer = ? ORDER BY channel, rank", [layer])
    return df.drop_duplicates(["channel", "rank"], keep="last").reset_index(drop=True)


def channel_values(reader: Any, layer: str, channel: int, limit: int) -> list[float]:
    """The values of the top ``limit`` ranks of ``channel`` of ``layer``, by rank."""
    df = reader.query(f"SELECT value FROM {TABLE} WHERE layer = ? AND channel = ? "
                      "ORDER BY rank LIMIT ?", [layer, int(channel), int(limit)])
    return df["value"].tolist()


def crops_meta(reader: Any, layer: str) -> dict[str, Any] | None:
    """The index meta of ``layer``'s crops, or None when there are none."""
    return key_meta(reader.arrays(CROPS_KIND), layer)


def crops(reader: Any, layer: str, mmap: bool = False) -> Any:
    """The crops of ``layer`` as ``[C, k, C_in, h, w]`` float16 (an empty slot is zeros).
    ``mmap=True``: a read-only array-like (``shape``, indexing gives numpy arrays) that reads
    and decodes only what is indexed; else a numpy array."""
    m = crops_meta(reader, layer) or {}
    stored = reader.array(CROPS_KIND, layer, mmap=mmap)
    if m.get("encoding") != ENCODING:  # recorded before crops were stored as thumbnails
        return stored
    what = f"the top-example crops of {layer}"
    ranges = np.asarray(reader.array(RANGE_KIND, layer), dtype=np.float32)
    if ranges.ndim != 2 or ranges.shape[1] != 2:
        raise StoreError(f"{what} have ranges of shape {list(ranges.shape)}, not [M, 2]: record "
                         f"them again with {SOURCE}.")
    pad = (slice(None),) + (None,) * (stored.ndim - 1)
    view = Gathered(Decoded(stored, ranges[:, 0][pad], ranges[:, 1][pad], what),
                    reader.array(SLOTS_KIND, layer), what)
    return view if mmap else np.asarray(view)


def load(reader: Any, layer: str) -> TopExamples:
    """The top examples of ``layer``; :class:`StoreError` (saying what records them) when the
    run has none."""
    df = rows(reader, layer) if has_table(reader) else pd.DataFrame()
    if not len(df):
        raise StoreError(f"run {reader.name!r} has no top examples of {layer!r}: record them "
                         f"with {SOURCE}.")
    c, kk = int(df["channel"].max()) + 1, int(df["rank"].max())

    def grid(cols: list[str], dtype: Any) -> np.ndarray:
        out = df[cols].to_numpy(dtype=dtype).reshape(c, kk, len(cols))
        return out[..., 0] if len(cols) == 1 else out

    m = crops_meta(reader, layer)
    return TopExamples(
        layer=layer, values=grid(["value"], np.float32), indices=grid(["index"], np.int64),
        locations=grid(["y", "x"], np.int64), boxes=grid(["y0", "x0", "y1", "x1"], np.int64),
        crops=crops(reader, layer) if m is not None else None,
        n_seen=None if m is None else m.get("n_seen"),
        field=None if m is None else m.get("field"))
