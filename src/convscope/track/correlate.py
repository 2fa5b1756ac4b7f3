"""Correlate anomaly iterations with the filters that changed most there (DeepTracker).

DeepTracker's correlation view asks: at the iterations where a class suddenly flipped (see
:func:`convscope.track.anomaly.anomalies`), which filters changed most? A filter's change at a
recorded step is measured by ``cos_prev``, the cosine similarity between its weights at that step
and at the previous recorded snapshot: the lower, the larger the change of direction. For each
anomaly iteration :func:`correlate` lists the ``top`` filters with the lowest ``cos_prev`` (per
layer and over all layers) and links them to the classes flagged at that iteration; exploding the
``classes`` column gives DeepTracker's cube of layers x iterations x classes.

Matching steps: an anomaly found at checkpoint step ``a`` happened somewhere between the previous
checkpoint and ``a``. A filter change recorded at step ``s`` compares the weights at ``s`` with the
previous snapshot, so it covers the interval (previous snapshot, ``s``]. The change that covers ``a``
is therefore the one at the *nearest recorded step at or after* ``a``; that is the step used (and
reported as ``filter_step``). An anomaly after the last recorded filter step has no filter data yet;
it is skipped with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InputError, suggest

__all__ = ["correlate", "correlation_cube", "explode_classes", "CorrelationCube",
           "CORRELATE_COLUMNS"]

#: Columns of the frame returned by :func:`correlate`, in order.
CORRELATE_COLUMNS = ("step", "classes", "scope", "layer", "filter", "cos_prev", "rank", "filter_step")
_NEEDED = ("step", "layer", "filter", "cos_prev")
_SCOPES = ("both", "layer", "overall")


def _anomaly_table(anomaly_steps: Any) -> pd.DataFrame:
    """``step`` (unique, sorted) and ``classes`` (sorted list) from the accepted input forms."""
    frame = getattr(anomaly_steps, "frame", None)  # an AnomalyResult
    if isinstance(frame, pd.DataFrame):
        anomaly_steps = frame
    if isinstance(anomaly_steps, pd.DataFrame):
        if "step" not in anomaly_steps.columns:
            raise InputError(
                "anomaly_steps is a DataFrame without a 'step' column; pass anomalies(...) or its "
                f".to_frame() (columns step, class, ...). Columns given: {list(anomaly_steps.columns)}."
            )
        df = anomaly_steps
        if "class" in df.columns:
            pairs = df[["step", "class"]]
        elif "classes" in df.columns:
            pairs = df[["step", "classes"]].explode("classes").rename(columns={"classes": "class"})
        else:
            pairs = pd.DataFrame({"step": df["step"], "class": pd.NA})
        items: dict[Any, set] = {}
        for s, c in zip(pairs["step"].tolist(), pairs["class"].tolist(), strict=True):
            bucket = items.setdefault(s, set())
            if c is not pd.NA and c is not None and not (isinstance(c, float) and np.isnan(c)):
                bucket.add(c)
    elif isinstance(anomaly_steps, Mapping):
        items = {}
        for s, cs in anomaly_steps.items():
            if cs is None:
                cs = ()
            elif isinstance(cs, str | bytes) or not isinstance(cs, Iterable):
                cs = (cs,)
            items.setdefault(s, set()).update(cs)
    else:
        arr = np.asarray(anomaly_steps)
        if arr.ndim > 1:
            raise InputError(
                f"anomaly_steps must be 1-D (a list of steps), got shape {arr.shape}; or pass the "
                "result of anomalies(...)."
            )
        items = {s: set() for s in arr.reshape(-1).tolist()}
    steps = sorted(items)
    return pd.DataFrame(
        {
            "step": pd.Series(steps, dtype=None if steps else "int64"),
            "classes": pd.Series([sorted(items[s]) for s in steps], dtype=object),
        }
    )


def _empty() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "step": pd.Series(dtype="int64"),
            "classes": pd.Series(dtype=object),
            "scope": pd.Series(dtype=object),
            "layer": pd.Series(dtype=object),
            "filter": pd.Series(dtype="int64"),
            "cos_prev": pd.Series(dtype="float64"),
            "rank": pd.Series(dtype="int64"),
            "filter_step": pd.Series(dtype="int64"),
        }
    )


def correlate(
    anomaly_steps: Any,
    filter_changes: pd.DataFrame,
    *,
    top: int = 10,
    scope: Literal["both", "layer", "overall"] = "both",
) -> pd.DataFrame:
    """The filters that changed most at each anomaly iteration, linked to the classes involved.

    Args:
        anomaly_steps: the anomaly iterations, as any of: the :class:`AnomalyResult` of
            :func:`anomalies` (or its ``to_frame()``: columns ``step`` and ``class``); a DataFrame
            with ``step`` and ``classes`` (lists); a mapping ``{step: classes}``; or a plain
            sequence of steps (then ``classes`` is empty).
        filter_changes: DataFrame with columns ``step``, ``layer``, ``filter`` (index within the
            layer) and ``cos_prev`` (cosine similarity of the filter's weights with the previous
            recorded snapshot). Rows with NaN ``cos_prev`` (first snapshot, zero filters) are
            never listed, but their steps still count as recorded steps; duplicate ``(step, layer, filter)`` rows are counted once (first kept).
        top: how many filters to keep per layer and overall (DeepTracker: 10).
        scope: ``"both"`` (default) lists, per anomaly step, the ``top`` filters over all layers
            (``scope == "overall"`` rows) and the ``top`` of each layer (``scope == "layer"``
            rows); ``"overall"`` or ``"layer"`` keeps only one kind.

    Step matching: each anomaly step ``a`` uses the filter changes recorded at the nearest step
    ``>= a`` (reported in ``filter_step``), because the change recorded at ``s`` covers the
    interval since the previous snapshot. Anomaly steps after the last recorded step are skipped
    with a ``UserWarning``.

    Returns:
        DataFrame with columns ``step`` (anomaly step), ``classes`` (sorted list of the classes
        flagged there), ``scope``, ``layer``, ``filter``, ``cos_prev``, ``rank`` (1 = lowest
        ``cos_prev`` within the step and, for ``scope == "layer"``, the layer) and
        ``filter_step``. Rows are sorted by step, then overall rows before per-layer rows, layers in
        order of first appearance in ``filter_changes``, then rank. Ties in ``cos_prev`` are
        broken by layer (first appearance) then filter index.
    """
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise InputError(f"top must be an integer >= 1, got {top!r}.")
    if scope not in _SCOPES:
        raise InputError(
            f"scope must be one of {', '.join(map(repr, _SCOPES))}, got {scope!r}."
            + suggest(str(scope), _SCOPES)
        )
    if not isinstance(filter_changes, pd.DataFrame):
        raise InputError(
            "filter_changes must be a pandas DataFrame with columns step, layer, filter, cos_prev; "
            f"got {type(filter_changes).__name__}."
        )
    missing = [c for c in _NEEDED if c not in filter_changes.columns]
    if missing:
        hints = "".join(suggest(m, map(str, filter_changes.columns)) for m in missing)
        raise InputError(
            f"filter_changes lacks column(s) {missing}; it needs step, layer, filter, cos_prev "
            f"(has {list(filter_changes.columns)}).{hints}"
        )

    anom = _anomaly_table(anomaly_steps)
    fc = filter_changes.loc[:, list(_NEEDED)]
    # recorded steps include those whose cos_prev is all NaN (the first snapshot): an anomaly
    # before the first snapshot maps there and gets no rows, rather than a later, wrong interval
    recorded = np.unique(fc["step"].to_numpy())
    fc = fc[fc["cos_prev"].notna()].drop_duplicates(["step", "layer", "filter"], keep="first")
    if anom.empty or fc.empty:
        return _empty()

    a_steps = anom["step"].to_numpy()
    pos = np.searchsorted(recorded, a_steps, side="left")
    late = pos >= len(recorded)
    if late.any():
        warnings.warn(
            f"correlate: anomaly step(s) {a_steps[late].tolist()} come after the last recorded "
            f"filter step {recorded[-1]}; they are skipped (record filter changes later in "
            "training to cover them).",
            stacklevel=2,
        )
    anom = anom[~late].assign(filter_step=recorded[pos[~late]])
    if anom.empty:
        return _empty()

    sub = fc[fc["step"].isin(anom["filter_step"].unique())].copy()
    layer_codes, _ = pd.factorize(fc["layer"], sort=False)
    sub["_lc"] = pd.Series(layer_codes, index=fc.index).loc[sub.index]
    sub = sub.sort_values(["step", "cos_prev", "_lc", "filter"], kind="stable")
    parts = []
    if scope in ("both", "overall"):
        r = sub.groupby("step", sort=False).cumcount() + 1
        parts.append(sub[r <= top].assign(rank=r[r <= top], scope="overall", _sc=0, _lk=-1))
    if scope in ("both", "layer"):
        r = sub.groupby(["step", "_lc"], sort=False).cumcount() + 1
        keep = sub[r <= top]
        parts.append(keep.assign(rank=r[r <= top], scope="layer", _sc=1, _lk=keep["_lc"]))
    ranked = pd.concat(parts, ignore_index=True).rename(columns={"step": "filter_step"})

    out = anom.merge(ranked, on="filter_step", how="inner")
    out = out.sort_values(["step", "_sc", "_lk", "rank"], kind="stable").reset_index(drop=True)
    out["rank"] = out["rank"].astype("int64")
    return out.loc[:, list(CORRELATE_COLUMNS)]


@dataclass
class CorrelationCube:
    """DeepTracker's cube (Liu et al. 2018): layers x anomaly iterations x classes.

    ``counts[l, s, c]`` = how many of the most-changed filters at anomaly step ``steps[s]``
    lie in layer ``layers[l]``, when class ``classes[c]`` was flagged at that step (0
    otherwise). Built by :func:`correlation_cube` from a :func:`correlate` table."""

    layers: list[str]
    steps: np.ndarray
    classes: np.ndarray
    counts: np.ndarray

    def select(self, *, layers: Sequence[str] | None = None,
               steps: tuple[float, float] | None = None,
               classes: Sequence[Any] | None = None) -> CorrelationCube:
        """The sub-cube of the given layers, step range ``(first, last)`` (inclusive) and
        classes (``None``: all). Unknown layers or classes are an :class:`InputError`."""
        li = np.arange(len(self.layers))
        if layers is not None:
            pos = {n: i for i, n in enumerate(self.layers)}
            bad = [n for n in layers if n not in pos]
            if bad:
                raise InputError(f"layers {bad} are not in the cube; it has {self.layers}."
                                 + suggest(str(bad[0]), self.layers))
            li = np.array([pos[n] for n in layers], dtype=np.int64)
        si = np.arange(len(self.steps))
        if steps is not None:
            a, b = (float(v) for v in steps)
            si = np.flatnonzero((self.steps >= a) & (self.steps <= b))
        ci = np.arange(len(self.classes))
        if classes is not None:
            pos_c = {c: i for i, c in enumerate(self.classes.tolist())}
            bad = [c for c in classes if c not in pos_c]
            if bad:
                raise InputError(f"classes {bad} are not in the cube; it has "
                                 f"{self.classes.tolist()}.")
            ci = np.array([pos_c[c] for c in classes], dtype=np.int64)
        return CorrelationCube([self.layers[i] for i in li], self.steps[si], self.classes[ci],
                               self.counts[np.ix_(li, si, ci)])

    def by_class(self) -> np.ndarray:
        """``[L, C]``: the counts summed over the steps (the correlation view by anomaly
        class)."""
        return self.counts.sum(axis=1)


def correlation_cube(table: pd.DataFrame, layers: Sequence[str] | None = None) -> CorrelationCube:
    """The layers x iterations x classes cube of a :func:`correlate` table (its ``scope ==
    'overall'`` rows; all rows when it has no ``scope`` column).

    Args:
        table: columns ``step``, ``classes`` (lists), ``layer`` (and ``scope``).
        layers: the layer axis, in order (e.g. every watched layer, so empty layers show);
            default: the layers of the table in first-appearance order. Rows of other layers
            are an :class:`InputError`.

    Returns:
        :class:`CorrelationCube` with the table's anomaly steps (sorted) and flagged classes
        (sorted); ``counts`` int64."""
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"table must be the DataFrame of correlate(...), not "
                         f"{type(table).__name__}.")
    missing = [c for c in ("step", "classes", "layer") if c not in table.columns]
    if missing:
        raise InputError(f"table lacks column(s) {missing}: pass the result of correlate(...).")
    t = table[table["scope"] == "overall"] if "scope" in table.columns else table
    names = list(dict.fromkeys(t["layer"].tolist())) if layers is None else list(layers)
    li = {n: i for i, n in enumerate(names)}
    bad = sorted(set(t["layer"].tolist()) - set(li))
    if bad:
        raise InputError(f"the table has layers {bad} that are not in layers=; pass every "
                         "watched layer.")
    steps = np.array(sorted(set(t["step"].tolist())), dtype=np.int64)
    flat = explode_classes(t)
    classes = np.unique(flat["class"]).astype(np.int64)
    counts = np.zeros((len(names), len(steps), len(classes)), dtype=np.int64)
    if len(flat["class"]):
        l_idx = np.array([li[n] for n in flat["layer"].tolist()], dtype=np.int64)
        s_idx = np.searchsorted(steps, flat["step"])
        c_idx = np.searchsorted(classes, flat["class"])
        np.add.at(counts, (l_idx, s_idx, c_idx), 1)
    return CorrelationCube(names, steps, classes, counts)


def explode_classes(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """One entry per (row, flagged class) of a :func:`correlate` table, in row order:
    ``row`` (position in ``table``), ``step``, ``layer``, ``class`` (numpy arrays; what
    ``table.explode("classes")`` gives, without pandas' per-row cost)."""
    lists = table["classes"].tolist()
    try:
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    except TypeError:  # a row without a list (None / NaN): no classes
        lists = [c if isinstance(c, list | tuple | np.ndarray) else () for c in lists]
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    row = np.repeat(np.arange(len(lists)), lens)
    cls = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(lens.sum()))
    return {"row": row, "step": table["step"].to_numpy(dtype=np.int64)[row],
            "layer": table["layer"].to_numpy(dtype=object)[row], "class": cls}
