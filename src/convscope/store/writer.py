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

from ..errors import InvalidValueError, StoreError
from .hooks import load_providers, table_hooks
from .layout import (
    ROW_GROUP_ROWS,
    TABLES_DIR,
    check_name,
    fsync_dir,
    temp_path,
)

__all__ = ["PartWriter", "write_part", "writer_id"]

Columns = Mapping[str, Sequence[Any]]
_COMPRESSION = "zstd"


def writer_id(rank: int | None = None) -> str:
    """``r<rank>-p<pid>-<random>``: unique per process and writer, sortable by rank."""
    r = 0 if rank is None else int(rank)
    # 32 random bits: a part name is never reused (a compacted part names the parts it replaced
    # for good, so a new part under a replaced name would stay hidden)
    return f"r{r:03d}-p{os.getpid()}-{os.urandom(4).hex()}"


def write_part(
    table_dir: Path, name: str, table: pa.Table, metadata: Mapping[str, str] | None = None,
    row_group_size: int = ROW_GROUP_ROWS,
) -> Path:
    """Write ``table`` durably as ``table_dir/name`` (temp file, fsync, rename, fsync dir),
    sorted by the ``sort_by`` columns of the hooks registered for table ``table_dir.name``
    (:mod:`convscope.store.hooks`), so Parquet row-group statistics let DuckDB skip the rest."""
    table_dir.mkdir(parents=True, exist_ok=True)
    keys = [k for k in table_hooks(table_dir.name).sort_by if k in table.column_names]
    if keys:
        table = table.sort_by([(k, "ascending") for k in keys])
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    final = table_dir / name
    tmp = temp_path(final)
    # Dictionary encoding pays off for names and keys (layer, tag, step), not for measured
    # floats, which compress better byte-stream-split (~2.6 instead of ~5.5 bytes per float32).
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    others = [f.name for f in table.schema if f.name not in floats]
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression=_COMPRESSION, row_group_size=row_group_size,
                           use_dictionary=others or False, use_byte_stream_split=floats or False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(table_dir)
    return final


@dataclass
class _Buffer:
    """Rows of one table not yet written: runs of column dicts of one schema each."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0
    _open: dict[str, list[Any]] | None = None  # the last chunk, while Python lists extend it
    _open_types: tuple[Any, ...] | None = None

    def add(self, cols: Mapping[str, Any], n: int, types: tuple[Any, ...]) -> None:
        """Add validated columns (``types``: their arrow types, in order); Python lists extend
        the last chunk when it has the same columns of the same types."""
        if self.rows == 0:
            self.since = time.monotonic()
        if not all(isinstance(v, list) for v in cols.values()):
            self.chunks.append(dict(cols))
            self._open = None
        elif self._open is not None and self._open_types == types:
            for k, v in cols.items():
                self._open[k].extend(v)
        else:
            self._open = {k: list(v) for k, v in cols.items()}
            self._open_types = types
            self.chunks.append(self._open)
        self.rows += n

    def to_table(self) -> pa.Table:
        tables = [pa.table(dict(c)) for c in self.chunks]
        if len(tables) == 1:
            return tables[0]
        return pa.concat_tables(tables, promote_options="permissive")

    def salvage(self) -> tuple[pa.Table | None, list[str]]:
        """The chunks that convert and fit one schema, and a description of the others (a
        batch that passed :meth:`PartWriter.append`'s checks but still fails to convert)."""
        good: list[pa.Table] = []
        bad: list[str] = []
        schema: pa.Schema | None = None
        for c in self.chunks:
            try:
                t = pa.table(dict(c))
                unified = t.schema if schema is None else pa.unify_schemas(
                    [schema, t.schema], promote_options="permissive")
                merged = pa.concat_tables(good + [t], promote_options="permissive")
            except Exception as exc:  # arrow raises several types
                n = len(next(iter(c.values()))) if c else 0
                bad.append(f"{n} row(s) with columns {sorted(c)} ({exc})")
                continue
            good, schema = [merged], unified
        return (good[0] if good else None), bad


_I64 = (-(2**63), 2**63 - 1)


def _plain_type(v: Sequence[Any]) -> Any:
    """The arrow type ``pa.array(v)`` gives a short list of one plain Python type (float, int
    in int64, str, bool), found without converting it; None for anything else."""
    if not v:
        return None
    t0 = type(v[0])
    if t0 is float:
        return pa.float64() if all(type(x) is float for x in v) else None
    if t0 is int:
        return pa.int64() if all(type(x) is int and _I64[0] <= x <= _I64[1] for x in v) \
            else None
    if t0 is str:
        if not all(type(x) is str for x in v):
            return None
        try:
            for x in v:
                x.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return pa.string()
    if t0 is bool:
        return pa.bool_() if all(type(x) is bool for x in v) else None
    return None


def _column_type(table: str, name: str, v: Any) -> tuple[Any, Any]:
    """``(value to buffer, arrow type)`` of one column handed to ``append``; raises
    InvalidValueError naming the column when arrow cannot store it."""
    try:
        if isinstance(v, pa.ChunkedArray | pa.Array):
            return v, v.type
        if isinstance(v, np.ndarray):
            if v.ndim != 1:
                raise ValueError(f"a column must be 1-d, this array has shape {v.shape}")
            if v.dtype.kind in "biuf":  # numbers: copy now (the caller may reuse its buffer)
                return v.copy(), pa.from_numpy_dtype(v.dtype)
            arr = pa.array(v)  # strings, objects: converted (and copied) once, here
            return arr, arr.type
        if isinstance(v, list | tuple):
            if len(v) <= 1024:
                t = _plain_type(v)
                if t is not None:
                    return list(v), t
            arr = pa.array(v)
            if len(v) > 1024:  # long: keep the converted column instead of converting twice
                return arr, arr.type
            return list(v), arr.type
        arr = pa.array(v)
        return arr, arr.type
    except InvalidValueError:
        raise
    except Exception as exc:  # arrow / numpy raise several types
        raise InvalidValueError(
            f"column {name!r} of table {table!r} cannot be stored ({type(exc).__name__}: "
            f"{exc}): pass numbers that fit in 64 bits, strings or bools, one type per column "
            "(a 1-d numpy array or a list)."
        ) from exc


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
        self._schemas: dict[str, pa.Schema] = {}
        self._last_sig: dict[str, tuple[Any, ...]] = {}
        self._schema_lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = False
        self.rows_written = 0
        self.parts_written = 0
        # the tables' hooks (part sort orders) registered before the background thread needs
        # them: importing their providers there could wait on an import this thread holds
        load_providers()
        self._thread = threading.Thread(
            target=self._loop, name=f"convscope-writer-{self.writer}", daemon=True
        )
        self._thread.start()

    # -- caller side -------------------------------------------------------------------------
    def append(self, table: str, columns: Columns | pa.Table | Any,
               types: Mapping[str, Any] | None = None) -> None:
        """Queue rows for ``table``: a mapping of column name to equal-length sequences (lists,
        numpy arrays), a ``pyarrow.Table`` or a ``pandas.DataFrame`` (index dropped).

        Every column is checked here (it must convert to one arrow type that fits the
        table's earlier rows), so a bad value raises :class:`InvalidValueError` at this call
        and is never queued. ``types`` (column -> ``pyarrow.DataType``) skips that conversion
        for columns the caller has already checked (``Run.log_scalars``)."""
        self._raise_pending()
        if hasattr(columns, "to_numpy") and hasattr(columns, "columns"):  # pandas DataFrame
            columns = pa.Table.from_pandas(columns, preserve_index=False)
        if isinstance(columns, pa.Table):
            columns = {name: columns.column(name) for name in columns.column_names}
        if self._closed:
            raise StoreError("this run is closed: open a new Run (or Run(..., resume=True)).")
        check_name(table, "table name")
        try:
            lengths = {len(v) for v in columns.values()}
        except TypeError as exc:
            raise InvalidValueError(
                f"columns for table {table!r} must be sequences (lists, numpy arrays): {exc}."
            ) from exc
        if len(lengths) > 1:
            raise StoreError(
                f"columns for table {table!r} have different lengths {sorted(lengths)}: "
                "pass one value per row in every column."
            )
        n = lengths.pop() if lengths else 0
        if n:
            cols, types = self._validate(table, columns, types)
            with self._room:
                while self._queued_rows and self._queued_rows + n > self.max_queued_rows:
                    self._room.wait(timeout=1.0)
                    self._raise_pending()
                self._queued_rows += n
            self._queue.put(("rows", (table, cols, n, types)))

    def _validate(self, table: str, columns: Mapping[str, Any],
                  types: Mapping[str, Any] | None) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """Check at the call that every column converts to arrow and fits the types this
        writer saw before for the table: a bad value raises here, naming its column, instead
        of failing a later write with valid rows in it."""
        cols: dict[str, Any] = {}
        typed: list[tuple[str, Any]] = []
        for name, v in columns.items():
            if not isinstance(name, str):
                raise InvalidValueError(
                    f"column names of table {table!r} must be strings, got {name!r}.")
            if types is not None and name in types:
                cols[name] = list(v) if isinstance(v, tuple) else v
                typed.append((name, types[name]))
            else:
                cols[name], t = _column_type(table, name, v)
                typed.append((name, t))
        sig = tuple(typed)
        if self._last_sig.get(table) == sig:  # same columns and types as last time: fits
            return cols, tuple(t for _, t in typed)
        schema = pa.schema(typed)
        with self._schema_lock:
            known = self._schemas.get(table)
            if known is None or not known.equals(schema):
                try:
                    self._schemas[table] = schema if known is None else pa.unify_schemas(
                        [known, schema], promote_options="permissive")
                except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                    raise InvalidValueError(
                        f"rows for table {table!r} do not match its earlier rows ({exc}): "
                        "log each column with one type throughout (e.g. always numbers or "
                        "always strings), or use another table name."
                    ) from exc
            self._last_sig[table] = sig
        return cols, tuple(t for _, t in typed)

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
                    table, cols, n, types = payload
                    with self._room:
                        self._queued_rows -= n
                        self._room.notify_all()
                    buf = self._buffers.setdefault(table, _Buffer())
                    buf.add(cols, n, types)
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
                if kind == "flush":
                    payload.set()
                elif kind == "stop":
                    return

    def _next_wait(self) -> float:
        if not self._buffers:
            return 1.0
        oldest = min(b.since for b in self._buffers.values())
        return max(0.01, self.max_age_s - (time.monotonic() - oldest))

    def _write_due(self, force: bool) -> None:
        """Write the tables that are due; one table's failure neither stops the others nor
        loses their rows (the first failure is reported on the caller side)."""
        now = time.monotonic()
        error: BaseException | None = None
        for table in list(self._buffers):
            if force or now - self._buffers[table].since >= self.max_age_s:
                try:
                    self._write_table(table)
                except Exception as exc:  # reported on the caller side
                    error = error or exc
        if error is not None:
            raise error

    def _write_table(self, table: str) -> None:
        buf = self._buffers.pop(table, None)
        if buf is None or buf.rows == 0:
            return
        bad: list[str] = []
        try:
            arrow: pa.Table | None = buf.to_table()
        except Exception:  # write what converts, report the rest
            arrow, bad = buf.salvage()
        if arrow is not None and arrow.num_rows:
            name = f"part-{self.writer}-{next(self._seq):06d}.parquet"
            write_part(self.run_dir / TABLES_DIR / table, name, arrow)
            self.rows_written += arrow.num_rows
            self.parts_written += 1
        if bad:
            raise StoreError(
                f"table {table!r}: {'; '.join(bad)} could not be written (the table's other "
                "rows were): log one type per column throughout."
            )
