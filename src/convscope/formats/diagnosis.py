"""Wang & Li (2020)'s diagnosis of a model, with the data behind its figures
(``run.log_diagnosis``).

The run-directory contract (docs/formats.md), per report ``key`` (default
:data:`DEFAULT_KEY`):

* ``objects/diagnosis/<key>`` (:data:`REPORT_KIND`) — the whole
  :class:`~convscope.diagnose.Report` (``to_dict``);
* table ``diagnosis_findings`` (:data:`FINDINGS_TABLE`) — one row per finding: ``order``,
  ``stage``, ``severity``, ``code``, ``layer``, ``message``, ``advice``, ``evidence`` (JSON),
  ``key``;
* table ``diagnosis_layers`` (:data:`LAYERS_TABLE`) — the per-layer numbers
  (``Report.layers_frame()``, list and dict cells as JSON strings) and ``key``;

and per layer (keyed by the layer's name, not the report's: a later report's views replace an
earlier one's; each view names its report in ``key``):

* output layers: ``arrays/diag_maps/<layer>`` (:data:`MAPS_KIND`, the grid or feature heatmap,
  float16), ``arrays/diag_kde/<layer>`` (:data:`KDE_KIND`, density curves, float32) and
  ``objects/diag_view/<layer>`` (:data:`VIEW_KIND`: name, kind, shape, samples, channels,
  clustering without its condensed distances, KDE without its densities, stats, notes, key);
* parameter layers: ``arrays/diag_param/<layer>`` (:data:`PARAM_KIND`, the grid,
  float32), ``arrays/diag_param_kde/<layer>`` (:data:`PARAM_KDE_KIND`,
  float32) and ``objects/diag_param_view/<layer>`` (:data:`PARAM_VIEW_KIND`: the view's fields
  but the grid, the same trimming, and key).

**Stored as drawn.** The grids are stored at the size the Diagnosis page draws them
(:data:`GRID_VALUES` heatmap cells per figure, the bound of
:func:`convscope.figures.diagnosis.layer_view_figure`), cut here exactly as the figure would cut
them: maps area-averaged by the smallest integer factor that fits, then the first samples; a
parameter grid keeps evenly spaced outputs and inputs, whole kernel cells and the bias column,
and ``rows``/``cols``/the density curves name only those outputs and inputs (the dendrogram in
``clustering`` still covers every recorded output). What was cut is appended to the view's
``notes`` in the page's own words, so the page shows the same figure and the same notes as from
the full-size arrays of earlier runs (which it still reads and cuts itself). For a ResNet-50 at
224² (8 images) the diagnosis arrays go from 65 MB to 13 MB (docs/benchmarks.md, "Run size").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..store.layout import safe_key
from . import feature_maps
from .base import Sink

__all__ = [
    "DEFAULT_KEY", "FINDINGS_TABLE", "KDE_KIND", "LAYERS_TABLE", "MAPS_KIND", "PARAM_KDE_KIND",
    "PARAM_KIND", "PARAM_VIEW_KIND", "REPORT_KIND", "SAMPLES_KEY", "SAMPLES_KIND", "TABLES",
    "VIEW_KIND", "Diagnosis", "LayerView", "NotAReportError", "has_output_view", "has_param_view",
    "has_report", "has_reports", "keys", "load", "output_view", "param_view", "param_view_for",
    "report_dict", "sample_inputs", "view_layers", "write",
]

#: The report: ``objects/diagnosis/<key>``.
REPORT_KIND = "diagnosis"
#: One row per finding.
FINDINGS_TABLE = "diagnosis_findings"
#: One row per layer output.
LAYERS_TABLE = "diagnosis_layers"
TABLES = [FINDINGS_TABLE, LAYERS_TABLE]
#: Per output layer: the grid (``diag_maps``), densities (``diag_kde``) and the rest.
MAPS_KIND, KDE_KIND, VIEW_KIND = "diag_maps", "diag_kde", "diag_view"
#: Per parameter layer: the grid (``diag_param``), densities (``diag_param_kde``), the rest.
PARAM_KIND, PARAM_KDE_KIND, PARAM_VIEW_KIND = "diag_param", "diag_param_kde", "diag_param_view"
DEFAULT_KEY = "model"
#: The call that records this concern (named on pages and in messages that lack it).
SOURCE = "run.log_diagnosis(model, inputs)"
#: Where ``convscope diagnose RUN`` finds sample images when no ``--inputs`` are given: the
#: images ``run.log_feature_maps`` stores (the feature-maps format's ``arrays/samples/
#: feature_maps``).
SAMPLES_KIND, SAMPLES_KEY = feature_maps.SAMPLES_KIND, feature_maps.SAMPLES_KEY


class NotAReportError(StoreError):
    """A stored report parses as JSON but holds no report (a damaged or foreign file)."""


#: The most heatmap cells the Diagnosis page draws per figure, maps being separated by GAP
#: pixels, and the most density curves (``convscope.figures.diagnosis.MAX_GRID_VALUES``,
#: ``figures.maps.GAP`` and ``figures.diagnosis.MAX_CURVES``; formats never imports figures, so
#: tests/test_run_size.py keeps them equal). Grids are stored cut to these bounds.
GRID_VALUES = 50_000
GAP = 1
MAX_CURVES = 128

# -- writing -----------------------------------------------------------------------------------
def _tree(clustering: dict[str, Any], drawn: bool = True) -> dict[str, Any]:
    """The stored part of a clustering dict: without the condensed distances, and without the
    dendrogram's coordinates (``icoord``/``dcoord``; scipy's ``dendrogram(linkage)`` gives them
    back) when the page does not draw the tree (parameter views)."""
    drop = {"condensed"} if drawn else {"condensed", "icoord", "dcoord"}
    return {k: v for k, v in clustering.items() if k not in drop}


def _jsonable(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding lists/dicts become JSON strings (Parquet needs one type)."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, dict))).any():
            out[c] = out[c].map(lambda v: json.dumps(v, default=str))
    return out


def _evenly(n: int, k: int) -> np.ndarray:
    """``min(n, k)`` distinct evenly spaced positions in ``range(n)``, first and last kept (the
    page's choice of rows, columns and curves)."""
    if k >= n:
        return np.arange(n)
    if k <= 1:
        return np.zeros(max(k, 0), dtype=np.int64)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def _shown_maps(data: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Maps ``[b, c, h, w]`` as the page draws them: area-averaged by the smallest integer
    factor whose mosaic holds at most :data:`GRID_VALUES` cells, then the first samples only
    (unchanged, with no note, when even one sample of 1x1 maps does not fit: the page says
    so itself). Values go through float16 first, as the page read them from earlier runs."""
    b, c, h, w = (int(v) for v in data.shape)

    def cells(n: int, hh: int, ww: int) -> int:
        return (n * (hh + GAP) - GAP) * (c * (ww + GAP) - GAP)

    f, h2, w2 = 1, h, w
    while cells(b, h2, w2) > GRID_VALUES and (h2 > 1 or w2 > 1):
        f += 1
        h2, w2 = h // min(f, h), w // min(f, w)
    n = b
    if cells(n, h2, w2) > GRID_VALUES:
        n = max(1, (GRID_VALUES // (c * (w2 + GAP) - GAP) + GAP) // (h2 + GAP))
        if cells(n, h2, w2) > GRID_VALUES:
            return data, []
    out = np.asarray(data[:n], dtype=np.float16).astype(np.float32)
    notes = []
    fh, fw = min(f, h), min(f, w)
    if fh > 1 or fw > 1:
        hh, ww = h // fh * fh, w // fw * fw
        out = out[..., :hh, :ww].reshape(n, c, hh // fh, fh, ww // fw, fw).mean(axis=(3, 5))
    if f > 1:
        notes.append(f"grid: maps averaged from {h}x{w} to {out.shape[2]}x{out.shape[3]} "
                     f"pixels (at most {GRID_VALUES:,} values per figure)")
    if n < b:
        notes.append(f"grid: showing the first {n} of {b} samples")
    return out, notes


def _shown_features(data: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Features ``[b, c]`` as the page draws them: the first samples whose heatmap holds at most
    :data:`GRID_VALUES` cells."""
    b, c = (int(v) for v in data.shape)
    if b * c <= GRID_VALUES or GRID_VALUES // c < 1:
        return data, []
    n = GRID_VALUES // c
    return data[:n], [f"grid: showing the first {n} of {b} samples"]


def _shown_param(d: dict[str, Any]) -> dict[str, Any]:
    """The parameter view ``d`` (``ParamView.to_dict()``) cut to what the page draws: when its
    grid has more than :data:`GRID_VALUES` cells, evenly spaced outputs (row blocks of ``kh``
    rows) and inputs (column blocks of ``kw``) with the bias column, their rows, columns and
    density curves, and the page's notes. Unchanged when the grid fits, has another layout, or
    more outputs would stay than the page draws curves (the page then cuts it itself)."""
    grid = np.asarray(d["grid"])
    if grid.ndim != 2:
        return d
    big_h, big_w = (int(v) for v in grid.shape)
    rows, cols = np.asarray(d["rows"]), np.asarray(d["cols"])
    n_r, n_c = len(rows), len(cols)
    kh, kw = (int(v) for v in d["cell"])
    bias = 1 if d["has_bias"] else 0
    if (big_h * big_w <= GRID_VALUES or not n_r or not n_c or kh < 1 or kw < 1
            or n_r * kh != big_h or n_c * kw + bias != big_w):
        return d
    scale = (GRID_VALUES / (big_h * big_w)) ** 0.5
    ro, co = max(1, int(n_r * scale)), max(1, int(n_c * scale))
    while ro * kh * (co * kw + bias) > GRID_VALUES and (ro > 1 or co > 1):
        if ro >= co and ro > 1:
            ro -= 1
        else:
            co -= 1
    ri, ci = _evenly(n_r, ro), _evenly(n_c, co)
    density = np.asarray(d["kde"]["density"])
    if len(ri) > MAX_CURVES or density.ndim != 2 or density.shape[0] != n_r:
        return d
    r_idx = (ri[:, None] * kh + np.arange(kh)[None, :]).reshape(-1)
    c_idx = (ci[:, None] * kw + np.arange(kw)[None, :]).reshape(-1)
    if bias:
        c_idx = np.append(c_idx, big_w - 1)
    shape = list(d.get("shape") or [])
    outs, ins = (n_r, n_c) if len(shape) < 2 else (
        (int(shape[1]), int(shape[0])) if d.get("kind") == "deconv"
        else (int(shape[0]), int(shape[1])))
    notes = [f"weights: showing {len(ri)} of {outs} outputs × {len(ci)} of {ins} inputs "
             f"(evenly spaced among the {n_r} × {n_c} recorded; at most {GRID_VALUES:,} "
             "values per figure)"]
    if len(ri) < n_r:
        notes.append(f"density curves: showing {len(ri)} of {n_r} outputs (evenly spaced; at "
                     f"most {MAX_CURVES} curves per figure)")
    return {**d, "grid": grid[np.ix_(r_idx, c_idx)], "rows": rows[ri], "cols": cols[ci],
            "kde": {**d["kde"], "density": density[ri]},
            "notes": list(d.get("notes") or []) + notes}


def write(sink: Sink, report: Any, key: str = DEFAULT_KEY) -> None:
    """Persist a :class:`~convscope.diagnose.Report` (and its views, when it has them)."""
    sink.log_object(REPORT_KIND, key, report.to_dict())
    frame = report.to_frame()
    if len(frame):
        sink.log_rows(FINDINGS_TABLE, frame.assign(key=key))
    layers = report.layers_frame()
    if len(layers):
        sink.log_rows(LAYERS_TABLE, _jsonable(layers).assign(key=key))
    for name, view in (report.output_views or {}).items():
        d = view.to_dict()
        data = np.asarray(d["data"])
        shown, cut = (_shown_maps(data) if data.ndim == 4 else
                      _shown_features(data) if data.ndim == 2 else (data, []))
        sink.log_array(MAPS_KIND, name, shown, dtype=np.float16)
        sink.log_array(KDE_KIND, name, np.asarray(d["kde"]["density"], dtype=np.float32))
        sink.log_object(VIEW_KIND, name, {
            "name": name, "kind": d["kind"], "shape": d["shape"],
            "samples": d["samples"][: len(shown)], "channels": d["channels"],
            "clustering": _tree(d["clustering"]),
            "kde": {k: v for k, v in d["kde"].items() if k != "density"},
            "stats": d["stats"], "notes": list(d["notes"]) + cut, "key": key,
        })
    for name, view in (report.param_views or {}).items():
        d = _shown_param(view.to_dict())
        sink.log_array(PARAM_KIND, name, np.asarray(d["grid"], dtype=np.float32))
        sink.log_array(PARAM_KDE_KIND, name, np.asarray(d["kde"]["density"], dtype=np.float32))
        rest = {k: v for k, v in d.items() if k not in ("grid", "kde", "clustering")}
        rest["clustering"] = _tree(d["clustering"], drawn=False)
        rest["kde"] = {k: v for k, v in d["kde"].items() if k != "density"}
        rest["key"] = key
        sink.log_object(PARAM_VIEW_KIND, name, rest)


# -- reading -----------------------------------------------------------------------------------
@dataclass
class LayerView:
    """One layer's stored view: ``meta`` (the view object), ``data`` (the grid: maps or
    features for an output view, the parameter grid for a parameter view) and ``density``
    (one KDE curve per shown channel or row)."""

    meta: dict[str, Any]
    data: np.ndarray
    density: np.ndarray

    @property
    def name(self) -> str:
        return str(self.meta.get("name", ""))


@dataclass
class Diagnosis:
    """One stored report, whole.

    report: the report's dict (``Report.from_dict`` rebuilds it); findings, layers: its table
    rows (``key`` column dropped; findings by ``order``); views, param_views: ``{layer:
    LayerView}`` of the views that name this report (memory-mapped arrays when loaded with
    ``mmap=True``).
    """

    key: str
    report: dict[str, Any]
    findings: pd.DataFrame
    layers: pd.DataFrame
    views: dict[str, LayerView] = field(default_factory=dict)
    param_views: dict[str, LayerView] = field(default_factory=dict)


def has_reports(reader: Any) -> bool:
    """Whether the run has any stored diagnosis report."""
    return bool(reader.objects(REPORT_KIND))


def keys(reader: Any) -> list[str]:
    """The stored reports' keys (file-name form)."""
    return reader.objects(REPORT_KIND)


def has_report(reader: Any, key: str) -> bool:
    return bool(reader.has_object(REPORT_KIND, key))


def report_dict(reader: Any, key: str = DEFAULT_KEY) -> dict[str, Any]:
    """The stored report ``key`` as a dict; :class:`StoreError` when it is missing or
    unreadable, :class:`NotAReportError` when it parses but is not a dict."""
    report = reader.object(REPORT_KIND, key)
    if not isinstance(report, dict):
        raise NotAReportError(f"objects/{REPORT_KIND}/{key}.json is damaged (it holds a "
                         f"{type(report).__name__}, not a report): record the diagnosis again.")
    return report


def view_layers(reader: Any) -> list[str]:
    """Every layer with a stored output or parameter view (file-name form, sorted)."""
    return sorted(set(reader.objects(VIEW_KIND)) | set(reader.objects(PARAM_VIEW_KIND)))


def has_output_view(reader: Any, layer: str) -> bool:
    return bool(reader.has_object(VIEW_KIND, safe_key(layer)))


def has_param_view(reader: Any, layer: str) -> bool:
    return bool(reader.has_object(PARAM_VIEW_KIND, safe_key(layer)))


def output_view(reader: Any, layer: str, *, mmap: bool = False) -> LayerView:
    """The stored output view of ``layer``; :class:`StoreError` when missing or damaged."""
    meta = reader.object(VIEW_KIND, safe_key(layer))
    return LayerView(meta, reader.array(MAPS_KIND, layer, mmap=mmap),
                     reader.array(KDE_KIND, layer, mmap=mmap))


def param_view_for(reader: Any, layer: str) -> str | None:
    """The parameter layer whose view belongs with ``layer`` (file-name form): ``layer``
    itself when it has one, else its parent module (``block.relu1`` -> ``block``); None when
    neither has one."""
    key = safe_key(layer)
    if reader.has_object(PARAM_VIEW_KIND, key):
        return key
    parent = safe_key(layer.rsplit(".", 1)[0])
    return parent if reader.has_object(PARAM_VIEW_KIND, parent) else None


def param_view(reader: Any, layer: str, *, mmap: bool = False) -> LayerView:
    """The stored parameter view of ``layer`` (file-name form as given by
    :func:`param_view_for`); its arrays are found by the name the view records."""
    meta = reader.object(PARAM_VIEW_KIND, layer)
    if not isinstance(meta, dict) or "name" not in meta:
        raise StoreError(f"objects/{PARAM_VIEW_KIND}/{layer}.json is damaged (no 'name' "
                         "field): record the diagnosis again.")
    return LayerView(meta, reader.array(PARAM_KIND, meta["name"], mmap=mmap),
                     reader.array(PARAM_KDE_KIND, meta["name"], mmap=mmap))


def _rows(reader: Any, table: str, key: str, order: str | None) -> pd.DataFrame:
    if not reader.has_table(table):
        return pd.DataFrame()
    by = f' ORDER BY "{order}"' if order else ""
    df = reader.query(f"SELECT * FROM {table} WHERE key = ?{by}", [key])
    return df.drop(columns=["key"]).reset_index(drop=True)


def load(reader: Any, key: str = DEFAULT_KEY, *, mmap: bool = False) -> Diagnosis:
    """The report logged as ``key`` with its table rows and the views that name it."""
    report = report_dict(reader, key)
    views, pviews = {}, {}
    for kind, out, get in ((VIEW_KIND, views, output_view), (PARAM_VIEW_KIND, pviews, None)):
        for name in reader.objects(kind):
            meta = reader.object(kind, name)
            if not isinstance(meta, dict) or meta.get("key") != key:
                continue
            out[meta["name"]] = (get(reader, meta["name"], mmap=mmap) if get
                                 else param_view(reader, name, mmap=mmap))
    return Diagnosis(key=key, report=report, findings=_rows(reader, FINDINGS_TABLE, key, "order"),
                     layers=_rows(reader, LAYERS_TABLE, key, None), views=views,
                     param_views=pviews)


def sample_inputs(reader: Any) -> np.ndarray | None:
    """The sample images stored with the run's feature maps (``[N, C, H, W]`` float32), or
    None when it has none (``convscope diagnose`` then asks for ``--inputs``)."""
    idx = reader.arrays(SAMPLES_KIND)
    if not len(idx) or SAMPLES_KEY not in set(idx["key"]):
        return None
    return reader.array(SAMPLES_KIND, SAMPLES_KEY).astype("float32")
