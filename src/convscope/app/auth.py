"""WSGI middleware guarding who may talk to the dashboard.

Three checks, in this order, on every request (pages, ``/_dash-*`` callbacks, layout and
dependencies, assets, component suites, ``/files/...``):

1. **Host header** (closes DNS rebinding). On a loopback bind only loopback names are accepted
   (``localhost``, ``*.localhost``, ``127.x.x.x``, ``[::1]``, any port) plus the names given with
   ``--allow-host``; a page on ``http://evil.example`` whose name was re-pointed at 127.0.0.1 sends
   ``Host: evil.example`` and is refused. On another bind any Host is accepted (the token protects
   it) unless ``--allow-host`` names the accepted ones.
2. **Token** (when one is set; always on a non-loopback bind unless ``--no-token``). Accepted from
   the query string (``?token=...``: the answer sets an HttpOnly, SameSite=Strict cookie and
   redirects to the same URL without the token, as Jupyter does), from that cookie, or from an
   ``Authorization: token ...`` header. Compared with :func:`hmac.compare_digest`.
3. **Cross-site requests** (CSRF). A state-changing method (Dash's callback POSTs) must carry
   ``Content-Type: application/json`` (a form or ``text/plain`` body, which another site can send
   without a CORS preflight, is refused), and when the browser says where it comes from, it must
   be this origin: ``Origin`` must name the same host and port as ``Host``; ``Sec-Fetch-Site``
   must be ``same-origin`` (or ``none``).

Refusals are short plain-text 403 answers saying how to get in.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Callable, Iterable, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

__all__ = ["AccessGuard", "new_token", "is_loopback_host", "host_name", "cookie_name"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PARAM = "token"


def new_token() -> str:
    """A fresh random access token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets, lower case)."""
    h = host_header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end > 0 else h[1:]
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def is_loopback_host(name: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback IP addresses (bare, no port)."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def cookie_name(port: int | str) -> str:
    """The token cookie's name: one per port, since cookies do not tell ports apart."""
    return f"convscope-token-{port}"


def _text(start_response: Callable[..., Any], status: str, message: str,
          extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    body = (message.rstrip("\n") + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"),
                            ("X-Content-Type-Options", "nosniff"), *extra])
    return [body]


class AccessGuard:
    """Wrap a WSGI app with the Host, token and cross-site checks (see the module docstring).

    Args:
        app: the WSGI application to protect.
        token: the access token, or None for none (loopback default, or ``--no-token``).
        loopback: whether the server is bound to a loopback address (then only loopback Host
            names, plus ``allowed_hosts``, are accepted).
        allowed_hosts: extra accepted Host names (without port); ``"*"`` accepts any. On a
            non-loopback bind, an empty list accepts any Host.
    """

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        *,
        token: str | None,
        loopback: bool,
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.token = token or None
        self._token_bytes = self.token.encode() if self.token else b""
        self.loopback = loopback
        self.allowed_hosts = {host_name(h) if h != "*" else "*" for h in allowed_hosts if h}

    # -- checks --------------------------------------------------------------------------------
    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:  # HTTP/1.0 without Host: no browser sends that, so no rebinding
            return True
        if "*" in self.allowed_hosts:
            return True
        name = host_name(host_header)
        if name in self.allowed_hosts:
            return True
        if is_loopback_host(name):
            return True
        return not self.loopback and not self.allowed_hosts

    def _matches(self, candidate: str | None) -> bool:
        if not candidate or not self._token_bytes:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"),
                                   self._token_bytes)

    def _cookie_token(self, environ: dict[str, Any]) -> str | None:
        raw = environ.get("HTTP_COOKIE")
        if not raw:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(raw)
        except CookieError:
            return None
        morsel = jar.get(cookie_name(environ.get("SERVER_PORT", "")))
        return morsel.value if morsel is not None else None

    def _header_token(self, environ: dict[str, Any]) -> str | None:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = auth.strip().partition(" ")
        return value.strip() if scheme.lower() == "token" else None

    @staticmethod
    def cross_site_reason(environ: dict[str, Any]) -> str | None:
        """Why a state-changing request looks cross-site, or None when it is same-origin."""
        ctype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return (f"Content-Type {ctype or '(none)'!r} is not application/json (the dashboard's "
                    "own callbacks send JSON)")
        fetch_site = environ.get("HTTP_SEC_FETCH_SITE", "").strip().lower()
        if fetch_site and fetch_site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site is {fetch_site!r}"
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            host = environ.get("HTTP_HOST", "").strip().lower()
            try:
                parts = urlsplit(origin.strip())
                netloc = parts.netloc.lower()
            except ValueError:
                netloc = ""
            if not netloc or not host or netloc != host:
                return f"Origin {origin!r} is not this server ({host or 'no Host header'})"
        return None

    # -- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        if not self.host_allowed(environ.get("HTTP_HOST")):
            name = host_name(environ.get("HTTP_HOST", ""))
            port = environ.get("SERVER_PORT", "PORT")
            return _text(
                start_response, "403 Forbidden",
                f"convscope: requests for host {name!r} are refused (protection against DNS "
                f"rebinding). Open http://127.0.0.1:{port}/ instead, or restart the server with "
                f"--allow-host {name} if this name is yours.",
            )
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if self.token is not None:
            query = environ.get("QUERY_STRING", "")
            pairs = parse_qsl(query, keep_blank_values=True)
            from_query = [v for k, v in pairs if k == TOKEN_PARAM]
            if from_query and self._matches(from_query[-1]):
                if method in ("GET", "HEAD"):
                    return self._redirect_with_cookie(environ, start_response, pairs)
            elif not (self._matches(self._cookie_token(environ))
                      or self._matches(self._header_token(environ))):
                return _text(
                    start_response, "403 Forbidden",
                    "convscope: this dashboard needs its access token. Open the URL with "
                    "?token=... that `convscope serve` printed when it started (or send the "
                    "header 'Authorization: token ...'). Lost it? Restart the server with "
                    "--token YOUR-TOKEN, or set CONVSCOPE_TOKEN.",
                )
        if method not in SAFE_METHODS:
            reason = self.cross_site_reason(environ)
            if reason is not None:
                return _text(
                    start_response, "403 Forbidden",
                    f"convscope: cross-site request refused: {reason}. Use the dashboard from "
                    "its own page (the address `convscope serve` printed).",
                )
        return self.app(environ, start_response)

    def _redirect_with_cookie(self, environ: dict[str, Any], start_response: Callable[..., Any],
                              pairs: list[tuple[str, str]]) -> list[bytes]:
        rest = [(k, v) for k, v in pairs if k != TOKEN_PARAM]
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "") or "/"
        # a path-only Location (never a scheme or host taken from the request)
        raw = path.lstrip("/").encode("latin-1", "replace")  # WSGI strings are latin-1 bytes
        location = "/" + quote(raw, safe="/:@!$&'()*+,;=-._~")
        if rest:
            location += "?" + urlencode(rest)
        cookie = (f"{cookie_name(environ.get('SERVER_PORT', ''))}={self.token}; Path=/; "
                  "HttpOnly; SameSite=Strict")
        body = f"Redirecting to {location}\n".encode()
        start_response("303 See Other", [
            ("Location", location), ("Set-Cookie", cookie),
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ])
        return [body]
