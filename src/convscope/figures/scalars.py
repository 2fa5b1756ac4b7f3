"""Scalar series (loss, accuracy, ...) as line charts: several runs overlaid, with smoothing."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import theme

__all__ = ["smooth", "scalar_figure", "X_AXES"]

X_AXES = {"step": "step", "relative": "relative time (s)", "wall": "wall time"}


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average.

    ``s_t = (w·m_{t-1} + (1-w)·v_t) / (1 - w^k)`` over the finite values seen so far (k of
    them); a non-finite value is shown as is and does not enter the average.
    """
    values = np.asarray(values, dtype=float)
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out = np.empty_like(values)
    last, k = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = v
            continue
        last = last * weight + (1.0 - weight) * v
        k += 1
        out[i] = last / (1.0 - weight**k)
    return out


def _x(df: pd.DataFrame, x: str) -> pd.Series:
    if x == "step":
        return df["step"]
    if x == "relative":
        return df["wall_time"] - df["wall_time"].min()
    if x == "wall":
        # milliseconds since the epoch on a date axis: plotly.js draws them as UTC dates, as
        # pd.to_datetime(unit="s") would, but they travel as 8-byte numbers, not ISO strings
        return df["wall_time"].astype(np.float64) * 1000.0
    raise ValueError(f"x must be one of {sorted(X_AXES)}, got {x!r}")


def scalar_figure(
    series: Mapping[str, Mapping[str, pd.DataFrame]],
    *,
    smoothing: float = 0.6,
    x: str = "step",
    columns: int = 2,
    uirevision: str = "scalars",
) -> go.Figure:
    """Small multiples, one panel per tag, one line per run.

    Args:
        series: ``{tag: {run: DataFrame(step, value, wall_time[, vmin, vmax])}}``.
        smoothing: EMA weight in [0, 1); 0 shows the raw series only.
        x: ``"step"``, ``"relative"`` (seconds since the run's first point) or ``"wall"``.
    """
    tags = list(series)
    n = max(len(tags), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=tags or [""], horizontal_spacing=0.08,
        vertical_spacing=min(0.12, 0.5 / rows),
    )
    runs = sorted({r for per_run in series.values() for r in per_run})
    colors = {r: theme.color(i) for i, r in enumerate(runs)}
    shown: set[str] = set()
    for i, tag in enumerate(tags):
        row, col = i // cols + 1, i % cols + 1
        for run, df in series[tag].items():
            if df.empty:
                continue
            xs = _x(df, x)
            c = colors[run]
            mode = "lines+markers" if len(df) <= 50 else "lines"  # short series stay visible
            first = run not in shown
            shown.add(run)
            fig.add_trace(
                go.Scatter(
                    x=xs, y=df["value"], mode=mode, name=run, legendgroup=run,
                    showlegend=first and smoothing == 0, line={"color": c, "width": 1.5},
                    opacity=0.3 if smoothing > 0 else 1.0,
                    meta={"run": run, "tag": tag, "kind": "raw"},
                    hovertemplate=f"{run}<br>%{{x}}: %{{y:.4g}}<extra>{tag}</extra>",
                ),
                row=row, col=col,
            )
            if smoothing > 0:
                fig.add_trace(
                    go.Scatter(
                        x=xs, y=smooth(df["value"].to_numpy(), smoothing), mode=mode,
                        name=run, legendgroup=run, showlegend=first,
                        line={"color": c, "width": 2},
                        meta={"run": run, "tag": tag, "kind": "smoothed"},
                        hovertemplate=f"{run} (smoothed)<br>%{{x}}: %{{y:.4g}}<extra>{tag}</extra>",
                    ),
                    row=row, col=col,
                )
        fig.update_xaxes(title_text=X_AXES[x], row=row, col=col, title_font={"size": 11},
                         **({"type": "date"} if x == "wall" else {}))
    theme.apply(fig, height=max(320, 300 * rows))
    fig.update_layout(uirevision=uirevision)
    return fig
