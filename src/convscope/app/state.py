"""What the dashboard process knows: its logdir and open readers, all through ``store``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import NotARunError
from ..store import RunInfo, RunReader, list_runs
from ..store.layout import is_run_dir

MAX_READERS = 32


class AppState:
    """The logdir being served and a cache of :class:`RunReader` objects.

    Run names from the browser are only ever looked up among the runs found in the logdir, so a
    crafted name cannot reach a directory outside it. The cache keeps the ``max_readers`` most
    recently used readers (each holds a DuckDB connection and cached query results); an evicted
    reader is dropped, not closed, so a request still using it finishes normally.

    ``trust_checkpoints`` (set by ``create_app``) says whether pages may unpickle whole-module
    checkpoints.
    """

    trust_checkpoints: bool = False

    def __init__(self, logdir: str | Path, max_readers: int = MAX_READERS) -> None:
        self.logdir = Path(logdir).expanduser().resolve()
        self.max_readers = max(1, int(max_readers))
        self._readers: OrderedDict[str, RunReader] = OrderedDict()
        self._lock = threading.Lock()

    def runs(self) -> list[RunInfo]:
        return list_runs(self.logdir)

    def run_names(self) -> list[str]:
        if is_run_dir(self.logdir):
            return [self.logdir.name]
        if not self.logdir.is_dir():
            return []
        return sorted(p.name for p in self.logdir.iterdir() if p.is_dir() and is_run_dir(p))

    def run_path(self, name: str) -> Path:
        if is_run_dir(self.logdir) and name == self.logdir.name:
            return self.logdir
        if name not in self.run_names():
            raise NotARunError(f"no run named {name!r} in {self.logdir}")
        return self.logdir / name

    def reader(self, name: str) -> RunReader:
        path = self.run_path(name)
        with self._lock:
            r = self._readers.get(name)
            if r is None or r.path != path:
                r = self._readers[name] = RunReader(path)
            self._readers.move_to_end(name)
            while len(self._readers) > self.max_readers:
                self._readers.popitem(last=False)
            return r

    def readers(self, names: list[str] | None) -> list[RunReader]:
        out = []
        for n in names or []:
            try:
                out.append(self.reader(n))
            except NotARunError:
                continue
        return out
