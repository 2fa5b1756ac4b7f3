"""WSGI middleware guarding who may talk to the dashboard.

Three checks, in this order, on every request (pages, ``/_dash-*`` callbacks, layout and
dependencies, assets, component suites, ``/files/...``):

1. **Host header** (closes DNS rebinding). It must be well formed: ``name`` or ``name:digits``
   with a DNS name, an IPv4 address or a bracketed IPv6 address (``localhost:evil.example``,
   ``[::1]evil.example``, ``evil.example#.localhost``, an empty value or two Host headers get a
   400). A request without Host is accepted only over HTTP/1.0 (no browser sends one, so DNS
   rebinding cannot); over HTTP/1.1 it gets a 400. On a loopback bind only loopback names are
   accepted (``localhost``, ``*.localhost``, ``127.x.x.x``, ``[::1]``, any port) plus the names
   given with ``--allow-host``; a page on ``http://evil.example`` whose name was re-pointed at
   127.0.0.1 sends ``Host: evil.example`` and is refused (403). On another bind any well-formed
   Host is accepted (the token protects it) unless ``--allow-host`` names the accepted ones.
2. **Token** (when one is set; always on a non-loopback bind unless ``--no-token``). Accepted from
   the query string (``?token=...``: the answer sets an HttpOnly, SameSite=Strict cookie and
   redirects to the same URL without the token, as Jupyter does), from that cookie, or from an
   ``Authorization: token ...`` header. Compared with :func:`hmac.compare_digest`.
3. **Cross-site requests** (CSRF). A state-changing method (Dash's callback POSTs) must carry
   ``Content-Type: application/json`` (a form or ``text/plain`` body, which another site can send
   without a CORS preflight, is refused), and when the browser says where it comes from, it must
   be this origin: ``Origin`` must name the same scheme, host and port as the request (scheme
   ``http``; ``https`` too for a Host that is not a loopback name, as a TLS proxy in front
   forwards); ``Sec-Fetch-Site`` must be ``same-origin`` (or ``none``).

Every answer, refusals included, carries ``X-Frame-Options: DENY`` and
``Content-Security-Policy: frame-ancestors 'none'`` (no framing by another site: clickjacking).
Refusals are short plain-text 403 answers saying how to get in.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

__all__ = ["AccessGuard", "new_token", "is_loopback_host", "host_name", "parse_host",
           "cookie_name", "SECURITY_HEADERS"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOKEN_PARAM = "token"
#: Added to every answer, refusals included: no other site may show the dashboard in a frame
#: (clickjacking). Only ``frame-ancestors``: Dash's page needs its inline scripts.
SECURITY_HEADERS = (("X-Frame-Options", "DENY"),
                    ("Content-Security-Policy", "frame-ancestors 'none'"))


def new_token() -> str:
    """A fresh random access token (32 bytes, URL-safe)."""
    return secrets.token_urlsafe(32)


#: A ``Host`` header: a DNS name or IPv4 address, or an IPv6 address in brackets, then an
#: optional ``:port`` of digits (RFC 9110 section 7.2). Nothing else: no second colon, no
#: ``/``, ``#``, ``@``, spaces or commas (two Host headers arrive joined by a comma).
_HOST_RE = re.compile(
    r"^(?:\[(?P<v6>[0-9a-f:.]+)\]"
    r"|(?P<name>[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?))"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


def parse_host(host_header: str) -> tuple[str, int | None] | None:
    """``(name, port)`` of a well-formed ``Host`` header (name in lower case, without IPv6
    brackets or a trailing dot), or None when it is not ``name`` or ``name:digits``."""
    h = host_header.strip().lower()
    if len(h) > 260:
        return None
    m = _HOST_RE.match(h)
    if m is None:
        return None
    port = int(m["port"]) if m["port"] else None
    if port is not None and port > 65535:
        return None
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(m["v6"])
        except ValueError:
            return None
        return m["v6"], port
    return m["name"].rstrip("."), port


def host_name(host_header: str) -> str:
    """The name part of a ``Host`` header (no port, no IPv6 brackets, lower case); for a
    malformed header (see :func:`parse_host`), the whole value in lower case."""
    parsed = parse_host(host_header)
    if parsed is not None:
        return parsed[0]
    return host_header.strip().lower()


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


def _with_security_headers(start_response: Callable[..., Any]) -> Callable[..., Any]:
    """``start_response`` adding :data:`SECURITY_HEADERS` the app did not set itself."""

    def wrapped(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        have = {k.lower() for k, _ in headers}
        extra = [(k, v) for k, v in SECURITY_HEADERS if k.lower() not in have]
        if exc_info is not None:
            return start_response(status, [*headers, *extra], exc_info)
        return start_response(status, [*headers, *extra])

    return wrapped


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
        """Whether a well-formed ``Host`` value may reach the app (see :meth:`host_problem`)."""
        return self.host_problem(host_header) is None

    def host_problem(self, host_header: str | None, protocol: str = "HTTP/1.1"
                     ) -> tuple[str, str] | None:
        """``(status, message)`` refusing a ``Host`` header, or None to accept it.

        A missing header is accepted only from HTTP/1.0 clients (no browser sends a request
        without Host, so DNS rebinding cannot produce one; HTTP/1.1 requires it). An empty or
        malformed value is a 400; a well-formed name that is not accepted is a 403.
        """
        if host_header is None:
            if protocol.upper() == "HTTP/1.0":
                return None
            return ("400 Bad Request", "convscope: the request has no Host header (HTTP/1.1 "
                    "requires one): send 'Host: 127.0.0.1:PORT'.")
        if "*" in self.allowed_hosts:
            return None
        parsed = parse_host(host_header)
        if parsed is None:
            shown = host_header if len(host_header) <= 80 else host_header[:80] + "…"
            return ("400 Bad Request", f"convscope: the Host header {shown!r} is not a host "
                    "name with an optional ':port'. Open http://127.0.0.1:PORT/ instead.")
        name = parsed[0]
        if name in self.allowed_hosts or is_loopback_host(name):
            return None
        if not self.loopback and not self.allowed_hosts:
            return None
        return ("403 Forbidden", f"convscope: requests for host {name!r} are refused "
                "(protection against DNS rebinding). Open http://127.0.0.1:PORT/ instead, or "
                f"restart the server with --allow-host {name} if this name is yours.")

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
            scheme = str(environ.get("wsgi.url_scheme") or "http").lower()
            try:
                parts = urlsplit(origin.strip())
                netloc = parts.netloc.lower()
                o_scheme = parts.scheme.lower()
            except ValueError:
                netloc, o_scheme = "", ""
            # https is also this server when a TLS proxy in front of it forwards a name of its
            # own (never a loopback name: nothing else serves https on this port there)
            proxied = (o_scheme == "https" and scheme == "http"
                       and not is_loopback_host(host_name(host)))
            if not netloc or not host or netloc != host or (o_scheme != scheme and not proxied):
                shown = origin if len(origin) <= 120 else origin[:120] + "…"
                return (f"Origin {shown!r} is not this server "
                        f"({f'{scheme}://{host}' if host else 'no Host header'})")
        return None

    # -- WSGI ------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        start_response = _with_security_headers(start_response)
        problem = self.host_problem(environ.get("HTTP_HOST"),
                                    str(environ.get("SERVER_PROTOCOL", "HTTP/1.1")))
        if problem is not None:
            status, message = problem
            port = str(environ.get("SERVER_PORT", "PORT"))
            return _text(start_response, status, message.replace(":PORT/", f":{port}/"))
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
                    "--token-file PATH, or set CONVSCOPE_TOKEN.",
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
