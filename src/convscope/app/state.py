"""What the dashboard process knows: its logdir and open readers, all through ``store``."""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import NotARunError
from ..store import RunInfo, RunReader, list_runs
from ..store.layout import is_run_dir


class AppState:
    """The logdir being served and a cache of :class:`RunReader` objects.

    Run names from the browser are only ever looked up among the runs found in the logdir, so a
    crafted name cannot reach a directory outside it.
    """

    def __init__(self, logdir: str | Path) -> None:
        self.logdir = Path(logdir).expanduser().resolve()
        self._readers: dict[str, RunReader] = {}
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
            return r

    def readers(self, names: list[str] | None) -> list[RunReader]:
        out = []
        for n in names or []:
            try:
                out.append(self.reader(n))
            except NotARunError:
                continue
        return out
