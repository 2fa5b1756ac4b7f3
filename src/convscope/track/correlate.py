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
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InputError, suggest

__all__ = ["correlate", "CORRELATE_COLUMNS"]

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
