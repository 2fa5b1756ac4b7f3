"""The on-disk formats of a run, one torch-free module per concern.

Each module owns its tables, columns, array and object kinds, keys and paths, and offers
``write(sink, result, key=...)`` (``sink``: a :class:`~convscope.run.Run`, or anything with
:class:`~convscope.formats.base.Sink`'s methods) and ``load(reader, key=...)`` returning a typed
dataclass. ``app/``, ``report.py`` and ``cli.py`` read runs only through these modules; ``store/``
below them moves bytes (Parquet parts, DuckDB, arrays, objects) and knows no concern.
"""

from __future__ import annotations

from .base import Sink

__all__ = ["Sink"]
