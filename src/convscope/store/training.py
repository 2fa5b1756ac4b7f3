"""Queries behind the training-dynamics views (DeepTracker's indexes), as RunReader methods.

Every series query is downsampled in DuckDB to the points a view can draw (``max_points``
buckets with mean, min and max), so no query ships millions of points to the browser.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidValueError, StoreError, suggest
from ..track.columns import FILTER_COLUMNS, LAYER_COLUMNS
from .layout import TABLES_DIR
from .parts import list_parts

__all__ = ["TrainingQueries", "ValidationMatrix"]


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
        if self.has_object("graph", "model"):
            nodes = self.object("graph", "model")["nodes"]
            return {n.get("module") or n["name"]: i for i, n in enumerate(nodes)}
        return {}

    def layer_series(self, stat: str = "w_l2", layers: Sequence[str] | None = None, *,
                     max_points: int = 400, rank: int = 0, steps: tuple[int, int] | None = None
                     ) -> pd.DataFrame:
        """One statistic of every (or the named) watched layer over steps.

        Columns: layer, step (first step of the bucket), value (mean), vmin, vmax. At most
        ``max_points`` buckets per layer.
        """
        if stat not in LAYER_COLUMNS:
            raise InvalidValueError(f"unknown layer statistic {stat!r}."
                                    + suggest(stat, LAYER_COLUMNS))
        where, params = ["rank = ?"], [rank]
        if layers:
            where.append(f"layer IN ({', '.join('?' for _ in layers)})")
            params += list(layers)
        if steps:
            where.append("step BETWEEN ? AND ?")
            params += [int(steps[0]), int(steps[1])]
        sql = f"""
            WITH s AS (SELECT step, layer, "{stat}" AS v FROM watch_layers
                       WHERE {' AND '.join(where)}),
                 r AS (SELECT min(step) AS lo, greatest(max(step) - min(step), 1) AS span FROM s)
            SELECT layer, min(step) AS step, avg(v) AS value, min(v) AS vmin, max(v) AS vmax
            FROM s, r GROUP BY layer, floor((step - lo) * ? / (span + 1))
            ORDER BY layer, step"""
        return self.query(sql, [*params, int(max_points)])

    # -- filter view -------------------------------------------------------------------------
    def filter_matrix(self, layer: str, value: str = "cos_prev", *, max_steps: int = 400,
                      rank: int = 0, steps: tuple[int, int] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps [S], filters [F], matrix [F, S])``: one per-filter statistic of ``layer``
        over steps, averaged into at most ``max_steps`` step buckets."""
        if value not in FILTER_COLUMNS:
            raise InvalidValueError(f"unknown filter statistic {value!r}."
                                    + suggest(value, FILTER_COLUMNS))
        extra, params = "", [layer, rank]
        if steps:
            extra, params = " AND step BETWEEN ? AND ?", [*params, int(steps[0]), int(steps[1])]
        # Fetch the layer's rows (row groups of other layers are skipped: parts are sorted by
        # layer) and bucket them in numpy: one bincount instead of a million-group GROUP BY.
        cols = self.query_numpy(f'SELECT step, filter, "{value}" AS v FROM watch_filters '
                                f"WHERE layer = ? AND rank = ?{extra}", params)
        step = np.asarray(cols["step"])
        if len(step) == 0:
            return np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.zeros((0, 0))
        lo, span = int(step.min()), max(int(step.max()) - int(step.min()), 1)
        # buckets and filter numbers are small integers already: index with them directly
        bucket = (step - lo) * int(max_steps) // (span + 1)
        fil = np.asarray(cols["filter"]).astype(np.int64)
        nb, nf = int(bucket.max()) + 1, int(fil.max()) + 1
        v = np.ma.filled(cols["v"].astype(np.float64), np.nan)
        ok = ~np.isnan(v)
        flat = fil * nb + bucket
        total = np.bincount(flat[ok], weights=v[ok], minlength=nf * nb)
        count = np.bincount(flat[ok], minlength=nf * nb)
        present_b = np.bincount(bucket, minlength=nb) > 0
        present_f = np.bincount(fil, minlength=nf) > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            mat = (total / count).reshape(nf, nb)[np.ix_(present_f, present_b)]
        first = np.full(nb, np.iinfo(np.int64).max)
        np.minimum.at(first, bucket, step)
        return first[present_b], np.flatnonzero(present_f), mat.astype(np.float32)

    def top_changed_filters(self, step: int | None = None, *, window: tuple[int, int] | None
                            = None, k: int = 10, per_layer: bool = True, rank: int = 0
                            ) -> pd.DataFrame:
        """The filters that changed most (lowest cosine similarity to their previous snapshot)
        at ``step`` or within ``window`` (their lowest similarity there). Columns: layer,
        filter, cos_prev, step, rank_in (1 = changed most); ``k`` per layer or overall."""
        if step is None and window is None:
            raise InvalidValueError("pass step=... or window=(first, last).")
        lo, hi = (int(step), int(step)) if window is None else (int(window[0]), int(window[1]))
        part = "PARTITION BY layer" if per_layer else ""
        return self.query(f"""
            WITH m AS (SELECT layer, filter, arg_min(step, cos_prev) AS step,
                              min(cos_prev) AS cos_prev
                       FROM watch_filters WHERE step BETWEEN ? AND ? AND rank = ?
                         AND cos_prev IS NOT NULL AND NOT isnan(cos_prev)
                       GROUP BY layer, filter)
            SELECT layer, filter, cos_prev, step,
                   row_number() OVER ({part} ORDER BY cos_prev, layer, filter) AS rank_in
            FROM m QUALIFY rank_in <= ? ORDER BY layer, rank_in""", [lo, hi, rank, int(k)])

    def top_filters_at(self, steps: Sequence[int], k: int = 10, rank: int = 0) -> pd.DataFrame:
        """For each recorded step in ``steps``, the ``k`` filters (over all layers) with the
        lowest cosine similarity to their previous snapshot. Columns: step, layer, filter,
        cos_prev, rank_in."""
        steps = [int(s) for s in steps]
        if not steps or not self.has_table("watch_filters"):
            return pd.DataFrame(columns=["step", "layer", "filter", "cos_prev", "rank_in"])
        # min_by with a count keeps k rows per step without sorting whole partitions
        top = self.query(f"""
            SELECT step, unnest(min_by({{'layer': layer, 'filter': filter,
                                          'cos_prev': cos_prev}}, cos_prev, ?)) AS t
            FROM watch_filters
            WHERE rank = ? AND step IN ({', '.join('?' for _ in steps)})
              AND cos_prev IS NOT NULL AND NOT isnan(cos_prev)
            GROUP BY step""", [int(k), rank, *steps])
        if top.empty:
            return pd.DataFrame(columns=["step", "layer", "filter", "cos_prev", "rank_in"])
        out = pd.DataFrame({"step": top["step"].to_numpy(),
                            "layer": [t["layer"] for t in top["t"]],
                            "filter": [t["filter"] for t in top["t"]],
                            "cos_prev": [t["cos_prev"] for t in top["t"]]})
        out = out.sort_values(["step", "cos_prev", "layer", "filter"], kind="stable")
        out["rank_in"] = out.groupby("step").cumcount() + 1
        return out.reset_index(drop=True)

    def recorded_filter_steps(self, rank: int = 0) -> np.ndarray:
        if not self.has_table("watch_filters"):
            return np.array([], dtype=np.int64)
        # filters are recorded at the same steps as the (far smaller) layer table
        table = "watch_layers" if self.has_table("watch_layers") else "watch_filters"
        return self.query(f"SELECT DISTINCT step FROM {table} WHERE rank = ? ORDER BY step",
                          [rank])["step"].to_numpy()

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


def _forward_fill(correct: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Carry each image's last known state forward over checkpoints that did not cover it."""
    if known.all():
        return correct
    idx = np.where(known, np.arange(known.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return correct[idx, np.arange(correct.shape[1])[None, :]] & known[idx, np.arange(
        correct.shape[1])[None, :]]
