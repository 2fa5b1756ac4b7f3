"""Multi-resolution summaries of ``watch_filters`` parts, so the filter view reads ~F × S rows.

For each compacted part ``tables/watch_filters/part-X.parquet`` compaction writes
``tables/watch_filters/_summary/part-X.parquet``: per (rank, layer, filter, level k, block)
with ``block = step >> k`` (aligned blocks of 2**k steps), the row count, first and last step,
and per filter statistic the sum and count of its non-NaN values. Levels run from the first
whose blocks hold about 4 recorded steps (``k_min``) to the first where the part spans at most
two blocks (``k_max``); a query at a coarser level shifts the ``k_max`` blocks (dyadic blocks
nest). Rows with filter -1 hold, per layer, level and block, the first and last step and the row
count over all filters; rows with ``level = -1`` (filter -1) each layer's first and last step in
the part.

A summary belongs to the raw part of the same name: it is used only while that part is
visible, and compaction deletes it with the part. Parts without a summary (written while
training runs, or by an older version) are read raw, so queries stay exact either way.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..track.columns import FILTER_COLUMNS
from .duck import connect

__all__ = ["SUMMARY_DIR", "INDEX_KEY", "TOP_K", "summary_index", "SummaryFile", "open_summary",
           "SUMMARIZED_TABLES", "summary_file", "top_file", "build_filter_summary",
           "build_top_changed", "write_summary", "remove_summary"]

SUMMARY_DIR = "_summary"
INDEX_KEY = "convscope.index"  # footer metadata: see summary_index
SUMMARIZED_TABLES = ("watch_filters",)
STEPS_PER_BLOCK = 4  # recorded steps in a block of the finest level (about)
SUMMARY_ROW_GROUP = 8192
TOP_K = 16  # filters kept per (rank, step) in the top-changed index
TOP_PREFIX = "top-"


def summary_file(part: Path) -> Path:
    """Where the summary of raw part ``part`` lives."""
    return part.parent / SUMMARY_DIR / part.name


def top_file(part: Path) -> Path:
    """Where the top-changed index of raw part ``part`` lives."""
    return part.parent / SUMMARY_DIR / (TOP_PREFIX + part.name)


def build_top_changed(table: pa.Table, k: int = TOP_K) -> pa.Table | None:
    """Per (rank, step) of one ``watch_filters`` part, the ``k`` filters with the lowest
    non-NaN ``cos_prev``, ties broken by layer then filter (rank, step, layer, filter, cos_prev;
    sorted by rank, step, cos_prev).
    The k lowest of a step over all parts are the k lowest of these per-part lists, so the
    correlation view reads ~k rows per step instead of every filter's. None without the
    column."""
    if "cos_prev" not in table.column_names:
        return None
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


def summary_index(summary: pa.Table, levels: tuple[int, int]) -> dict:
    """Footer index of a summary (rows are sorted by level, layer, rank, filter, block):
    ``ranges["<level>|<rank>|<layer>"] = [start, stop)`` row numbers, ``bounds["<rank>|
    <layer>"] = [first, last]`` step, ``levels = [k_min, k_max]``. A query reads just its
    rows' row groups, without scanning statistics."""
    level = summary.column("level").to_numpy()
    rank = summary.column("rank").to_numpy()
    layer = np.asarray(summary.column("layer").to_pylist(), dtype=object)
    n = len(level)
    change = np.ones(n, dtype=bool)
    if n:
        change[1:] = (level[1:] != level[:-1]) | (rank[1:] != rank[:-1]) | (layer[1:] != layer[:-1])
    starts = np.flatnonzero(change)
    stops = np.append(starts[1:], n)
    ranges, bounds = {}, {}
    first = summary.column("first").to_numpy()
    last = summary.column("last").to_numpy()
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        key = f"{int(rank[a])}|{layer[a]}"
        if int(level[a]) == -1:
            bounds[key] = [int(first[a]), int(last[a])]
        else:
            ranges[f"{int(level[a])}|{key}"] = [a, b]
    return {"levels": list(levels), "ranges": ranges, "bounds": bounds}


def write_summary(part: Path, table: pa.Table) -> Path | None:
    """Build and durably write the summary and the top-changed index of raw part ``part``
    holding ``table``; returns the summary's path (None when the part is too short for one)."""
    from .writer import write_part

    # the top-changed index last: compaction takes its presence for "summaries complete"
    built = build_filter_summary(table)
    out = None
    if built is not None:
        summary, levels = built
        target = summary_file(part)
        # small row groups: a query reads one layer at one level, ~F x (blocks in the part)
        # rows, found through the footer index
        out = write_part(target.parent, target.name, summary,
                         {INDEX_KEY: json.dumps(summary_index(summary, levels))},
                         row_group_size=SUMMARY_ROW_GROUP)
    top = build_top_changed(table)
    if top is not None:
        target = top_file(part)
        write_part(target.parent, target.name, top, {}, row_group_size=SUMMARY_ROW_GROUP)
    return out


def remove_summary(part: Path) -> None:
    """Delete the summary and the top-changed index of raw part ``part``."""
    for f in (summary_file(part), top_file(part)):
        try:
            f.unlink()
        except FileNotFoundError:
            pass


class SummaryFile:
    """An open summary file with its footer index (cached per file version: see :func:`open`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pf = pq.ParquetFile(path)
        meta = self.pf.metadata.metadata or {}
        index = json.loads(meta[INDEX_KEY.encode()])
        self.levels: tuple[int, int] = tuple(index["levels"])  # type: ignore[assignment]
        self.ranges: dict[str, list[int]] = index["ranges"]
        self.bounds: dict[str, list[int]] = index["bounds"]
        md = self.pf.metadata
        self.rg_start = np.cumsum([0] + [md.row_group(i).num_rows
                                         for i in range(md.num_row_groups)])
        self._lock = threading.Lock()

    def rows(self, level: int, rank: int, layer: str, columns: list[str]
             ) -> dict[str, np.ndarray] | None:
        """The rows of one (level, rank, layer), as numpy columns (None if there are none)."""
        span = self.ranges.get(f"{level}|{rank}|{layer}")
        if span is None:
            return None
        a, b = span
        g0 = int(np.searchsorted(self.rg_start, a, side="right")) - 1
        g1 = int(np.searchsorted(self.rg_start, b, side="left"))
        with self._lock:  # a ParquetFile is not meant for concurrent reads
            t = self.pf.read_row_groups(list(range(g0, g1)), columns=columns)
        off = int(self.rg_start[g0])
        t = t.slice(a - off, b - a)
        return {c: t.column(c).to_numpy() for c in columns}


_open_cache: dict[tuple[str, int, int], SummaryFile | None] = {}
_open_lock = threading.Lock()


def open_summary(path: Path) -> SummaryFile | None:
    """The summary at ``path`` (cached while the file is unchanged), None if absent or
    unreadable (its part is then read raw)."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _open_lock:
        if key in _open_cache:
            return _open_cache[key]
    try:
        sf: SummaryFile | None = SummaryFile(path)
    except Exception:  # damaged, or written by an older version without the index
        sf = None
    with _open_lock:
        if len(_open_cache) > 256:  # forget files that compaction removed (frees their inodes)
            for k in [k for k in _open_cache if not Path(k[0]).exists()]:
                del _open_cache[k]
        _open_cache[key] = sf
    return sf

