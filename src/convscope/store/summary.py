"""Side files of compacted parts (summaries, indexes), generically: where they live, how they are
written and removed with their part, and how a summary with a row-range footer index is read.

Which tables get side files, and what is in them, is the table owner's business
(:class:`convscope.store.hooks.TableHooks`, registered by :mod:`convscope.formats`): for a
compacted part ``tables/<table>/part-X.parquet`` each side file of the table's hooks lives at
``tables/<table>/_summary/<prefix>part-X.parquet`` (:func:`side_file`). They are written in the
hooks' order, the last one as the marker of a complete set, and belong to the part of the same
name: a side file is used only while that part is visible, and compaction deletes it with the
part. Parts without side files (written while training runs, or by an older version) are read
raw, so queries stay exact either way.

A *summary* (the side file with prefix ``""``, :func:`summary_file`) is sorted by
(level, layer, rank, ...) and carries, in its footer under :data:`INDEX_KEY`, the row range of
each (level, rank, layer) and each (rank, layer)'s step bounds (:func:`summary_index`), so a
query reads just its rows' row groups (:class:`SummaryFile`, :func:`open_summary`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .hooks import SideFile, registered_tables, table_hooks

__all__ = ["SUMMARY_DIR", "INDEX_KEY", "SUMMARY_ROW_GROUP", "side_file", "summary_file",
           "summary_index", "write_side_files", "remove_side_files", "write_summary",
           "remove_summary", "SummaryFile", "open_summary"]

SUMMARY_DIR = "_summary"
INDEX_KEY = "convscope.index"  # footer metadata: see summary_index
SUMMARY_ROW_GROUP = 8192

#: names that moved to the format owning the summarised table; importable from here (lazily:
#: the store imports no format at module level) for code written against earlier versions
_MOVED = {name: "convscope.formats.training_summary" for name in (
    "TOP_K", "TOP_PREFIX", "STEPS_PER_BLOCK", "top_file", "build_filter_summary",
    "build_top_changed")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    if name == "SUMMARIZED_TABLES":  # the tables whose compacted parts get side files
        return tuple(t for t, h in registered_tables().items() if h.side_files)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def side_file(part: Path, prefix: str = "") -> Path:
    """Where the side file ``prefix`` of raw part ``part`` lives."""
    return part.parent / SUMMARY_DIR / (prefix + part.name)


def summary_file(part: Path) -> Path:
    """Where the summary (the side file without prefix) of raw part ``part`` lives."""
    return side_file(part, "")


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


def _side_files(part: Path, sides: Sequence[SideFile] | None) -> Sequence[SideFile]:
    if sides is not None:
        return sides
    return table_hooks(part.parent.name).side_files


def write_side_files(part: Path, table: pa.Table, sides: Sequence[SideFile] | None = None
                     ) -> list[Path]:
    """Build and durably write, in order, the side files of raw part ``part`` holding
    ``table`` (``sides``: default, those its table's hooks register); returns the paths
    written (a builder that returns None writes nothing)."""
    from .writer import write_part

    out = []
    for side in _side_files(part, sides):
        built = side.build(table)
        if built is None:
            continue
        rows, meta = built
        target = side_file(part, side.prefix)
        out.append(write_part(target.parent, target.name, rows, dict(meta),
                              row_group_size=side.row_group_size))
    return out


def remove_side_files(part: Path, sides: Sequence[SideFile] | None = None) -> None:
    """Delete the side files of raw part ``part`` (``sides`` as in :func:`write_side_files`)."""
    for side in _side_files(part, sides):
        side_file(part, side.prefix).unlink(missing_ok=True)


def write_summary(part: Path, table: pa.Table) -> Path | None:
    """Write the side files of raw part ``part`` (its table's hooks); returns the summary's
    path (None when none was written). Kept for code written against earlier versions: see
    :func:`write_side_files`."""
    target = summary_file(part)
    return target if target in write_side_files(part, table) else None


def remove_summary(part: Path) -> None:
    """Delete the side files of raw part ``part`` (see :func:`remove_side_files`)."""
    remove_side_files(part)


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

