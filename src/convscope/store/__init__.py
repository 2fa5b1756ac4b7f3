"""The run directory: Parquet part tables written in the background, arrays, DuckDB reads.

Write side: :class:`PartWriter` (used by :class:`convscope.Run`). Read side: :func:`open_run`,
:class:`RunReader`, :func:`list_runs`. Maintenance: :func:`compact_run`.
"""

from .arrays import load_array, save_array
from .layout import SCHEMA_VERSION, is_run_dir
from .parts import compact_run, compact_table, list_parts
from .reader import TABLE_SOURCES, RunInfo, RunReader, list_runs, open_run
from .writer import PartWriter, write_part, writer_id

__all__ = [
    "SCHEMA_VERSION",
    "TABLE_SOURCES",
    "PartWriter",
    "RunInfo",
    "RunReader",
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
