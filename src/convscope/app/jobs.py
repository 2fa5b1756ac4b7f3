"""Background jobs of the dashboard server (the Model page's units on demand).

A job is a function ``work(progress) -> message`` run in a thread of the server process that
received the request. At most one job runs per server at a time: a second request for the same
key *joins* the running job (it is told the running job's status), a request for another key is
refused with :class:`JobBusy` (the page says which job holds the server).

The server may run several worker processes (``convscope serve --workers N``), and the page's
progress polls may reach any of them, so a job's status lives in a small JSON file in a
directory every worker shares (created by the parent before it forks; private to the server's
user, mode 0700), not in one process's memory:

* ``<dir>/<sha256 of the key>.json`` — the job's status (:class:`JobStatus`), replaced
  atomically (temporary file, then rename) at most every :data:`WRITE_EVERY_S` seconds of
  progress and at every change of state or phase;
* ``<dir>/busy.lock`` — held (``flock``, exclusive) by the thread running a job: "one job per
  server" across processes; the kernel releases it when the process dies;
* ``<dir>/current.json`` — the key and title of the running job (for the "busy" message);
* ``<dir>/<sha256 of the key>.stop`` — a request to cancel the job (:meth:`JobRunner.stop`,
  from any worker: the Cancel button's request may reach one that does not run the job).

A status that says "running" but names a process that no longer exists (a worker killed
mid-job) reads as failed. A job runs at most ``max_seconds`` (:data:`MAX_JOB_S`): the work
calls :meth:`Progress.check` (through every progress report), which then raises
:class:`JobStopped`. Cancelling is cooperative in the same way: :meth:`JobRunner.stop` leaves a
request that the job's next progress report turns into :class:`JobCancelled`, so a job stops
between two units of its work (a step, a batch), never while it writes; its status then reads
"cancelled". Errors end the job with their message as its status; they never reach the
request that started it, nor stop the server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConvscopeError

__all__ = ["JobRunner", "JobStatus", "Progress", "JobBusy", "JobStopped", "JobCancelled",
           "MAX_JOB_S", "WRITE_EVERY_S", "progress_text"]

log = logging.getLogger("convscope.app")

#: The longest a job may run (seconds): five times the 120 s budget of one layer's preferred
#: inputs (``record/budget.py``); a job still running then stops with a message.
MAX_JOB_S = 600.0
#: Progress reaches the status file at most this often (every report of a new phase, of the
#: last unit and of the end is written at once).
WRITE_EVERY_S = 0.25
#: Longest message kept in a status (an exception's text can be long).
MAX_MESSAGE_CHARS = 2000
STATES = ("running", "done", "failed", "cancelled")


class JobBusy(ConvscopeError):
    """Another job holds the server; the message names it and says to try again later."""


class JobStopped(ConvscopeError):
    """A job ran past its time limit (or was asked to stop)."""


class JobCancelled(JobStopped):
    """A job was cancelled (:meth:`JobRunner.stop`); its status reads "cancelled"."""


@dataclass
class JobStatus:
    """What a job is doing: ``state`` ("running", "done", "failed", "cancelled"), the current
    ``phase`` in words with ``done`` of ``total`` units (``total`` None while unknown), the
    estimated seconds left (``eta_s``, None while unknown), the final ``message`` (the result,
    or why it failed or what a cancelled job kept), start and end times (Unix seconds), the
    process that runs it and, while it runs, whether it was asked to stop (``stopping``)."""

    key: str
    title: str
    state: str = "running"
    phase: str = "starting"
    done: float = 0.0
    total: float | None = None
    eta_s: float | None = None
    message: str = ""
    started: float = 0.0
    finished: float | None = None
    pid: int = 0
    stopping: bool = False

    @property
    def active(self) -> bool:
        return self.state == "running"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any) -> JobStatus | None:
        """A status read back from its file, or None for anything that is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
            return None
        kept = {f.name: doc[f.name] for f in fields(cls) if f.name in doc}
        try:
            st = cls(**kept)
        except TypeError:
            return None
        if st.state not in STATES:
            return None
        return st


class Progress:
    """Handed to a job's work function: report with ``progress(phase=..., done=..., total=...)``
    (each argument optional); every report also calls :meth:`check`."""

    def __init__(self, runner: JobRunner, status: JobStatus, deadline: float) -> None:
        self._runner = runner
        self._stop_file = runner._stop_path(status.key)
        self.status = status
        self._deadline = deadline
        self._phase_start = runner.clock()
        self._written = float("-inf")
        self.stop = threading.Event()  #: set to ask the job to stop at its next report

    def __call__(self, phase: str | None = None, done: float | None = None,
                 total: float | None = None) -> None:
        st = self.status
        now = self._runner.clock()
        new_phase = phase is not None and phase != st.phase
        if new_phase:
            st.phase, st.done, st.total, st.eta_s = str(phase), 0.0, None, None
            self._phase_start = now
        if total is not None:
            st.total = float(total)
        if done is not None:
            st.done = float(done)
        if st.total and st.done > 0:
            rate = (now - self._phase_start) / st.done
            st.eta_s = max(0.0, rate * (st.total - st.done))
        last = st.total is not None and st.done >= st.total
        if new_phase or last or now - self._written >= WRITE_EVERY_S:
            self._written = now
            self._runner._save(st)
        self.check()

    def check(self) -> None:
        """Raise :class:`JobCancelled` when the job was asked to stop (:meth:`JobRunner.stop`,
        in any worker process), :class:`JobStopped` when it is over its time limit."""
        if self.stop.is_set() or self._stop_file.exists():
            self.stop.set()
            raise JobCancelled(f"{self.status.title} was cancelled.")
        if self._runner.clock() > self._deadline:
            raise JobStopped(
                f"{self.status.title} ran longer than the server's limit of "
                f"{self._runner.max_seconds:.0f} s and was stopped: choose the quick setting, "
                "or record it in Python (the run's log_* calls).")


class JobRunner:
    """Runs the dashboard's background jobs, one at a time per server (see the module).

    Args:
        directory: where the statuses live (shared by the server's worker processes); ``None``:
            a new private temporary directory, removed by :meth:`close`.
        max_seconds: the longest a job may run.
        clock: seconds, monotonic within a process (tests pass a fake one; the status files
            carry wall-clock times).
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *,
                 max_seconds: float = MAX_JOB_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._own = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="convscope-jobs-") if directory is None
                              else directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self._lock = threading.Lock()  # starts of this process, one at a time
        self._held = threading.Lock()  # the busy lock where flock is missing (one process)
        self._finished: dict[str, threading.Event] = {}
        self._progress: dict[str, Progress] = {}

    # -- files ---------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:40]
                                 + ".json")

    def _write(self, path: Path, doc: dict[str, Any]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, path)
        except OSError as exc:  # a full disk or a removed directory: the job itself goes on
            log.warning("cannot write the job status %s (%s)", path, exc)

    def _stop_path(self, key: str) -> Path:
        return self._path(key).with_suffix(".stop")

    def _save(self, st: JobStatus) -> None:
        self._write(self._path(st.key), st.to_dict())

    def _read(self, path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    # -- queries -------------------------------------------------------------------------------
    def status(self, key: str) -> JobStatus | None:
        """The status of the job of ``key`` (the last one started), or None when none was."""
        st = JobStatus.from_dict(self._read(self._path(key)))
        if st is None or st.key != key:
            return None
        if st.active and not _alive(st.pid):
            st.state, st.finished = "failed", st.finished or time.time()
            st.message = ("the server process that computed this stopped before it finished "
                          "(restarted or killed): start it again.")
        st.stopping = st.active and self._stop_path(key).exists()
        return st

    def running(self) -> JobStatus | None:
        """The job that holds the server now, or None."""
        doc = self._read(self.directory / "current.json")
        key = doc.get("key") if isinstance(doc, dict) else None
        st = self.status(key) if isinstance(key, str) else None
        return st if st is not None and st.active else None

    # -- running -------------------------------------------------------------------------------
    def start(self, key: str, title: str, work: Callable[[Progress], str | None]) -> JobStatus:
        """Start ``work`` in a background thread as the job of ``key`` and return its status.

        A job of ``key`` that is still running is joined instead (its status is returned and
        ``work`` is not called); while a job of another key runs, :class:`JobBusy`."""
        with self._lock:
            st = self.status(key)
            if st is not None and st.active:
                return st
            held = self._take()
            if held is None:
                cur = self.running()
                if cur is not None and cur.key == key:
                    return cur
                what = f"{cur.title} ({_progress_words(cur)})" if cur is not None \
                    else "another job"
                raise JobBusy(f"the server is computing {what}; it computes one thing at a time: "
                              "try again when that has finished.")
            try:
                self._stop_path(key).unlink(missing_ok=True)  # a request left by an older job
                st = JobStatus(key=key, title=str(title), state="running", phase="starting",
                               started=time.time(), pid=os.getpid())
                self._save(st)
                self._write(self.directory / "current.json", {"key": key, "title": st.title})
                done = self._finished[key] = threading.Event()
                progress = self._progress[key] = Progress(
                    self, st, self.clock() + self.max_seconds)
                started = JobStatus(**st.to_dict())  # as started (the thread changes st)
                thread = threading.Thread(target=self._run, args=(st, work, progress, held,
                                                                  done),
                                          name="convscope-job", daemon=True)
                thread.start()
            except BaseException:
                self._release(held)
                raise
            return started

    def _run(self, st: JobStatus, work: Callable[[Progress], str | None], progress: Progress,
             held: Any, done: threading.Event) -> None:
        try:
            message = work(progress)
            st.state, st.message = "done", str(message or "done")
        except JobCancelled as exc:
            st.state, st.message = "cancelled", str(exc)
        except ConvscopeError as exc:
            st.state, st.message = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - a job's error is its status, never a crash
            log.error("dashboard job %s failed", st.title, exc_info=exc)
            st.state, st.message = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            st.message = st.message[:MAX_MESSAGE_CHARS]
            if st.state == "running":  # a BaseException (the process is going down)
                st.state, st.message = "failed", "the job was interrupted."
            st.finished, st.eta_s = time.time(), None
            self._save(st)
            try:
                (self.directory / "current.json").unlink()
            except OSError:
                pass
            self._release(held)
            self._progress.pop(st.key, None)
            self._stop_path(st.key).unlink(missing_ok=True)
            done.set()

    def wait(self, key: str, timeout: float | None = None) -> JobStatus | None:
        """Block until the job of ``key`` started by this process has finished (or ``timeout``
        seconds); its status."""
        ev = self._finished.get(key)
        if ev is not None:
            ev.wait(timeout)
        return self.status(key)

    def stop(self, key: str) -> bool:
        """Ask the job of ``key`` to stop at its next progress report (its status then reads
        "cancelled"), whichever worker process runs it; False when none runs."""
        p = self._progress.get(key)
        if p is not None:
            p.stop.set()
        st = self.status(key)
        if st is None or not st.active:
            return p is not None
        path = self._stop_path(key)
        try:
            path.touch()
        except OSError as exc:
            log.warning("cannot ask the job %s to stop (%s)", key, exc)
            return p is not None
        return True

    def close(self) -> None:
        """Remove the status directory when this runner created it."""
        if self._own:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- the busy lock -------------------------------------------------------------------------
    def _take(self) -> Any:
        """The server's busy lock if free (a handle for :meth:`_release`), else None."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows: one process): a thread lock
            return "thread" if self._held.acquire(blocking=False) else None
        try:
            fh = open(self.directory / "busy.lock", "a")  # noqa: SIM115 - held by the job
        except OSError as exc:
            raise JobBusy(f"the server cannot keep track of jobs ({exc.strerror or exc}): "
                          "restart it (convscope serve).") from exc
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return None
        return fh

    def _release(self, held: Any) -> None:
        if held == "thread":
            self._held.release()
        elif held is not None:
            held.close()  # closing the file releases its flock


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to someone else
        return True
    return True


def _progress_words(st: JobStatus) -> str:
    if st.total:
        return f"{st.phase} {st.done:.0f} of {st.total:.0f}"
    return st.phase


def progress_text(st: JobStatus) -> str:
    """One line for the page: ``"preferred inputs: step 12 of 64 · about 8 s left"``."""
    if st.state == "done":
        took = (st.finished or st.started) - st.started
        return f"Done in {took:.0f} s: {st.message}"
    if st.state == "failed":
        return f"Failed: {st.message}"
    if st.state == "cancelled":
        return f"Cancelled: {st.message}"
    words = st.phase
    if st.total:
        words += f" {st.done:.0f} of {st.total:.0f}"
    if st.eta_s is not None and st.eta_s < 1:
        words += " · under a second left"
    elif st.eta_s is not None:
        from ..nn.budget import format_seconds

        words += f" · about {format_seconds(st.eta_s)} left"
    if st.stopping:
        words += " · cancelling (at the next step)"
    return words
