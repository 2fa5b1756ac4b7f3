"""What every format module shares: the sink a ``write`` writes into, and the arrays-index
lookup of the array-kind formats."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

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


def key_meta(idx: pd.DataFrame, key: str) -> dict[str, Any] | None:
    """The meta of ``key`` in the store's arrays index ``idx`` (``reader.arrays(kind)``: kind,
    key, shape, dtype, step, meta; the first row when it was logged more than once), or None
    when the key is not indexed."""
    if not len(idx) or key not in set(idx["key"]):
        return None
    return idx[idx["key"] == key].iloc[0]["meta"]
