"""What every format module shares: the sink a ``write`` writes into."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..store.layout import ARRAYS_TABLE

__all__ = ["Sink", "ARRAYS_TABLE"]

# ARRAYS_TABLE: the store's index of arrays (kind, key, shape, dtype, step, meta), which every
# array-kind concern lists its arrays through; re-exported so pages name it through formats.


@runtime_checkable
class Sink(Protocol):
    """Where a format writes: :class:`convscope.Run` is one (tests may pass a fake)."""

    path: Path

    def log_rows(self, table: str, columns: Mapping[str, Any]) -> None: ...

    def log_array(self, kind: str, key: str, value: Any, *, step: int | None = None,
                  meta: Mapping[str, Any] | None = None, dtype: Any = None) -> Path: ...

    def log_object(self, kind: str, key: str, obj: Any) -> Path: ...
