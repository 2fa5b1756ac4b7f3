"""The store's arrays index (``tables/arrays``: kind, key, shape, dtype, step, meta) as the
array-kind formats read it: one key's meta."""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["key_meta"]


def key_meta(idx: pd.DataFrame, key: str) -> dict[str, Any] | None:
    """The meta of ``key`` in ``idx`` (``reader.arrays(kind)``; the first row when it was
    logged more than once), or None when the key is not indexed."""
    if not len(idx) or key not in set(idx["key"]):
        return None
    return idx[idx["key"] == key].iloc[0]["meta"]
