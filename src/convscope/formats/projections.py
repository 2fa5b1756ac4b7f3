"""DeconvNet projections (Zeiler & Fergus 2014): what ``run.log_projections(model, layers,
dataset)`` records.

For each recorded unit (channel) of a layer, the ``k`` data-set images that excite it most, each
activation projected back to pixels by the deconvnet (:func:`convscope.explain.project_unit`)
beside the image's receptive-field window (Zeiler & Fergus, figure 2: projection left, image
patch right). Both are stored as the Model page draws them (:mod:`.quantized`): the window of the
projection and of the image, area-averaged by an integer factor to at most 96 pixels a side
(``DISPLAY_SIDE``), as ``uint8`` with a value range per window.

Contract (``U`` recorded units, ``k`` slots per unit, best first):

* ``arrays/projections/<layer>.npy``: the projection windows ``[U, k, C_in, h, w]`` uint8; its
  index meta: ``layer``, ``units`` (the channel of each row), ``k``, ``n_seen`` (images ranked),
  ``field`` (the receptive field, as text), ``image_size`` (``[H, W]``), ``seed``
  (``"activation"`` or ``"ones"``, see :func:`~convscope.explain.project_unit`), ``seconds``,
  ``encoding`` (``"uint8-range"``) and ``shape``;
* ``arrays/projection_crops/<layer>.npy``: the image windows, same shape, uint8;
* ``arrays/projection_ranges/<layer>.npy``: ``[U, k, 2, 2]`` float32, ``(lo, hi)`` of the
  projection window then of the image window (a value is ``lo + q / 255 * (hi - lo)``);
* ``arrays/projection_places/<layer>.npy``: ``[U, k, 7]`` int64: dataset index, ``y``, ``x``
  (the activation's location in the layer's output) and the receptive-field box ``y0``, ``x0``,
  ``y1``, ``x1`` in input pixels (clipped to the image); index ``-1`` marks an empty slot (a
  data set with fewer than ``k`` images);
* ``arrays/projection_values/<layer>.npy``: ``[U, k]`` float32, the activation (NaN in an empty
  slot).

Torch-free; the only module that knows these kinds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .base import Sink, key_meta
from .quantized import DISPLAY_SIDE, ENCODING, Decoded, encode, shrink

__all__ = ["KIND", "CROPS_KIND", "RANGE_KIND", "PLACES_KIND", "VALUES_KIND", "SOURCE",
           "MAX_WINDOW_VALUES", "Projections", "UnitProjections", "write", "layers", "meta", "units", "unit",
           "load"]

KIND = "projections"
CROPS_KIND = "projection_crops"
RANGE_KIND = "projection_ranges"
PLACES_KIND = "projection_places"
VALUES_KIND = "projection_values"
SOURCE = "run.log_projections(model, layers, dataset)"
#: The most values one stored window may hold for :func:`unit` to read it (written windows hold
#: at most ``C_in x 96 x 96``; a larger file was not written by convscope).
MAX_WINDOW_VALUES = 16 * DISPLAY_SIDE * DISPLAY_SIDE


@dataclass(frozen=True)
class Projections:
    """The top ``k`` images of each of ``U`` units of ``layer``, each activation projected back
    to pixels. ``values [U, k]`` float32 (NaN: empty slot), ``indices [U, k]`` int64 (-1: empty
    slot), ``locations [U, k, 2]`` (y, x) in the layer's output, ``boxes [U, k, 4]``
    (y0, x0, y1, x1) in input pixels, ``projections`` and ``crops`` ``[U, k, C_in, h, w]``: the
    receptive-field windows of the projection and of the image (zeros in an empty slot)."""

    layer: str
    units: list[int]
    values: np.ndarray
    indices: np.ndarray
    locations: np.ndarray
    boxes: np.ndarray
    projections: np.ndarray
    crops: np.ndarray
    n_seen: int | None = None
    field: str | None = None
    image_size: tuple[int, int] | None = None
    seed: str = "activation"
    seconds: float | None = None


@dataclass(frozen=True)
class UnitProjections:
    """One unit's filled slots, best first: ``values [n]``, ``indices [n]``, ``locations
    [n, 2]``, ``boxes [n, 4]``, ``projections`` and ``crops`` ``[n, C_in, h, w]`` float16 as
    stored (at most 96 pixels a side)."""

    layer: str
    unit: int
    values: np.ndarray
    indices: np.ndarray
    locations: np.ndarray
    boxes: np.ndarray
    projections: np.ndarray
    crops: np.ndarray
    field: str | None = None
    seed: str = "activation"


def write(sink: Sink, result: Projections) -> None:
    """Store ``result`` (windows of any size: shrunk to at most 96 pixels a side here)."""
    values = np.asarray(result.values, dtype=np.float32)
    if values.ndim != 2 or values.shape[0] != len(result.units):
        raise InvalidValueError(f"values must be [U, k] for {len(result.units)} units, got "
                                f"{list(values.shape)}: pass what log_projections computed.")
    u, k = values.shape
    proj = np.asarray(result.projections, dtype=np.float32)
    crops = np.asarray(result.crops, dtype=np.float32)
    if proj.ndim != 5 or proj.shape[:2] != (u, k) or crops.shape != proj.shape:
        raise InvalidValueError(f"projections and crops must both be [U, k, C_in, h, w] = "
                                f"[{u}, {k}, ...], got {list(proj.shape)} and "
                                f"{list(crops.shape)}.")
    indices = np.asarray(result.indices, dtype=np.int64).reshape(u, k)
    places = np.concatenate([indices[..., None],
                             np.asarray(result.locations, dtype=np.int64).reshape(u, k, 2),
                             np.asarray(result.boxes, dtype=np.int64).reshape(u, k, 4)], -1)
    proj, crops = shrink(proj, DISPLAY_SIDE), shrink(crops, DISPLAY_SIDE)
    qp, plo, phi = encode(proj, axes=(2, 3, 4))
    qc, clo, chi = encode(crops, axes=(2, 3, 4))
    ranges = np.stack([np.stack([plo.reshape(u, k), phi.reshape(u, k)], -1),
                       np.stack([clo.reshape(u, k), chi.reshape(u, k)], -1)], 2)  # [U, k, 2, 2]
    layer = result.layer
    sink.log_array(VALUES_KIND, layer, values, dtype=np.float32, meta={"layer": layer})
    sink.log_array(PLACES_KIND, layer, places, dtype=np.int64, meta={"layer": layer})
    sink.log_array(RANGE_KIND, layer, ranges, dtype=np.float32, meta={"layer": layer})
    sink.log_array(CROPS_KIND, layer, qc, dtype=np.uint8, meta={"layer": layer})
    # the projections last: their index row (read by :func:`meta`) says the layer is complete
    sink.log_array(KIND, layer, qp, dtype=np.uint8, meta={
        "layer": layer, "units": [int(v) for v in result.units], "k": int(k),
        "n_seen": None if result.n_seen is None else int(result.n_seen),
        "field": result.field,
        "image_size": None if result.image_size is None else [int(v) for v in
                                                              result.image_size],
        "seed": str(result.seed), "seconds": result.seconds, "encoding": ENCODING,
        "shape": [int(v) for v in qp.shape]})


def layers(reader: Any) -> list[str]:
    """Layers with projections, sorted."""
    idx = reader.arrays(KIND)
    return sorted(set(idx["key"].tolist())) if len(idx) else []


def meta(reader: Any, layer: str) -> dict[str, Any] | None:
    """The index meta of ``layer``'s projections, or None when there are none."""
    return key_meta(reader.arrays(KIND), layer)


def units(reader: Any, layer: str) -> list[int]:
    """The recorded units of ``layer`` (``[]`` when none)."""
    m = meta(reader, layer)
    return _units(m, layer) if m is not None else []


def _units(m: dict[str, Any], layer: str) -> list[int]:
    got = m.get("units")
    if not isinstance(got, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in got):
        raise StoreError(f"the projections of {layer} list no units: record them again with "
                         f"{SOURCE}.")
    return got


def _missing(reader: Any, layer: str) -> StoreError:
    return StoreError(f"run {reader.name!r} has no DeconvNet projections of {layer!r}: record "
                      f"them with {SOURCE}.")


def _parts(reader: Any, layer: str, mmap: bool) -> tuple[dict[str, Any], list[int], Any, Any,
                                                           np.ndarray, Any, Any]:
    """Meta, units, and the five arrays of ``layer``, their shapes checked."""
    m = meta(reader, layer)
    if m is None:
        raise _missing(reader, layer)
    us = _units(m, layer)
    what = f"the projections of {layer}"
    again = f"record them again with {SOURCE}"
    proj = reader.array(KIND, layer, mmap=mmap)
    crops = reader.array(CROPS_KIND, layer, mmap=mmap)
    ranges = reader.array(RANGE_KIND, layer, mmap=mmap)
    places = reader.array(PLACES_KIND, layer, mmap=mmap)
    values = reader.array(VALUES_KIND, layer, mmap=mmap)
    u = len(us)
    if proj.ndim != 5 or proj.shape[0] != u:
        raise StoreError(f"{what} have shape {list(proj.shape)}, not [{u}, k, C, h, w] for "
                         f"their {u} units: {again}.")
    k = proj.shape[1]
    if tuple(crops.shape) != tuple(proj.shape) or tuple(ranges.shape) != (u, k, 2, 2) or \
            tuple(places.shape) != (u, k, 7) or tuple(values.shape) != (u, k):
        raise StoreError(f"the arrays of {what} do not fit together (projections "
                         f"{list(proj.shape)}, crops {list(crops.shape)}, ranges "
                         f"{list(ranges.shape)}, places {list(places.shape)}, values "
                         f"{list(values.shape)}): {again}.")
    if proj.dtype != np.uint8 or crops.dtype != np.uint8 or places.dtype.kind not in "iu":
        raise StoreError(f"{what} are stored as {proj.dtype} / {crops.dtype} / "
                         f"{places.dtype}, not uint8 / uint8 / int: {again}.")
    return m, us, proj, crops, ranges, places, values


def _decode(q: Any, ranges: np.ndarray, what: str) -> np.ndarray:
    """``q [..., C, h, w]`` uint8 with ``ranges [..., 2]`` as float16."""
    r = np.asarray(ranges, dtype=np.float32)
    pad = (...,) + (None,) * 3
    return np.asarray(Decoded(np.asarray(q), r[..., 0][pad], r[..., 1][pad], what))


def unit(reader: Any, layer: str, channel: int, limit: int | None = None) -> UnitProjections:
    """The filled slots of ``channel`` of ``layer`` (at most ``limit``), read memory-mapped:
    only that unit's rows are read. :class:`StoreError` when the layer or the unit was not
    recorded (the message names the recorded units and the call that records more)."""
    m, us, proj, crops, ranges, places, values = _parts(reader, layer, mmap=True)
    if channel not in us:
        shown = ", ".join(str(v) for v in us[:20]) + (", ..." if len(us) > 20 else "")
        raise StoreError(f"unit {channel} of {layer} has no DeconvNet projections in run "
                         f"{reader.name!r} (recorded units: {shown}); record it with "
                         f"run.log_projections(model, [{layer!r}], dataset, "
                         f"units=[{channel}]).")
    if int(np.prod(proj.shape[2:])) > MAX_WINDOW_VALUES:
        raise StoreError(f"the projection windows of {layer} are {list(proj.shape[2:])}, larger "
                         f"than {SOURCE} writes: record them again.")
    i = us.index(channel)
    # filled slots come first (best first): read at most ``limit`` of them
    upto = proj.shape[1] if limit is None else max(0, min(int(limit), proj.shape[1]))
    pl = np.asarray(places[i, :upto], dtype=np.int64)
    keep = np.flatnonzero(pl[:, 0] >= 0)
    rng = np.asarray(ranges[i, :upto], dtype=np.float32)[keep]
    what = f"the projections of unit {channel} of {layer}"
    return UnitProjections(
        layer=layer, unit=int(channel),
        values=np.asarray(values[i, :upto], dtype=np.float32)[keep],
        indices=pl[keep, 0], locations=pl[keep, 1:3], boxes=pl[keep, 3:7],
        projections=_decode(np.asarray(proj[i, :upto])[keep], rng[:, 0], what),
        crops=_decode(np.asarray(crops[i, :upto])[keep], rng[:, 1], what),
        field=m.get("field"), seed=str(m.get("seed") or "activation"))


def load(reader: Any, layer: str) -> Projections:
    """Everything recorded of ``layer`` (windows decoded to float16, as stored: at most 96
    pixels a side); :class:`StoreError` (saying what records them) when the run has none."""
    m, us, proj, crops, ranges, places, values = _parts(reader, layer, mmap=False)
    what = f"the projections of {layer}"
    pl = np.asarray(places, dtype=np.int64)
    size = m.get("image_size")
    return Projections(
        layer=layer, units=list(us), values=np.asarray(values, dtype=np.float32),
        indices=pl[..., 0], locations=pl[..., 1:3], boxes=pl[..., 3:7],
        projections=_decode(proj, ranges[..., 0, :], what),
        crops=_decode(crops, ranges[..., 1, :], what),
        n_seen=m.get("n_seen"), field=m.get("field"),
        image_size=tuple(size) if isinstance(size, Sequence) and len(size) == 2 else None,
        seed=str(m.get("seed") or "activation"), seconds=m.get("seconds"))
