"""What the dashboard process knows: its logdir and open readers
(:class:`convscope.formats.reader.RunReader`: the store's transport plus each format's queries)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from ..errors import NotARunError
from ..formats.reader import RunReader
from ..store import RunInfo, list_runs
from ..store.layout import is_run_dir

MAX_READERS = 32
#: Most run names one request may select; the rest of a longer selection is ignored (the run
#: selector holds a few runs; a request naming thousands only costs the server time).
MAX_SELECTED = 256
#: Longest run name looked up (a file name cannot be longer on common file systems).
MAX_NAME_CHARS = 255


def selected_names(selected: Any, limit: int = MAX_SELECTED) -> list[str]:
    """The run names of a run selector's value, cleaned: a list (or one string) of strings,
    de-duplicated in order, names of plausible length only, at most ``limit`` of them.

    Anything else a request may carry (a number, a dict, nested lists, a 100,000-character
    string) selects no run, so no request makes the server look up more than ``limit`` names.
    """
    if isinstance(selected, str):
        selected = [selected]
    if not isinstance(selected, (list, tuple)):
        return []
    out: dict[str, None] = {}
    for s in selected:
        if isinstance(s, str) and 0 < len(s) <= MAX_NAME_CHARS:
            out.setdefault(s)
            if len(out) >= limit:
                break
    return list(out)


class AppState:
    """The logdir being served and a cache of :class:`RunReader` objects.

    Run names from the browser are only ever looked up among the runs found in the logdir, so a
    crafted name cannot reach a directory outside it. The cache keeps the ``max_readers`` most
    recently used readers (each holds a DuckDB connection and cached query results); an evicted
    reader is dropped, not closed, so a request still using it finishes normally.

    A name is looked up directly (one directory component holding a ``run.json``), never by
    listing the logdir, and :func:`selected_names` caps how many one request may send, so the
    work of a request does not grow with the size of its body or of the logdir.

    ``trust_checkpoints`` (set by ``create_app``) says whether pages may unpickle whole-module
    checkpoints. ``compute`` (set by :func:`~convscope.app.serve`, off otherwise) says whether
    pages may start background jobs that compute with a run's saved model and append to the run
    (the Model page's units on demand); :attr:`jobs` runs them.
    """

    trust_checkpoints: bool = False
    compute: bool = False
    _jobs: Any = None

    def __init__(self, logdir: str | Path, max_readers: int = MAX_READERS) -> None:
        self.logdir = Path(logdir).expanduser().resolve()
        self.max_readers = max(1, int(max_readers))
        self._readers: OrderedDict[str, RunReader] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def jobs(self) -> Any:
        """The server's :class:`~convscope.app.jobs.JobRunner` (created on first use; ``serve``
        creates it before forking its workers, so that they share its status directory)."""
        with self._lock:
            if self._jobs is None:
                from .jobs import JobRunner

                self._jobs = JobRunner()
            return self._jobs

    def runs(self) -> list[RunInfo]:
        return list_runs(self.logdir)

    def run_names(self) -> list[str]:
        if is_run_dir(self.logdir):
            return [self.logdir.name]
        if not self.logdir.is_dir():
            return []
        try:
            return sorted(p.name for p in self.logdir.iterdir() if p.is_dir() and is_run_dir(p))
        except OSError:
            return []

    def run_path(self, name: Any) -> Path:
        """The directory of run ``name``; :class:`NotARunError` for anything else."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise NotARunError(f"no run named {_short(name)} in {self.logdir}: pick a run "
                               "in the run selector.")
        if is_run_dir(self.logdir):
            if name == self.logdir.name:
                return self.logdir
        elif name not in (".", "..") and not any(c in name for c in "/\\\0"):
            path = self.logdir / name
            try:
                if path.is_dir() and is_run_dir(path):
                    return path
            except (OSError, ValueError):
                pass
        raise NotARunError(f"no run named {_short(name)} in {self.logdir}: pick a run in the "
                           "run selector.")

    def reader(self, name: Any) -> RunReader:
        path = self.run_path(name)
        with self._lock:
            r = self._readers.get(name)
            if r is None or r.path != path:
                r = self._readers[name] = RunReader(path)
            self._readers.move_to_end(name)
            while len(self._readers) > self.max_readers:
                self._readers.popitem(last=False)
            return r

    def readers(self, names: Any) -> list[RunReader]:
        """Readers of the runs among ``names`` (cleaned by :func:`selected_names`: at most
        :data:`MAX_SELECTED`, each once) that exist; unknown names are skipped."""
        out = []
        for n in selected_names(names):
            try:
                out.append(self.reader(n))
            except NotARunError:
                continue
        return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
