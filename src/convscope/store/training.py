"""Queries behind the training-dynamics views (DeepTracker's indexes), as RunReader methods.

Every series query is downsampled in DuckDB to the points a view can draw (``max_points``
buckets with mean, min and max), so no query ships millions of points to the browser.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..errors import InvalidValueError, StoreError
from ..track.columns import FILTER_COLUMNS, LAYER_COLUMNS
from .duck import check_select, identifier, integer, sql_path_list
from .layout import TABLES_DIR
from .parts import list_parts
from .summary import TOP_K, open_summary, summary_file, top_file

__all__ = ["TrainingQueries", "ValidationMatrix", "most_changed_rows"]


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
    """Mixed into :class:`~convscope.store.reader.RunReader`."""

    _val_cache: tuple[Any, ValidationMatrix] | None = None
    _val_lock = threading.Lock()

    # -- layer view --------------------------------------------------------------------------
    def watched_layers(self) -> list[str]:
        """Watched layers in model order (first recorded order)."""
        if not self.has_table("watch_layers"):
            return []
        df = self.query("SELECT DISTINCT layer FROM watch_layers")
        order = self._layer_order()
        return sorted(df["layer"].tolist(), key=lambda n: order.get(n, 1 << 30))

    def _layer_order(self) -> dict[str, int]:
        """Module order from the recorded graph; ``{}`` (no sort) when it is missing or damaged:
        a damaged graph object loses the model-order sort, not the whole view."""
        if self.has_object("graph", "model"):
            try:
                nodes = self.object("graph", "model")["nodes"]
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
            WITH s AS (SELECT step, layer, "{stat}" AS v FROM watch_layers
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
        summaries (:mod:`convscope.store.summary`): summarised parts contribute per-bucket sums
        and counts (~F × S rows), the rest raw rows, with the same result. ``steps[S]`` is the
        first step present in each bucket; buckets and filters without rows are left out.
        """
        value = identifier(value, FILTER_COLUMNS, "filter statistic")
        layer = _names([layer], "layer")[0]
        rank = integer(rank, "rank")
        max_steps = integer(max_steps, "max_steps")
        empty = (np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.zeros((0, 0)))
        files = list_parts(self.path / TABLES_DIR / "watch_filters").files
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
                       FROM watch_filters WHERE step BETWEEN ? AND ? AND rank = ?
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

        Compacted parts carry a top-changed index (the :data:`~convscope.store.summary.TOP_K`
        lowest per step, :func:`~convscope.store.summary.build_top_changed`); for
        ``k <= TOP_K`` those are read instead of every filter's row, the other parts raw. The k
        lowest of the union are the k lowest of the per-part lists, so the result is the same.
        """
        cols = ["step", "layer", "filter", "cos_prev", "rank_in"]
        k, rank = integer(k, "k"), integer(rank, "rank")
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
            raise InvalidValueError(f"steps must be a list of integers, not {steps!r}.")
        steps = sorted({integer(s, "a step") for s in steps})
        if not steps or not self.has_table("watch_filters"):
            return pd.DataFrame(columns=cols)
        files = list_parts(self.path / TABLES_DIR / "watch_filters").files
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
                                              'cos_prev': cos_prev}}}}, cos_prev, ?)) AS t
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
        if not self.has_table("watch_filters"):
            return np.array([], dtype=np.int64)
        # filters are recorded at the same steps as the (far smaller) layer table
        table = identifier("watch_layers" if self.has_table("watch_layers") else "watch_filters",
                           ("watch_layers", "watch_filters"), "table")
        return self.query(f"SELECT DISTINCT step FROM {table} WHERE rank = ? ORDER BY step",
                          [integer(rank, "rank")])["step"].to_numpy()

    # -- validation view ---------------------------------------------------------------------
    def validation_matrix(self) -> ValidationMatrix:
        """All per-image validation results (cached until new parts land)."""
        if not self.has_table("validation"):
            raise StoreError("this run has no validation results: record them with "
                             "run.log_validation(step, ids, labels, predictions) or "
                             "run.validate(step, model, loader).")
        key = tuple(
            (f.name, f.stat().st_size)
            for t in ("validation", "validation_images")
            for f in list_parts(self.path / TABLES_DIR / t).files
        )
        with self._val_lock:
            if self._val_cache is not None and self._val_cache[0] == key:
                return self._val_cache[1]
        images = self.query("SELECT pos, id, label FROM validation_images ORDER BY pos")
        rows = self.query("SELECT step, n, pos0, positions, correct, pred FROM validation "
                          "ORDER BY step")
        n_img = len(images)
        steps = np.unique(rows["step"].to_numpy())
        t_of = {int(s): i for i, s in enumerate(steps)}
        correct = np.zeros((len(steps), n_img), dtype=bool)
        known = np.zeros((len(steps), n_img), dtype=bool)
        pred = np.full((len(steps), n_img), -1, dtype=np.int32)
        for step, n, pos0, positions, bits, preds in rows.itertuples(index=False):
            n = int(n)
            if positions is None or (isinstance(positions, float) and np.isnan(positions)):
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
