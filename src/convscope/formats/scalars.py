"""Scalars: the numbers ``run.log_scalars(step, loss=..., acc=...)`` records.

Contract: table ``scalars``, one row per (step, tag): ``step`` int64, ``tag`` string, ``value``
float64 (NaN and inf kept: they are data), ``wall_time`` float64 (seconds since the epoch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..store.duck import integer
from .base import Sink

__all__ = ["TABLE", "COLUMNS", "TYPES", "SOURCE", "Scalars", "rows", "write", "load", "tags",
           "wide", "series", "ScalarQueries"]

TABLE = "scalars"
COLUMNS = ("step", "tag", "value", "wall_time")
#: the table's arrow types (``Run.log_scalars`` checks its values itself)
TYPES = {"step": pa.int64(), "tag": pa.string(), "value": pa.float64(),
         "wall_time": pa.float64()}
SOURCE = "run.log_scalars(step, loss=..., acc=...)"


@dataclass(frozen=True)
class Scalars:
    """Scalar rows in the order written (by step, then wall time): ``step [N]`` int64, ``tag
    [N]`` str (object), ``value [N]`` float64, ``wall_time [N]`` float64."""

    step: np.ndarray
    tag: np.ndarray
    value: np.ndarray
    wall_time: np.ndarray

    def frame(self) -> pd.DataFrame:
        """The rows as a long DataFrame (step, tag, value, wall_time)."""
        return pd.DataFrame({c: getattr(self, c) for c in COLUMNS})


def rows(step: int, tags: Sequence[str], values: Sequence[float],
         wall_time: float) -> dict[str, list[Any]]:
    """The columns of one ``log_scalars`` call (values already checked numbers)."""
    n = len(tags)
    return {"step": [step] * n, "tag": list(tags), "value": list(values),
            "wall_time": [wall_time] * n}


def write(sink: Sink, result: Scalars) -> None:
    """Append ``result``'s rows to table ``scalars`` (the columns' dtypes as :data:`TYPES`)."""
    sink.log_rows(TABLE, {
        "step": np.asarray(result.step, dtype=np.int64),
        "tag": np.asarray(result.tag, dtype=object),
        "value": np.asarray(result.value, dtype=np.float64),
        "wall_time": np.asarray(result.wall_time, dtype=np.float64),
    })


def _long(reader: Any, tags_: Iterable[str] | None) -> pd.DataFrame:
    if not reader.has_table(TABLE):
        return pd.DataFrame({c: [] for c in COLUMNS})
    where, params = "", []
    if tags_ is not None:
        tags_ = [tags_] if isinstance(tags_, str) else list(tags_)  # bound, never SQL text
        where = f"WHERE tag IN ({', '.join('?' for _ in tags_)})"
        params = tags_
    return reader.query(
        f"SELECT step, tag, value, wall_time FROM {TABLE} {where} ORDER BY step, wall_time",
        params,
    )


def load(reader: Any, tags_: Iterable[str] | None = None) -> Scalars:
    """Every scalar row (of ``tags_`` only, when given), by step and wall time."""
    df = _long(reader, tags_)
    return Scalars(step=df["step"].to_numpy(dtype=np.int64),
                   tag=df["tag"].to_numpy(dtype=object),
                   value=df["value"].to_numpy(dtype=np.float64),
                   wall_time=df["wall_time"].to_numpy(dtype=np.float64))


def tags(reader: Any) -> list[str]:
    """The tags logged in the run, sorted; ``[]`` without scalars."""
    if not reader.has_table(TABLE):
        return []
    return reader.query(f"SELECT DISTINCT tag FROM {TABLE} ORDER BY tag")["tag"].tolist()


def wide(reader: Any, tags_: Iterable[str] | None = None, long: bool = False) -> pd.DataFrame:
    """A DataFrame with a ``step`` column, a ``wall_time`` column (the latest write at that
    step) and one column per tag; or, with ``long=True``, rows of (step, tag, value, wall_time)
    in the order written."""
    if not reader.has_table(TABLE):
        cols = list(COLUMNS) if long else ["step", "wall_time"]
        return pd.DataFrame({c: [] for c in cols})
    df = _long(reader, tags_)
    if long:
        return df
    out = df.pivot_table(index="step", columns="tag", values="value", aggfunc="last")
    out.columns.name = None
    wall = df.groupby("step")["wall_time"].max()
    out.insert(0, "wall_time", wall)
    return out.reset_index()


def series(reader: Any, tag: str, max_points: int = 2000) -> pd.DataFrame:
    """One tag's series, downsampled in DuckDB to at most ``max_points`` buckets.

    Columns: step, value (bucket mean), vmin, vmax, wall_time. When the series is short enough,
    every point is returned and vmin = vmax = value.
    """
    max_points = max(integer(max_points, "max_points"), 1)
    n = int(reader.query(f"SELECT count(*) AS n FROM {TABLE} WHERE tag = ?",
                         [tag])["n"].iloc[0])
    if n <= max_points:
        return reader.query(
            "SELECT step, value, value AS vmin, value AS vmax, wall_time FROM "
            f"{TABLE} WHERE tag = ? ORDER BY step, wall_time",
            [tag],
        )
    return reader.query(
        f"""
        WITH s AS (SELECT step, value, wall_time FROM {TABLE} WHERE tag = ?),
             r AS (SELECT min(step) AS lo, greatest(max(step) - min(step), 1) AS span FROM s)
        SELECT min(step) AS step, avg(value) AS value, min(value) AS vmin,
               max(value) AS vmax, max(wall_time) AS wall_time
        FROM s, r
        GROUP BY floor((step - lo) * ? / (span + 1))
        ORDER BY step
        """,
        [tag, max_points],
    )


class ScalarQueries:
    """``RunReader.scalar_tags/scalars/scalar_series`` (mixed into
    :class:`convscope.formats.reader.RunReader`)."""

    def scalar_tags(self) -> list[str]:
        return tags(self)

    def scalars(self, tags: Iterable[str] | None = None, long: bool = False) -> pd.DataFrame:
        """Logged scalars.

        Returns a DataFrame with a ``step`` column, a ``wall_time`` column (seconds since the
        epoch, the latest write at that step) and one column per tag; or, with ``long=True``,
        rows of (step, tag, value, wall_time) in the order written.
        """
        return wide(self, tags, long=long)

    def scalar_series(self, tag: str, max_points: int = 2000) -> pd.DataFrame:
        """One tag's series, downsampled on the server to at most ``max_points`` buckets.

        Columns: step, value (bucket mean), vmin, vmax, wall_time. When the series is short
        enough, every point is returned and vmin = vmax = value.
        """
        return series(self, tag, max_points)
