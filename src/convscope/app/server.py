"""Serve the dashboard with waitress, in one process or several worker processes.

Python's GIL runs one callback at a time per process, so with ``workers > 1`` the listening socket
is opened once and ``workers`` forked processes each run waitress on it (the kernel hands each
connection to one of them). The parent only supervises: it restarts a worker that dies, forwards
Ctrl+C / SIGTERM to the workers and waits for them; a worker exits when its parent dies.

Every request goes through :class:`~convscope.app.auth.AccessGuard` (Host check against DNS
rebinding, the access token, cross-site callback refusal).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import ServeError
from .auth import AccessGuard, is_loopback_host, new_token

__all__ = ["serve", "default_workers", "resolve_token", "read_token_file"]

MAX_DEFAULT_WORKERS = 8
TOKEN_ENV = "CONVSCOPE_TOKEN"
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~-]+$")
log = logging.getLogger("convscope.app")


def _is_loopback(host: str) -> bool:
    return is_loopback_host(host)


def default_workers() -> int:
    """Worker processes by default: the usable cores (at least 1, at most 8); 1 without fork."""
    if not hasattr(os, "fork"):
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def resolve_token(token: str | bool | None, loopback: bool) -> tuple[str | None, bool]:
    """``(token or None, generated)`` for ``serve``'s ``token`` argument.

    ``None``: ``$CONVSCOPE_TOKEN`` if set, else a new one on a non-loopback bind, else none.
    ``True``: ``$CONVSCOPE_TOKEN`` or a new one. ``False``: none. A string: that token.
    """
    if token is False:
        return None, False
    if isinstance(token, str):
        value = token.strip()
        if not value:
            raise ServeError("--token is empty: pass a token (letters, digits, '-', '_', '.', "
                             "'~'), or leave it out to have one generated.")
    else:
        value = os.environ.get(TOKEN_ENV, "").strip()
        if not value:
            if token is None and loopback:
                return None, False
            return new_token(), True
    if not _TOKEN_CHARS.match(value):
        raise ServeError("the access token may hold only letters, digits and '-', '_', '.', '~' "
                         "(it travels in URLs and cookies): pick another --token or "
                         f"${TOKEN_ENV}.")
    if len(value) < 16:
        print(f"WARNING: the access token is only {len(value)} characters long; a guessable "
              "token protects nothing. Leave --token out to have a strong one generated.",
              file=sys.stderr)
    return value, False


def read_token_file(path: str | Path) -> str:
    """The access token held in the file ``path`` (its first line, stripped).

    The file must be a regular file that neither group nor others may read (``chmod 600``): a
    token anyone on the machine can read protects nothing. A token given this way (or in
    ``$CONVSCOPE_TOKEN``) does not show in ``ps`` or ``/proc/<pid>/cmdline`` as ``--token``
    does.
    """
    p = Path(path).expanduser()
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ServeError(f"cannot read --token-file {p} ({exc.strerror or exc}): write the "
                         "token into that file (chmod 600) or pass it in "
                         f"${TOKEN_ENV}.") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ServeError(f"--token-file {p} is not a regular file: write the token into a "
                             "file (chmod 600).")
        if os.name == "posix" and st.st_mode & 0o044:
            raise ServeError(f"--token-file {p} is readable by other users (mode "
                             f"{stat.S_IMODE(st.st_mode):o}), so the token protects nothing: "
                             f"run 'chmod 600 {p}' (or pick a new token) and start again.")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(4097)
    finally:
        os.close(fd)
    if len(raw) > 4096:
        raise ServeError(f"--token-file {p} is larger than 4 KB: it should hold one token line.")
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ServeError(f"--token-file {p} is not UTF-8 text: write the token as one line of "
                         "letters, digits, '-', '_', '.', '~'.") from exc
    value = lines[0].strip() if lines else ""
    if not value:
        raise ServeError(f"--token-file {p} is empty: write the token into its first line.")
    return value


def _listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve --host {host!r} ({exc.strerror or exc}): pass an "
                         "address such as 127.0.0.1 or 0.0.0.0.") from exc
    family, socktype, proto, _, addr = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port."
        ) from exc
    sock.setblocking(False)
    return sock


def _bound_is_loopback(sock: socket.socket, host: str) -> bool:
    try:
        return ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    except ValueError:
        return _is_loopback(host)


def _urls(host: str, port: int, token: str | None) -> list[str]:
    q = f"?token={quote(token)}" if token else ""
    if host in ("0.0.0.0", "::", ""):
        names = [socket.gethostname(), "127.0.0.1"]
    else:
        names = [host]
    return [f"http://{f'[{n}]' if ':' in n else n}:{port}/{q}" for n in names]


def serve(
    logdir: str | Path = "runs",
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    threads: int | None = None,
    workers: int | None = None,
    token: str | bool | None = None,
    token_file: str | Path | None = None,
    allow_hosts: Sequence[str] = (),
    trust_checkpoints: bool = False,
    compute: bool | None = None,
    quiet: bool = False,
) -> None:
    """Serve ``logdir`` at ``http://host:port`` until interrupted.

    Args:
        logdir: a directory of runs (or one run).
        host: the address to bind; the loopback address by default. Any other address needs the
            access token (generated and printed unless given) since the dashboard shows
            everything in the logdir.
        port: the TCP port.
        threads: waitress threads per worker process (default 8 with one worker, else 4).
        workers: worker processes (default :func:`default_workers`: the usable cores, at most
            8). ``1`` serves in this process.
        token: ``None``: ``$CONVSCOPE_TOKEN``, else a generated token on a non-loopback bind and
            none on loopback. A string: that token. ``True``: a token even on loopback.
            ``False``: no token (a warning off loopback).
        token_file: read the token from this file instead (see :func:`read_token_file`); not
            together with a ``token`` string or ``False``.
        allow_hosts: ``Host`` names accepted besides the loopback names (``"*"``: any). On a
            non-loopback bind, none given means any.
        trust_checkpoints: let the dashboard unpickle whole-module checkpoints (runs you trust
            only: unpickling runs code).
        compute: let the Model page compute a layer's preferred inputs and top examples on
            demand with the run's saved model and store them in the run (a background job, one
            at a time, at most 10 minutes). ``None``: on for a loopback bind, off otherwise:
            over the network anyone holding the token could otherwise spend the server's CPU
            for minutes per click and write into the runs (``True`` allows it there too).
        quiet: print nothing but the access URL of a generated token.
    """
    from .shell import create_app

    if token_file is not None:
        if token is False or isinstance(token, str):
            raise ServeError("--token-file cannot be combined with --token or --no-token: pass "
                             "one of them.")
        token = read_token_file(token_file)
    logdir = Path(logdir).expanduser().resolve()
    if not logdir.is_dir():
        raise ServeError(
            f"logdir {logdir} does not exist: record a run first (cs.Run(logdir=...) or "
            "`convscope demo`), or pass --logdir pointing at your runs."
        )
    if workers is None:
        workers = default_workers()
    if workers < 1:
        raise ServeError(f"--workers must be at least 1, got {workers}.")
    if workers > 1 and not hasattr(os, "fork"):
        workers = 1  # no fork here (Windows): one process with threads
    if threads is None:
        threads = 8 if workers == 1 else 4
    if threads < 1:
        raise ServeError(f"threads must be at least 1, got {threads}.")
    if not logging.getLogger("convscope").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logging.getLogger("convscope").addHandler(handler)

    sock = _listen(host, port)
    jobs = None
    try:
        port = sock.getsockname()[1]
        loopback = _bound_is_loopback(sock, host)
        secret, generated = resolve_token(token, loopback)
        if secret is None and not loopback:
            print(
                f"WARNING: serving on {host} without an access token (--no-token): anyone who "
                "can reach this port sees everything in the logdir and can use the dashboard. "
                "Leave --no-token out, or use --host 127.0.0.1.",
                file=sys.stderr,
            )
        elif not loopback:
            print(
                f"WARNING: serving on {host}, reachable from other machines; every request "
                "needs the access token. Plain HTTP carries it in clear text: use a trusted "
                "network or an HTTPS proxy in front.",
                file=sys.stderr, flush=True,
            )
        app = create_app(logdir, trust_checkpoints=trust_checkpoints)
        state = app.convscope_state
        state.compute = loopback if compute is None else bool(compute)
        if state.compute:
            jobs = state.jobs  # its status directory, made here, is shared by the workers
            if not loopback:
                print(f"WARNING: --compute on {host}: whoever can use the dashboard can make "
                      "the server run a saved model for minutes and append to the runs.",
                      file=sys.stderr, flush=True)
        _warm_up(app)
        wsgi = LongLived(AccessGuard(app.server, token=secret, loopback=loopback,
                                     allowed_hosts=list(allow_hosts)))
        wsgi.install(thread=workers == 1)  # a worker starts its own (threads do not fork)
        urls = _urls(host, port, secret)
        if not quiet or generated:
            mode = f"{workers} worker processes" if workers > 1 else "1 process"
            print(f"convscope: serving {logdir} ({mode}) at {urls[0]}  (Ctrl+C to stop)",
                  flush=True)
            print("    computing on demand (Model page): "
                  + ("on (--no-compute turns it off)" if state.compute else
                     "off (--compute turns it on)"), flush=True)
            for u in urls[1:]:
                print(f"    or {u}", flush=True)
        if workers == 1:
            _run_waitress(wsgi, sock, threads)
        else:
            _supervise(wsgi, sock, threads, workers)
    finally:
        sock.close()
        if jobs is not None:
            jobs.close()


#: Seconds between the full collections that also free what died among the frozen objects.
REFREEZE_S = 600.0


class LongLived:
    """A WSGI wrapper that keeps the server's long-lived objects out of the garbage collector's
    full (generation 2) collections.

    A full collection walks every tracked object. A dashboard serving a ResNet-50 run holds a
    large, long-lived heap: dash and its pages, plotly's validators (built on the first figure
    of each kind), torch and the Live page's model. About one request in ten then paid a full
    collection: the Model page's layer panel took ~320 ms of CPU instead of ~90 ms. So:

    * at start, after a collection, everything is frozen (:func:`gc.freeze`): moved to a
      permanent generation that collections skip (forked workers also keep sharing its pages);
    * after every full collection the survivors, long-lived by then, are frozen as well, when
      the request under way ends;
    * every ``every`` seconds (:data:`REFREEZE_S`) a daemon thread unfreezes, collects and
      freezes again, so that cycles among frozen objects that have died since (a run reader
      dropped from the cache) are freed too. Objects without cycles are freed at once as
      always (reference counting applies to frozen objects).
    """

    def __init__(self, wsgi: Callable[..., Iterable[bytes]], every: float | None = None
                 ) -> None:
        self.wsgi = wsgi
        self.every = float(REFREEZE_S if every is None else every)  # 0: no thread
        self.pending = False
        self._thread: threading.Thread | None = None

    def install(self, *, thread: bool = True) -> None:
        """Collect and freeze now, and freeze after every full collection from now on;
        ``thread``: also start the periodic thread (:meth:`start`)."""
        gc.collect()
        gc.freeze()
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        if thread:
            self.start()

    def start(self) -> None:
        """Start the thread that unfreezes, collects and freezes every ``every`` seconds."""
        if self.every > 0 and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._loop, name="convscope-gc",
                                            daemon=True)
            self._thread.start()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self.pending = True

    def refreeze(self) -> None:
        """One full collection of everything, then freeze the survivors."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _loop(self) -> None:
        while True:
            time.sleep(self.every)
            self.refreeze()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        try:
            return self.wsgi(environ, start_response)
        finally:
            if self.pending:
                self.pending = False
                gc.freeze()


def _warm_up(app) -> None:
    """Render the index page once, here, before any worker is forked.

    Dash registers the script files it may serve (``/_dash-component-suites/...``) while it
    renders the index page, per process. A worker that had not rendered it yet answered 500 to
    the browser's script requests (the page then stayed at "Loading..."); forked after this, every
    worker inherits the registration.
    """
    client = app.server.test_client()
    for path in ("/", "/_dash-layout", "/_dash-dependencies"):
        resp = client.get(path)
        if resp.status_code != 200:
            raise ServeError(f"the dashboard failed to render {path} (HTTP {resp.status_code}); "
                             "see the error above, and report it if it persists.")


def _run_waitress(wsgi: Callable[..., Iterable[bytes]], sock: socket.socket,
                  threads: int) -> None:
    from waitress import serve as waitress_serve

    from .shell import MAX_REQUEST_BYTES

    # request bodies above MAX_REQUEST_BYTES are refused by waitress before they are read in
    # full (its default is 1 GiB, spooled to disk); Flask's MAX_CONTENT_LENGTH says the same
    waitress_serve(wsgi, sockets=[sock], threads=threads, _quiet=True,
                   channel_timeout=120, connection_limit=1000, asyncore_use_poll=True,
                   max_request_body_size=MAX_REQUEST_BYTES)


# -- worker processes ---------------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def _worker(wsgi: Callable[..., Iterable[bytes]], sock: socket.socket, threads: int,
            workers: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the parent, which stops us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent)
    if "torch" in sys.modules:  # share the cores among the workers, not cores x workers threads
        sys.modules["torch"].set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if isinstance(wsgi, LongLived):
        wsgi.start()
    code = 0
    try:
        _run_waitress(wsgi, sock, threads)
    except BaseException:  # noqa: BLE001 - a worker reports and exits; the parent restarts it
        log.exception("dashboard worker %d failed", os.getpid())
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _supervise(wsgi: Callable[..., Iterable[bytes]], sock: socket.socket, threads: int,
               workers: int) -> None:
    parent = os.getpid()
    children: set[int] = set()
    stopping: list[int] = []

    def spawn() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker never returns from here
            try:
                _worker(wsgi, sock, threads, workers, parent)
            finally:
                os._exit(1)
        children.add(pid)

    def on_signal(signum, _frame) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    restarts: list[float] = []
    try:
        for _ in range(workers):
            spawn()
        while not stopping:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid == 0:
                time.sleep(0.2)
                continue
            if pid not in children:
                continue
            children.discard(pid)
            if stopping:
                break
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 30] + [now]
            if len(restarts) > 3 * workers:
                raise ServeError(
                    f"dashboard workers keep dying (last exit status {status}); see the errors "
                    "above, or run with --workers 1 to debug."
                )
            log.warning("dashboard worker %d exited (status %d); starting another", pid, status)
            spawn()
    finally:
        _stop_children(children)
        for s, h in old.items():
            signal.signal(s, h)
    if stopping and stopping[0] == signal.SIGINT:
        raise KeyboardInterrupt


def _stop_children(children: set[int], grace: float = 5.0) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    children.clear()
