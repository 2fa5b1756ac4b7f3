"""The on-disk formats of a run, one torch-free module per concern.

Each module owns its tables, columns, array and object kinds, keys and paths, and offers
``write(sink, result, key=...)`` (``sink``: a :class:`~convscope.run.Run`, or anything with
:class:`~convscope.formats.base.Sink`'s methods) and ``load(reader, key=...)`` returning a typed
dataclass. ``app/``, ``report.py`` and ``cli.py`` read runs only through these modules; ``store/``
below them moves bytes (Parquet parts, DuckDB, arrays, objects) and knows no concern.

Modules: :mod:`.scalars`, :mod:`.structure` (graph and profile), :mod:`.feature_maps`,
:mod:`.embedding`, :mod:`.preferred_inputs`, :mod:`.top_examples`, :mod:`.projections`,
:mod:`.checkpoints`;
:mod:`.catalog` (which call records each table) and :mod:`.reader` (``cs.open_run``'s
:class:`~convscope.formats.reader.RunReader`, one query mixin per concern). The contract of each
is written down in ``docs/formats.md``.

Store hooks: a format that wants its parts sorted or its compacted parts summarised registers
:class:`~convscope.store.hooks.TableHooks` for its tables when imported; importing this package
registers them all (:data:`TABLE_HOOKS`), and the store imports it before its first hook lookup,
so every path that writes or compacts a run (``Run``, ``convscope compact``,
``convscope.store.compact_run`` on its own) writes the same files.
"""

from __future__ import annotations

from . import training_summary
from .base import ARRAYS_TABLE, Sink

#: the store hooks of the formats' tables (registered at import of their modules)
TABLE_HOOKS = {
    training_summary.LAYERS_TABLE: training_summary.LAYERS_HOOKS,
    training_summary.FILTERS_TABLE: training_summary.FILTERS_HOOKS,
}

__all__ = ["ARRAYS_TABLE", "Sink", "TABLE_HOOKS"]
