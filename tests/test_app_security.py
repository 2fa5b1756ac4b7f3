"""The server never serves anything from outside the logdir."""

from __future__ import annotations

import http.client

import pytest

import convscope as cs
from convscope.app.guard import unsafe_path

SECRET = "top-secret-content-1234"

CLIMBS = [
    "/files/r/../../secret.txt",
    "/files/r/../run.json",
    "/files/r/%2e%2e/%2e%2e/secret.txt",
    "/files/r/%2E%2E%2F%2E%2E%2Fsecret.txt",
    "/files/r/..%2f..%2fsecret.txt",
    "/files/r/%252e%252e/%252e%252e/secret.txt",
    "/files/r/%25252e%25252e%25252fsecret.txt",
    "/files/r/..%5c..%5csecret.txt",
    "/files/r//etc/passwd",
    "/files/r/%2fetc%2fpasswd",
    "/files/..%2fsecret.txt/x",
    "/../secret.txt",
    "/..",
    "/%2e%2e/secret.txt",
    "/scalars/../../secret.txt",
    "/assets/../../../secret.txt",
    "/assets/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/_dash-component-suites/dash/../../../../secret.txt",
    "/_dash-component-suites/dash/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
    "/_dash-layout/../../secret.txt",
    "//etc/passwd",
    "/files/r/C:/Windows/win.ini",
    "/a/b/c/d/e/../../../../../../../../secret.txt",
]


@pytest.mark.parametrize("path", CLIMBS)
def test_guard_flags_every_climb(path):
    assert unsafe_path(path)


@pytest.mark.parametrize("path", ["/", "/scalars", "/files/r/run.json", "/assets/x.css",
                                  "/_dash-component-suites/dash/dcc/a.v1.js", "/a.b/c..d"])
def test_guard_allows_ordinary_paths(path):
    assert not unsafe_path(path)


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


@pytest.mark.browser
def test_server_returns_404_for_climbs_and_serves_run_files(tmp_path, serve):
    (tmp_path / "secret.txt").write_text(SECRET)
    logdir = tmp_path / "logdir"
    with cs.Run(logdir, "r") as run:
        run.log_scalars(0, loss=1.0)
    server = serve(logdir)
    status, body = _get(server.port, "/files/r/run.json")
    assert status == 200 and b'"name": "r"' in body
    for path in CLIMBS:
        status, body = _get(server.port, path)
        assert status == 404, (path, status)
        assert SECRET.encode() not in body and b"root:" not in body, path
    # a run name that is not in the logdir, and the logdir's parent, are not reachable
    assert _get(server.port, "/files/secret.txt/x")[0] == 404
    assert _get(server.port, "/files/r/tables")[0] == 404  # directories are not listed
