"""The run directory's transport: Parquet part tables written in the background, arrays,
objects, DuckDB reads. Knows no concern (those are :mod:`convscope.formats`).

Write side: :class:`PartWriter` (used by :class:`convscope.Run`). Read side: :func:`open_run`,
:class:`RunReader`, :func:`list_runs`. Maintenance: :func:`compact_run`.

``RunReader``, ``open_run`` and ``TABLE_SOURCES`` live in :mod:`convscope.formats` (the reader
composes each format's queries); they are re-exported here lazily, so ``from convscope.store
import open_run`` keeps working.
"""

from ..lazy import lazy_getattr
from .arrays import load_array, save_array
from .layout import SCHEMA_VERSION, is_run_dir
from .parts import compact_run, compact_table, list_parts
from .reader import RunInfo, StoreReader, list_runs, open_run
from .writer import PartWriter, write_part, writer_id

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_SOURCES",
    "PartWriter",
    "RunInfo",
    "RunReader",
    "StoreReader",
    "compact_run",
    "compact_table",
    "is_run_dir",
    "list_parts",
    "list_runs",
    "load_array",
    "open_run",
    "save_array",
    "write_part",
    "writer_id",
]

_MOVED: dict[str, tuple[str, str | None]] = {
    "RunReader": ("convscope.formats.reader", "RunReader"),
    "TABLE_SOURCES": ("convscope.formats.catalog", "TABLE_SOURCES"),
}

__getattr__ = lazy_getattr(__name__, _MOVED, globals())
