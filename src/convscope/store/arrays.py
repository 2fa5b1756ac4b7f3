"""Array store: n-d arrays (feature maps, kernels, images) as ``.npy`` files in the run directory.

``arrays/<kind>/<key>.npy`` is written atomically; an index row (kind, key, shape, dtype, step,
JSON meta) goes to the ``arrays`` table through the part writer, so readers can list arrays with
one query. Writing a key again replaces the file; the index's newest row wins.
"""

from __future__ import annotations

import io
import json
import math
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .layout import ARRAYS_DIR, atomic_write_bytes, check_name, find_key_file, safe_key

__all__ = ["array_path", "save_array", "load_array", "to_numpy"]

_MAGIC = b"\x93NUMPY"
#: Largest array read into memory whole (``mmap=False``); memory-mapped reads have no limit.
MAX_LOAD_BYTES = 512 * 2**20


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
    """The stored array ``kind/key`` (memory-mapped with ``mmap=True``).

    Never unpickles: a file holding Python objects is refused. A missing, empty, truncated or
    foreign file raises :class:`StoreError` naming the file relative to the run directory, as
    does an array over :data:`MAX_LOAD_BYTES` read without ``mmap`` (the header's size is
    checked before any data is read, so a sparse file declaring gigabytes costs nothing).
    """
    run_dir = Path(run_dir)
    path = array_path(run_dir, kind, key)
    path = find_key_file(run_dir, path.parent, key, ".npy")  # runs recorded before key_scheme 2
    rel = f"{ARRAYS_DIR}/{kind}/{path.name}"
    again = ("record it again (run.log_array or the call that made it), or delete the file "
             "to drop it from the dashboard")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StoreError(f"{rel} is missing: the run has no array {kind}/{key}. Record it with "
                         "run.log_array (or the call that made it).") from None
    except OSError as exc:
        raise StoreError(f"{rel} is unreadable ({exc.strerror or exc}): check the file's "
                         f"permissions, or {again}.") from exc
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{rel} is not a regular file: {again}.")
    if st.st_size == 0:
        raise StoreError(f"{rel} is damaged: it is empty (0 bytes); {again}.")
    try:
        with open(path, "rb") as fh:
            shape, dtype, offset = _read_header(fh)
    except OSError as exc:
        raise StoreError(f"{rel} is unreadable ({exc.strerror or exc}): check the file's "
                         f"permissions, or {again}.") from exc
    except ValueError as exc:
        raise StoreError(f"{rel} is damaged: {exc}; {again}.") from None
    if dtype.hasobject:
        raise StoreError(f"{rel} holds Python objects, which convscope never unpickles (that "
                         f"could run code): store numbers only, then {again}.")
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: a huge shape cannot overflow
    need = offset + nbytes
    if st.st_size < need:
        raise StoreError(f"{rel} is damaged: truncated ({st.st_size:,} of {need:,} bytes); "
                         f"{again}.")
    if not mmap and nbytes > MAX_LOAD_BYTES:
        raise StoreError(f"{rel} holds {nbytes / 2**20:,.0f} MB ({shape} {dtype}), more than the "
                         f"{MAX_LOAD_BYTES // 2**20} MB convscope reads into memory at once: "
                         "read it memory-mapped (reader.array(kind, key, mmap=True)) and slice "
                         "what you need, or, if the run did not record an array this large, "
                         f"{again}.")
    try:
        if mmap and need > offset:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise StoreError(f"{rel} is damaged ({exc}); {again}.") from None


def _read_header(fh: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an ``.npy`` file; ValueError names what is wrong."""
    head = fh.read(len(_MAGIC) + 2)
    if len(head) < len(_MAGIC) + 2 or not head.startswith(_MAGIC):
        raise ValueError("not an .npy file (no NumPy header)")
    major = head[len(_MAGIC)]
    fh.seek(0)
    try:
        np.lib.format.read_magic(fh)
        if major == 1:
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif major in (2, 3):
            # 3.0 differs from 2.0 only in the header's text encoding (utf-8 vs latin-1)
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unknown .npy format version {major}")
    except ValueError as exc:
        raise ValueError(f"its .npy header is unreadable ({exc})") from None
    except (EOFError, UnicodeDecodeError, SyntaxError) as exc:
        raise ValueError(f"its .npy header is cut short or garbled ({exc})") from None
    return tuple(int(n) for n in shape), np.dtype(dtype), fh.tell()


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
