"""The run directory's layout and the atomic file operations every writer uses.

::

    <logdir>/<run>/
      run.json                                    meta (schema version, versions, host, config)
      .writer.lock                                held (shared flock) by every live writer
      tables/<table>/part-<writer>-<seq>.parquet  append-only parts, complete files only
      arrays/<kind>/<key>.npy                     arrays (feature maps, kernels, images, ...)

A file becomes visible under its final name only after it was written in full and fsynced
(write to a dot-prefixed temporary name ``.<name>.<host>-<pid>.tmp`` in the same directory,
fsync, rename, fsync the directory), so a reader never sees a partial file and a killed writer
loses only what it had not flushed. The temporary files a killed process leaves are removed
by :func:`clean_orphans` (when a run is opened and when it is compacted).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import DamagedFileError

SCHEMA_VERSION = 1
# run.json's "key_scheme": 2 = keys map to file names injectively (safe_key); absent = older
KEY_SCHEME = 2
RUN_FILE = "run.json"
TABLES_DIR = "tables"
ARRAYS_DIR = "arrays"
#: the index table of the stored arrays (one row per ``log_array``: kind, key, shape, meta, ...)
ARRAYS_TABLE = "arrays"
PART_GLOB = "part-*.parquet"
ROW_GROUP_ROWS = 131_072
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


def __getattr__(name: str) -> Any:
    # TABLE_SORT (which tables' parts are sorted by what) moved to the tables' hooks
    # (convscope.store.hooks, registered by the formats); this view stays for older imports
    if name == "TABLE_SORT":
        from .hooks import registered_tables

        return {t: h.sort_by for t, h in registered_tables().items() if h.sort_by}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def legacy_safe_key(key: str) -> str:
    """The key -> file-name mapping of runs recorded before keys were made injective: every
    character outside ``[A-Za-z0-9._=+-]`` became ``_`` (so ``'a/b'`` and ``'a_b'`` shared a
    file). Kept to find the files of such runs."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]", "_", str(key)).replace("..", "_")
    cleaned = cleaned.lstrip("._-=+") or "_"
    return cleaned[:200]


def safe_key(key: str) -> str:
    """Turn any string (a layer path such as ``layer4.1.conv2``) into a valid file-name key.

    A key that is already a valid file name (letters, digits and ``._=+-``, not starting with
    ``._=+-``, no ``..``, at most 200 characters) is kept as is, so the files of existing runs
    keep their names. Any other key is sanitised and gets ``=`` plus 12 hex digits of the
    SHA-256 of the original key, so distinct keys never share a file (``'a/b'`` ->
    ``a_b=<hash>``, ``'a_b'`` -> ``a_b``). The result is itself a valid key and maps to itself
    (``safe_key(safe_key(k)) == safe_key(k)``): a file-name key handed back finds its file.
    """
    key = str(key)
    cleaned = legacy_safe_key(key)
    if cleaned == key:
        return key
    stem = cleaned[:187]
    if stem == "_":  # "" and keys of symbols only: keep the result a fixed point
        stem = "k"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{stem}={digest}"


def find_key_file(run_dir: Path, directory: Path, key: str, suffix: str) -> Path:
    """The file holding ``key`` in ``directory`` (``arrays/<kind>``, ``objects/<kind>``, ...).

    ``directory / (safe_key(key) + suffix)``; for a run recorded before keys were made
    injective (its ``run.json`` has no ``key_scheme``) whose file is missing under that name,
    the name the old scheme gave it (:func:`legacy_safe_key`), if that file exists."""
    path = Path(directory) / f"{safe_key(key)}{suffix}"
    if path.exists():
        return path
    legacy = Path(directory) / f"{legacy_safe_key(key)}{suffix}"
    if legacy != path and legacy.exists():
        try:
            scheme = int(read_json(Path(run_dir) / RUN_FILE).get("key_scheme", 1))
        except (OSError, ValueError, TypeError, AttributeError):
            scheme = 1
        if scheme < KEY_SCHEME:
            return legacy
    return path


# -- temporary files ---------------------------------------------------------------------------
# A file is written under ``.<final name>.<host>-<pid>.tmp`` in its final directory and renamed
# when complete. The host tag and pid say whose it is, so a temporary file left by a killed
# process is recognised and removed (``clean_orphans``) without touching one a live writer is
# still writing.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_TMP_RE = re.compile(r"^\..+\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.tmp$")
# names written by older versions: ".<name>.tmp" (parts, pid in the name as "-p<pid>-") and
# ".<name>.<pid>.tmp" (atomic_write_bytes)
_OLD_PID_RE = re.compile(r"^\..*?(?:-p(?P<ppid>\d+)-.*\.tmp|\.(?P<pid>\d+)\.tmp)$")
ORPHAN_AGE_S = 3600.0  # a temp file of another host (or of unknown owner) untouched this long


def temp_path(final: Path) -> Path:
    """The temporary name ``final`` is written under before it is renamed into place."""
    final = Path(final)
    return final.with_name(f".{final.name}.{_HOST}-{os.getpid()}.tmp")


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is no writer any more
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def is_orphan(path: Path, now: float | None = None) -> bool:
    """True for a temporary file no live process will finish: one of a dead process of this
    machine, or one (of another machine, or of unknown owner) untouched for ORPHAN_AGE_S."""
    name = Path(path).name
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    try:
        age = (time.time() if now is None else now) - Path(path).stat().st_mtime
    except OSError:
        return False
    m = _TMP_RE.match(name)
    if m is not None:
        if m["host"] == _HOST:
            return not pid_alive(int(m["pid"]))
        return age > ORPHAN_AGE_S
    m = _OLD_PID_RE.match(name)
    if m is not None and age > 60.0:  # an older version's file: pid of this machine or not
        pid = int(m["ppid"] or m["pid"])
        if pid != os.getpid() and not pid_alive(pid):
            return True
    return age > ORPHAN_AGE_S


def clean_orphans(directory: Path, recursive: bool = False) -> list[Path]:
    """Remove the orphaned temporary files (see :func:`is_orphan`) in ``directory`` (and its
    subdirectories with ``recursive``); returns the removed paths."""
    removed: list[Path] = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    walker = os.walk(directory) if recursive else [(str(directory), [], os.listdir(directory))]
    now = time.time()
    for root, _dirs, files in walker:
        for f in files:
            if f.startswith(".") and f.endswith(".tmp"):
                path = Path(root) / f
                if is_orphan(path, now):
                    try:
                        path.unlink()
                        removed.append(path)
                    except OSError:
                        pass
    return removed


# -- the live writer's lock --------------------------------------------------------------------
# Every process writing a run holds a shared flock on ``<run>/.writer.lock`` from opening the run
# to closing it; the kernel drops it when the process dies, however it dies. A reader that can
# take the lock exclusively knows no writer of this machine is left.
WRITER_LOCK = ".writer.lock"


def hold_writer_lock(run_dir: Path) -> Any:
    """Take the shared writer lock of ``run_dir``; returns the open file (close it to release),
    or None where locks are unsupported."""
    try:
        fh = open(Path(run_dir) / WRITER_LOCK, "a")
    except OSError:
        return None
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_SH)
    except (ImportError, OSError):
        fh.close()
        return None
    return fh


def writer_alive(run_dir: Path, meta: dict[str, Any] | None = None) -> bool | None:
    """Whether a process still writes ``run_dir``: True, False, or None when it cannot be told
    (the run was written on another machine, or by a version without the lock and a pid)."""
    run_dir = Path(run_dir)
    host = (meta or {}).get("host")
    if host is not None and host != socket.gethostname():
        return None
    lock = run_dir / WRITER_LOCK
    if lock.exists():
        try:
            import fcntl

            fd = os.open(lock, os.O_RDONLY)
        except (ImportError, OSError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        finally:
            os.close(fd)  # also releases the lock if it was taken
        return False
    pid = (meta or {}).get("pid")
    if host is not None and isinstance(pid, int):
        return pid_alive(pid)
    return None


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
    tmp = temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


#: Largest run.json read (a run's meta and config are a few kilobytes; class names of a 21k-class
#: data set about 300 KB). Parsing JSON can take ~25x its size in memory.
MAX_RUN_JSON_BYTES = 4 * 2**20


def read_json(path: Path, max_bytes: int = MAX_RUN_JSON_BYTES) -> Any:
    """The JSON document in ``path`` (a run's ``run.json``). Raises OSError when unreadable, and
    ValueError (:class:`DamagedFileError` for a file over ``max_bytes`` or nested too deeply)
    when it is not such a document; the size is checked before anything is read."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > max_bytes:
            raise DamagedFileError(
                f"{path} is {size:,} bytes, more than the {max_bytes:,} a convscope run file can "
                "be: it is damaged or not convscope's; restore it or record the run again.")
        data = fh.read(max_bytes + 1)  # a file still growing is not read past the limit
    if len(data) > max_bytes:
        raise DamagedFileError(f"{path} grew past {max_bytes:,} bytes while being read: restore "
                               "it or record the run again.")
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise DamagedFileError(f"{path} is nested too deeply to be a convscope run file: restore "
                               "it or record the run again.") from None


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
