"""Shared fixtures: a real `convscope serve` process and Debian's chromium via Playwright."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid`` (from /proc; [] where there is no /proc)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Server:
    """A `python -m convscope serve` subprocess on 127.0.0.1.

    ``workers`` (default 1: one process, the old mode; None: the server's default), ``token``
    (passed as ``--token``; the readiness probe then sends it) and ``args`` (more command-line
    arguments) are optional.
    """

    def __init__(self, logdir: Path, refresh_ms: int = 1000, *, workers: int | None = 1,
                 token: str | None = None, args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        env = dict(os.environ, CONVSCOPE_REFRESH_MS=str(refresh_ms))
        env.pop("CONVSCOPE_TOKEN", None)
        cmd = [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir),
               "--port", str(self.port)]
        if workers is not None:
            cmd += ["--workers", str(workers)]
        if token is not None:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(
            cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=env,
        )
        # drain the server's output in a thread: a pipe nobody reads fills up (64 KiB) and then
        # blocks the server on its next log line; the lines are kept for failure reports
        self.lines: list[str] = []
        self._drain = threading.Thread(target=self._read_output, daemon=True)
        self._drain.start()
        headers = {"Authorization": f"token {token}"} if token else {}
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                self._drain.join(timeout=5)
                raise RuntimeError(f"convscope serve exited: {self.output()}")
            try:
                req = urllib.request.Request(self.url + "/_dash-layout", headers=headers)
                urllib.request.urlopen(req, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("convscope serve did not answer within 60 s") from None
                time.sleep(0.2)

    def _read_output(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
        except (OSError, ValueError):  # closed by stop()
            pass

    def output(self, last: int = 200) -> str:
        """The server's last ``last`` lines of output (stdout and stderr)."""
        return "".join(self.lines[-last:])

    def worker_pids(self) -> list[int]:
        """The worker processes serving (the server's own pid when it has no workers)."""
        return child_pids(self.proc.pid) or [self.proc.pid]

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and any worker left behind."""
        if self.proc.poll() is not None:
            return
        workers = child_pids(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in workers:
            if pid_alive(p):
                os.kill(p, signal.SIGKILL)
        self._drain.join(timeout=5)
        if not self._drain.is_alive():
            self.proc.stdout.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start `python -m convscope serve --logdir ...`; stopped at the end of the test."""
    servers: list[Server] = []

    def start(logdir: Path, refresh_ms: int = 1000, **kw) -> Server:
        s = Server(logdir, refresh_ms, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def module_serve() -> Iterator[Callable[..., Server]]:
    """Like ``serve`` but shared by the tests of one module."""
    servers: list[Server] = []

    def start(logdir: Path, refresh_ms: int = 1000, **kw) -> Server:
        s = Server(logdir, refresh_ms, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def cy_click(page, graph_id: str, node_id: str) -> None:
    """Click a node of a dash-cytoscape graph (canvas-drawn) at its rendered position."""
    page.wait_for_function(
        f"""() => {{ const el = document.getElementById({graph_id!r});
                   return el && el._cyreg && el._cyreg.cy.$id({node_id!r}).length > 0; }}"""
    )
    locate = f"""() => {{ const el = document.getElementById({graph_id!r});
                   const cy = el._cyreg.cy; const n = cy.$id({node_id!r});
                   const p = n.renderedPosition(); const r = el.getBoundingClientRect();
                   return {{x: r.x + p.x, y: r.y + p.y}}; }}"""
    # wait until the layout has settled: the node sits still for 300 ms
    pos, prev = page.evaluate(locate), None
    for _ in range(50):
        page.wait_for_timeout(300)
        prev, pos = pos, page.evaluate(locate)
        if prev == pos:
            break
    page.mouse.click(pos["x"], pos["y"])


def auto_threads_fixture():
    """Torch threads for CPU-heavy test modules: fewer when the machine is busy (restored)."""
    import torch

    from convscope.training import auto_threads

    old = torch.get_num_threads()
    torch.set_num_threads(auto_threads())
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def browser():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "Debian's chromium is needed for the browser tests: "
            "apt-get install -y --no-install-recommends chromium (make test does this as root)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    # waits are for callbacks of a real server; on a loaded 2-core machine a chain of them
    # (e.g. the Training page's four views after a range reset) can take more than 30 s
    ctx.set_default_timeout(60_000)
    pg = ctx.new_page()
    yield pg
    ctx.close()
