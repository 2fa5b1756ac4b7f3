"""Embeddings: what ``run.log_embedding(features, labels)`` records.

Contract, for an embedding name ``n``:

* table ``embedding``: one row per item: ``name`` (= n), ``idx`` int64, ``pc1`` .. ``pck``
  float32, ``label`` int64 (-1 without labels);
* ``objects/embedding/<n>.json``: ``name``, ``n``, ``dim``, ``k``,
  ``explained_variance_ratio``, ``class_names``, ``method``, ``has_images``, ``key`` (n in
  file-name form);
* with images, ``arrays/embedding_images/<n>.npy``: uint8 thumbnails ``[N, h, w, 3]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..store.arrays import array_path
from ..store.layout import safe_key
from .base import Sink

__all__ = ["TABLE", "KIND", "IMAGES_KIND", "DEFAULT_NAME", "SOURCE", "Embedding", "write",
           "load", "has", "names", "frame", "meta", "has_images", "thumbnails"]

TABLE = "embedding"
KIND = "embedding"
IMAGES_KIND = "embedding_images"
DEFAULT_NAME = "features"
SOURCE = "run.log_embedding(features, labels)"


@dataclass(frozen=True)
class Embedding:
    """A projection ``[N, k]`` (float32) of named features with labels ``[N]`` (int64, -1 =
    none), the explained variance ratio ``[k]``, the features' dimension, class names, the
    method, and thumbnails ``[N, h, w, 3]`` uint8 or None."""

    name: str
    projections: np.ndarray
    labels: np.ndarray
    explained_variance_ratio: list[float]
    dim: int
    class_names: list[str] | None = None
    method: str = "pca"
    images: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.projections.shape[0])

    @property
    def k(self) -> int:
        return int(self.projections.shape[1])


def write(sink: Sink, result: Embedding) -> None:
    """Store the rows, the settings and (when there are any) the thumbnails."""
    name, proj, n = result.name, np.asarray(result.projections), result.n
    cols: dict[str, Any] = {"name": np.array([name] * n, dtype=object),
                            "idx": np.arange(n, dtype=np.int64)}
    for j in range(proj.shape[1]):
        cols[f"pc{j + 1}"] = proj[:, j].astype(np.float32)
    cols["label"] = np.asarray(result.labels).astype(np.int64)
    sink.log_rows(TABLE, cols)
    sink.log_object(KIND, name, {
        "name": name, "n": n, "dim": int(result.dim), "k": int(proj.shape[1]),
        "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio],
        "class_names": list(result.class_names) if result.class_names is not None else None,
        "method": result.method, "has_images": result.images is not None,
        "key": safe_key(name),
    })
    if result.images is not None:
        sink.log_array(IMAGES_KIND, name, result.images)


def has(reader: Any) -> bool:
    return reader.has_table(TABLE)


def names(reader: Any) -> list[str]:
    """The embedding names in the run, sorted; ``[]`` without an embedding table."""
    if not has(reader):
        return []
    return reader.query(f"SELECT DISTINCT name FROM {TABLE} ORDER BY name")["name"].tolist()


def frame(reader: Any, name: str) -> pd.DataFrame:
    """The rows of embedding ``name`` by item index (name, idx, pc1.., label)."""
    return reader.query(f"SELECT * FROM {TABLE} WHERE name = ? ORDER BY idx", [name])


def meta(reader: Any, name: str) -> dict[str, Any]:
    """The embedding's settings (class names, variance), ``{}`` when absent or not a mapping."""
    if not name or not reader.has_object(KIND, name):
        return {}
    doc = reader.object(KIND, name)
    return doc if isinstance(doc, dict) else {}


def has_images(reader: Any, name: str, settings: dict[str, Any] | None = None) -> bool:
    """Whether thumbnails are stored (the settings say so; without settings, the file)."""
    settings = meta(reader, name) if settings is None else settings
    return bool(settings.get("has_images")) or (
        not settings and array_path(reader.path, IMAGES_KIND, name).exists())


def thumbnails(reader: Any, name: str, mmap: bool = False) -> np.ndarray:
    return reader.array(IMAGES_KIND, name, mmap=mmap)


def load(reader: Any, name: str = DEFAULT_NAME) -> Embedding:
    """Embedding ``name``; :class:`StoreError` (saying what records one) when it is absent."""
    df = frame(reader, name) if has(reader) else pd.DataFrame()
    if not len(df):
        raise StoreError(f"run {reader.name!r} has no embedding {name!r}: record it with "
                         f"{SOURCE}.")
    doc = meta(reader, name)
    pcs = sorted((c for c in df.columns if c.startswith("pc") and c[2:].isdigit()),
                 key=lambda c: int(c[2:]))
    return Embedding(
        name=name, projections=df[pcs].to_numpy(dtype=np.float32),
        labels=df["label"].to_numpy(dtype=np.int64),
        explained_variance_ratio=list(doc.get("explained_variance_ratio") or []),
        dim=int(doc.get("dim", 0)), class_names=doc.get("class_names"),
        method=str(doc.get("method", "")),
        images=thumbnails(reader, name) if has_images(reader, name, doc) else None)


