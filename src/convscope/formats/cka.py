"""Linear CKA between the layers of two models (Kornblith et al. 2019; the minibatch estimate
of Nguyen et al. 2021): what ``run.log_cka(model, other, data)`` records.

Contract: ``arrays/cka/<key>.npy``: the ``[A, B]`` float32 matrix (rows: the layers of the
run's model, columns: the layers of the other model); its index row's meta: ``layers_a``,
``layers_b`` (module paths), ``label_a``, ``label_b`` (what the two models are, e.g. "this run"
and "epoch 1 checkpoint" or another run's name), ``n_images``, ``batch_size``, ``same_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .base import Sink, key_meta

__all__ = ["KIND", "SOURCE", "CKA", "write", "load", "keys"]

KIND = "cka"
SOURCE = "run.log_cka(model, other, data)"


@dataclass(frozen=True)
class CKA:
    """A stored CKA matrix ``[len(layers_a), len(layers_b)]`` and what it compares."""

    key: str
    matrix: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    label_a: str
    label_b: str
    n_images: int
    batch_size: int
    same_model: bool = False


def write(sink: Sink, result: CKA) -> None:
    m = np.asarray(result.matrix, dtype=np.float32)
    if m.shape != (len(result.layers_a), len(result.layers_b)):
        raise InvalidValueError(f"the CKA matrix is {list(m.shape)} for {len(result.layers_a)} x "
                                f"{len(result.layers_b)} layers: pass what cka_matrix returned.")
    sink.log_array(KIND, result.key, m, dtype=np.float32, meta={
        "layers_a": list(result.layers_a), "layers_b": list(result.layers_b),
        "label_a": str(result.label_a), "label_b": str(result.label_b),
        "n_images": int(result.n_images), "batch_size": int(result.batch_size),
        "same_model": bool(result.same_model)})


def keys(reader: Any) -> list[str]:
    """The keys of the run's CKA matrices, in the order they were logged."""
    idx = reader.arrays(KIND)
    return list(dict.fromkeys(idx["key"].tolist())) if len(idx) else []


def load(reader: Any, key: str) -> CKA:
    """The CKA matrix stored under ``key``; :class:`StoreError` (saying what records it) when
    there is none."""
    m = key_meta(reader.arrays(KIND), key)
    if m is None:
        raise StoreError(f"run {reader.name!r} has no CKA matrix {key!r}: record one with "
                         f"{SOURCE}.")
    matrix = np.asarray(reader.array(KIND, key), dtype=np.float32)
    la, lb = [str(v) for v in m.get("layers_a") or []], [str(v) for v in m.get("layers_b") or []]
    if matrix.shape != (len(la), len(lb)):
        raise StoreError(f"the CKA matrix {key!r} of run {reader.name!r} is {list(matrix.shape)} "
                         f"for {len(la)} x {len(lb)} layers: record it again with {SOURCE}.")
    return CKA(key, matrix, la, lb, str(m.get("label_a", "A")), str(m.get("label_b", "B")),
               int(m.get("n_images", 0)), int(m.get("batch_size", 0)),
               bool(m.get("same_model", False)))
