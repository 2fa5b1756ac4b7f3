"""Append-only Parquet part writer with a background flusher.

Callers hand rows to :meth:`PartWriter.append`; a bounded queue carries them to one background
thread that buffers them per table and writes a part file when a table's buffer holds
``max_rows`` rows or is older than ``max_age_s`` seconds, and whenever :meth:`flush` is called.
:meth:`flush` and :meth:`close` block until everything appended before them is durable on disk.

Part files are named ``part-<writer_id>-<seq>.parquet``; the writer id carries the process's
rank and pid, so several processes (DDP ranks, a training process and an analysis job) write one
run side by side without locks.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from .layout import ROW_GROUP_ROWS, TABLE_SORT, TABLES_DIR, check_name, fsync_dir

__all__ = ["PartWriter", "write_part", "writer_id"]

Columns = Mapping[str, Sequence[Any]]
_COMPRESSION = "zstd"


def writer_id(rank: int | None = None) -> str:
    """``r<rank>-p<pid>-<random>``: unique per process and writer, sortable by rank."""
    r = 0 if rank is None else int(rank)
    return f"r{r:03d}-p{os.getpid()}-{os.urandom(2).hex()}"


def write_part(
    table_dir: Path, name: str, table: pa.Table, metadata: Mapping[str, str] | None = None,
    row_group_size: int = ROW_GROUP_ROWS,
) -> Path:
    """Write ``table`` durably as ``table_dir/name`` (temp file, fsync, rename, fsync dir)."""
    table_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in TABLE_SORT.get(table_dir.name, ()) if k in table.column_names]
    if keys:
        table = table.sort_by([(k, "ascending") for k in keys])
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    final = table_dir / name
    tmp = table_dir / f".{name}.tmp"
    # Dictionary encoding pays off for names and keys (layer, tag, step), not for measured
    # floats, which compress better byte-stream-split (~2.6 instead of ~5.5 bytes per float32).
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    others = [f.name for f in table.schema if f.name not in floats]
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression=_COMPRESSION, row_group_size=row_group_size,
                       use_dictionary=others or False, use_byte_stream_split=floats or False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(table_dir)
    return final


@dataclass
class _Buffer:
    """Rows of one table not yet written: runs of same-keyed column dicts."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0
    _open: dict[str, list[Any]] | None = None  # the last chunk, while Python lists extend it

    def add(self, cols: Mapping[str, Sequence[Any]], n: int) -> None:
        if self.rows == 0:
            self.since = time.monotonic()
        if not all(isinstance(v, list | tuple) for v in cols.values()):
            # numpy / arrow columns: one copy now (the caller may reuse its buffers), and arrow
            # converts them later without another
            self.chunks.append(
                {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in cols.items()}
            )
            self._open = None
        elif self._open is not None and self._open.keys() == cols.keys():
            for k, v in cols.items():
                self._open[k].extend(v)
        else:
            self._open = {k: list(v) for k, v in cols.items()}
            self.chunks.append(self._open)
        self.rows += n

    def to_table(self) -> pa.Table:
        tables = [pa.table(dict(c)) for c in self.chunks]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables, promote_options="permissive")


class PartWriter:
    """Background writer of Parquet parts for one process.

    Args:
        run_dir: the run directory.
        writer: the writer id used in part names (default :func:`writer_id`).
        max_rows: rows a table buffers before it is written.
        max_age_s: seconds a table's oldest unwritten row may wait (keeps the dashboard live).
        queue_size: bound on queued ``append`` calls; a full queue makes ``append`` wait
            (back-pressure instead of unbounded memory).
        max_queued_rows: bound on rows waiting in the queue; ``append`` waits above it (a batch
            larger than the bound is still accepted when the queue is empty).
    """

    def __init__(
        self,
        run_dir: Path,
        writer: str | None = None,
        *,
        max_rows: int = 100_000,
        max_age_s: float = 2.0,
        queue_size: int = 10_000,
        max_queued_rows: int = 2_000_000,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.writer = writer or writer_id()
        self.max_rows = int(max_rows)
        self.max_age_s = float(max_age_s)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=queue_size)
        self.max_queued_rows = int(max_queued_rows)
        self._queued_rows = 0
        self._room = threading.Condition()
        self._buffers: dict[str, _Buffer] = {}
        self._seq = itertools.count()
        self._error: BaseException | None = None
        self._closed = False
        self.rows_written = 0
        self.parts_written = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"convscope-writer-{self.writer}", daemon=True
        )
        self._thread.start()

    # -- caller side -------------------------------------------------------------------------
    def append(self, table: str, columns: Columns | pa.Table | Any) -> None:
        """Queue rows for ``table``: a mapping of column name to equal-length sequences (lists,
        numpy arrays), a ``pyarrow.Table`` or a ``pandas.DataFrame`` (index dropped)."""
        self._raise_pending()
        if hasattr(columns, "to_numpy") and hasattr(columns, "columns"):  # pandas DataFrame
            columns = pa.Table.from_pandas(columns, preserve_index=False)
        if isinstance(columns, pa.Table):
            columns = {name: columns.column(name) for name in columns.column_names}
        if self._closed:
            raise StoreError("this run is closed: open a new Run (or Run(..., resume=True)).")
        check_name(table, "table name")
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise StoreError(
                f"columns for table {table!r} have different lengths {sorted(lengths)}: "
                "pass one value per row in every column."
            )
        n = lengths.pop() if lengths else 0
        if n:
            with self._room:
                while self._queued_rows and self._queued_rows + n > self.max_queued_rows:
                    self._room.wait(timeout=1.0)
                    self._raise_pending()
                self._queued_rows += n
            self._queue.put(("rows", (table, columns, n)))

    def flush(self, timeout: float | None = None) -> None:
        """Block until every row appended so far is in a complete part file on disk."""
        if self._closed:
            self._raise_pending()
            return
        done = threading.Event()
        self._queue.put(("flush", done))
        if not done.wait(timeout):
            raise StoreError(f"flush did not finish within {timeout} s: the disk may be stuck.")
        self._raise_pending()

    def close(self) -> None:
        """Flush, stop the background thread; further appends raise."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(("stop", None))
        self._thread.join()
        self._raise_pending()

    @property
    def closed(self) -> bool:
        return self._closed

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise StoreError(f"writing the run directory failed: {err!r}") from err

    # -- background side ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                kind, payload = self._queue.get(timeout=self._next_wait())
            except queue.Empty:
                self._write_due(force=False)
                continue
            try:
                if kind == "rows":
                    table, cols, n = payload
                    with self._room:
                        self._queued_rows -= n
                        self._room.notify_all()
                    buf = self._buffers.setdefault(table, _Buffer())
                    buf.add(cols, n)
                    if buf.rows >= self.max_rows:
                        self._write_table(table)
                    else:
                        self._write_due(force=False)
                elif kind == "flush":
                    self._write_due(force=True)
                    payload.set()
                elif kind == "stop":
                    self._write_due(force=True)
                    return
            except BaseException as exc:  # keep the thread alive; report on the caller side
                self._error = exc
                self._buffers.clear()
                if kind == "flush":
                    payload.set()

    def _next_wait(self) -> float:
        if not self._buffers:
            return 1.0
        oldest = min(b.since for b in self._buffers.values())
        return max(0.01, self.max_age_s - (time.monotonic() - oldest))

    def _write_due(self, force: bool) -> None:
        now = time.monotonic()
        for table in list(self._buffers):
            if force or now - self._buffers[table].since >= self.max_age_s:
                self._write_table(table)

    def _write_table(self, table: str) -> None:
        buf = self._buffers.pop(table, None)
        if buf is None or buf.rows == 0:
            return
        arrow = buf.to_table()
        name = f"part-{self.writer}-{next(self._seq):06d}.parquet"
        write_part(self.run_dir / TABLES_DIR / table, name, arrow)
        self.rows_written += arrow.num_rows
        self.parts_written += 1
