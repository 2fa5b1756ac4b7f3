"""Preferred inputs (activation maximisation; Erhan et al. 2009, Yosinski et al. 2015): what
``run.log_preferred_inputs(model, layers)`` records.

Contract: ``arrays/preferred_inputs/<layer>.npy``: the optimised images ``[U, C, H, W]``
float16; its index row's meta: ``layer``, ``units`` (the unit of each image), ``values`` (the
objective reached, per unit), ``seconds`` (or null), ``settings`` (``{name: str(value)}``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StoreError
from .base import Sink, key_meta

__all__ = ["KIND", "DTYPE", "SOURCE", "PreferredInputs", "write", "load", "layers", "meta",
           "images"]

KIND = "preferred_inputs"
DTYPE = np.float16
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
    sink.log_array(KIND, result.layer, result.images, dtype=DTYPE, meta={
        "layer": result.layer, "units": [int(u) for u in result.units],
        "values": [float(v) for v in result.values], "seconds": result.seconds,
        "settings": {k: str(v) for k, v in (result.settings or {}).items()}})


def layers(reader: Any) -> list[str]:
    idx = reader.arrays(KIND)
    return idx["key"].tolist() if len(idx) else []


def meta(reader: Any, layer: str) -> dict[str, Any] | None:
    """The index meta of ``layer``'s preferred inputs, or None when there are none."""
    return key_meta(reader.arrays(KIND), layer)


def images(reader: Any, layer: str, mmap: bool = False) -> np.ndarray:
    return reader.array(KIND, layer, mmap=mmap)


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
