"""Feature maps: what ``run.log_feature_maps(model, images)`` records.

Contract:

* ``arrays/feature_maps/<layer>.npy``: ``[N, C', h, w]`` uint8 (at most ``max_channels``
  channels, ``max_size`` pixels a side) with one value range per channel, the range over which
  the Model page's grid scales each column (:mod:`.quantized`); its index row's meta: ``layer``,
  ``original_shape``, ``stored_shape``, ``channels`` (kept channel indices), ``channel_mean``,
  ``capped_channels``, ``downsampled``, ``encoding`` (``"uint8-range"``) and ``range``
  (``[[lo, hi], ...]`` per stored channel: a value is ``lo + q / 255 * (hi - lo)``). Runs
  recorded before this hold float16 maps without ``encoding``; :func:`maps` reads both as
  float16;
* ``arrays/samples/feature_maps.npy``: the sample images ``[N, C, H, W]`` float16, meta
  ``{"labels": [...] | None}``;
* ``objects/feature_maps/index.json``: ``layers``, ``max_channels``, ``max_size``, ``bytes``,
  ``images``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidValueError, StoreError
from ..store.arrays import array_path
from .base import Sink, key_meta
from .quantized import ENCODING, Decoded, encode

__all__ = ["KIND", "SAMPLES_KIND", "SAMPLES_KEY", "INDEX_KEY", "DTYPE", "SOURCE", "LayerMaps",
           "FeatureMaps", "STORAGE_KEYS", "write", "write_samples", "write_layer", "write_index", "load",
           "index", "layers", "layer_meta", "maps", "samples_index", "samples",
           "samples_meta", "samples_file", "settings"]

KIND = "feature_maps"
SAMPLES_KIND = "samples"
SAMPLES_KEY = "feature_maps"
INDEX_KEY = "index"
DTYPE = np.float16  #: the sample images' dtype, and what :func:`maps` returns
#: Index-meta keys that say how maps are stored (not what was kept: :func:`load` leaves them out
#: of :attr:`LayerMaps.info`).
STORAGE_KEYS = ("encoding", "range")
SOURCE = "run.log_feature_maps(model, images)"


@dataclass(frozen=True)
class LayerMaps:
    """One layer's stored maps ``[N, C', h, w]`` (float16) and what was kept (the index meta
    without :data:`STORAGE_KEYS`)."""

    maps: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True)
class FeatureMaps:
    """The sample images ``[N, C, H, W]``, their labels (or None), the maps of each layer and
    the recording's settings (``objects/feature_maps/index``)."""

    images: np.ndarray
    labels: list[int] | None
    layers: dict[str, LayerMaps]
    settings: dict[str, Any] = field(default_factory=dict)


def write_samples(sink: Sink, images: np.ndarray, labels: Sequence[int] | None) -> None:
    sink.log_array(SAMPLES_KIND, SAMPLES_KEY, images, dtype=DTYPE,
                   meta={"labels": None if labels is None else [int(v) for v in labels]})


def write_layer(sink: Sink, name: str, small: np.ndarray, info: Mapping[str, Any]) -> int:
    """Store one layer's maps ``[N, C', h, w]`` (uint8, a range per channel); returns the bytes
    of values stored."""
    small = np.asarray(small)
    if small.ndim != 4:
        raise InvalidValueError(f"feature maps must be [N, C, h, w], got {list(small.shape)}.")
    q, lo, hi = encode(small, axes=(0, 2, 3))
    sink.log_array(KIND, name, q, dtype=np.uint8, meta={
        **dict(info), "encoding": ENCODING,
        "range": [[float(a), float(b)] for a, b in zip(lo.reshape(-1), hi.reshape(-1), strict=True)]})
    return int(q.size)


def write_index(sink: Sink, layer_names: Sequence[str], *, max_channels: int, max_size: int,
                nbytes: int, images: int) -> None:
    sink.log_object(KIND, INDEX_KEY, {
        "layers": list(layer_names), "max_channels": max_channels, "max_size": max_size,
        "bytes": nbytes, "images": images,
    })


def write(sink: Sink, result: FeatureMaps) -> None:
    """Store the samples, each layer's maps and the index (``settings`` gives max_channels
    and max_size; bytes and images are counted)."""
    write_samples(sink, result.images, result.labels)
    total = 0
    for name, lm in result.layers.items():
        total += write_layer(sink, name, lm.maps, lm.info)
    write_index(sink, list(result.layers), max_channels=result.settings.get("max_channels"),
                max_size=result.settings.get("max_size"), nbytes=total,
                images=int(np.asarray(result.images).shape[0]))


# -- reading --------------------------------------------------------------------------------
def index(reader: Any) -> pd.DataFrame:
    """The arrays index of the stored feature maps (one row per layer; ``meta`` a dict)."""
    return reader.arrays(KIND)


def layers(reader: Any) -> list[str]:
    idx = index(reader)
    return idx["key"].tolist() if len(idx) else []


def layer_meta(reader: Any, layer: str, idx: pd.DataFrame | None = None) -> dict | None:
    """What was kept of ``layer`` (its index meta), or None when its maps are not indexed."""
    return key_meta(index(reader) if idx is None else idx, layer)


def maps(reader: Any, layer: str, mmap: bool = False, meta: Mapping[str, Any] | None = None
         ) -> Any:
    """The stored maps of ``layer`` ``[N, C', h, w]`` as float16. ``mmap=True``: a read-only
    array-like (``shape``, indexing gives numpy arrays) that decodes only what is indexed; else
    a numpy array. ``meta``: the layer's index meta when the caller has it."""
    m = (layer_meta(reader, layer) if meta is None else meta) or {}
    stored = reader.array(KIND, layer, mmap=mmap)
    if m.get("encoding") != ENCODING:  # recorded before maps were stored as uint8
        return stored
    r = np.asarray(m.get("range") or [], dtype=np.float32)
    if stored.ndim != 4 or r.ndim != 2 or r.shape != (stored.shape[1], 2):
        raise StoreError(f"the feature maps of {layer} in run {reader.name!r} have shape "
                         f"{list(stored.shape)} and {len(r)} channel ranges: record them "
                         f"again with {SOURCE}.")
    view = Decoded(stored, r[None, :, 0, None, None], r[None, :, 1, None, None],
                   f"the feature maps of {layer}")
    return view if mmap else np.asarray(view)


def samples_index(reader: Any) -> pd.DataFrame:
    """The arrays index of the stored sample images."""
    return reader.arrays(SAMPLES_KIND)


def samples(reader: Any, key: str = SAMPLES_KEY, mmap: bool = False) -> np.ndarray:
    return reader.array(SAMPLES_KIND, key, mmap=mmap)


def samples_meta(reader: Any) -> dict | None:
    return key_meta(samples_index(reader), SAMPLES_KEY)


def samples_file(key: str = SAMPLES_KEY) -> str:
    """Where sample images ``key`` lie, relative to the run directory (for messages)."""
    return array_path(Path(), SAMPLES_KIND, key).as_posix()


def settings(reader: Any) -> dict[str, Any]:
    """``objects/feature_maps/index`` (``{}`` when absent)."""
    if not reader.has_object(KIND, INDEX_KEY):
        return {}
    doc = reader.object(KIND, INDEX_KEY)
    return doc if isinstance(doc, dict) else {}


def load(reader: Any) -> FeatureMaps:
    """The samples, every layer's maps (in the index's order) and the settings."""
    idx = index(reader)
    out = {}
    for name in (idx["key"].tolist() if len(idx) else []):
        info = layer_meta(reader, name, idx) or {}
        kept = {k: v for k, v in info.items() if k not in STORAGE_KEYS}  # what was kept
        out[name] = LayerMaps(maps(reader, name, meta=info), kept)
    meta = samples_meta(reader) or {}
    images = samples(reader) if meta or len(samples_index(reader)) else np.zeros((0,))
    doc = settings(reader)
    if doc.get("layers"):
        out = {n: out[n] for n in doc["layers"] if n in out} | out
    return FeatureMaps(images=images, labels=meta.get("labels"), layers=out, settings=doc)
