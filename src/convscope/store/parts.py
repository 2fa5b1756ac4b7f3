"""Which part files of a table a reader may use, and compaction of small parts.

A part becomes visible when it is renamed to ``part-*.parquet``. Compaction of a table, under
an exclusive ``flock`` on ``tables/<table>/.compact.lock``, goes:

1. finish what an earlier, killed compaction left: delete every part that a present, readable
   merged part lists as replaced (and those parts' side files), and the orphaned temporary
   files;
2. write each merged part to a temporary file, fsync, rename it into place: its Parquet footer
   lists the parts it replaces (``convscope.replaces``); a part is visible only complete;
3. write the merged part's side files (summaries, indexes), in the order the table's hooks give
   (:mod:`convscope.store.hooks`), the last one as the marker of a complete set;
4. delete the replaced parts and their side files;
5. build the side files of compacted parts that lack the marker, drop side files whose part is
   gone.

Parts are sorted as the table's hooks say (``sort_by``) when written, merged parts included.
The hooks come from the registry of :mod:`convscope.store.hooks`, which loads the formats that
register them at its first lookup, so ``compact_run`` called on its own writes the same files as
``Run.close`` and ``convscope compact``.

A reader lists the directory and drops every part named in the ``replaces`` list of a present,
readable part, so whatever step a compaction is killed at, a query reads each logged row exactly
once: before step 2 completes the old parts are the only copy; after it, the merged part hides
them until they are deleted, and step 1 deletes them before any later merge could drop the part
that hides them. (Compaction used to skip step 1: a later compaction merged and deleted the
hiding part, and the replaced parts it had left behind became visible again.)
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .hooks import SideFile, table_hooks
from .layout import PART_GLOB, TABLES_DIR, clean_orphans
from .summary import SUMMARY_DIR, remove_side_files, side_file, write_side_files
from .writer import write_part

__all__ = ["PartListing", "list_parts", "compact_table", "compact_run"]

REPLACES_KEY = b"convscope.replaces"


@dataclass(frozen=True)
class _Footer:
    rows: int
    replaces: tuple[str, ...]


_cache: dict[tuple[str, int, int], _Footer | str] = {}
_cache_lock = threading.Lock()


def _footer(path: Path) -> _Footer | str:
    """Row count and replaced parts of a complete part, or an error message for a corrupt one."""
    try:
        st = path.stat()
    except OSError as exc:
        return f"{path.name}: {exc.strerror}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        md = pq.read_metadata(path)
        meta = md.metadata or {}
        replaces = tuple(json.loads(meta[REPLACES_KEY])) if REPLACES_KEY in meta else ()
        result: _Footer | str = _Footer(md.num_rows, replaces)
    except Exception as exc:  # pyarrow raises several types for damaged files
        result = f"{path.parent.name}/{path.name} is not a readable Parquet file ({exc})"
    with _cache_lock:
        if len(_cache) > 50_000:
            _cache.clear()
        _cache[key] = result
    return result


@dataclass
class PartListing:
    files: list[Path]
    rows: int
    problems: list[str]
    # parts still present but replaced by a merged part (a compaction was killed before it
    # deleted them): never read; the next compaction deletes them
    replaced: list[Path] = field(default_factory=list)


def list_parts(table_dir: Path) -> PartListing:
    """The complete, valid, non-replaced parts of one table directory."""
    files: list[tuple[Path, _Footer]] = []
    problems: list[str] = []
    replaced: set[str] = set()
    table_dir = Path(table_dir)
    if table_dir.is_symlink():
        # writers make real directories only; a link could point the reader outside the run
        return PartListing([], 0, [f"{table_dir.name}/ is a symbolic link (left out: tables "
                                   "must be real directories in the run)"], [])
    for f in sorted(table_dir.glob(PART_GLOB)):
        if f.is_symlink():  # ditto for a part: never follow it out of the run
            problems.append(f"{table_dir.name}/{f.name} is a symbolic link (left out: parts "
                            "must be regular files written by the run)")
            continue
        info = _footer(f)
        if isinstance(info, str):
            if f.exists():  # vanished files were compacted away meanwhile: not a problem
                problems.append(info)
            continue
        replaced.update(info.replaces)
        files.append((f, info))
    kept = [(f, i) for f, i in files if f.name not in replaced and f.exists()]
    hidden = [f for f, _ in files if f.name in replaced]
    return PartListing([f for f, _ in kept], sum(i.rows for _, i in kept), problems, hidden)


class _Lock:
    """An exclusive advisory lock on a file (one compaction per table at a time)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def compact_table(table_dir: Path, min_parts: int = 2, max_rows: int = 4_000_000
                  ) -> tuple[int, int]:
    """Merge the visible parts of one table into parts of at most ``max_rows`` rows (memory
    stays bounded by that). Returns (parts before, parts after)."""
    table_dir = Path(table_dir)
    sides = table_hooks(table_dir.name).side_files
    with _Lock(table_dir / ".compact.lock"):
        listing = list_parts(table_dir)
        # 1. what a killed compaction left: replaced parts first (while their merged part is
        # still there to hide them), then temporary files of dead processes
        _delete_replaced(listing.replaced, sides)
        clean_orphans(table_dir)
        clean_orphans(table_dir / SUMMARY_DIR)
        before = len(listing.files)
        if before < min_parts:
            if sides and listing.replaced:
                _complete_side_files(table_dir, sides)
            return before, before
        groups: list[list[Path]] = [[]]
        rows = 0
        for f in listing.files:
            n = _footer(f).rows  # valid: list_parts checked it
            if groups[-1] and rows + n > max_rows:
                groups.append([])
                rows = 0
            groups[-1].append(f)
            rows += n
        after = 0
        for group in groups:
            after += 1
            if len(group) < 2:
                continue
            merged = pa.concat_tables([pq.read_table(f) for f in group],
                                      promote_options="permissive")
            merged = merged.replace_schema_metadata(None)
            name = f"part-c{time.time_ns():020d}-{os.urandom(4).hex()}.parquet"
            path = write_part(table_dir, name, merged,
                              {REPLACES_KEY.decode(): json.dumps([f.name for f in group])})
            write_side_files(path, merged, sides)
            del merged
            for f in group:
                try:
                    f.unlink()
                except FileNotFoundError:
                    pass
                remove_side_files(f, sides)
        if sides:
            _complete_side_files(table_dir, sides)
        return before, after


def _delete_replaced(parts: list[Path], sides: tuple[SideFile, ...]) -> None:
    """Delete replaced parts, a part that itself hides others of the list after them (so a
    crash in between never uncovers rows: a chain left by older versions stays hidden)."""
    left = {f.name: f for f in parts}
    while left:
        ready = []
        for _name, f in sorted(left.items()):
            info = _footer(f)
            hides = () if isinstance(info, str) else info.replaces
            if not any(n in left for n in hides):
                ready.append(f)
        for f in ready or list(left.values()):
            f.unlink(missing_ok=True)
            remove_side_files(f, sides)
            del left[f.name]


def _complete_side_files(table_dir: Path, sides: tuple[SideFile, ...]) -> None:
    """Side files for compacted parts that lack the last one (killed compaction, older runs);
    drop the side files of parts that are gone."""
    listing = list_parts(table_dir)
    marker = sides[-1].prefix
    for f in listing.files:
        # the last side file is written last: without it, the others may be missing too
        if f.name.startswith("part-c") and not side_file(f, marker).exists():
            remove_side_files(f, sides)
            write_side_files(f, pq.read_table(f).replace_schema_metadata(None), sides)
    visible = {f.name for f in listing.files}
    for side in sides:
        for s in (table_dir / SUMMARY_DIR).glob(side.prefix + PART_GLOB):
            name = s.name[len(side.prefix):]
            if name not in visible and not (table_dir / name).exists():
                s.unlink(missing_ok=True)


def compact_run(run_dir: Path, min_parts: int = 2) -> dict[str, tuple[int, int]]:
    """Compact every table of a run; returns ``{table: (parts before, parts after)}``. Also
    removes what killed writers and compactions left (replaced parts, temporary files)."""
    out: dict[str, tuple[int, int]] = {}
    clean_orphans(Path(run_dir))
    root = Path(run_dir) / TABLES_DIR
    if not root.is_dir():
        return out
    for table_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        out[table_dir.name] = compact_table(table_dir, min_parts=min_parts)
    return out
