"""WSGI middleware that refuses any request trying to climb out of the served tree.

Every request whose path, raw or percent-decoded (repeatedly, so double encoding is caught),
contains a ``..`` segment, a backslash, a NUL byte, or an absolute path (``//`` after the first
slash, or a drive letter) gets a plain 404 before any route sees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

_DRIVE = re.compile(r"(^|/)[A-Za-z]:")


def _decoded_forms(raw: str) -> list[str]:
    forms = [raw]
    s = raw
    for _ in range(5):
        d = unquote(s, errors="replace")
        if d == s:
            break
        forms.append(d)
        s = d
    return forms


def unsafe_path(raw: str) -> bool:
    """True when ``raw`` (a URL path) could address anything outside the served tree."""
    for s in _decoded_forms(raw):
        if "\\" in s or "\x00" in s:
            return True
        if ".." in s.split("/"):
            return True
        if "//" in s or _DRIVE.search(s):
            return True
    return False


class PathGuard:
    """Wrap a WSGI app; 404 for unsafe paths (see module docstring)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        raw = environ.get("REQUEST_URI") or environ.get("RAW_URI") or ""
        raw_path = raw.split("?", 1)[0]
        if raw_path.startswith(("http://", "https://")):  # absolute-form request target
            raw_path = "/" + raw_path.split("/", 3)[-1] if raw_path.count("/") >= 3 else "/"
        path = environ.get("PATH_INFO", "")
        if unsafe_path(raw_path) or unsafe_path(path):
            body = b"404 Not Found\n"
            start_response(
                "404 Not Found",
                [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            )
            return [body]
        return self.app(environ, start_response)
