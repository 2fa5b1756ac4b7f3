"""Preferred inputs (activation maximisation; Erhan et al. 2009, Yosinski et al. 2015): what
``run.log_preferred_inputs(model, layers)`` records.

Contract: ``arrays/preferred_inputs/<layer>.npy``: the optimised images as the Model page draws
them (:mod:`.quantized`): ``[U, C, h, w]`` uint8, each image area-averaged by an integer factor to
at most 96 pixels a side and stored with its own value range; its index row's meta: ``layer``,
``units`` (the unit of each image), ``values`` (the objective reached, per unit), ``seconds`` (or
null), ``settings`` (``{name: str(value)}``), ``encoding`` (``"uint8-range"``), ``range``
(``[[lo, hi], ...]`` per image: a value is ``lo + q / 255 * (hi - lo)``) and ``size`` (``[H, W]``
as optimised).

Runs recorded before this hold ``[U, C, H, W]`` float16 at full size, without ``encoding``;
:func:`images` reads both as ``[U, C, h, w]`` float16.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .base import Sink, key_meta
from .quantized import DISPLAY_SIDE, ENCODING, Decoded, encode, shrink

__all__ = ["KIND", "DTYPE", "SOURCE", "PreferredInputs", "write", "load", "layers", "meta",
           "images"]

KIND = "preferred_inputs"
DTYPE = np.float16  #: what :func:`images` returns (and the dtype older runs stored)
SOURCE = "run.log_preferred_inputs(model, layers)"


@dataclass(frozen=True)
class PreferredInputs:
    """The optimised images ``[U, C, H, W]`` of ``units`` of ``layer`` with the objective
    values reached ``[U]``, the time taken and the settings (as strings)."""

    layer: str
    units: list[int]
    images: np.ndarray
    values: list[float]
    seconds: float | None = None
    settings: dict[str, str] = field(default_factory=dict)


def write(sink: Sink, result: PreferredInputs) -> None:
    full = np.asarray(result.images)
    if full.ndim != 4:
        raise InvalidValueError(f"preferred inputs must be images [U, C, H, W], got "
                                f"{list(full.shape)}: pass what maximize returned.")
    q, lo, hi = encode(shrink(full, DISPLAY_SIDE), axes=(1, 2, 3))
    sink.log_array(KIND, result.layer, q, dtype=np.uint8, meta={
        "layer": result.layer, "units": [int(u) for u in result.units],
        "values": [float(v) for v in result.values], "seconds": result.seconds,
        "settings": {k: str(v) for k, v in (result.settings or {}).items()},
        "encoding": ENCODING, "size": [int(v) for v in full.shape[-2:]],
        "range": [[float(a), float(b)] for a, b in zip(lo.reshape(-1), hi.reshape(-1), strict=True)]})


def layers(reader: Any) -> list[str]:
    idx = reader.arrays(KIND)
    return idx["key"].tolist() if len(idx) else []


def meta(reader: Any, layer: str) -> dict[str, Any] | None:
    """The index meta of ``layer``'s preferred inputs, or None when there are none."""
    return key_meta(reader.arrays(KIND), layer)


def images(reader: Any, layer: str, mmap: bool = False) -> Any:
    """The images of ``layer`` ``[U, C, h, w]`` float16. ``mmap=True``: a read-only array-like
    (``shape``, indexing gives numpy arrays) that decodes only what is indexed; else a numpy
    array."""
    m = meta(reader, layer) or {}
    stored = reader.array(KIND, layer, mmap=mmap)
    if m.get("encoding") != ENCODING:  # recorded before images were stored as thumbnails
        return stored
    view = Decoded(stored, *_ranges(m, stored.ndim, layer), f"the preferred inputs of {layer}")
    return view if mmap else np.asarray(view)


def _ranges(m: Mapping[str, Any], ndim: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(m.get("range") or [], dtype=np.float32)
    if r.ndim != 2 or r.shape[1] != 2:
        raise StoreError(f"the preferred inputs of {layer} have no value range per image: "
                         f"record them again with {SOURCE}.")
    pad = (slice(None),) + (None,) * (ndim - 1)
    return r[:, 0][pad], r[:, 1][pad]


def load(reader: Any, layer: str) -> PreferredInputs:
    """The preferred inputs of ``layer``; :class:`StoreError` (saying what records them) when
    the run has none."""
    m = meta(reader, layer)
    if m is None:
        raise StoreError(f"run {reader.name!r} has no preferred inputs of {layer!r}: record "
                         f"them with {SOURCE}.")
    settings: Mapping[str, Any] = m.get("settings") or {}
    values: Sequence[Any] = m.get("values") or []
    return PreferredInputs(layer=layer, units=[int(u) for u in m["units"]],
                           images=images(reader, layer), values=[float(v) for v in values],
                           seconds=m.get("seconds"), settings=dict(settings))
