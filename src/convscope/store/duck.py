"""The DuckDB connection settings every reader of run tables uses, and the only ways SQL text is
built from names: validated identifiers, quoted literals of file paths, and a statement check.

Security model (issue 12): a connection from :func:`connect` cannot touch the file system
outside one directory (the run), cannot install or load extensions, cannot reach the network,
and cannot change any of that afterwards:

- ``allowed_directories = [<run>/]`` then ``enable_external_access = false``: ``read_text``,
  ``read_csv``, ``read_parquet``, ``glob``, ``COPY``, ``ATTACH``, ``EXPORT`` and URLs are refused
  for every path outside the run (``..`` in a path is refused too); pandas replacement scans
  are off;
- ``autoinstall_known_extensions`` / ``autoload_known_extensions`` / community extensions off;
- no spilling to a temporary directory (``temp_directory = ''``) and no persistent secrets;
- ``lock_configuration = true`` last, so ``SET``/``RESET`` of any option fails afterwards.

Inside the run the settings still allow writes (DuckDB grants read *and* write under an allowed
directory), so :func:`check_select` additionally refuses any statement that is not a single
``SELECT`` (``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE`` and ``SUMMARIZE`` are SELECTs): no
``COPY``, ``ATTACH``, ``INSTALL``, ``LOAD``, ``SET``, ``PRAGMA``, ``CALL`` or stacked statements.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Collection, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import duckdb

from ..errors import InvalidValueError, StoreError, suggest

__all__ = ["connect", "check_select", "identifier", "integer", "quote_ident", "sql_string",
           "sql_path_list"]

# settings that can only be given when the database is created
_STARTUP = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
            "allow_community_extensions": False, "allow_persistent_secrets": False}


def connect(root: str | PathLike[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that can read files under ``root`` only (none at all
    without ``root``: registered Arrow tables and temporary tables still work), locked so that
    no statement can widen that (module docstring).

    Parquet's min/max statistics leave NaN out, and DuckDB's statistics propagation then
    concludes that a float column holds no NaN: ``isnan(x)`` is folded to false and NaN rows
    (e.g. ``cos_prev`` at a filter's first snapshot) pass ``NOT isnan(x)``. That optimizer is
    switched off (for every cursor of the connection); the Parquet scan still skips row groups
    by their statistics, so a *positive* ``WHERE isnan(x)`` still skips row groups whose
    min/max hold no NaN: count NaN with ``sum(isnan(x)::INT)`` instead (docs/tracking.md).
    """
    con = duckdb.connect(":memory:", config=dict(_STARTUP))
    try:
        con.execute("SET GLOBAL disabled_optimizers = 'statistics_propagation'")  # cursors too
        con.execute("SET GLOBAL temp_directory = ''")
        if root is not None:
            # a trailing slash, or "/runs/a" would also allow "/runs/ab"
            allowed = str(Path(root).resolve()).rstrip("/") + "/"
            con.execute(f"SET GLOBAL allowed_directories = [{sql_string(allowed)}]")
        con.execute("SET GLOBAL enable_external_access = false")
        con.execute("SET GLOBAL lock_configuration = true")
    except duckdb.Error as exc:  # an older DuckDB without these settings: refuse, never open
        con.close()
        raise StoreError(f"cannot lock down the DuckDB connection ({exc}): install "
                         "duckdb >= 1.1 (pip install -U duckdb).") from exc
    return con


def check_select(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise :class:`StoreError` unless ``sql`` is exactly one ``SELECT`` statement."""
    if not isinstance(sql, str):
        raise StoreError(f"a query must be SQL text, not {type(sql).__name__}: pass a string "
                         "such as \"SELECT * FROM scalars\".")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise StoreError(f"the query is not valid SQL ({exc}): fix its syntax.") from exc
    kinds = [s.type for s in statements]
    if len(kinds) != 1 or kinds[0] != duckdb.StatementType.SELECT:
        names = ", ".join(k.name for k in kinds) or "none"
        raise StoreError(f"a run is queried with a single SELECT statement (got {len(kinds)} "
                         f"statement(s): {names}): COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA "
                         "and stacked statements are refused. Read with SELECT and export the "
                         "resulting DataFrame from Python instead.")


_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def identifier(name: Any, allowed: Collection[str], what: str = "column") -> str:
    """``name`` if it is one of ``allowed`` (and a plain identifier), else
    :class:`InvalidValueError` naming the allowed values. The only way a name from a caller
    or a request becomes part of SQL text."""
    if not isinstance(name, str) or name not in allowed or not _IDENT_RE.fullmatch(name):
        shown = ", ".join(repr(a) for a in allowed)
        hint = suggest(name, allowed) if isinstance(name, str) else ""
        raise InvalidValueError(f"unknown {what} {name!r}: use one of {shown}.{hint}")
    return name


def integer(value: Any, what: str) -> int:
    """``int(value)`` for a finite real number (Python or numpy; fractions truncate as with
    ``int``), else :class:`InvalidValueError`: strings, bools, None, NaN and inf are refused."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            return int(value)
        except (ValueError, OverflowError):
            pass
    raise InvalidValueError(f"{what} must be an integer, not {value!r}: pass e.g. 10.")


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (embedded quotes doubled). For names read from disk
    (table directories): names from callers go through :func:`identifier`."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise StoreError(f"{name!r} cannot name a table or column: use letters, digits and "
                         "'._=+-'.")
    return '"' + name.replace('"', '""') + '"'


def sql_string(value: str) -> str:
    """A single-quoted SQL string literal (embedded quotes doubled; DuckDB string literals
    have no backslash escapes)."""
    if "\x00" in value:
        raise StoreError(f"{value!r} holds a NUL byte: it cannot name a file.")
    return "'" + value.replace("'", "''") + "'"


def sql_path_list(files: Sequence[str | PathLike[str]]) -> str:
    """``['a.parquet', 'b.parquet']`` as SQL text, for ``read_parquet`` in a view (views take
    no bound parameters)."""
    return "[" + ", ".join(sql_string(str(f)) for f in files) + "]"
