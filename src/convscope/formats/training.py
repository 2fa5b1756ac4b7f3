"""Training dynamics (Liu et al. 2018, DeepTracker): the watch and validation tables, their
writers and the queries behind the Training page (mixed into the run reader).

Tables (the run-directory contract; docs/formats.md):

* ``watch_layers`` (:data:`LAYERS_TABLE`) — one row per (step, layer): ``step``, ``layer``, the
  weight and gradient statistics :data:`LAYER_COLUMNS` (:mod:`convscope.track.stats`) and
  ``rank`` (int16).
* ``watch_filters`` (:data:`FILTERS_TABLE`) — one row per (step, layer, filter): ``step``,
  ``layer``, ``filter``, :data:`FILTER_COLUMNS` (w_l2, g_l2, ratio, cos_prev) and ``rank``.
  Parts are sorted by (layer, filter, step); compacted parts carry summaries and a top-changed
  index (:mod:`.training_summary`, which registers these as the table's store hooks).
* ``validation_images`` (:data:`IMAGES_TABLE`) — one row per validation image the first time it
  is seen: ``pos`` (registration position), ``id``, ``label`` (int64).
* ``validation`` (:data:`VALIDATION_TABLE`) — one row per logged checkpoint (per call):
  ``step`` int64, ``rank`` int16, ``n`` int32, ``pos0`` int64 (the first position when the
  positions are consecutive, else -1), ``positions`` (None, or the positions as ``<i4`` bytes),
  ``correct`` (a little-endian bitset) and ``pred`` (``<i4`` bytes).

Every series query is downsampled in DuckDB to the points a view can draw (``max_points``
buckets with mean, min and max), so no query ships millions of points to the browser.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..errors import InputError, InvalidValueError, StoreError
from ..store.duck import check_select, identifier, integer, sql_path_list
from ..store.layout import TABLES_DIR
from ..store.parts import list_parts
from ..store.summary import open_summary, summary_file
from ..track.columns import FILTER_COLUMNS, LAYER_COLUMNS
from ..track.correlate import correlate
from . import structure
from .base import Sink
from .training_summary import FILTERS_TABLE, LAYERS_TABLE, TOP_K, top_file

__all__ = [
    "FILTERS_TABLE", "FILTER_COLUMNS", "IMAGES_TABLE", "LAYERS_TABLE", "LAYER_COLUMNS",
    "TABLES", "VALIDATION_TABLE", "VALIDATION_TABLES", "WATCH_TABLES", "TrainingQueries",
    "ValidationMatrix", "ValidationWriter", "WatchLog", "filter_changes_near", "has_filters",
    "has_layers", "has_training", "has_validation", "load_validation", "load_watch",
    "most_changed_rows", "write_watch", "THUMBNAILS_KIND", "training_alerts",
    "write_validation_thumbnails", "has_validation_thumbnails", "load_validation_thumbnails",
    "ClassImageStrips", "class_image_strips", "filter_parts_key", "watch_parts_key",
]

# LAYERS_TABLE (one row per (step, layer): LAYER_COLUMNS) and FILTERS_TABLE (one row per
# (step, layer, filter): FILTER_COLUMNS) are defined with their store hooks in .training_summary
#: One row per logged validation checkpoint (bitset of correct images, predictions).
VALIDATION_TABLE = "validation"
#: One row per validation image, the first time it is seen: position, id, label.
IMAGES_TABLE = "validation_images"
WATCH_TABLES = (LAYERS_TABLE, FILTERS_TABLE)
VALIDATION_TABLES = (VALIDATION_TABLE, IMAGES_TABLE)
#: Every table of this concern (the Training page names them when they are damaged).
TABLES = [VALIDATION_TABLE, IMAGES_TABLE, LAYERS_TABLE, FILTERS_TABLE]
#: The calls that record the watch and the validation tables.
WATCH_SOURCE = "run.watch(model, every=10)"
VALIDATION_SOURCE = "run.log_validation(step, ids, labels, predictions)"
#: The model graph (object kind, key) whose module order sorts the watched layers: the
#: structure format's ``objects/graph/model`` (``run.log_model``).
GRAPH_KIND, GRAPH_KEY = structure.GRAPH_KIND, structure.DEFAULT_KEY



@dataclass
class ValidationMatrix:
    """Per-image validation results of a run.

    steps ``[T]``; ids, labels ``[N]`` (by registration position); correct, known ``[T, N]`` bool
    (``known`` is False where a checkpoint did not cover an image); pred ``[T, N]`` int32 (-1
    where unknown).
    """

    steps: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    correct: np.ndarray
    known: np.ndarray
    pred: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.labels)


class TrainingQueries:
    """The Training page's queries, mixed into the run reader (``cs.open_run``): the host class
    provides ``path``, ``name``, ``has_table``, ``query``, ``has_object``, ``object`` and the
    DuckDB connection ``_con`` with its ``_lock``."""

    _val_cache: tuple[Any, ValidationMatrix] | None = None
    _val_lock = threading.Lock()

    # -- layer view --------------------------------------------------------------------------
    def watched_layers(self) -> list[str]:
        """Watched layers in model order (first recorded order)."""
        if not self.has_table(LAYERS_TABLE):
            return []
        df = self.query(f"SELECT layer, MIN(step) AS first FROM {LAYERS_TABLE} GROUP BY layer")
        order = self._layer_order()
        if not order:  # no graph: the watcher's row order at the first recorded step (model
            # order); a filtered scan keeps the stored row order (DuckDB's insertion order)
            rows = self.query(f"SELECT layer FROM {LAYERS_TABLE} WHERE step = "
                              f"(SELECT MIN(step) FROM {LAYERS_TABLE})")["layer"].tolist()
            order = {n: i for i, n in enumerate(dict.fromkeys(rows))}
        first = dict(zip(df["layer"], df["first"], strict=True))
        # model order; then layers first seen later, by their first step and name (DISTINCT
        # alone has no order: a hash aggregate's)
        return sorted(first, key=lambda n: (order.get(n, 1 << 30), first[n], n))

    def _layer_order(self) -> dict[str, int]:
        """Module order from the recorded graph; ``{}`` (no sort) when it is missing or damaged:
        a damaged graph object loses the model-order sort, not the whole view."""
        if self.has_object(GRAPH_KIND, GRAPH_KEY):
            try:
                nodes = self.object(GRAPH_KIND, GRAPH_KEY)["nodes"]
                return {n.get("module") or n["name"]: i for i, n in enumerate(nodes)}
            except (StoreError, KeyError, TypeError, AttributeError):
                return {}
        return {}

    def layer_series(self, stat: str = "w_l2", layers: Sequence[str] | None = None, *,
                     max_points: int = 400, rank: int = 0, steps: tuple[int, int] | None = None
                     ) -> pd.DataFrame:
        """One statistic of every (or the named) watched layer over steps.

        Columns: layer, step (first step of the bucket), value (mean), vmin, vmax. At most
        ``max_points`` buckets per layer.
        """
        # identifiers only from the fixed column set; every value a bound parameter
        stat = identifier(stat, LAYER_COLUMNS, "layer statistic")
        where, params = ["rank = ?"], [integer(rank, "rank")]
        if layers:
            layers = _names(layers, "layers")
            where.append(f"layer IN ({', '.join('?' for _ in layers)})")
            params += layers
        if steps:
            where.append("step BETWEEN ? AND ?")
            params += list(_step_range(steps))
        sql = f"""
            WITH s AS (SELECT step, layer, "{stat}" AS v FROM {LAYERS_TABLE}
                       WHERE {' AND '.join(where)}),
                 r AS (SELECT min(step) AS lo, greatest(max(step) - min(step), 1) AS span FROM s)
            SELECT layer, min(step) AS step, avg(v) AS value, min(v) AS vmin, max(v) AS vmax
            FROM s, r GROUP BY layer, floor((step - lo) * ? / (span + 1))
            ORDER BY layer, step"""
        return self.query(sql, [*params, max(integer(max_points, "max_points"), 1)])

    # -- filter view -------------------------------------------------------------------------
    def filter_matrix(self, layer: str, value: str = "cos_prev", *, max_steps: int = 400,
                      rank: int = 0, steps: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps [S], filters [F], matrix [F, S])``: one per-filter statistic of ``layer``
        over steps, averaged (NaN values left out) into aligned step buckets.

        Buckets are ``step >> k`` (blocks of 2**k steps aligned to multiples of 2**k), with the
        smallest k that gives at most ``max_steps`` buckets over ``[lo, hi]``: the layer's first
        and last recorded step, clipped to ``steps`` when given. So S lies between about
        ``max_steps / 2`` and ``max_steps``, and the buckets are the blocks of the parts'
        summaries (:mod:`.training_summary`): summarised parts contribute per-bucket sums
        and counts (~F × S rows), the rest raw rows, with the same result. ``steps[S]`` is the
        first step present in each bucket; buckets and filters without rows are left out.
        """
        value = identifier(value, FILTER_COLUMNS, "filter statistic")
        layer = _names([layer], "layer")[0]
        rank = integer(rank, "rank")
        max_steps = integer(max_steps, "max_steps")
        empty = (np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.zeros((0, 0)))
        files = list_parts(self.path / TABLES_DIR / FILTERS_TABLE).files
        if not files:
            return empty
        opened = {f: open_summary(summary_file(f)) for f in files}
        summed = [f for f in files if opened[f] is not None]
        raw = [f for f in files if opened[f] is None]
        s0, s1 = _step_range(steps) if steps else (None, None)
        # the layer's first and last step (summary index, or once per raw part: cached)
        span_of: dict[Path, tuple[int, int]] = {}
        for f in files:
            sf = opened[f]
            b = sf.bounds.get(f"{rank}|{layer}") if sf is not None \
                else self._part_bounds(f).get((rank, layer))
            if b is not None:
                span_of[f] = (int(b[0]), int(b[1]))
        spans = list(span_of.values())
        if not spans:
            return empty
        lo, hi = min(b[0] for b in spans), max(b[1] for b in spans)
        if s0 is not None:
            lo, hi = max(lo, s0), min(hi, s1)
        if lo > hi:
            return empty
        k = 0
        while (hi >> k) - (lo >> k) + 1 > max(int(max_steps), 1):
            k += 1
        # buckets entirely inside [lo, hi] can come from summaries; the edge buckets that are
        # cut by the range, from raw rows
        j_lo = lo >> k if (lo & ((1 << k) - 1)) == 0 or s0 is None else (lo >> k) + 1
        j_hi = hi >> k if ((hi + 1) & ((1 << k) - 1)) == 0 or s1 is None else (hi >> k) - 1
        cells: list[dict[str, np.ndarray]] = []  # filter, b, s (sum), c (count)
        firsts: list[tuple[np.ndarray, np.ndarray]] = []  # (b, first step)
        used = []
        for f in summed:
            sf = opened[f]
            if k < sf.levels[0]:
                raw.append(f)  # no summary this fine: the part's raw rows
                continue
            used.append(f)
            if j_lo > j_hi:
                continue
            lvl = min(k, sf.levels[1])
            shift = k - lvl
            rows = sf.rows(lvl, rank, layer, ["filter", "block", "first", f"{value}_sum",
                                              f"{value}_n"])
            if rows is None:
                continue
            b = rows["block"] >> shift
            keep = (b >= j_lo) & (b <= j_hi)
            is_f = rows["filter"] >= 0
            sel, lay = keep & is_f, keep & ~is_f
            cells.append({"filter": rows["filter"][sel], "b": b[sel],
                          "s": rows[f"{value}_sum"][sel], "c": rows[f"{value}_n"][sel]})
            firsts.append((b[lay], rows["first"][lay]))
        edges = [(lo, (j_lo << k) - 1), ((j_hi + 1) << k, hi)] if j_lo <= j_hi else [(lo, hi)]
        def overlapping(fs: list[Path], a: int, b: int) -> list[Path]:
            return [f for f in fs if f in span_of and span_of[f][0] <= b and span_of[f][1] >= a]

        for a, b in edges:  # the buckets cut by the range: raw rows (simple ranges)
            if a <= b and (fs := overlapping(used, a, b)):
                cells.append(self._raw_rows(fs, layer, rank, value, k, a, b, firsts))
        if fs := overlapping(raw, lo, hi):
            cells.append(self._raw_rows(fs, layer, rank, value, k, lo, hi, firsts))
        return _bucket_means(cells, firsts)

    def _part_bounds(self, part: Path) -> dict[tuple[int, str], tuple[int, int]]:
        """``{(rank, layer): (first step, last step)}`` of one raw watch_filters part, cached
        per file (parts never change)."""
        try:
            st = part.stat()
        except OSError:
            return {}
        key = (str(part), st.st_size, st.st_mtime_ns)
        hit = _bounds_cache.get(key)
        if hit is None:
            cols = self._files_query("SELECT rank, layer, min(step) AS lo, max(step) AS hi "
                                     "FROM {X} GROUP BY rank, layer", [], X=[part])
            hit = {(int(r), str(name)): (int(a), int(b)) for r, name, a, b in
                   zip(cols["rank"], cols["layer"], cols["lo"], cols["hi"], strict=True)}
            if len(_bounds_cache) > 20_000:
                _bounds_cache.clear()
            _bounds_cache[key] = hit
        return hit

    def _raw_rows(self, files: list[Path], layer: str, rank: int, value: str, k: int,
                  a: int, b: int, firsts: list[tuple[np.ndarray, np.ndarray]]
                  ) -> dict[str, np.ndarray]:
        value = identifier(value, FILTER_COLUMNS, "filter statistic")
        cols = self._files_query(
            f'SELECT filter, step >> ? AS b, step, "{value}" AS v FROM {{R}} '
            "WHERE layer = ? AND rank = ? AND step BETWEEN ? AND ?",
            [integer(k, "k"), layer, rank, a, b], R=files)
        v = np.ma.filled(np.ma.asarray(cols.pop("v")).astype(np.float64), np.nan)
        ok = ~np.isnan(v)
        firsts.append((cols["b"], cols.pop("step")))
        cols["s"], cols["c"] = np.where(ok, v, 0.0), ok
        return cols

    def _files_query(self, sql: str, params: list[Any], **files: list[Path]
                     ) -> dict[str, np.ndarray]:
        """DuckDB over explicit Parquet files: ``{X}`` in ``sql`` becomes ``read_parquet(...)``
        of ``files['X']``; numpy columns."""
        srcs = {name: f"read_parquet({sql_path_list(fs)}, union_by_name = true)"
                for name, fs in files.items()}
        with self._lock:
            cur = self._con.cursor()
        try:
            text = sql.format(**srcs)
            check_select(cur, text)
            return cur.execute(text, params).fetchnumpy()
        except duckdb.Error as exc:
            raise StoreError(f"query on run {self.name!r} failed: {exc}") from exc
        finally:
            cur.close()

    def top_changed_filters(self, step: int | None = None, *, window: tuple[int, int] | None
                            = None, k: int = 10, per_layer: bool = True, rank: int = 0
                            ) -> pd.DataFrame:
        """The filters that changed most (lowest cosine similarity to their previous snapshot)
        at ``step`` or within ``window`` (their lowest similarity there). Columns: layer,
        filter, cos_prev, step, rank_in (1 = changed most); ``k`` per layer or overall."""
        if step is None and window is None:
            raise InvalidValueError("pass step=... or window=(first, last).")
        lo, hi = (integer(step, "step"),) * 2 if window is None else _step_range(window)
        part = "PARTITION BY layer" if per_layer else ""
        return self.query(f"""
            WITH m AS (SELECT layer, filter, arg_min(step, cos_prev) AS step,
                              min(cos_prev) AS cos_prev
                       FROM {FILTERS_TABLE} WHERE step BETWEEN ? AND ? AND rank = ?
                         AND cos_prev IS NOT NULL AND NOT isnan(cos_prev)
                       GROUP BY layer, filter)
            SELECT layer, filter, cos_prev, step,
                   row_number() OVER ({part} ORDER BY cos_prev, layer, filter) AS rank_in
            FROM m QUALIFY rank_in <= ? ORDER BY layer, rank_in""",
            [lo, hi, integer(rank, "rank"), integer(k, "k")])

    def top_filters_at(self, steps: Sequence[int], k: int = 10, rank: int = 0) -> pd.DataFrame:
        """For each recorded step in ``steps``, the ``k`` filters (over all layers) with the
        lowest cosine similarity to their previous snapshot. Columns: step, layer, filter,
        cos_prev, rank_in (ties in cos_prev by layer, then filter).

        Compacted parts carry a top-changed index (the :data:`~.training_summary.TOP_K`
        lowest per step, :func:`~.training_summary.build_top_changed`); for
        ``k <= TOP_K`` those are read instead of every filter's row, the other parts raw. The k
        lowest of the union are the k lowest of the per-part lists, so the result is the same.
        """
        cols = ["step", "layer", "filter", "cos_prev", "rank_in"]
        k, rank = integer(k, "k"), integer(rank, "rank")
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
            raise InvalidValueError(f"steps must be a list of integers, not {steps!r}.")
        steps = sorted({integer(s, "a step") for s in steps})
        if not steps or not self.has_table(FILTERS_TABLE):
            return pd.DataFrame(columns=cols)
        files = list_parts(self.path / TABLES_DIR / FILTERS_TABLE).files
        indexed = [f for f in files if int(k) <= TOP_K and top_file(f).exists()]
        raw = [f for f in files if f not in indexed]
        marks = ", ".join("?" for _ in steps)
        got: list[dict[str, np.ndarray]] = []
        if indexed:
            got.append(self._files_query(
                f"SELECT step, layer, filter, cos_prev FROM {{X}} "
                f"WHERE rank = ? AND step IN ({marks})", [rank, *steps],
                X=[top_file(f) for f in indexed]))
        if raw:
            top = self._files_query(f"""
                SELECT step, unnest(min_by({{{{'layer': layer, 'filter': filter,
                                              'cos_prev': cos_prev}}}},
                                           (cos_prev, layer, filter), ?)) AS t
                FROM {{X}}
                WHERE rank = ? AND step IN ({marks})
                  AND cos_prev IS NOT NULL AND NOT isnan(cos_prev)
                GROUP BY step""", [int(k), rank, *steps], X=raw)
            got.append({"step": top["step"],
                        "layer": np.array([t["layer"] for t in top["t"]], dtype=object),
                        "filter": np.array([t["filter"] for t in top["t"]], dtype=np.int64),
                        "cos_prev": np.array([t["cos_prev"] for t in top["t"]],
                                             dtype=np.float64)})
        out = pd.concat([pd.DataFrame({c: np.asarray(g[c]) for c in cols[:4]}) for g in got],
                        ignore_index=True)
        if out.empty:
            return pd.DataFrame(columns=cols)
        out = out.sort_values(["step", "cos_prev", "layer", "filter"], kind="stable")
        out = out.groupby("step", sort=False).head(int(k))
        out["rank_in"] = out.groupby("step").cumcount() + 1
        return out.reset_index(drop=True)

    def recorded_filter_steps(self, rank: int = 0) -> np.ndarray:
        if not self.has_table(FILTERS_TABLE):
            return np.array([], dtype=np.int64)
        # filters are recorded at the same steps as the (far smaller) layer table
        table = identifier(LAYERS_TABLE if self.has_table(LAYERS_TABLE) else FILTERS_TABLE,
                           WATCH_TABLES, "table")
        return self.query(f"SELECT DISTINCT step FROM {table} WHERE rank = ? ORDER BY step",
                          [integer(rank, "rank")])["step"].to_numpy()

    # -- validation view ---------------------------------------------------------------------
    def validation_matrix(self) -> ValidationMatrix:
        """All per-image validation results (cached until new parts land)."""
        if not self.has_table(VALIDATION_TABLE):
            raise StoreError("this run has no validation results: record them with "
                             "run.log_validation(step, ids, labels, predictions) or "
                             "run.validate(step, model, loader).")
        key = tuple(
            (f.name, f.stat().st_size)
            for t in VALIDATION_TABLES
            for f in list_parts(self.path / TABLES_DIR / t).files
        )
        with self._val_lock:
            if self._val_cache is not None and self._val_cache[0] == key:
                return self._val_cache[1]
        images = self.query(f"SELECT pos, id, label FROM {IMAGES_TABLE} ORDER BY pos")
        rows = self.query("SELECT step, n, pos0, positions, correct, pred FROM "
                          f"{VALIDATION_TABLE} ORDER BY step")
        n_img = len(images)
        steps = np.unique(rows["step"].to_numpy())
        t_of = {int(s): i for i, s in enumerate(steps)}
        correct = np.zeros((len(steps), n_img), dtype=bool)
        known = np.zeros((len(steps), n_img), dtype=bool)
        pred = np.full((len(steps), n_img), -1, dtype=np.int32)
        for step, n, pos0, positions, bits, preds in rows.itertuples(index=False):
            n = int(n)
            # consecutive: None / NaN, or pandas' NA when the parts mix null and binary columns
            if positions is None or (not isinstance(positions, (bytes, bytearray, memoryview))
                                     and pd.isna(positions)):
                pos = np.arange(int(pos0), int(pos0) + n)
            else:
                pos = np.frombuffer(bytes(positions), dtype="<i4")
            t = t_of[int(step)]
            correct[t, pos] = np.unpackbits(np.frombuffer(bytes(bits), dtype=np.uint8),
                                            count=n, bitorder="little").astype(bool)
            known[t, pos] = True
            pred[t, pos] = np.frombuffer(bytes(preds), dtype="<i4")
        vm = ValidationMatrix(steps, images["id"].to_numpy(), images["label"].to_numpy(),
                              correct, known, pred)
        with self._val_lock:
            self._val_cache = (key, vm)
        return vm

    def class_error(self) -> pd.DataFrame:
        """Per-class error rate at each checkpoint: index = step, columns = classes (over the
        images each checkpoint covered). Cached with the validation matrix."""
        vm = self.validation_matrix()
        cached = getattr(vm, "_class_error", None)
        if cached is not None:
            return cached.copy()
        classes = vm.classes
        onehot = (vm.labels[:, None] == classes[None, :]).astype(np.float32)  # [N, C]
        wrong = (vm.known & ~vm.correct).astype(np.float32) @ onehot  # exact: counts < 2**24
        seen = vm.known.astype(np.float32) @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            err = np.where(seen > 0, wrong.astype(np.float64) / seen, np.nan)
        out = pd.DataFrame(err, index=pd.Index(vm.steps, name="step"), columns=classes)
        vm._class_error = out
        return out.copy()

    def class_images(self, cls: int) -> pd.DataFrame:
        """The validation images of class ``cls`` with their correctness history: columns id,
        pos, then one bool column per checkpoint step (NA where not covered)."""
        vm = self.validation_matrix()
        sel = np.flatnonzero(vm.labels == cls)
        hist = pd.DataFrame(
            np.where(vm.known[:, sel], vm.correct[:, sel], np.nan).T, columns=vm.steps
        ).astype("boolean")
        return pd.concat([pd.DataFrame({"id": vm.ids[sel], "pos": sel}), hist], axis=1)

    def anomalies(self, **kwargs: Any) -> Any:
        """DeepTracker's anomaly iterations (:func:`convscope.track.anomalies`) on the stored
        validation results; images a checkpoint did not cover count as unchanged."""
        from ..track import anomalies

        vm = self.validation_matrix()
        filled = _forward_fill(vm.correct, vm.known)
        return anomalies(filled, vm.labels, steps=vm.steps, **kwargs)

    def alerts(self, **options: Any) -> pd.DataFrame:
        """Layers and step ranges whose update ratio is far from ~1e-3 or whose gradient norm
        explodes or vanishes (:func:`training_alerts`; ``options`` go to
        :func:`convscope.track.training_alerts`)."""
        return training_alerts(self, **options)

    def class_clusters(self, k: int = 4, seed: int = 0) -> Any:
        """k-means over standardised per-class error curves (:func:`convscope.track.class_clusters`)."""
        from ..track import class_clusters

        err = self.class_error()
        values = err.to_numpy().T  # [C, T]
        values = np.where(np.isnan(values), np.nanmean(values, axis=1, keepdims=True), values)
        return class_clusters(values.T, k=k, seed=seed, classes=err.columns.to_numpy())


_bounds_cache: dict[tuple[str, int, int], dict[tuple[int, str], tuple[int, int]]] = {}


def _bucket_means(cells: list[dict[str, np.ndarray]],
                  firsts: list[tuple[np.ndarray, np.ndarray]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine (filter, b, s = sum, c = count) rows and (b, first step) pairs into the
    ``[F, S]`` means of the filters and buckets that have rows."""
    cells = [p for p in cells if len(p["b"])]
    firsts = [p for p in firsts if len(p[0])]
    if not cells or not firsts:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.zeros((0, 0))
    fb = np.concatenate([p[0] for p in firsts]).astype(np.int64)
    fs = np.concatenate([p[1] for p in firsts]).astype(np.int64)
    b0 = int(fb.min())
    nb = int(fb.max()) - b0 + 1
    first = np.full(nb, np.iinfo(np.int64).max)
    np.minimum.at(first, fb - b0, fs)
    fil = np.concatenate([np.asarray(p["filter"], dtype=np.int64) for p in cells])
    flat = fil * nb + (np.concatenate([np.asarray(p["b"], dtype=np.int64) for p in cells]) - b0)
    s = np.concatenate([np.ma.filled(p["s"], 0.0).astype(np.float64) for p in cells])
    c = np.concatenate([np.asarray(p["c"], dtype=np.float64) for p in cells])
    nf = int(fil.max()) + 1
    total = np.bincount(flat, weights=s, minlength=nf * nb)
    count = np.bincount(flat, weights=c, minlength=nf * nb)
    present = np.zeros(nf, dtype=bool)
    present[fil] = True
    present_b = first != np.iinfo(np.int64).max
    with np.errstate(invalid="ignore", divide="ignore"):
        mat = (total / count).reshape(nf, nb)[np.ix_(present, present_b)]
    return first[present_b], np.flatnonzero(present), mat.astype(np.float32)


def most_changed_rows(matrix: np.ndarray, value: str, n: int) -> np.ndarray:
    """Positions (ascending) of the ``n`` rows of a :meth:`TrainingQueries.filter_matrix`
    ``[F, S]`` matrix whose filters changed most over the steps: for ``cos_prev`` (similarity
    to the previous snapshot) the lowest value reached, for the other statistics the widest
    range (max - min). NaN cells are left out; rows without values rank last; ties go to the
    lower filter position. All rows when there are at most ``n``."""
    value = identifier(value, FILTER_COLUMNS, "filter statistic")
    n = max(integer(n, "n"), 0)
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise InvalidValueError(f"matrix must be [filters, steps], not shape {m.shape}.")
    if len(m) <= n:
        return np.arange(len(m))
    finite = np.isfinite(m)
    has = finite.any(axis=1)
    lo = np.where(finite, m, np.inf).min(axis=1)
    hi = np.where(finite, m, -np.inf).max(axis=1)
    score = -lo if value == "cos_prev" else hi - lo
    score = np.where(has, score, -np.inf)
    order = np.lexsort((np.arange(len(m)), -score))  # highest score first, then position
    return np.sort(order[:n])


def _names(values: Any, what: str) -> list[str]:
    """Layer names (bound as parameters, never SQL text): strings only."""
    try:
        out = None if isinstance(values, (str, bytes)) else list(values)
    except TypeError:
        out = None
    if out is None or not all(isinstance(v, str) for v in out):
        raise InvalidValueError(f"{what} must be layer names (a list of str such as "
                                f"['conv1', 'layer1.0.conv1']), not {values!r}.")
    return out


def _step_range(steps: Any) -> tuple[int, int]:
    """``(first, last)`` integer steps from a pair, or :class:`InvalidValueError`."""
    try:
        if isinstance(steps, (str, bytes)):
            raise TypeError
        first, last = steps
    except (TypeError, ValueError):
        raise InvalidValueError(f"a step range must be (first, last), not {steps!r}: pass e.g. "
                                "steps=(0, 1000).") from None
    return integer(first, "the first step"), integer(last, "the last step")


def _forward_fill(correct: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Carry each image's last known state forward over checkpoints that did not cover it."""
    if known.all():
        return correct
    idx = np.where(known, np.arange(known.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return correct[idx, np.arange(correct.shape[1])[None, :]] & known[idx, np.arange(
        correct.shape[1])[None, :]]


# -- presence ----------------------------------------------------------------------------------
def has_layers(reader: Any) -> bool:
    """Whether the run has per-layer watch statistics (``run.watch``)."""
    return bool(reader.has_table(LAYERS_TABLE))


def has_filters(reader: Any) -> bool:
    """Whether the run has per-filter watch statistics (``run.watch(..., filters=True)``)."""
    return bool(reader.has_table(FILTERS_TABLE))


def has_validation(reader: Any) -> bool:
    """Whether the run has per-image validation results (``run.log_validation``)."""
    return bool(reader.has_table(VALIDATION_TABLE))


def has_training(reader: Any) -> bool:
    """Whether the run has anything the Training page shows."""
    return has_validation(reader) or has_layers(reader)


# -- watch tables ------------------------------------------------------------------------------
def write_watch(sink: Sink, layer_cols: Mapping[str, Any], filter_cols: Mapping[str, Any] | None,
                rank: int) -> None:
    """Append one snapshot's rows of :class:`~convscope.track.watch.Watcher` (its sink's
    columns) to the watch tables, each row tagged with ``rank`` (int16). ``layer_cols`` gets
    the rank column added in place (the watcher hands fresh dicts)."""
    r = np.int16(rank)
    layer_cols = dict(layer_cols)
    layer_cols["rank"] = np.full(len(layer_cols["step"]), r)
    sink.log_rows(LAYERS_TABLE, layer_cols)
    if filter_cols:
        filter_cols = dict(filter_cols)
        filter_cols["rank"] = np.full(len(filter_cols["step"]), r)
        sink.log_rows(FILTERS_TABLE, filter_cols)


@dataclass
class WatchLog:
    """The watch tables of a run, whole (for tests and exports; the page's queries downsample).

    layers: ``watch_layers`` rows sorted by (rank, step, layer); filters: ``watch_filters`` rows
    sorted by (rank, step, layer, filter) (empty frames when absent).
    """

    layers: pd.DataFrame
    filters: pd.DataFrame


def load_watch(reader: Any) -> WatchLog:
    """Every watch row of the run (:class:`WatchLog`). For large runs prefer the reader's
    downsampled queries (``layer_series``, ``filter_matrix``)."""
    def whole(table: str, order: str) -> pd.DataFrame:
        if not reader.has_table(table):
            return pd.DataFrame()
        return reader.query(f"SELECT * FROM {table} ORDER BY {order}").reset_index(drop=True)

    return WatchLog(whole(LAYERS_TABLE, "rank, step, layer"),
                    whole(FILTERS_TABLE, "rank, step, layer, filter"))


# -- validation tables -------------------------------------------------------------------------
class ValidationWriter:
    """Writes per-image validation results: a registry of image ids -> positions
    (``validation_images``) and one bitset row per checkpoint (``validation``).

    ``sink``: where rows go; ``reader``: the run's reader when the run is resumed (its
    registered images are read back so positions stay stable), else None.
    """

    def __init__(self, sink: Sink, reader: Any = None) -> None:
        self.sink = sink
        self._pos: dict[int, int] = {}
        self._labels: dict[int, int] = {}
        if reader is not None and reader.has_table(IMAGES_TABLE):  # resumed run
            df = reader.table(IMAGES_TABLE)
            self._pos = dict(zip(df["id"].tolist(), df["pos"].tolist(), strict=True))
            self._labels = dict(zip(df["id"].tolist(), df["label"].tolist(), strict=True))

    def write(self, step: int, rank: int, ids: np.ndarray, labels: np.ndarray,
              pred: np.ndarray) -> None:
        """One checkpoint: ``ids``, ``labels``, ``pred`` int64 arrays of one length (ids unique),
        recorded by process ``rank``."""
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        pred = np.asarray(pred, dtype=np.int64)
        n = len(ids)
        if n == 0:
            return
        if len(np.unique(ids)) != n:
            raise InputError("ids must be unique within one log_validation call.")
        new = [(int(i), int(lab)) for i, lab in zip(ids, labels, strict=True)
               if int(i) not in self._pos]
        if new:
            start = len(self._pos)
            for k, (i, lab) in enumerate(new):
                self._pos[i] = start + k
                self._labels[i] = lab
            self.sink.log_rows(IMAGES_TABLE, {
                "pos": np.arange(start, start + len(new), dtype=np.int64),
                "id": np.array([i for i, _ in new], dtype=np.int64),
                "label": np.array([lab for _, lab in new], dtype=np.int64),
            })
        pos = np.fromiter((self._pos[int(i)] for i in ids), dtype=np.int64, count=n)
        correct = pred == labels
        consecutive = bool(np.all(np.diff(pos) == 1))
        self.sink.log_rows(VALIDATION_TABLE, {
            "step": np.array([int(step)], dtype=np.int64),
            "rank": np.array([rank], dtype=np.int16),
            "n": np.array([n], dtype=np.int32),
            "pos0": np.array([int(pos[0]) if consecutive else -1], dtype=np.int64),
            "positions": [None if consecutive else pos.astype("<i4").tobytes()],
            "correct": [np.packbits(correct, bitorder="little").tobytes()],
            "pred": [pred.astype("<i4").tobytes()],
        })


def load_validation(reader: Any) -> ValidationMatrix:
    """All per-image validation results of the run (:class:`ValidationMatrix`); a
    :class:`StoreError` saying how to record them when the run has none."""
    return reader.validation_matrix()


# -- correlation -------------------------------------------------------------------------------
def filter_changes_near(reader: Any, anomaly_steps: Any, k: int = 10, rank: int = 0
                        ) -> pd.DataFrame:
    """The ``filter_changes`` frame :func:`convscope.track.correlate` needs for
    ``anomaly_steps`` (its accepted forms), read without scanning every filter row: the ``k``
    filters with the lowest ``cos_prev`` over all layers at each recorded step that covers an
    anomaly, plus one row with NaN ``cos_prev`` per recorded filter step (so ``correlate``
    matches steps against every recorded step, as it would on the whole table). Columns step,
    layer, filter, cos_prev; layers in name order (``correlate`` breaks ties in ``cos_prev`` by
    first appearance, the reader's top-k query by name: so both agree).

    Which recorded step covers an anomaly is decided by ``correlate`` itself (on the recorded
    steps alone); ``correlate(anomaly_steps, <this frame>, top=k, scope="overall")`` then gives
    what it gives on the whole ``watch_filters`` table."""
    cols = ["step", "layer", "filter", "cos_prev"]
    rec = np.asarray(reader.recorded_filter_steps(rank=rank), dtype=np.int64)
    marks = pd.DataFrame({"step": rec, "layer": pd.Series([""] * len(rec), dtype=object),
                          "filter": np.zeros(len(rec), dtype=np.int64),
                          "cos_prev": np.zeros(len(rec))})
    with warnings.catch_warnings():  # anomalies after the last recorded step: none to read
        warnings.simplefilter("ignore", UserWarning)
        at = correlate(anomaly_steps, marks, top=1, scope="overall")["filter_step"]
    steps = sorted({int(s) for s in at})
    if not steps:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in
                             zip(cols, ("int64", object, "int64", "float64"), strict=True)})
    top = reader.top_filters_at(steps, k=k, rank=rank)[cols]
    top = top.sort_values("layer", kind="stable")
    return pd.concat([top, marks.assign(cos_prev=np.nan)], ignore_index=True)



# -- alerts ------------------------------------------------------------------------------------
_alert_cache: dict[tuple, pd.DataFrame] = {}


def training_alerts(reader: Any, rank: int = 0, **options: Any) -> pd.DataFrame:
    """:func:`convscope.track.training_alerts` on the run's ``watch_layers`` rows (``step``,
    ``layer``, ``update_ratio``, ``g_l2`` of process ``rank``): the layers and step ranges
    whose update ratio is far from ~1e-3 or whose gradient norm explodes or vanishes.
    ``options`` go to ``training_alerts``. Cached per run until new parts land (the answer
    is a few rows; the 10,000-step scale reads ~0.5 M rows once)."""
    from ..track.alerts import ALERT_COLUMNS
    from ..track.alerts import training_alerts as _alerts

    if not reader.has_table(LAYERS_TABLE):
        return pd.DataFrame(columns=list(ALERT_COLUMNS))
    rank = integer(rank, "rank")
    parts = tuple((f.name, f.stat().st_size)
                  for f in list_parts(reader.path / TABLES_DIR / LAYERS_TABLE).files)
    key = (str(reader.path), rank, parts, tuple(sorted((k, repr(v)) for k, v in
                                                        options.items())))
    hit = _alert_cache.get(key)
    if hit is None:
        stats = reader.query(f"SELECT step, layer, update_ratio, g_l2 FROM {LAYERS_TABLE} "
                             "WHERE rank = ?", [rank])
        hit = _alerts(stats, **options)
        if len(_alert_cache) > 16:
            _alert_cache.clear()
        _alert_cache[key] = hit
    return hit.copy()


# -- validation thumbnails ---------------------------------------------------------------------
#: Array kind of the validation thumbnails: key ``pixels`` (uint8 ``[N, S, S, C]``) and key
#: ``ids`` (int64 ``[N]``, the ``log_validation`` ids of the images).
THUMBNAILS_KIND = "validation_thumbnails"
THUMBNAIL_SIDE = 32  #: longest side of a stored thumbnail, pixels
MAX_THUMBNAILS = 2_000  #: thumbnails stored per run at most (200 per class with 10 classes)


def _shrink(images: np.ndarray, side: int) -> np.ndarray:
    """``[N, H, W, C]`` float -> uint8 ``[N, h, w, C]`` with max(h, w) <= side: block means
    (integer factor), each image scaled from its own min-max to 0..255."""
    n, h, w, c = images.shape
    f = max(1, -(-max(h, w) // side))
    hh, ww = h // f * f, w // f * f
    x = images[:, :hh, :ww].reshape(n, hh // f, f, ww // f, f, c).mean(axis=(2, 4))
    if images.dtype == np.uint8:
        return x.round().clip(0, 255).astype(np.uint8)
    lo = x.reshape(n, -1).min(axis=1)[:, None, None, None]
    hi = x.reshape(n, -1).max(axis=1)[:, None, None, None]
    return ((x - lo) / np.where(hi > lo, hi - lo, 1.0) * 255).round().clip(0, 255).astype(
        np.uint8)


def write_validation_thumbnails(sink: Sink, ids: Any, images: Any, labels: Any = None, *,
                                side: int = THUMBNAIL_SIDE, max_images: int = MAX_THUMBNAILS
                                ) -> int:
    """Store small thumbnails of validation images (the Training page shows them beside each
    image's correct/wrong strip). ``ids``: the ids passed to ``log_validation``; ``images``:
    ``[N, C, H, W]`` (C = 1 or 3) or ``[N, H, W, C]`` numpy (float: each scaled from its own
    min-max; uint8 as is). Bounded: at most ``max_images`` (with ``labels``, the first
    ``max_images // classes`` of each class), shrunk to at most ``side`` pixels by block
    means. Writing again replaces the set. Returns the number stored."""
    ids = np.asarray(ids).astype(np.int64).reshape(-1)
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or len(x) != len(ids):
        raise InputError(f"images must be [N, C, H, W] or [N, H, W, C] with N = len(ids) = "
                         f"{len(ids)}, not shape {x.shape}.")
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.shape[3] not in (1, 3):
        raise InputError(f"images need 1 or 3 channels, not shape {x.shape}.")
    side, max_images = integer(side, "side"), integer(max_images, "max_images")
    if side < 4 or max_images < 1:
        raise InputError("side must be >= 4 and max_images >= 1.")
    keep = np.arange(len(ids))
    if labels is not None:
        lab = np.asarray(labels).astype(np.int64).reshape(-1)
        if len(lab) != len(ids):
            raise InputError("labels must have one entry per id.")
        per = max(1, max_images // max(1, len(np.unique(lab))))
        keep = np.concatenate([np.flatnonzero(lab == c)[:per] for c in np.unique(lab)])
        keep.sort()
    keep = keep[:max_images]
    x = x[keep] if x.dtype == np.uint8 else x[keep].astype(np.float32)
    if x.dtype != np.uint8 and not np.isfinite(x).all():
        raise InputError("images contain NaN or inf values: store the images as given to "
                         "the model.")
    thumbs = _shrink(x, side)
    sink.log_array(THUMBNAILS_KIND, "pixels", thumbs, dtype=np.uint8)
    sink.log_array(THUMBNAILS_KIND, "ids", ids[keep])
    return len(keep)


def has_validation_thumbnails(reader: Any) -> bool:
    """Whether the run stored validation thumbnails (:func:`write_validation_thumbnails`)."""
    idx = reader.arrays(THUMBNAILS_KIND)
    return bool(len(idx)) and {"pixels", "ids"} <= set(idx["key"].tolist())


def load_validation_thumbnails(reader: Any, ids: Any) -> dict[int, np.ndarray]:
    """``{id: uint8 [h, w, C]}`` for those of ``ids`` that have a stored thumbnail
    (memory-mapped reads: only the asked images are touched)."""
    if not has_validation_thumbnails(reader):
        return {}
    stored = reader.array(THUMBNAILS_KIND, "ids")
    pixels = reader.array(THUMBNAILS_KIND, "pixels", mmap=True)
    pos = {int(i): k for k, i in enumerate(np.asarray(stored).tolist())}
    return {int(i): np.array(pixels[pos[int(i)]]) for i in ids if int(i) in pos}


@dataclass
class ClassImageStrips:
    """A class's validation images with their correct/wrong history (the validation view's
    innermost level). ``ids``, ``pos``, ``flips`` ``[n]``; ``steps`` ``[S]``; ``state``
    ``[n, S]`` float: 1 correct, 0 wrong, NaN not covered; ``total``: images of the class;
    ``total_steps``: checkpoints in the range (``S`` is fewer when they were subsampled)."""

    cls: int
    ids: np.ndarray
    pos: np.ndarray
    flips: np.ndarray
    steps: np.ndarray
    state: np.ndarray
    total: int
    total_steps: int


def class_image_strips(reader: Any, cls: Any, *, steps: tuple[float, float] | None = None,
                       max_images: int = 40, max_steps: int = 300) -> ClassImageStrips:
    """The images of class ``cls`` (at most ``max_images``: those that flipped most within
    ``steps`` first, then by position) with their state at each checkpoint in ``steps``
    (``(first, last)`` inclusive; at most ``max_steps`` evenly spaced checkpoints). Bounded
    work per call: one pass over the class's columns of the cached validation matrix."""
    cls = integer(cls, "class")
    max_images = max(1, min(integer(max_images, "max_images"), 500))
    max_steps = max(2, min(integer(max_steps, "max_steps"), 2_000))
    vm = reader.validation_matrix()
    sel = np.flatnonzero(vm.labels == cls)
    t = np.arange(len(vm.steps))
    if steps is not None:
        a, b = _step_range((int(np.floor(float(steps[0]))), int(np.ceil(float(steps[1])))))
        t = t[(vm.steps >= a) & (vm.steps <= b)]
    total_steps = len(t)
    filled = _forward_fill(vm.correct[:, sel], vm.known[:, sel]) if len(sel) else \
        np.zeros((len(vm.steps), 0), dtype=bool)
    sub = filled[t]
    flips = (sub[1:] != sub[:-1]).sum(axis=0) if len(t) > 1 else np.zeros(len(sel), np.int64)
    order = np.lexsort((np.arange(len(sel)), -flips))[:max_images]
    if len(t) > max_steps:
        t = t[np.unique(np.linspace(0, len(t) - 1, max_steps).round().astype(np.int64))]
    cols = sel[order]
    state = np.where(vm.known[np.ix_(t, cols)], vm.correct[np.ix_(t, cols)], np.nan).T
    return ClassImageStrips(cls, vm.ids[cols], cols, flips[order].astype(np.int64),
                            vm.steps[t], state.astype(np.float32), len(sel), total_steps)


def watch_parts_key(reader: Any) -> tuple:
    """Like :func:`filter_parts_key`, over both watch tables and the model graph (what
    ``watched_layers`` and the correlation derive from)."""
    files = list_parts(reader.path / TABLES_DIR / LAYERS_TABLE).files \
        if reader.has_table(LAYERS_TABLE) else []
    return (tuple((f.name, f.stat().st_size) for f in files), filter_parts_key(reader),
            bool(reader.has_object(GRAPH_KIND, GRAPH_KEY)))


def filter_parts_key(reader: Any) -> tuple:
    """A key that changes when the ``watch_filters`` parts (or their top-changed indexes)
    change: (name, size) of each part, for callers that cache what they derive from them."""
    files = list_parts(reader.path / TABLES_DIR / FILTERS_TABLE).files \
        if reader.has_table(FILTERS_TABLE) else []
    return tuple((f.name, f.stat().st_size, top_file(f).exists()) for f in files)
