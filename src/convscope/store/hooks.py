"""Per-table hooks: what the transport does to one table's parts, told by the table's owner.

The store moves Parquet parts and knows no concern. A format that wants more than plain parts
for one of its tables registers a :class:`TableHooks` for it (``register_table(name, hooks)``,
at import of the format's module):

* ``sort_by``: the columns each part of the table is sorted by before it is written (by
  :class:`~convscope.store.writer.PartWriter` and by compaction), so Parquet row-group
  statistics let DuckDB skip everything but the requested rows;
* ``side_files``: files derived from each *compacted* part, written by compaction right after
  the merged part, in the order given, as ``tables/<table>/_summary/<prefix><part name>``
  (:func:`convscope.store.summary.side_file`). The last one written is the marker of a complete
  set: compaction builds the side files again for a compacted part whose last one is missing
  (a compaction killed in between, a run of an older version), deletes them with their part,
  and deletes those whose part is gone.

Which modules register hooks: :data:`PROVIDERS`, imported once at the first lookup
(:func:`table_hooks`), so a run written or compacted through ``convscope.store`` alone (a
script calling ``compact_run`` without importing ``convscope.formats``) gets the same files as
one written through :class:`convscope.Run`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from ..errors import InvalidValueError
from .layout import ROW_GROUP_ROWS, check_name

__all__ = ["SideFile", "TableHooks", "NO_HOOKS", "PROVIDERS", "register_table", "table_hooks",
           "registered_tables"]

#: ``build(part table) -> (side table, footer metadata) | None`` (None: no such file for it)
Builder = Callable[[pa.Table], "tuple[pa.Table, Mapping[str, str]] | None"]


@dataclass(frozen=True)
class SideFile:
    """One file derived from a compacted part: ``_summary/<prefix><part name>``, the table
    ``build`` returns for the part's rows (with its footer metadata), written with row groups of
    ``row_group_size`` rows."""

    prefix: str
    build: Builder
    row_group_size: int = ROW_GROUP_ROWS


@dataclass(frozen=True)
class TableHooks:
    """What the store does to one table's parts besides writing them (see the module doc)."""

    sort_by: tuple[str, ...] = ()
    side_files: tuple[SideFile, ...] = ()

    def __post_init__(self) -> None:
        prefixes = [s.prefix for s in self.side_files]
        if len(set(prefixes)) != len(prefixes):
            raise InvalidValueError(f"side files {prefixes} share a prefix: give each side file "
                                    "its own prefix (its name is <prefix><part name>).")
        for p in prefixes:
            if p.startswith("part-") or "/" in p or p.startswith("."):
                raise InvalidValueError(
                    f"side-file prefix {p!r} would be read as a part or a path: use letters, "
                    "digits and '-', not starting with 'part-' or '.' (or '' for one file).")


NO_HOOKS = TableHooks()

#: Modules that register the hooks of their tables when imported (the on-disk formats).
PROVIDERS: list[str] = ["convscope.formats"]

_registry: dict[str, TableHooks] = {}
_lock = threading.Lock()
_loaded = False


def register_table(name: str, hooks: TableHooks) -> None:
    """Make ``hooks`` the hooks of table ``name`` (replacing earlier ones)."""
    check_name(name, "table name")
    if not isinstance(hooks, TableHooks):
        raise InvalidValueError(f"hooks for table {name!r} must be a TableHooks, got "
                                f"{type(hooks).__name__}: build one with TableHooks(...).")
    with _lock:
        _registry[name] = hooks


def load_providers() -> None:
    """Import the :data:`PROVIDERS` (once), so that their tables' hooks are registered."""
    global _loaded
    if _loaded:
        return
    # no lock held while importing: a provider's import registers (taking the lock), possibly
    # on another thread that holds the module's import lock; the import system serialises
    # concurrent imports of one module itself
    for module in PROVIDERS:
        importlib.import_module(module)
    _loaded = True


def table_hooks(name: str) -> TableHooks:
    """The hooks registered for table ``name`` (:data:`NO_HOOKS` for none)."""
    load_providers()
    return _registry.get(name, NO_HOOKS)


def registered_tables() -> dict[str, TableHooks]:
    """Every table with hooks, after loading the providers."""
    load_providers()
    with _lock:
        return dict(_registry)
