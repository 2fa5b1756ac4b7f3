"""Multi-resolution summaries of ``watch_filters`` parts, so the filter view reads ~F × S rows.

For each compacted part ``tables/watch_filters/part-X.parquet`` compaction writes
``tables/watch_filters/_summary/part-X.parquet``: per (rank, layer, filter, level k, block)
with ``block = step >> k`` (aligned blocks of 2**k steps), the row count, first and last step,
and per filter statistic the sum and count of its non-NaN values. Levels run from the first
whose blocks hold about 4 recorded steps (``k_min``) to the first where the part spans at most
two blocks (``k_max``); a query at a coarser level shifts the ``k_max`` blocks (dyadic blocks
nest). Rows with ``level = -1`` (filter -1) hold each layer's first and last step in the part.

A summary belongs to the raw part of the same name: it is used only while that part is
visible, and compaction deletes it with the part. Parts without a summary (written while
training runs, or by an older version) are read raw, so queries stay exact either way.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..track.columns import FILTER_COLUMNS

__all__ = ["SUMMARY_DIR", "LEVELS_KEY", "SUMMARIZED_TABLES", "summary_file", "build_filter_summary",
           "write_summary", "remove_summary"]

SUMMARY_DIR = "_summary"
LEVELS_KEY = "convscope.levels"  # footer metadata: "k_min,k_max"
SUMMARIZED_TABLES = ("watch_filters",)
STEPS_PER_BLOCK = 4  # recorded steps in a block of the finest level (about)


def summary_file(part: Path) -> Path:
    """Where the summary of raw part ``part`` lives."""
    return part.parent / SUMMARY_DIR / part.name


def _levels(steps: np.ndarray) -> tuple[int, int] | None:
    """``(k_min, k_max)`` for a part with these distinct sorted steps, None if too few."""
    if len(steps) < 2 * STEPS_PER_BLOCK:
        return None
    spacing = max(1.0, float(np.median(np.diff(steps))))
    k_min = max(0, math.ceil(math.log2(STEPS_PER_BLOCK * spacing)))
    lo, hi = int(steps[0]), int(steps[-1])
    k_max = k_min
    while (hi >> k_max) - (lo >> k_max) > 1:
        k_max += 1
    return k_min, k_max


def build_filter_summary(table: pa.Table) -> tuple[pa.Table, tuple[int, int]] | None:
    """The summary rows of one ``watch_filters`` part (an arrow table) and its levels
    ``(k_min, k_max)``, or None when the part holds too few steps to be worth one."""
    values = [c for c in FILTER_COLUMNS if c in table.column_names]
    con = duckdb.connect(":memory:")
    try:
        con.register("t", table)
        steps = con.execute("SELECT DISTINCT step FROM t ORDER BY step").fetchnumpy()["step"]
        levels = _levels(np.asarray(steps, dtype=np.int64))
        if levels is None:
            return None
        k_min, k_max = levels
        aggs = ", ".join(
            f'coalesce(sum("{v}") FILTER (WHERE NOT isnan("{v}")), 0)::DOUBLE AS "{v}_sum", '
            f'count("{v}") FILTER (WHERE NOT isnan("{v}"))::INTEGER AS "{v}_n"'
            for v in values)
        con.execute(f"""
            CREATE TEMP TABLE lvl AS
            SELECT rank, layer, filter, {k_min}::TINYINT AS level, step >> {k_min} AS block,
                   min(step) AS first, max(step) AS last, count(*)::INTEGER AS n, {aggs}
            FROM t GROUP BY rank, layer, filter, step >> {k_min}""")
        roll = ", ".join(f'sum("{v}_sum")::DOUBLE AS "{v}_sum", sum("{v}_n")::INTEGER AS "{v}_n"'
                         for v in values)
        for k in range(k_min + 1, k_max + 1):
            con.execute(f"""
                INSERT INTO lvl
                SELECT rank, layer, filter, {k}::TINYINT, block >> 1, min(first), max(last),
                       sum(n)::INTEGER, {roll}
                FROM lvl WHERE level = {k - 1} GROUP BY rank, layer, filter, block >> 1""")
        zeros = ", ".join(f'0::DOUBLE AS "{v}_sum", 0::INTEGER AS "{v}_n"' for v in values)
        con.execute(f"""
            INSERT INTO lvl
            SELECT rank, layer, -1, -1::TINYINT, 0, min(first), max(last), sum(n)::INTEGER,
                   {zeros}
            FROM lvl WHERE level = {k_max} GROUP BY rank, layer""")
        floats = ", ".join(f'"{v}_sum"::FLOAT AS "{v}_sum", "{v}_n"' for v in values)
        out = con.sql(f"""
            SELECT rank::SMALLINT AS rank, layer, filter::INTEGER AS filter, level,
                   block::BIGINT AS block, first::BIGINT AS first, last::BIGINT AS last, n,
                   {floats}
            FROM lvl ORDER BY level, layer, rank, filter, block""").to_arrow_table()
        return out, (k_min, k_max)
    finally:
        con.close()


def write_summary(part: Path, table: pa.Table) -> Path | None:
    """Build and durably write the summary of raw part ``part`` holding ``table``."""
    from .writer import write_part

    built = build_filter_summary(table)
    if built is None:
        return None
    summary, (k_min, k_max) = built
    target = summary_file(part)
    return write_part(target.parent, target.name, summary, {LEVELS_KEY: f"{k_min},{k_max}"})


def remove_summary(part: Path) -> None:
    try:
        summary_file(part).unlink()
    except FileNotFoundError:
        pass
