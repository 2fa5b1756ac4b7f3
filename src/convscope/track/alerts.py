"""Alerts on the recorded per-layer statistics (the DeepTracker layer view, Liu et al. 2018).

Two rules of thumb of training practice, checked on every watched layer at every recorded step:

* **Update ratio.** ``update_ratio`` = ‖w_t − w_prev‖ / ‖w_prev‖ between recorded snapshots. A
  healthy SGD step changes a layer's weights by roughly 1e-3 of their norm. Adam with a warm-up
  peak, or ``every > 1`` (the ratio then spans several optimiser steps), moves healthy layers by
  1e-2 and more, so the default range is two orders of magnitude either side of 1e-3:
  ``ratio_range`` = (1e-5, 1e-1). A ratio above it means the learning rate is too large for
  that layer. Below it, a layer is flagged only when it also lags the other layers at that step
  (below their median divided by ``stall_factor``, 10): *that* layer hardly learns (frozen,
  dead, a vanishing gradient). When the median of every layer is below the range, one
  ``learning_rate_low`` alert (layer ``"(all layers)"``) says so instead: the learning rate has
  decayed to almost nothing (the end of a schedule) or is too small, which is no fault of a
  layer. (A healthy demo run flagged every layer at its peak learning rate and again at the end
  of its schedule with the first rule of thumb, [1e-4, 1e-2] per layer: 28 alerts.)
* **Gradient norm.** ``g_l2`` = ‖∇w‖ of the layer. It *explodes* at a step where it is not
  finite or exceeds ``explode_factor`` (10) times the layer's own median over the run, and
  *vanishes* where it is at most ``vanish_floor`` (1e-10) or below the layer's median divided
  by ``vanish_factor`` (100). The median is each layer's reference because gradient norms
  differ by orders of magnitude between layers.

Consecutive recorded steps of one layer that break the same rule form one alert, reported with
its first and last step, so a long bad stretch is one row, not thousands.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = ["ALERT_COLUMNS", "ALERT_KINDS", "ALL_LAYERS", "training_alerts"]

#: The layer named by alerts about the whole network (``learning_rate_low``).
ALL_LAYERS = "(all layers)"

#: Columns of the frame :func:`training_alerts` returns, in order.
ALERT_COLUMNS = ("kind", "layer", "first_step", "last_step", "n_steps", "value", "threshold")
#: The alert kinds and what each means (the Training page shows these texts).
ALERT_KINDS = {
    "update_ratio_high": "update ratio above the range: the learning rate is too large here",
    "update_ratio_low": "update ratio below the range while the other layers move: this layer "
                        "hardly learns",
    "learning_rate_low": "every layer's update ratio below the range: the learning rate has "
                         "decayed to almost nothing (or is too small)",
    "gradient_exploding": "gradient norm exploding (not finite, or far above its median)",
    "gradient_vanishing": "gradient norm vanishing (far below its median, or zero)",
}


def _positive(x: float, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a positive number, not {x!r}.") from None
    if not np.isfinite(v) or v <= 0:
        raise InputError(f"{what} must be a positive finite number, not {x!r}.")
    return v


def _runs(layer: str, steps: np.ndarray, values: np.ndarray, flag: np.ndarray, kind: str,
          worst: str, threshold: float) -> list[tuple]:
    """One row per run of consecutive flagged recorded steps."""
    if not flag.any():
        return []
    f = flag.astype(np.int8)
    edges = np.diff(np.concatenate([[0], f, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, end)
    out = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        v = values[a:b].astype(np.float64)
        bad = v[~np.isfinite(v)]
        if len(bad):  # a non-finite value is the worst there is
            val = float(bad[0])
        else:
            val = float(v.max() if worst == "max" else v.min())
        out.append((kind, layer, int(steps[a]), int(steps[b - 1]), int(b - a), val, threshold))
    return out


def training_alerts(
    stats: pd.DataFrame,
    *,
    ratio_range: Sequence[float] = (1e-5, 1e-1),
    stall_factor: float = 10.0,
    explode_factor: float = 10.0,
    vanish_factor: float = 100.0,
    vanish_floor: float = 1e-10,
) -> pd.DataFrame:
    """Layers and step ranges whose update ratio is far from ~1e-3 or whose gradient norm
    explodes or vanishes (see the module docstring for the rules).

    Args:
        stats: one row per (recorded step, layer) with columns ``step``, ``layer`` and at least
            one of ``update_ratio`` and ``g_l2`` (the ``watch_layers`` columns; e.g.
            ``convscope.formats.training.load_watch(reader).layers``). NaN update ratios (the
            first snapshot) are never flagged.
        ratio_range: ``(low, high)``: update ratios above ``high`` are flagged; below ``low``
            when the layer also lags the step's median over layers by ``stall_factor`` (all
            layers below ``low``: one ``learning_rate_low`` alert).
        stall_factor: how far below the other layers' median a low ratio must be.
        explode_factor: a gradient norm above this times the layer's median explodes.
        vanish_factor: a gradient norm below the layer's median divided by this vanishes.
        vanish_floor: a gradient norm at or below this vanishes whatever the median.

    Returns:
        DataFrame with :data:`ALERT_COLUMNS`: ``kind`` (a key of :data:`ALERT_KINDS`),
        ``layer``, ``first_step`` / ``last_step`` (the run of consecutive recorded steps of that
        layer breaking the rule), ``n_steps`` (recorded steps in it), ``value`` (the worst value
        in it: the highest for ``*_high`` / ``*_exploding``, the lowest otherwise) and
        ``threshold`` (the bound it crossed; for gradients the layer's median times or divided
        by the factor). Sorted by first step, then layer, then kind.
    """
    if not isinstance(stats, pd.DataFrame):
        raise InputError("stats must be a pandas DataFrame with columns step, layer, "
                         f"update_ratio and/or g_l2; got {type(stats).__name__}.")
    missing = [c for c in ("step", "layer") if c not in stats.columns]
    has_ratio, has_grad = "update_ratio" in stats.columns, "g_l2" in stats.columns
    if missing or not (has_ratio or has_grad):
        raise InputError("stats needs columns step, layer and update_ratio and/or g_l2 (the "
                         f"watch_layers columns); it has {list(stats.columns)}.")
    try:
        lo, hi = (float(v) for v in ratio_range)
    except (TypeError, ValueError):
        raise InputError(f"ratio_range must be (low, high), not {ratio_range!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo < hi):
        raise InputError(f"ratio_range must be 0 <= low < high, not {ratio_range!r}.")
    explode_factor = _positive(explode_factor, "explode_factor")
    stall_factor = _positive(stall_factor, "stall_factor")
    vanish_factor = _positive(vanish_factor, "vanish_factor")
    vanish_floor = float(vanish_floor)
    if not np.isfinite(vanish_floor) or vanish_floor < 0:
        raise InputError(f"vanish_floor must be a number >= 0, not {vanish_floor!r}.")

    rows: list[tuple] = []
    df = stats.sort_values(["layer", "step"], kind="stable")
    step_median = None
    if has_ratio:  # the layers' median ratio at each recorded step (NaN ratios left out)
        step_median = df.groupby("step")["update_ratio"].median()
        sm = step_median.to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            rows += _runs(ALL_LAYERS, step_median.index.to_numpy(), sm, sm < lo,
                          "learning_rate_low", "min", lo)
    for layer, d in df.groupby("layer", sort=False):
        steps = d["step"].to_numpy()
        if has_ratio:
            assert step_median is not None
            r = d["update_ratio"].to_numpy(dtype=np.float64)
            med = step_median.reindex(steps).to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                rows += _runs(str(layer), steps, r, (r > hi) | np.isposinf(r),
                              "update_ratio_high", "max", hi)
                stalled = (r < lo) & (med >= lo) & (r < med / stall_factor)
                rows += _runs(str(layer), steps, r, stalled, "update_ratio_low", "min", lo)
        if has_grad:
            g = d["g_l2"].to_numpy(dtype=np.float64)
            finite = g[np.isfinite(g)]
            med = float(np.median(finite)) if len(finite) else float("nan")
            up = med * explode_factor if np.isfinite(med) else float("inf")
            down = max(med / vanish_factor if np.isfinite(med) else 0.0, vanish_floor)
            with np.errstate(invalid="ignore"):
                blow = ~np.isfinite(g) | (g > up)
                rows += _runs(str(layer), steps, g, blow, "gradient_exploding", "max", up)
                small = np.isfinite(g) & ((g <= vanish_floor) | (g < down))
                rows += _runs(str(layer), steps, g, small, "gradient_vanishing", "min", down)
    out = pd.DataFrame(rows, columns=list(ALERT_COLUMNS))
    out = out.astype({"kind": object, "layer": object, "first_step": "int64",
                      "last_step": "int64", "n_steps": "int64", "value": "float64",
                      "threshold": "float64"})
    return out.sort_values(["first_step", "layer", "kind"], kind="stable").reset_index(drop=True)
