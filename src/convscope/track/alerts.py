"""Alerts on the recorded per-layer statistics (the DeepTracker layer view, Liu et al. 2018).

Two rules of thumb of training practice, checked on every watched layer at every recorded step:

* **Update ratio.** ``update_ratio`` = ‖w_t − w_prev‖ / ‖w_prev‖ between recorded snapshots. A
  healthy SGD step changes a layer's weights by roughly 1e-3 of their norm; a ratio above
  ``ratio_range[1]`` (default 1e-2) means the learning rate is too large for that layer, below
  ``ratio_range[0]`` (default 1e-4) that the layer hardly learns (too small a learning rate, a
  frozen or dead layer). With ``every > 1`` the ratio spans several optimiser steps, so the
  range is a guide, not a law: pass your own.
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

__all__ = ["ALERT_COLUMNS", "ALERT_KINDS", "training_alerts"]

#: Columns of the frame :func:`training_alerts` returns, in order.
ALERT_COLUMNS = ("kind", "layer", "first_step", "last_step", "n_steps", "value", "threshold")
#: The alert kinds and what each means (the Training page shows these texts).
ALERT_KINDS = {
    "update_ratio_high": "update ratio above the range: the learning rate is too large here",
    "update_ratio_low": "update ratio below the range: this layer hardly learns",
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
    ratio_range: Sequence[float] = (1e-4, 1e-2),
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
        ratio_range: ``(low, high)``: update ratios outside it are flagged.
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
    vanish_factor = _positive(vanish_factor, "vanish_factor")
    vanish_floor = float(vanish_floor)
    if not np.isfinite(vanish_floor) or vanish_floor < 0:
        raise InputError(f"vanish_floor must be a number >= 0, not {vanish_floor!r}.")

    rows: list[tuple] = []
    df = stats.sort_values(["layer", "step"], kind="stable")
    for layer, d in df.groupby("layer", sort=False):
        steps = d["step"].to_numpy()
        if has_ratio:
            r = d["update_ratio"].to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                rows += _runs(str(layer), steps, r, (r > hi) | np.isposinf(r),
                              "update_ratio_high", "max", hi)
                rows += _runs(str(layer), steps, r, r < lo, "update_ratio_low", "min", lo)
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
