"""The read side of a run directory: DuckDB over the complete Parquet parts, plus arrays.

:class:`StoreReader` is transport only (tables, SQL, arrays, objects, metadata). ``cs.open_run``
returns :class:`convscope.formats.reader.RunReader`, which adds each concern's queries; the names
``RunReader``, ``open_run``, ``TABLE_SOURCES`` and ``PROFILE_SHARES`` stay importable from here
(lazy re-exports). Every query lists the table's complete parts afresh, so a reader sees rows as
soon as a writer's part lands, while training still runs.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from ..errors import InvalidValueError, NotARunError, StoreError
from ..lazy import lazy_getattr
from .arrays import load_array
from .duck import check_select, connect, quote_ident, sql_path_list
from .layout import (
    ARRAYS_DIR,
    ARRAYS_TABLE,
    RUN_FILE,
    TABLES_DIR,
    check_name,
    dir_size,
    find_key_file,
    is_run_dir,
    read_json,
)
from .objects import OBJECTS_DIR, list_objects, load_object, object_path
from .parts import list_parts

# (also importable from here: RunReader, TABLE_SOURCES, PROFILE_SHARES; see _MOVED)
__all__ = ["StoreReader", "open_run", "list_runs", "RunInfo"]

#: Names that moved up to :mod:`convscope.formats` (the concerns' knowledge), re-exported here
#: lazily so that ``from convscope.store.reader import RunReader`` keeps working: the reader with
#: every concern's queries is :class:`convscope.formats.reader.RunReader`.
_MOVED: dict[str, tuple[str, str | None]] = {
    "RunReader": ("convscope.formats.reader", "RunReader"),
    "TABLE_SOURCES": ("convscope.formats.catalog", "TABLE_SOURCES"),
    "PROFILE_SHARES": ("convscope.formats.structure", "PROFILE_SHARES"),
}

__getattr__ = lazy_getattr(__name__, _MOVED, globals())


class StoreReader:
    """Transport-level read access to one run directory: metadata, tables and SQL, arrays,
    objects. Knows no concern: :class:`convscope.formats.reader.RunReader` adds each format's
    queries (what ``cs.open_run`` returns).

    Args:
        path: the run directory (the one holding ``run.json``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = _run_path(path)
        # DuckDB can read the run's files and nothing else (store/duck.py)
        self._con = connect(self.path)
        self._lock = threading.Lock()
        self._meta: dict[str, Any] | None = None

    # -- metadata ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def meta(self) -> dict[str, Any]:
        """The contents of ``run.json`` (re-read on every access, it changes at close)."""
        try:
            return read_json(self.path / RUN_FILE)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{self.path / RUN_FILE} is unreadable ({exc}).") from exc

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    # -- tables ------------------------------------------------------------------------------
    def table_names(self) -> list[str]:
        root = self.path / TABLES_DIR
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def tables(self) -> dict[str, int]:
        """``{table: rows}`` for every table with at least one complete part."""
        out = {}
        for t in self.table_names():
            listing = list_parts(self.path / TABLES_DIR / t)
            if listing.files:
                out[t] = listing.rows
        return out

    def has_table(self, name: str) -> bool:
        try:
            check_name(name, "table name")  # no path parts: never lists outside the run
        except InvalidValueError:
            return False
        return bool(list_parts(self.path / TABLES_DIR / name).files)

    @property
    def problems(self) -> list[str]:
        """Damaged files found in the run (they are left out of every query), named relative to
        the run directory: ``tables/<table>/<part> is not a readable Parquet file (...)``, and
        a ``tables/<name>`` entry that cannot be listed (a file, a dangling link, no
        permission) with what to do about it."""
        return _scan_tables(self.path)[1]

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run SQL in DuckDB with one view per table of the run (``SELECT * FROM scalars``)."""
        return self._run(sql, params, lambda r: r.df())

    def query_numpy(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
        """Like :meth:`query`, but ``{column: numpy array}`` (no DataFrame: faster for large
        numeric results)."""
        return self._run(sql, params, lambda r: r.fetchnumpy())

    def _run(self, sql: str, params: Sequence[Any] | None, fetch: Any) -> Any:
        with self._lock:
            cur = self._con.cursor()
        try:
            check_select(cur, sql)  # one SELECT: no COPY/ATTACH/SET/stacked statements
            for t in self.table_names():
                # views only for the tables the query names: a view over many parts costs
                # a schema read of each (union_by_name), ~20 ms for a large run's table
                if not re.search(rf"(?<![\w.]){re.escape(t)}(?![\w])", sql):
                    continue
                files = list_parts(self.path / TABLES_DIR / t).files
                if files:
                    cur.execute(
                        f"CREATE OR REPLACE TEMP VIEW {quote_ident(t)} AS SELECT * FROM "
                        f"read_parquet({sql_path_list(files)}, union_by_name = true)"
                    )
            return fetch(cur.execute(sql, params or []))
        except duckdb.CatalogException as exc:
            raise StoreError(f"{exc}. {self._missing_hint()}") from exc
        except duckdb.Error as exc:
            raise StoreError(f"query on run {self.name!r} failed: {exc}") from exc
        finally:
            cur.close()

    def _missing_hint(self) -> str:
        have = ", ".join(self.tables()) or "none"
        return f"Tables in this run: {have}."

    def table(self, name: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """A whole table as a DataFrame (empty DataFrame when the run has none)."""
        check_name(name, "table name")  # a name, never a path or SQL
        if not self.has_table(name):
            return pd.DataFrame()
        if isinstance(columns, str):
            columns = [columns]
        cols = "*" if columns is None else ", ".join(quote_ident(c) for c in columns)
        return self.query(f"SELECT {cols} FROM {quote_ident(name)}")

    # -- arrays ------------------------------------------------------------------------------
    def arrays(self, kind: str | None = None) -> pd.DataFrame:
        """Index of stored arrays (newest row per kind/key), optionally of one kind."""
        if not self.has_table(ARRAYS_TABLE):
            return pd.DataFrame(columns=["kind", "key", "file", "shape", "dtype", "step", "meta"])
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        df = self.query(
            f"""SELECT * FROM {ARRAYS_TABLE} {where}
                QUALIFY row_number() OVER (PARTITION BY kind, key ORDER BY wall_time DESC) = 1
                ORDER BY kind, key""",
            params,
        )
        df["shape"] = df["shape"].map(lambda s: tuple(json.loads(s)))
        df["meta"] = df["meta"].map(json.loads)
        return df

    def array(self, kind: str, key: str, mmap: bool = False) -> np.ndarray:
        return load_array(self.path, kind, key, mmap=mmap)

    # -- objects -----------------------------------------------------------------------------
    def object(self, kind: str, key: str) -> Any:
        """A JSON document stored with ``run.log_object(kind, key, obj)``."""
        return load_object(self.path, kind, key)

    def objects(self, kind: str) -> list[str]:
        """Keys of the stored JSON documents of one kind (file-name form)."""
        return list_objects(self.path, kind)

    def has_object(self, kind: str, key: str) -> bool:
        path = object_path(self.path, kind, key)
        return find_key_file(self.path, path.parent, key, ".json").is_file()

    # -- summary -----------------------------------------------------------------------------
    def size_bytes(self) -> int:
        return dir_size(self.path)

    def info(self) -> RunInfo:
        return RunInfo.of(self.path)


def open_run(path: str | Path) -> Any:
    """Open a run directory for reading (``cs.open_run("runs/my-run").scalars()``): a
    :class:`convscope.formats.reader.RunReader` (this name is kept for imports from
    ``convscope.store``)."""
    from ..formats.reader import open_run as _open

    return _open(path)


def _as_path(path: Any, what: str) -> Path:
    """``path`` as an absolute, resolved Path, or a :class:`ConvscopeError` saying what to pass
    (None, numbers, empty strings and impossible paths would otherwise give raw tracebacks)."""
    example = "cs.open_run('runs/my-run')" if what == "run" else "convscope.store.list_runs('runs')"
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidValueError(f"a {what} path must be a str or pathlib.Path, not "
                                f"{type(path).__name__} ({path!r}): e.g. {example}.")
    raw = os.fspath(path)
    if not isinstance(raw, str):
        raw = os.fsdecode(raw)
    if not raw.strip():
        raise NotARunError(f"the {what} path is empty: pass a directory, e.g. {example}.")
    try:
        out = Path(raw).expanduser().resolve()
        out.stat()  # "file name too long", NUL bytes, ...
    except FileNotFoundError:
        return out
    except (OSError, ValueError, RuntimeError) as exc:
        raise NotARunError(f"{path!r} is not a usable {what} path ({exc}): pass an existing "
                           f"directory, e.g. {example}.") from exc
    return out


def _run_path(path: Any) -> Path:
    out = _as_path(path, "run")
    try:
        ok = is_run_dir(out)
    except (OSError, ValueError) as exc:
        raise NotARunError(f"{out} cannot be read ({exc}): check its permissions.") from exc
    if not ok:
        raise NotARunError(_not_a_run_message(out))
    return out


def _not_a_run_message(path: Path) -> str:
    if not path.exists():
        return f"{path} does not exist: pass a run directory (one that holds run.json)."
    if path.is_dir():
        runs = [p.name for p in sorted(path.iterdir()) if is_run_dir(p)]
        if runs:
            shown = ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")
            return (
                f"{path} is a logdir holding {len(runs)} runs ({shown}), not a run: "
                f"open one of them, e.g. cs.open_run('{path / runs[0]}')."
            )
    return f"{path} is not a convscope run directory (it has no run.json)."


@dataclass
class RunInfo:
    """A line of the run list: name, creation time, size and what the run contains."""

    name: str
    path: Path
    created: str = ""
    ended: str | None = None
    status: str = "running"
    size_bytes: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    array_kinds: list[str] = field(default_factory=list)
    object_kinds: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, path: Path) -> RunInfo:
        path = Path(path)
        info = cls(name=path.name, path=path)
        try:
            meta = read_json(path / RUN_FILE)
            if not isinstance(meta, dict):
                raise ValueError(f"it holds a {type(meta).__name__}, not an object")
            info.created = str(meta.get("created", ""))
            info.ended = meta.get("ended")
            info.status = meta.get("status") or ("ended" if info.ended else "running")
            info.config = dict(meta.get("config") or {})
            if not info.ended and info.status == "running":
                # "running" only while a writer holds the run's lock (or its pid lives)
                from .layout import writer_alive

                if writer_alive(path, meta) is False:
                    # killed or crashed without close: what it flushed is kept, and
                    # Run(..., resume=True) continues the run
                    info.status = "died"
        except (OSError, ValueError) as exc:
            info.problems.append(f"run.json is unreadable ({exc})")
        except RecursionError:  # e.g. [[[[...]]]] nested deeper than json can parse
            info.problems.append("run.json is damaged (nested too deeply to parse): restore it "
                                 "from a backup or record the run again.")
        info.tables, problems = _scan_tables(path)
        info.problems.extend(problems)
        for sub, target in ((ARRAYS_DIR, info.array_kinds), (OBJECTS_DIR, info.object_kinds)):
            root = path / sub
            if root.is_dir():
                target.extend(sorted(p.name for p in root.iterdir() if p.is_dir()))
        info.size_bytes = dir_size(path)
        return info

    @property
    def created_dt(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.created)
        except ValueError:
            return None


def _table_entry_problem(entry: Path) -> str | None:
    """Why ``tables/<name>`` cannot be listed as a table directory (a file, a dangling link,
    no permission), or None when it is a readable directory."""
    rel = f"{TABLES_DIR}/{entry.name}"
    try:
        if entry.is_symlink() and not entry.exists():
            return (f"{rel} is a dangling link (to {os.readlink(entry)}): restore the table "
                    "directory or remove the link.")
        if not entry.is_dir():
            return (f"{rel} is not a directory: restore the table directory from a backup "
                    "or move the file away.")
        with os.scandir(entry) as it:
            next(it, None)
    except OSError as exc:
        return f"{rel} is unreadable ({exc.strerror or exc}): check its permissions."
    return None


def _scan_tables(run_dir: Path) -> tuple[dict[str, int], list[str]]:
    """``({table: rows}, problems)`` over every entry of the run's ``tables/`` directory: rows
    of the tables with complete parts; damaged parts and entries that are not readable table
    directories, each named relative to the run directory (``tables/...``)."""
    root = Path(run_dir) / TABLES_DIR
    try:
        entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return {}, []
    except OSError as exc:
        return {}, [f"{TABLES_DIR}/ is unreadable ({exc.strerror or exc}): check its "
                    "permissions."]
    rows: dict[str, int] = {}
    problems: list[str] = []
    for entry in entries:
        why = _table_entry_problem(entry)
        if why is not None:
            problems.append(why)
            continue
        listing = list_parts(entry)
        for p in listing.problems:  # "<table>/<part> ..." or "<part>: ..."
            rel = p if p.startswith(f"{entry.name}/") else f"{entry.name}/{p}"
            problems.append(f"{TABLES_DIR}/{rel}")
        if listing.files:
            rows[entry.name] = listing.rows
    return rows, problems


def list_runs(logdir: str | Path) -> list[RunInfo]:
    """Every run directly under ``logdir`` (or ``logdir`` itself if it is a run), by name."""
    root = _as_path(logdir, "logdir")
    if is_run_dir(root):
        return [RunInfo.of(root)]
    if not root.is_dir():
        return []
    return [RunInfo.of(p) for p in sorted(root.iterdir()) if p.is_dir() and is_run_dir(p)]
