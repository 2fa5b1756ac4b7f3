"""JSON documents in the run directory: ``objects/<kind>/<key>.json``, written atomically.

For small structured results that are read whole (a model graph, a diagnosis report, settings
of a recording). Tables are for rows that grow; arrays for numbers in bulk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError, StoreError
from .layout import atomic_write_bytes, check_name, safe_key

OBJECTS_DIR = "objects"

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
    path = object_path(run_dir, kind, key)
    if not path.is_file():
        raise StoreError(f"the run has no object {kind}/{key} (looked for {path}).")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def list_objects(run_dir: Path, kind: str) -> list[str]:
    root = Path(run_dir) / OBJECTS_DIR / kind
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.json"))
