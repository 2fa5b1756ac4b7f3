"""JSON documents in the run directory: ``objects/<kind>/<key>.json``, written atomically.

For small structured results that are read whole (a model graph, a diagnosis report, settings
of a recording). Tables are for rows that grow; arrays for numbers in bulk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError, StoreError
from .layout import atomic_write_bytes, check_name, find_key_file, safe_key

OBJECTS_DIR = "objects"
#: Largest object file read. Parsing JSON can take ~25x its size in memory (a list of empty lists),
#: so this bounds one read to ~200 MB; the largest object convscope writes (the graph of
#: EfficientNet-B7) is 0.6 MB.
MAX_OBJECT_BYTES = 8 * 2**20

__all__ = ["OBJECTS_DIR", "object_path", "save_object", "load_object", "list_objects"]


def object_path(run_dir: Path, kind: str, key: str) -> Path:
    return Path(run_dir) / OBJECTS_DIR / check_name(kind, "object kind") / f"{safe_key(key)}.json"


def save_object(run_dir: Path, kind: str, key: str, obj: Any) -> Path:
    try:
        data = json.dumps(obj, allow_nan=True, default=_default).encode()
    except TypeError as exc:
        raise InvalidValueError(
            f"object {kind}/{key} is not JSON-serialisable ({exc}): pass dicts, lists, str, "
            "numbers, bools or None."
        ) from exc
    path = object_path(run_dir, kind, key)
    atomic_write_bytes(path, data)
    return path


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays / scalars, tensors
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def load_object(run_dir: Path, kind: str, key: str) -> Any:
    """The JSON document ``kind/key``. A missing, empty, malformed, too deeply nested or too large
    (over :data:`MAX_OBJECT_BYTES`, checked before reading) file raises :class:`StoreError`
    naming the file relative to the run directory."""
    path = object_path(run_dir, kind, key)
    path = find_key_file(run_dir, path.parent, key, ".json")  # runs recorded before key_scheme 2
    rel = f"{OBJECTS_DIR}/{kind}/{path.name}"
    again = ("record it again (run.log_object or the call that made it), or delete the file to "
             "drop it from the dashboard")
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_OBJECT_BYTES:
                raise StoreError(
                    f"{rel} is {size / 2**20:,.1f} MB, more than the {MAX_OBJECT_BYTES // 2**20} "
                    "MB convscope reads from an object file (a model graph is under 1 MB): it is "
                    "damaged or not convscope's; store bulk numbers with run.log_array, or "
                    f"{again}.")
            data = fh.read(MAX_OBJECT_BYTES + 1)  # never past the limit, even if it grows
    except FileNotFoundError:
        raise StoreError(f"{rel} is missing: the run has no object {kind}/{key}. Record it with "
                         "run.log_object (or the call that made it).") from None
    except OSError as exc:
        raise StoreError(f"{rel} is unreadable ({exc.strerror or exc}): check the file's "
                         f"permissions, or {again}.") from exc
    if len(data) > MAX_OBJECT_BYTES:
        raise StoreError(f"{rel} grew past {MAX_OBJECT_BYTES // 2**20} MB while being read: "
                         f"{again}.")
    if not data.strip():
        what = "empty (0 bytes)" if not data else f"blank ({len(data)} bytes of whitespace)"
        raise StoreError(f"{rel} is damaged: it is {what}; {again}.")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise StoreError(f"{rel} is damaged: not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); {again}.") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{rel} is damaged: not valid JSON ({exc.msg} at line {exc.lineno}, "
                         f"column {exc.colno}); {again}.") from None
    except RecursionError:
        raise StoreError(f"{rel} is damaged: its JSON is nested too deeply; {again}.") from None


def list_objects(run_dir: Path, kind: str) -> list[str]:
    root = Path(run_dir) / OBJECTS_DIR / kind
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.json"))
