"""CNNVis (Liu et al. 2017): what ``run.log_cnnvis(model, dataset)`` records.

Contract, for a view named ``v`` (default ``"cnnvis"``) over the chain of layers ``L0 .. Ln``:

* ``objects/cnnvis/<v>.json``: ``version`` (1), ``layers`` (module paths, drawing order), ``by``
  (``"class"`` or ``"image"``), ``classes`` (or null), ``n_images``, ``columns`` (the stored
  descriptor columns ``D``), ``pooled_from`` (the columns before pooling, or null), ``seed``,
  ``seconds``, ``settings`` (``{name: str}``), ``clusters`` (per layer: ``channels``,
  ``requested`` (the count asked, null: by silhouette), ``labels``, ``sizes``,
  ``representatives``, ``order``, ``dead`` (the dead channels' indices), ``silhouette`` (null
  when undefined)), and ``pairs`` (per adjacent pair ``(L_i, L_i+1)``: ``source``, ``target``,
  ``method`` (``"weights"`` or ``"gradient"``), ``shape`` ``[C_src, C_tgt]``, ``encoding`` and
  ``scale``; a low-rank pair also ``rank`` and ``error``);
* ``arrays/cnnvis_descriptors/<v>.L<i>.npy``: layer ``i``'s channel descriptors ``[C, D]``
  float16 divided by ``scale`` (in the index meta; a value is ``q * scale``);
* ``arrays/cnnvis_influence/<v>.P<i>.npy``: pair ``i``'s channel influence divided by ``scale``,
  float16: ``[C_src, C_tgt]`` (``encoding`` ``"float16"``) or, for a matrix of more than
  :data:`MAX_FULL_CELLS` cells, the factors of its best rank-``r`` approximation stacked as
  ``[C_src + C_tgt, r]`` (``encoding`` ``"lowrank"``: ``U sqrt(S)`` over ``V sqrt(S)``;
  :func:`load` gives ``max(U V^T, 0) * scale``; ``error`` is the relative Frobenius error).

What is capped, so that a ResNet-50 stage stays a few MB: descriptors keep at most
:data:`MAX_COLUMNS` columns (more images or classes are pooled into that many groups of adjacent
columns, each the mean of its group: ``pooled_from`` says so); influence matrices above
:data:`MAX_FULL_CELLS` cells (512 x 512) keep rank :data:`MAX_RANK` (a 1024 x 2048 pair is
0.4 MB instead of 4 MB); everything is float16 over a scale. The clustering stored is the one
computed on the stored (pooled, rounded) descriptors, so reclustering them gives it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from ..store.layout import check_name

__all__ = ["KIND", "DESCRIPTORS_KIND", "INFLUENCE_KIND", "DEFAULT_KEY", "SOURCE", "MAX_COLUMNS",
           "MAX_FULL_CELLS", "MAX_RANK", "MAX_CHANNELS", "LayerClusters", "Pair", "CNNVisView",
           "write", "load", "keys", "meta", "view_of", "descriptors", "influence",
           "clusters", "store_descriptors", "encode_influence", "decode_influence"]

KIND = "cnnvis"
DESCRIPTORS_KIND = "cnnvis_descriptors"
INFLUENCE_KIND = "cnnvis_influence"
DEFAULT_KEY = "cnnvis"
SOURCE = "run.log_cnnvis(model, dataset)"
VERSION = 1

#: descriptor columns kept per layer (more images or classes are pooled into this many groups)
MAX_COLUMNS = 128
#: influence matrices with more cells are stored as a rank-MAX_RANK factorisation
MAX_FULL_CELLS = 512 * 512
MAX_RANK = 64
#: the most channels a stored layer may have (a file declaring more is refused when read)
MAX_CHANNELS = 8192


@dataclass(frozen=True)
class LayerClusters:
    """One layer's channel clusters as stored (the fields of
    :class:`convscope.model.cnnvis.ChannelClusters`, plus the count asked for)."""

    layer: str
    labels: np.ndarray  # [C] int64, clusters numbered largest first
    sizes: np.ndarray  # [K]
    representatives: np.ndarray  # [K] the channel closest to each cluster's centre
    order: np.ndarray  # [C] channels by cluster, then closeness to the centre
    dead: np.ndarray  # [C] bool
    silhouette: float | None = None
    requested: int | None = None

    @property
    def n_clusters(self) -> int:
        return int(len(self.sizes))


@dataclass(frozen=True)
class Pair:
    """The channel influence ``[C_src, C_tgt]`` (float32, non-negative) between two adjacent
    layers of the chain, the method that measured it and how it was stored."""

    source: str
    target: str
    method: str
    influence: np.ndarray
    encoding: str = "float16"
    rank: int | None = None
    error: float | None = None


@dataclass(frozen=True)
class CNNVisView:
    """A recorded CNNVis view: per layer the descriptors ``[C, D]`` (float32, as stored) and the
    clusters; per adjacent pair the influence."""

    key: str
    layers: list[str]
    descriptors: dict[str, np.ndarray]
    clusters: dict[str, LayerClusters]
    pairs: list[Pair]
    by: str = "image"
    classes: list[int] | None = None
    n_images: int = 0
    pooled_from: int | None = None
    seed: int = 0
    seconds: float | None = None
    settings: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------
# encodings


def _encode(x: np.ndarray) -> tuple[np.ndarray, float]:
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise InvalidValueError("CNNVis values hold NaN or inf: record a finite model.")
    scale = float(np.abs(x).max()) if x.size else 0.0
    # a float32 scale: decoding to float32 and encoding again gives the same values back
    scale = float(np.float32(scale)) if scale > 0 else 1.0
    return (x / scale).astype(np.float16), scale


def _decode(q: np.ndarray, scale: float) -> np.ndarray:
    return (np.asarray(q, dtype=np.float64) * float(scale)).astype(np.float32)


def store_descriptors(values: np.ndarray) -> tuple[np.ndarray, int | None]:
    """What :func:`load` gives back for descriptors ``[C, D]``: at most :data:`MAX_COLUMNS`
    columns (groups of adjacent columns averaged) rounded as stored; and the column count before
    pooling (None when not pooled). Cluster these, so the stored clustering is reproducible."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidValueError(f"descriptors must be [C, D], got {list(x.shape)}.")
    pooled = None
    if x.shape[1] > MAX_COLUMNS:
        pooled = int(x.shape[1])
        x = np.stack([g.mean(1) for g in np.array_split(x, MAX_COLUMNS, axis=1)], 1)
    q, scale = _encode(x)
    return _decode(q, scale), pooled


def encode_influence(m: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """An influence matrix as stored: ``(array, meta)`` (see the module doc)."""
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise InvalidValueError(f"an influence matrix must be [C_src, C_tgt], got {list(m.shape)}.")
    if not np.isfinite(m).all() or (m < 0).any():
        raise InvalidValueError("an influence matrix must be finite and non-negative.")
    scale = float(m.max()) if m.max() > 0 else 1.0
    r, c = m.shape
    rank = min(MAX_RANK, r, c)
    if r * c <= MAX_FULL_CELLS or rank == min(r, c):
        q, _ = _encode(m / scale)
        return q, {"encoding": "float16", "scale": scale}
    u, s, vt = np.linalg.svd(m / scale, full_matrices=False)
    root = np.sqrt(s[:rank])
    stacked = np.concatenate([u[:, :rank] * root, vt[:rank].T * root], 0)
    q = stacked.astype(np.float16)
    approx = _lowrank(q, r, scale)
    err = float(np.linalg.norm(approx - m) / max(np.linalg.norm(m), 1e-300))
    return q, {"encoding": "lowrank", "scale": scale, "rank": int(rank), "error": err}


def _lowrank(q: np.ndarray, rows: int, scale: float) -> np.ndarray:
    f = np.asarray(q, dtype=np.float64)
    return (np.maximum(f[:rows] @ f[rows:].T, 0) * scale).astype(np.float32)


def decode_influence(q: np.ndarray, meta: Mapping[str, Any], shape: Sequence[int]) -> np.ndarray:
    """The ``[C_src, C_tgt]`` float32 influence from the stored array and its pair entry."""
    r, c = (int(v) for v in shape)
    enc = meta.get("encoding")
    scale = float(meta.get("scale", 1.0))
    if enc == "float16" and tuple(q.shape) == (r, c):
        return _decode(q, scale)
    if enc == "lowrank" and q.ndim == 2 and q.shape[0] == r + c:
        return _lowrank(q, r, scale)
    raise StoreError(f"a CNNVis influence array has shape {list(q.shape)} and encoding {enc!r}, "
                     f"not a {r} x {c} matrix: record the view again with {SOURCE}.")


# ------------------------------------------------------------------------------------------------
# write


def _layer_key(key: str, i: int) -> str:
    return f"{key}.L{i}"


def _pair_key(key: str, i: int) -> str:
    return f"{key}.P{i}"


def write(sink: Any, view: CNNVisView) -> None:
    """Store ``view`` (descriptors as :func:`store_descriptors` gives them, or any ``[C, D]``:
    they are pooled and rounded here)."""
    key = check_name(view.key, "CNNVis view name")
    if not view.layers:
        raise InvalidValueError("a CNNVis view needs at least one layer.")
    doc_clusters: dict[str, Any] = {}
    for i, layer in enumerate(view.layers):
        stored, pooled = store_descriptors(view.descriptors[layer])
        q, scale = _encode(stored)
        c = int(q.shape[0])
        cl = view.clusters[layer]
        if len(cl.labels) != c:
            raise InvalidValueError(f"the clusters of {layer} label {len(cl.labels)} channels, "
                                    f"its descriptors have {c}.")
        sink.log_array(DESCRIPTORS_KIND, _layer_key(key, i), q, dtype=np.float16,
                       meta={"layer": layer, "view": key, "scale": scale})
        sil = cl.silhouette
        doc_clusters[layer] = {
            "channels": c, "requested": cl.requested, "scale": scale,
            "labels": [int(v) for v in cl.labels], "sizes": [int(v) for v in cl.sizes],
            "representatives": [int(v) for v in cl.representatives],
            "order": [int(v) for v in cl.order],
            "dead": [int(v) for v in np.flatnonzero(np.asarray(cl.dead, dtype=bool))],
            "silhouette": None if sil is None or not np.isfinite(sil) else float(sil)}
    pairs = []
    for i, p in enumerate(view.pairs):
        q, m = encode_influence(p.influence)
        sink.log_array(INFLUENCE_KIND, _pair_key(key, i), q, dtype=np.float16,
                       meta={"view": key, "source": p.source, "target": p.target})
        pairs.append({"source": p.source, "target": p.target, "method": p.method,
                      "shape": [int(v) for v in np.shape(p.influence)], **m})
    first = np.asarray(view.descriptors[view.layers[0]])
    sink.log_object(KIND, key, {
        "version": VERSION, "layers": list(view.layers), "by": view.by,
        "classes": None if view.classes is None else [int(c) for c in view.classes],
        "n_images": int(view.n_images),
        "columns": int(min(first.shape[1], MAX_COLUMNS)),
        "pooled_from": view.pooled_from, "seed": int(view.seed), "seconds": view.seconds,
        "settings": {k: str(v) for k, v in (view.settings or {}).items()},
        "clusters": doc_clusters, "pairs": pairs})


# ------------------------------------------------------------------------------------------------
# read


def keys(reader: Any) -> list[str]:
    """The recorded CNNVis views."""
    return list(reader.objects(KIND))


def _fail(reader: Any, key: str, what: str) -> StoreError:
    return StoreError(f"the CNNVis view {key!r} of run {reader.name!r} is damaged ({what}): "
                      f"record it again with {SOURCE}.")


def _ints(v: Any, n: int | None = None) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                       for x in v) and (n is None or len(v) == n)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v)) \
        and v > 0


def meta(reader: Any, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """The view's document, checked (layers, clusters and pairs consistent and in bounds)."""
    doc = reader.object(KIND, key)
    if not isinstance(doc, dict):
        raise _fail(reader, key, "not a JSON object")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers or not all(isinstance(s, str) for s in layers):
        raise _fail(reader, key, "no list of layers")
    clusters = doc.get("clusters")
    if not isinstance(clusters, dict) or set(clusters) != set(layers):
        raise _fail(reader, key, "clusters do not match the layers")
    for layer in layers:
        cl = clusters[layer]
        c = cl.get("channels") if isinstance(cl, dict) else None
        if not isinstance(c, int) or not 0 < c <= MAX_CHANNELS:
            raise _fail(reader, key, f"channels of {layer}")
        sizes = cl.get("sizes")
        ok = (_ints(cl.get("labels"), c) and _ints(cl.get("order"), c) and _ints(sizes)
              and _ints(cl.get("representatives"), len(sizes)) and _ints(cl.get("dead"))
              and _number(cl.get("scale")))
        k = len(sizes) if ok else 0
        if not ok or not 0 < k <= c or not all(0 <= v < k for v in cl["labels"]) \
                or sorted(cl["order"]) != list(range(c)) \
                or not all(0 <= v < c for v in cl["representatives"] + cl["dead"]):
            raise _fail(reader, key, f"clusters of {layer}")
    pairs = doc.get("pairs")
    if not isinstance(pairs, list) or len(pairs) != len(layers) - 1:
        raise _fail(reader, key, "pairs do not match the layers")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or p.get("source") != layers[i] or \
                p.get("target") != layers[i + 1] or p.get("shape") != [
                    clusters[layers[i]]["channels"], clusters[layers[i + 1]]["channels"]]:
            raise _fail(reader, key, f"pair {i}")
        if p.get("encoding") not in ("float16", "lowrank") or not _number(p.get("scale")) \
                or not isinstance(p.get("method"), str):
            raise _fail(reader, key, f"the encoding of pair {i}")
    return doc


def view_of(reader: Any, layer: str) -> str | None:
    """The first recorded view whose chain holds ``layer`` (None when none does)."""
    for key in keys(reader):
        try:
            if layer in meta(reader, key)["layers"]:
                return key
        except StoreError:
            continue
    return None


def _array(reader: Any, kind: str, key: str, shape_ok: Any, what: str) -> np.ndarray:
    arr = reader.array(kind, key, mmap=True)
    if arr.ndim != 2 or not shape_ok(arr.shape):
        raise StoreError(f"{what} has shape {list(arr.shape)}: the file is damaged; record the "
                         f"view again with {SOURCE}.")
    return np.asarray(arr)


def descriptors(reader: Any, key: str, layer: str, doc: Mapping[str, Any] | None = None
                ) -> np.ndarray:
    """Layer ``layer``'s stored descriptors ``[C, D]`` float32 (the shape is checked on the
    file's header before anything is read)."""
    doc = doc or meta(reader, key)
    i = doc["layers"].index(layer)
    c = doc["clusters"][layer]["channels"]
    scale = float(doc["clusters"][layer]["scale"])
    q = _array(reader, DESCRIPTORS_KIND, _layer_key(key, i),
               lambda s: s[0] == c and 0 < s[1] <= MAX_COLUMNS,
               f"the CNNVis descriptors of {layer}")
    return _decode(q, scale)


def influence(reader: Any, key: str, i: int, doc: Mapping[str, Any] | None = None) -> Pair:
    """Pair ``i`` of the view (the influence decoded, ``[C_src, C_tgt]`` float32)."""
    doc = doc or meta(reader, key)
    p = doc["pairs"][i]
    r, c = p["shape"]
    q = _array(reader, INFLUENCE_KIND, _pair_key(key, i),
               lambda s: (s == (r, c) and r * c <= max(MAX_FULL_CELLS, MAX_RANK * max(r, c)))
               or (s[0] == r + c and s[1] <= MAX_RANK),
               f"the CNNVis influence {p['source']} -> {p['target']}")
    rank, err = p.get("rank"), p.get("error")
    return Pair(p["source"], p["target"], str(p.get("method")), decode_influence(q, p, (r, c)),
                str(p.get("encoding")), int(rank) if isinstance(rank, int) else None,
                float(err) if isinstance(err, (int, float)) else None)


def clusters(doc: Mapping[str, Any], layer: str) -> LayerClusters:
    """The stored clustering of ``layer`` (from :func:`meta`'s document)."""
    cl = doc["clusters"][layer]
    dead = np.zeros(cl["channels"], dtype=bool)
    dead[cl["dead"]] = True
    sil = cl.get("silhouette")
    req = cl.get("requested")
    return LayerClusters(layer, np.asarray(cl["labels"], dtype=np.int64),
                         np.asarray(cl["sizes"], dtype=np.int64),
                         np.asarray(cl["representatives"], dtype=np.int64),
                         np.asarray(cl["order"], dtype=np.int64), dead,
                         float(sil) if isinstance(sil, (int, float)) else None,
                         req if isinstance(req, int) else None)


def load(reader: Any, key: str = DEFAULT_KEY) -> CNNVisView:
    """The whole view; :class:`StoreError` (saying what records it) when the run has none."""
    if key not in keys(reader):
        raise StoreError(f"run {reader.name!r} has no CNNVis view {key!r}: record one with "
                         f"{SOURCE}.")
    doc = meta(reader, key)
    layers = doc["layers"]
    classes = doc.get("classes")
    seconds = doc.get("seconds")
    return CNNVisView(
        key=key, layers=list(layers),
        descriptors={layer: descriptors(reader, key, layer, doc) for layer in layers},
        clusters={layer: clusters(doc, layer) for layer in layers},
        pairs=[influence(reader, key, i, doc) for i in range(len(layers) - 1)],
        by=str(doc.get("by")), classes=classes if _ints(classes) else None,
        n_images=int(doc.get("n_images") or 0),
        pooled_from=doc.get("pooled_from") if isinstance(doc.get("pooled_from"), int) else None,
        seed=int(doc.get("seed") or 0),
        seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
        settings=dict(doc.get("settings") or {}))
