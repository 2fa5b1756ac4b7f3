"""The DuckDB connection settings every reader of run tables uses."""

from __future__ import annotations

import duckdb

__all__ = ["connect"]


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for reading run tables.

    Parquet's min/max statistics leave NaN out, and DuckDB's statistics propagation then
    concludes that a float column holds no NaN: ``isnan(x)`` is folded to false and NaN rows
    (e.g. ``cos_prev`` at a filter's first snapshot) pass ``NOT isnan(x)``. That optimizer is
    switched off (for every cursor of the connection); the Parquet scan still skips row groups
    by their statistics, so a *positive* ``WHERE isnan(x)`` still skips row groups whose
    min/max hold no NaN: count NaN with ``sum(isnan(x)::INT)`` instead (docs/tracking.md).
    """
    con = duckdb.connect(":memory:")
    con.execute("SET GLOBAL disabled_optimizers = 'statistics_propagation'")  # cursors too
    return con
