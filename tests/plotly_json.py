"""Exact comparison of two ``to_plotly_json()`` trees, shared by the figure tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def same_json(a: Any, b: Any, path: str = "fig", *, types: bool = True) -> None:
    """Assert ``a`` and ``b`` are the same tree: arrays of equal shape and values (NaN equal to
    NaN), dicts with the same keys, sequences of the same length, equal leaves. ``types``: also
    the arrays' dtypes and the leaves' types (a validated figure against a dict-built one);
    ``False`` compares values only (``1 == 1.0``)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a2, b2 = np.asarray(a), np.asarray(b)
        assert a2.shape == b2.shape and (not types or a2.dtype == b2.dtype), path
        assert np.array_equal(a2, b2, equal_nan=a2.dtype.kind == "f"), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            same_json(a[k], b[k], f"{path}.{k}", types=types)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_json(x, y, f"{path}[{i}]", types=types)
    else:
        assert (not types or type(a) is type(b)) and a == b, (path, a, b)
