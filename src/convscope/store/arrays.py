"""Array store: n-d arrays (feature maps, kernels, images) as ``.npy`` files in the run directory.

``arrays/<kind>/<key>.npy`` is written atomically; an index row (kind, key, shape, dtype, step,
JSON meta) goes to the ``arrays`` table through the part writer, so readers can list arrays with
one query. Writing a key again replaces the file; the index's newest row wins.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .layout import ARRAYS_DIR, atomic_write_bytes, check_name, safe_key

__all__ = ["array_path", "save_array", "load_array", "to_numpy"]


def to_numpy(value: Any) -> np.ndarray:
    """A numpy copy of a numpy array, a torch tensor (any device) or a nested sequence."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise InvalidValueError(
            f"cannot store a {type(value).__name__} as an array: pass a numpy array or a tensor."
        ) from exc
    if arr.dtype == object:
        raise InvalidValueError(
            f"cannot store a {type(value).__name__} of Python objects as an array: "
            "pass numbers (a numpy array or a tensor)."
        )
    return arr


def array_path(run_dir: Path, kind: str, key: str) -> Path:
    return Path(run_dir) / ARRAYS_DIR / check_name(kind, "array kind") / f"{safe_key(key)}.npy"


def save_array(
    run_dir: Path, kind: str, key: str, value: Any, *, dtype: Any = None
) -> tuple[Path, np.ndarray]:
    """Write one array durably; returns its path and the array as stored."""
    arr = to_numpy(value)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    path = array_path(run_dir, kind, key)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return path, arr


def load_array(run_dir: Path, kind: str, key: str, mmap: bool = False) -> np.ndarray:
    path = array_path(run_dir, kind, key)
    if not path.is_file():
        raise StoreError(f"the run has no array {kind}/{key} (looked for {path}).")
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def index_row(
    kind: str, key: str, arr: np.ndarray, step: int | None, meta: Mapping[str, Any] | None
) -> dict[str, list[Any]]:
    return {
        "kind": [kind],
        "key": [str(key)],
        "file": [f"{kind}/{safe_key(key)}.npy"],
        "shape": [json.dumps(list(arr.shape))],
        "dtype": [str(arr.dtype)],
        "nbytes": [int(arr.nbytes)],
        "step": [-1 if step is None else int(step)],
        "meta": [json.dumps(dict(meta or {}), default=str)],
        "wall_time": [time.time()],
    }
