"""The run directory's layout and the atomic file operations every writer uses.

::

    <logdir>/<run>/
      run.json                                    meta (schema version, versions, host, config)
      tables/<table>/part-<writer>-<seq>.parquet  append-only parts, complete files only
      arrays/<kind>/<key>.npy                     arrays (feature maps, kernels, images, ...)

A file becomes visible under its final name only after it was written in full and fsynced
(write to a dot-prefixed temporary name in the same directory, fsync, rename, fsync the
directory), so a reader never sees a partial file and a killed writer loses only what it had
not flushed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
RUN_FILE = "run.json"
TABLES_DIR = "tables"
ARRAYS_DIR = "arrays"
PART_GLOB = "part-*.parquet"
# Tables whose parts are sorted before they are written (and when compacted), so Parquet row-group
# statistics let DuckDB skip everything but the requested layer.
TABLE_SORT: dict[str, tuple[str, ...]] = {
    "watch_filters": ("layer", "filter", "step"),
    "watch_layers": ("layer", "step"),
}
ROW_GROUP_ROWS = 131_072
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


def is_run_dir(path: Path) -> bool:
    """True when ``path`` holds a ``run.json``."""
    return (Path(path) / RUN_FILE).is_file()


def check_name(name: str, what: str = "name") -> str:
    """Validate a run, table, kind or key name: letters, digits and ``._=+-``, no path parts."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        from ..errors import InvalidValueError

        raise InvalidValueError(
            f"{what} {name!r} is not usable as a file name: use 1-200 letters, digits or "
            "'._=+-', starting with a letter or digit (no '/', no '..')."
        )
    return name


def safe_key(key: str) -> str:
    """Turn any string (a layer path such as ``layer4.1.conv2``) into a valid file-name key."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]", "_", str(key)).replace("..", "_")
    cleaned = cleaned.lstrip("._-=+") or "_"
    return cleaned[:200]


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def dir_size(path: Path) -> int:
    """Total bytes of the regular files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
