"""Serve the dashboard with waitress."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

from ..errors import ServeError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    logdir: str | Path = "runs",
    host: str = "127.0.0.1",
    port: int = 8050,
    *,
    threads: int = 8,
    quiet: bool = False,
) -> None:
    """Serve ``logdir`` at ``http://host:port`` until interrupted.

    Binds the loopback address by default; any other address prints a warning, since the
    dashboard has no authentication and shows everything in the logdir.
    """
    from waitress import serve as waitress_serve

    from .shell import create_app

    logdir = Path(logdir).expanduser().resolve()
    if not logdir.is_dir():
        raise ServeError(
            f"logdir {logdir} does not exist: record a run first (cs.Run(logdir=...) or "
            "`convscope demo`), or pass --logdir pointing at your runs."
        )
    if not _is_loopback(host):
        print(
            f"WARNING: serving on {host}, reachable from other machines. The dashboard has no "
            "authentication and shows everything in the logdir; use --host 127.0.0.1 unless you "
            "mean it.",
            file=sys.stderr,
        )
    if not logging.getLogger("convscope").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logging.getLogger("convscope").addHandler(handler)
    app = create_app(logdir)
    if not quiet:
        shown = f"[{host}]" if ":" in host else host
        print(f"convscope: serving {logdir} at http://{shown}:{port}/  (Ctrl+C to stop)",
              flush=True)
    try:
        waitress_serve(app.server, host=host, port=port, threads=threads, _quiet=True)
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}): pick another --port."
        ) from exc
