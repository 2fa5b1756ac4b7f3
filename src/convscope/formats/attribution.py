"""Attribution maps of sample images with their quality metrics (``run.log_attributions``).

The run-directory contract (docs/formats.md), per set ``key`` (default
:data:`DEFAULT_KEY`):

* ``arrays/attr_images/<key>`` (:data:`IMAGES_KIND`) — the images ``[N, C, H, W]`` (float16);
* ``arrays/attributions/<key>.<method>`` (:data:`MAPS_KIND`, :func:`map_key`) — each method's
  map ``[N, H, W]`` in [0, 1] (float16);
* table ``attribution_metrics`` (:data:`METRICS_TABLE`) — one row per (key, method, image):
  ``key``, ``method``, ``image`` (int64), ``label``, ``target``, ``pred`` (int64), ``prob``,
  ``drop`` (float32), ``increase`` (as computed, bool) and ``pointing_hit`` (only for methods
  with object masks);
* ``objects/attributions/<key>`` (:data:`SET_KIND`) — the set's description
  (:class:`AttributionInfo`): methods, skipped methods and why, the CAM layer, labels,
  predictions, targets, class names, seconds per method, whether masks were given, and how the
  methods with modes ran (``modes``: ``{method: one line}``, e.g. Score-CAM's ``"exact: ..."``
  or ``"fast: n of C channels ..."``; ``mode_details``: ``{method: {"mode", "channels",
  "scored", "first", "rounds", "bound", "forwards", ...}}``; both ``null`` in runs recorded
  before they were stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..store.arrays import to_numpy
from ..store.layout import safe_key
from .base import Sink

__all__ = [
    "DEFAULT_KEY", "IMAGES_KIND", "MAPS_KIND", "METRICS_TABLE", "SET_KIND", "TABLES",
    "AttributionInfo", "Attributions", "find", "from_set", "has_sets", "images", "info", "infos", "load",
    "map_key", "maps", "metrics", "set_files", "write",
]

#: The images of a set: ``arrays/attr_images/<key>``.
IMAGES_KIND = "attr_images"
#: One map per method: ``arrays/attributions/<key>.<method>``.
MAPS_KIND = "attributions"
#: The description of a set: ``objects/attributions/<key>``.
SET_KIND = "attributions"
#: One row per (key, method, image).
METRICS_TABLE = "attribution_metrics"
TABLES = [METRICS_TABLE]
DEFAULT_KEY = "samples"
#: The call that records this concern (named on pages and in messages that lack it).
SOURCE = "run.log_attributions(model, images)"
#: What the stored ``cam_layer`` says (plain CAM always reads the map feeding the pooling).
CAM_LAYER = "the map feeding the global pooling"


def map_key(key: str, method: str) -> str:
    """The array key of one method's maps in set ``key``."""
    return f"{key}.{method}"


@dataclass
class AttributionInfo:
    """The description of a stored set (``objects/attributions/<key>``).

    ``key``: the key as logged (arrays and metrics are found by it); ``file_key``: its file
    name. ``labels`` (-1 where unknown), ``pred``, ``target``: one int per image. ``modes`` /
    ``mode_details``: how the methods with modes ran (Score-CAM exact or fast); ``None`` for a
    run recorded before they were stored.
    """

    key: str
    file_key: str
    methods: list[str]
    n: int
    labels: list[int]
    pred: list[int]
    target: list[int]
    layer: str = ""
    cam_layer: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    has_masks: bool = False
    modes: dict[str, str] | None = None
    mode_details: dict[str, dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The stored JSON document (keys in the order written)."""
        return {
            "key": self.key, "file_key": self.file_key, "methods": list(self.methods),
            "skipped": dict(self.skipped), "layer": self.layer, "cam_layer": self.cam_layer,
            "n": int(self.n), "labels": list(self.labels), "pred": list(self.pred),
            "target": list(self.target), "class_names": self.class_names,
            "seconds": dict(self.seconds), "has_masks": bool(self.has_masks),
            "modes": None if self.modes is None else dict(self.modes),
            "mode_details": (None if self.mode_details is None
                             else {k: dict(v) for k, v in self.mode_details.items()}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> AttributionInfo:
        """Parse a stored document; :class:`StoreError` naming ``where`` when it is damaged."""
        if not isinstance(d, dict) or "key" not in d:
            raise StoreError(f"{where} is damaged (no 'key' field): record the attributions "
                             "again.")
        try:
            return cls(
                key=str(d["key"]), file_key=str(d.get("file_key", safe_key(str(d["key"])))),
                methods=[str(m) for m in d["methods"]], n=int(d["n"]),
                labels=[int(v) for v in d["labels"]], pred=[int(v) for v in d["pred"]],
                target=[int(v) for v in d.get("target", d["pred"])],
                layer=str(d.get("layer", "")),
                cam_layer=str(d.get("cam_layer", d.get("layer", ""))),
                skipped=dict(d.get("skipped") or {}), class_names=d.get("class_names"),
                seconds=dict(d.get("seconds") or {}), has_masks=bool(d.get("has_masks", False)),
                modes=({str(k): str(v) for k, v in d["modes"].items()}
                       if isinstance(d.get("modes"), dict) else None),
                mode_details=({str(k): dict(v) for k, v in d["mode_details"].items()}
                              if isinstance(d.get("mode_details"), dict) else None),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where} is damaged ({type(exc).__name__}: {exc}): record the "
                             "attributions again.") from None


@dataclass
class Attributions:
    """One stored set, whole: what :func:`write` takes and :func:`load` returns.

    images ``[N, C, H, W]`` (None when not kept); maps ``{method: [N, H, W]}`` in [0, 1];
    labels, target, pred ``[N]`` int64; prob ``[N]`` float32; drop ``{method: [N]}`` float32;
    increase ``{method: [N]}``; pointing ``{method: [N]}`` (methods with object masks);
    modes / mode_details: how the methods with modes ran (None: not recorded, an old run).
    """

    key: str
    images: np.ndarray | None
    maps: dict[str, np.ndarray]
    labels: np.ndarray
    target: np.ndarray
    pred: np.ndarray
    prob: np.ndarray
    drop: dict[str, np.ndarray]
    increase: dict[str, np.ndarray]
    pointing: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    layer: str = ""
    class_names: list[str] | None = None
    has_masks: bool = False
    modes: dict[str, str] | None = None
    mode_details: dict[str, dict[str, Any]] | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    def __len__(self) -> int:
        return int(len(self.labels))

    def info(self) -> AttributionInfo:
        return AttributionInfo(
            key=self.key, file_key=safe_key(self.key), methods=self.methods, n=len(self),
            labels=self.labels.tolist(), pred=self.pred.tolist(), target=self.target.tolist(),
            layer=self.layer, cam_layer=CAM_LAYER, skipped=dict(self.skipped),
            class_names=list(self.class_names) if self.class_names is not None else None,
            seconds=dict(self.seconds), has_masks=bool(self.has_masks),
            modes=None if self.modes is None else dict(self.modes),
            mode_details=(None if self.mode_details is None
                          else {k: dict(v) for k, v in self.mode_details.items()}))


def from_set(result: Any, key: str = DEFAULT_KEY, *, class_names: Sequence[str] | None = None,
             has_masks: bool = False) -> Attributions:
    """An :class:`Attributions` from an :class:`~convscope.explain.dataset.AttributionSet`
    (tensors on any device, or numpy), converted as it is stored."""
    def ints(x: Any) -> np.ndarray:
        return to_numpy(x).astype(np.int64)

    def floats(x: Any) -> np.ndarray:
        return to_numpy(x).astype(np.float32)

    return Attributions(
        key=key, images=None if result.images is None else floats(result.images),
        maps={m: to_numpy(v) for m, v in result.maps.items()},
        labels=ints(result.labels), target=ints(result.target), pred=ints(result.pred),
        prob=floats(result.prob), drop={m: floats(v) for m, v in result.drop.items()},
        increase={m: to_numpy(v) for m, v in result.increase.items()},
        pointing={m: to_numpy(v) for m, v in result.pointing.items()},
        skipped=dict(result.skipped), seconds=dict(result.seconds), layer=result.layer,
        class_names=list(class_names) if class_names is not None else None,
        has_masks=bool(has_masks), modes=dict(getattr(result, "modes", None) or {}),
        mode_details={k: dict(v) for k, v in (getattr(result, "mode_details", None)
                                              or {}).items()})


def write(sink: Sink, result: Attributions, key: str | None = None) -> None:
    """Store a set under ``key`` (default ``result.key``): the images, one float16 array per
    method, the metrics rows and the description object."""
    from ..errors import InputError

    if key is not None and key != result.key:
        result = _with_key(result, key)
    key = result.key
    if result.images is None:
        raise InputError("store_attributions needs the images: compute the set with "
                         "attribute_all(..., keep_images=True).")
    n = len(result)
    sink.log_array(IMAGES_KIND, key, result.images, dtype=np.float16)
    for method, m in result.maps.items():
        sink.log_array(MAPS_KIND, map_key(key, method), m, dtype=np.float16)
    for method in result.maps:
        row: dict[str, Any] = {
            "key": np.array([key] * n, dtype=object),
            "method": np.array([method] * n, dtype=object),
            "image": np.arange(n, dtype=np.int64),
            "label": result.labels,
            "target": result.target,
            "pred": result.pred,
            "prob": result.prob,
            "drop": result.drop[method],
            "increase": result.increase[method],
        }
        if method in result.pointing:
            row["pointing_hit"] = result.pointing[method]
        sink.log_rows(METRICS_TABLE, row)
    sink.log_object(SET_KIND, key, result.info().to_dict())


def _with_key(result: Attributions, key: str) -> Attributions:
    from dataclasses import replace

    return replace(result, key=key)


# -- reading -----------------------------------------------------------------------------------
def has_sets(reader: Any) -> bool:
    """Whether the run has any stored attribution set."""
    return bool(reader.objects(SET_KIND))


def set_files(reader: Any) -> list[str]:
    """The stored sets, by file name (the key's file form; :func:`info` reads each)."""
    return reader.objects(SET_KIND)


def info(reader: Any, file_key: str) -> AttributionInfo:
    """The description of the set stored as ``objects/attributions/<file_key>.json``;
    :class:`StoreError` when it is missing or damaged."""
    return AttributionInfo.from_dict(reader.object(SET_KIND, file_key),
                                     f"objects/{SET_KIND}/{file_key}.json")


def infos(reader: Any) -> list[AttributionInfo]:
    """Every set's description (the first damaged one raises :class:`StoreError`)."""
    return [info(reader, k) for k in set_files(reader)]


def find(reader: Any, key: str) -> AttributionInfo:
    """The description of the set logged as ``key``; :class:`StoreError` when there is none."""
    for k in set_files(reader):
        meta = info(reader, k)
        if meta.key == key:
            return meta
    raise StoreError(f"run {reader.name!r} has no attribution set {key!r}: pick another set, or "
                     "record it with run.log_attributions(model, images, key=...).")


def images(reader: Any, key: str, *, mmap: bool = False) -> np.ndarray:
    """The images ``[N, C, H, W]`` of set ``key`` as stored (float16)."""
    return reader.array(IMAGES_KIND, key, mmap=mmap)


def maps(reader: Any, key: str, method: str, *, mmap: bool = False) -> np.ndarray:
    """One method's maps ``[N, H, W]`` of set ``key`` as stored (float16)."""
    return reader.array(MAPS_KIND, map_key(key, method), mmap=mmap)


def metrics(reader: Any, key: str) -> pd.DataFrame:
    """The metrics rows of set ``key`` (columns as stored, including ``key``); an empty frame
    when the run has none."""
    if not reader.has_table(METRICS_TABLE):
        return pd.DataFrame()
    return reader.query(f"SELECT * FROM {METRICS_TABLE} WHERE key = ?", [key])


def load(reader: Any, key: str = DEFAULT_KEY) -> Attributions:
    """The set logged as ``key``, whole (images and maps as stored, float16; metrics by
    image). :class:`StoreError` when it is missing or damaged."""
    meta = find(reader, key)
    rows = metrics(reader, key)
    if len(rows):
        rows = rows.sort_values(["method", "image"], kind="stable")
    per = {m: rows[rows["method"] == m] for m in meta.methods} if len(rows) else {}

    def col(m: str, c: str) -> np.ndarray:
        return per[m][c].to_numpy() if m in per else np.array([])

    first = per[meta.methods[0]] if per and meta.methods else None
    pointing: dict[str, np.ndarray] = {}
    for m in meta.methods:
        if m in per and "pointing_hit" in per[m].columns and per[m]["pointing_hit"].notna().all():
            pointing[m] = per[m]["pointing_hit"].to_numpy()
    return Attributions(
        key=meta.key, images=images(reader, key),
        maps={m: maps(reader, key, m) for m in meta.methods},
        labels=np.asarray(meta.labels, dtype=np.int64),
        target=np.asarray(meta.target, dtype=np.int64),
        pred=np.asarray(meta.pred, dtype=np.int64),
        prob=(first["prob"].to_numpy(np.float32) if first is not None
              else np.array([], np.float32)),
        drop={m: col(m, "drop") for m in meta.methods},
        increase={m: col(m, "increase") for m in meta.methods},
        pointing=pointing, skipped=dict(meta.skipped), seconds=dict(meta.seconds),
        layer=meta.layer, class_names=meta.class_names, has_masks=meta.has_masks,
        modes=meta.modes, mode_details=meta.mode_details)
