"""The store hooks of the watch tables: part sort orders, and the multi-resolution summaries and
top-changed index of ``watch_filters`` parts, so the filter view reads ~F × S rows.

Registered at import (:func:`convscope.store.hooks.register_table`; ``convscope.formats``
imports this module, and the store imports ``convscope.formats`` before its first lookup):

* ``watch_layers``: parts sorted by (layer, step);
* ``watch_filters``: parts sorted by (layer, filter, step); each compacted part
  ``tables/watch_filters/part-X.parquet`` gets two side files, written in this order:

  1. the summary ``_summary/part-X.parquet``: per (rank, layer, filter, level k, block) with
     ``block = step >> k`` (aligned blocks of 2**k steps), the row count, first and last step,
     and per filter statistic (:data:`~convscope.track.columns.FILTER_COLUMNS`) the sum and
     count of its non-NaN values. Levels run from the first whose blocks hold about 4 recorded
     steps (``k_min``) to the first where the part spans at most two blocks (``k_max``); a query
     at a coarser level shifts the ``k_max`` blocks (dyadic blocks nest). Rows with filter -1
     hold, per layer, level and block, the first and last step and the row count over all
     filters; rows with ``level = -1`` (filter -1) each layer's first and last step in the part.
     Its footer holds the row index of :func:`convscope.store.summary.summary_index`;
  2. the top-changed index ``_summary/top-part-X.parquet`` (last: its presence marks the set
     complete): per (rank, step) the :data:`TOP_K` filters with the lowest ``cos_prev``.

A summary belongs to the raw part of the same name: it is used only while that part is
visible, and compaction deletes it with the part. Parts without a summary (written while
training runs, or by an older version) are read raw, so queries stay exact either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..store.hooks import SideFile, TableHooks, register_table
from ..store.summary import INDEX_KEY, SUMMARY_ROW_GROUP, side_file, summary_index

__all__ = ["LAYERS_TABLE", "FILTERS_TABLE", "TOP_K", "TOP_PREFIX", "STEPS_PER_BLOCK",
           "LAYERS_HOOKS", "FILTERS_HOOKS", "top_file", "build_filter_summary",
           "build_top_changed", "summary_side", "top_side"]

#: One row per (step, layer): weight and gradient statistics.
LAYERS_TABLE = "watch_layers"
#: One row per (step, layer, filter): the filter statistics.
FILTERS_TABLE = "watch_filters"
STEPS_PER_BLOCK = 4  # recorded steps in a block of the finest level (about)
TOP_K = 16  # filters kept per (rank, step) in the top-changed index
TOP_PREFIX = "top-"


def top_file(part: Path) -> Path:
    """Where the top-changed index of raw ``watch_filters`` part ``part`` lives."""
    return side_file(part, TOP_PREFIX)


def build_top_changed(table: pa.Table, k: int = TOP_K) -> pa.Table | None:
    """Per (rank, step) of one ``watch_filters`` part, the ``k`` filters with the lowest
    non-NaN ``cos_prev``, ties broken by layer then filter (rank, step, layer, filter, cos_prev;
    sorted by rank, step, cos_prev).
    The k lowest of a step over all parts are the k lowest of these per-part lists, so the
    correlation view reads ~k rows per step instead of every filter's. None without the
    column."""
    if "cos_prev" not in table.column_names:
        return None
    from ..store.duck import connect

    con = connect()
    try:
        con.register("t", table)
        return con.sql(f"""
            SELECT rank::SMALLINT AS rank, step::BIGINT AS step, x.layer AS layer,
                   x.filter::INTEGER AS filter, x.cos_prev::FLOAT AS cos_prev
            FROM (SELECT rank, step,
                         unnest(min_by({{'layer': layer, 'filter': filter,
                                        'cos_prev': cos_prev}},
                                       {{'c': cos_prev, 'l': layer, 'f': filter}}, {int(k)})) AS x
                  FROM t WHERE cos_prev IS NOT NULL AND NOT isnan(cos_prev)
                  GROUP BY rank, step)
            ORDER BY rank, step, cos_prev, layer, filter""").to_arrow_table()
    finally:
        con.close()


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
    from ..store.duck import connect
    from ..track.columns import FILTER_COLUMNS

    values = [c for c in FILTER_COLUMNS if c in table.column_names]
    con = connect()
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
        # per layer and block, over its filters (filter -1): the bucket's first step comes
        # from these few rows instead of a column of every filter's row
        con.execute(f"""
            INSERT INTO lvl
            SELECT rank, layer, -1, level, block, min(first), max(last), sum(n)::INTEGER,
                   {zeros}
            FROM lvl GROUP BY rank, layer, level, block""")
        # level -1: the layer's first and last step in the part
        con.execute(f"""
            INSERT INTO lvl
            SELECT rank, layer, -1, -1::TINYINT, 0, min(first), max(last), sum(n)::INTEGER,
                   {zeros}
            FROM lvl WHERE level = {k_max} AND filter = -1 GROUP BY rank, layer""")
        floats = ", ".join(f'"{v}_sum"::FLOAT AS "{v}_sum", "{v}_n"' for v in values)
        out = con.sql(f"""
            SELECT rank::SMALLINT AS rank, layer, filter::INTEGER AS filter, level,
                   block::BIGINT AS block, first::BIGINT AS first, last::BIGINT AS last, n,
                   {floats}
            FROM lvl ORDER BY level, layer, rank, filter, block""").to_arrow_table()
        return out, (k_min, k_max)
    finally:
        con.close()


def summary_side(table: pa.Table) -> tuple[pa.Table, Mapping[str, str]] | None:
    """The summary side file of a compacted part: rows and footer index (None if too short)."""
    built = build_filter_summary(table)
    if built is None:
        return None
    summary, levels = built
    return summary, {INDEX_KEY: json.dumps(summary_index(summary, levels))}


def top_side(table: pa.Table) -> tuple[pa.Table, Mapping[str, str]] | None:
    """The top-changed side file of a compacted part (None without ``cos_prev``)."""
    top = build_top_changed(table)
    return None if top is None else (top, {})


LAYERS_HOOKS = TableHooks(sort_by=("layer", "step"))
# small row groups: a query reads one layer at one level, ~F x (blocks in the part) rows,
# found through the footer index. The top-changed index last: compaction takes its presence
# for "side files complete".
FILTERS_HOOKS = TableHooks(
    sort_by=("layer", "filter", "step"),
    side_files=(SideFile("", summary_side, SUMMARY_ROW_GROUP),
                SideFile(TOP_PREFIX, top_side, SUMMARY_ROW_GROUP)))

register_table(LAYERS_TABLE, LAYERS_HOOKS)
register_table(FILTERS_TABLE, FILTERS_HOOKS)
