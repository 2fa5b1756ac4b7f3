"""Who may talk to the dashboard: the access token, the Host check (DNS rebinding), cross-site
callback refusal (CSRF), worker processes, and the bounded reader cache.

The server tests run a real ``convscope serve`` on 127.0.0.1 and speak HTTP to it.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pytest

import convscope as cs
from convscope.app import auth, server
from convscope.app.auth import AccessGuard
from convscope.app.state import AppState
from convscope.cli import main

from .conftest import child_pids, free_port, pid_alive

TOKEN = "test-token-0123456789abcdef"


# -- helpers ------------------------------------------------------------------------------------
def _request(port: int, method: str, path: str, *, headers: dict | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    hdrs = dict(headers or {})
    skip_host = "Host" in hdrs
    conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
    for k, v in hdrs.items():
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    out = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    return resp.status, out, data


def _callback_body(port: int, output_has: str, headers: dict) -> bytes:
    """A real Dash callback request built from ``/_dash-dependencies`` (all values null)."""
    status, _, data = _request(port, "GET", "/_dash-dependencies", headers=headers)
    assert status == 200
    dep = next(d for d in json.loads(data) if output_has in d["output"])

    def spec(items):
        return [{"id": i["id"], "property": i["property"], "value": None} for i in items]

    outputs = [{"id": o.strip("."), "property": p}
               for o, p in (s.rsplit(".", 1) for s in dep["output"].strip(".").split("..."))]
    return json.dumps({
        "output": dep["output"],
        "outputs": outputs if len(outputs) > 1 else outputs[0],
        "inputs": spec(dep["inputs"]),
        "state": spec(dep["state"]),
        "changedPropIds": [f"{i['id']}.{i['property']}" for i in dep["inputs"]],
    }).encode()


def _run_names_from_callback(data: bytes) -> list[str]:
    resp = json.loads(data)["response"]
    return [o["value"] for o in resp["run-select"]["options"]]


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logdir")
    with cs.Run(root, "alpha") as run:
        for s in range(5):
            run.log_scalars(s, loss=1.0 / (s + 1))
    return root


@pytest.fixture(scope="module")
def token_server(logdir, module_serve):
    """A server on 127.0.0.1 with the token forced on, two worker processes."""
    return module_serve(logdir, refresh_ms=60_000, token=TOKEN, workers=2)


@pytest.fixture(scope="module")
def open_server(logdir, module_serve):
    """A server on loopback with the defaults: no token, the default worker count."""
    return module_serve(logdir, refresh_ms=60_000, workers=None)


def _routes(port: int) -> list[tuple[str, str]]:
    """(method, path) of every kind of route, the component suite found in the real page."""
    status, _, page = _request(port, "GET", "/", headers={"Authorization": f"token {TOKEN}"})
    assert status == 200
    suites = re.findall(rb'src="(/_dash-component-suites/[^"]+)"', page)
    assert suites, page[:2000]
    return [
        ("GET", "/"),
        ("GET", "/scalars"),
        ("GET", "/_dash-layout"),
        ("GET", "/_dash-dependencies"),
        ("GET", "/assets/convscope.css"),
        ("GET", suites[0].decode()),
        ("GET", "/files/alpha/run.json"),
        ("POST", "/_dash-update-component"),
    ]


def _call(port, method, path, headers, body):
    h = dict(headers)
    if method == "POST":
        h["Content-Type"] = "application/json"
        return _request(port, method, path, headers=h, body=body)
    return _request(port, method, path, headers=h)


# -- the token ----------------------------------------------------------------------------------
def test_every_route_needs_the_token(token_server):
    port = token_server.port
    good = {"Authorization": f"token {TOKEN}"}
    body = _callback_body(port, "run-select.options", good)
    cookie = auth.cookie_name(port)
    for method, path in _routes(port):
        b = body if method == "POST" else None
        # no token, a wrong one in each place, the right one for another port's cookie
        for headers in ({}, {"Authorization": "token wrong-token-000000000"},
                        {"Authorization": f"Bearer {TOKEN}"},
                        {"Cookie": f"{cookie}=wrong-token-000000000"},
                        {"Cookie": f"{auth.cookie_name(port + 1)}={TOKEN}"}):
            status, _, data = _call(port, method, path, headers, b)
            assert status == 403, (method, path, headers, status)
            assert b"?token=" in data and b"alpha" not in data, data
        sep = "&" if "?" in path else "?"
        status, _, _ = _call(port, method, f"{path}{sep}token=wrong", {}, b)
        assert status == 403, (method, path)
        # header, cookie
        for headers in (good, {"Cookie": f"other=1; {cookie}={TOKEN}"}):
            status, _, data = _call(port, method, path, headers, b)
            assert status == 200, (method, path, headers, status, data[:300])
        if method == "POST":  # the answer is the run list: the callback really ran
            assert _run_names_from_callback(data) == ["alpha"]


def test_token_in_the_query_sets_a_cookie_and_redirects_without_it(token_server):
    port = token_server.port
    status, headers, _ = _request(port, "GET", f"/scalars?token={TOKEN}&smooth=0.5")
    assert status == 303
    assert headers["location"] == "/scalars?smooth=0.5"  # same URL, token removed
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{auth.cookie_name(port)}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    jar = cookie.split(";", 1)[0]
    status, _, page = _request(port, "GET", headers["location"], headers={"Cookie": jar})
    assert status == 200 and b"_dash-config" in page
    status, headers, _ = _request(port, "GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"


def test_callback_post_with_the_token_in_the_query_runs(token_server):
    port = token_server.port
    body = _callback_body(port, "run-select.options", {"Authorization": f"token {TOKEN}"})
    status, _, data = _request(port, "POST", f"/_dash-update-component?token={TOKEN}",
                               headers={"Content-Type": "application/json"}, body=body)
    assert status == 200 and _run_names_from_callback(data) == ["alpha"]


def test_the_default_loopback_server_needs_no_token(open_server):
    status, _, data = _request(open_server.port, "GET", "/files/alpha/run.json")
    assert status == 200 and b'"name": "alpha"' in data


# -- Host header (DNS rebinding) ----------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["open_server", "token_server"])
def test_non_loopback_host_names_are_refused_on_loopback(fixture, request):
    srv = request.getfixturevalue(fixture)
    port = srv.port
    tok = {"Authorization": f"token {TOKEN}"}
    for host in ("evil.example", f"evil.example:{port}", f"localhost.evil.example:{port}",
                 f"127.0.0.1.nip.io:{port}", "10.0.0.1", f"[2001:db8::1]:{port}"):
        status, _, data = _request(port, "GET", "/files/alpha/run.json",
                                   headers={"Host": host, **tok})
        assert status == 403, (host, status)
        assert b"DNS rebinding" in data and b"alpha" not in data
    for host in (f"localhost:{port}", "localhost", f"127.0.0.1:{port}", f"127.1.2.3:{port}",
                 f"[::1]:{port}", f"app.localhost:{port}"):
        status, _, data = _request(port, "GET", "/files/alpha/run.json",
                                   headers={"Host": host, **tok})
        assert status == 200, (host, status)


def _wsgi_call(guard: AccessGuard, **environ) -> int:
    env: dict = {}
    setup_testing_defaults(env)
    env.update(environ)
    seen = []
    guard(env, lambda status, headers: seen.append(int(status.split()[0])))
    return seen[0]


def _ok_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_allow_host_and_non_loopback_binds():
    loop = AccessGuard(_ok_app, token=None, loopback=True, allowed_hosts=["dash.example"])
    assert _wsgi_call(loop, HTTP_HOST="dash.example:8050") == 200
    assert _wsgi_call(loop, HTTP_HOST="DASH.example.") == 200
    assert _wsgi_call(loop, HTTP_HOST="other.example") == 403
    assert _wsgi_call(loop, HTTP_HOST="localhost:1") == 200
    anyhost = AccessGuard(_ok_app, token="t" * 20, loopback=False)
    assert _wsgi_call(anyhost, HTTP_HOST="whatever.example",
                      HTTP_AUTHORIZATION="token " + "t" * 20) == 200
    assert _wsgi_call(anyhost, HTTP_HOST="whatever.example") == 403  # the token still counts
    named = AccessGuard(_ok_app, token=None, loopback=False, allowed_hosts=["box.lan"])
    assert _wsgi_call(named, HTTP_HOST="box.lan:8050") == 200
    assert _wsgi_call(named, HTTP_HOST="evil.example") == 403
    star = AccessGuard(_ok_app, token=None, loopback=True, allowed_hosts=["*"])
    assert _wsgi_call(star, HTTP_HOST="evil.example") == 200


# -- cross-site callbacks (CSRF) ----------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["open_server", "token_server"])
def test_cross_site_callback_posts_are_refused(fixture, request):
    srv = request.getfixturevalue(fixture)
    port = srv.port
    tok = {"Authorization": f"token {TOKEN}"}
    body = _callback_body(port, "run-select.options", tok)
    me = f"http://127.0.0.1:{port}"
    bad = [
        {"Content-Type": "application/json", "Origin": "http://evil.example"},
        {"Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port + 1}"},
        {"Content-Type": "application/json", "Origin": "null"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-site"},
        {"Content-Type": "text/plain", "Origin": me},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {},
    ]
    for headers in bad:
        status, _, data = _request(port, "POST", "/_dash-update-component",
                                   headers={**headers, **tok}, body=body)
        assert status == 403, (headers, status)
        assert b"cross-site request refused" in data and b"alpha" not in data
    # what the dashboard's own page sends (fetch from the same origin) works
    for headers in (
        {"Content-Type": "application/json", "Origin": me, "Sec-Fetch-Site": "same-origin"},
        {"Content-Type": "application/json; charset=utf-8"},
    ):
        status, _, data = _request(port, "POST", "/_dash-update-component",
                                   headers={**headers, **tok}, body=body)
        assert status == 200, (headers, status, data[:300])
        assert _run_names_from_callback(data) == ["alpha"]


# -- starting the server ------------------------------------------------------------------------
def _serve_in_process(monkeypatch, logdir, **kw):
    """Run ``serve`` up to the point where it would block, pretending the bind is not loopback
    (tests only ever bind 127.0.0.1); returns the guard it would serve."""
    seen = {}
    monkeypatch.setattr(server, "_bound_is_loopback", lambda sock, host: False)
    monkeypatch.setattr(server, "_run_waitress",
                        lambda wsgi, sock, threads: seen.setdefault("wsgi", wsgi))
    monkeypatch.delenv("CONVSCOPE_TOKEN", raising=False)
    monkeypatch.setattr(server, "REFREEZE_S", 0)  # no periodic garbage-collection thread
    server.serve(logdir, host="127.0.0.1", port=0, workers=1, **kw)
    wsgi = seen["wsgi"]
    assert isinstance(wsgi, server.LongLived)  # the guard, kept out of full collections
    gc.callbacks.remove(wsgi._on_gc)  # this test process's collector as it was
    gc.unfreeze()
    return wsgi.wsgi


def test_a_non_loopback_bind_generates_a_token_and_prints_it(logdir, monkeypatch, capsys):
    guard = _serve_in_process(monkeypatch, logdir, quiet=True)
    captured = capsys.readouterr()
    out = captured.out
    assert "reachable from other machines" in captured.err
    printed = re.findall(r"\?token=([A-Za-z0-9_-]+)", out)
    assert printed and printed[0] == guard.token and len(guard.token) >= 40
    assert guard.loopback is False
    again = _serve_in_process(monkeypatch, logdir, quiet=True)
    assert again.token != guard.token  # fresh each start
    monkeypatch.setenv("CONVSCOPE_TOKEN", "from-the-environment-123")
    assert server.resolve_token(None, loopback=False) == ("from-the-environment-123", False)
    assert server.resolve_token(None, loopback=True) == ("from-the-environment-123", False)


def test_no_token_off_loopback_warns(logdir, monkeypatch, capsys):
    guard = _serve_in_process(monkeypatch, logdir, token=False, quiet=True)
    assert guard.token is None
    err = capsys.readouterr().err
    assert "WARNING" in err and "without an access token" in err


def test_token_resolution_on_loopback_and_bad_tokens():
    assert server.resolve_token(None, loopback=True) == (None, False)
    tok, generated = server.resolve_token(True, loopback=True)
    assert generated and len(tok) >= 40
    assert server.resolve_token("abc-DEF_123.~xyz0000", loopback=True)[0] == "abc-DEF_123.~xyz0000"
    for bad in ("has space", "semi;colon", "quote\"", ""):
        with pytest.raises(cs.ConvscopeError, match="token"):
            server.resolve_token(bad, loopback=False)


def test_cli_rejects_token_with_no_token(logdir, capsys):
    assert main(["serve", "--logdir", str(logdir), "--token", TOKEN, "--no-token"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_port_in_use_is_a_serve_error(logdir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(cs.ConvscopeError, match="another --port"):
            server.serve(logdir, port=s.getsockname()[1], workers=1)


# -- worker processes ---------------------------------------------------------------------------
def _established_by_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many open connections to ``port`` each process holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "01":  # ESTABLISHED
                inodes.add(f[9])
    out = {}
    for pid in pids:
        n = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            m = re.fullmatch(r"socket:\[(\d+)\]", target)
            n += bool(m and m.group(1) in inodes)
        out[pid] = n
    return out


def test_two_workers_answer_and_stop_cleanly(logdir, serve):
    srv = serve(logdir, refresh_ms=60_000, workers=2)
    workers = srv.worker_pids()
    assert len(workers) == 2 and srv.proc.pid not in workers
    status, _, page = _request(srv.port, "GET", "/")  # rendered by one of the workers
    assert status == 200
    script = re.findall(rb'src="(/_dash-component-suites/[^"]+)"', page)[-1].decode()
    # hold 24 keep-alive connections open (each answered) and see who holds them; every worker
    # serves the page's scripts, also one that has not rendered the page itself (Dash registers
    # them while rendering: the server does that before forking)
    conns = []
    try:
        for _ in range(24):
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
            c.request("GET", "/files/alpha/run.json")
            r = c.getresponse()
            assert r.status == 200 and b'"alpha"' in r.read()
            c.request("GET", script)
            r = c.getresponse()
            assert r.status == 200 and len(r.read()) > 1000, r.status
            conns.append(c)
        held = _established_by_pid(srv.port, workers)
        assert sum(held.values()) == 24, held
        assert all(n > 0 for n in held.values()), held  # both workers answered
    finally:
        for c in conns:
            c.close()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=15) == 0
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in workers)


def test_workers_die_with_a_killed_parent_and_a_dead_worker_is_replaced(logdir, serve):
    srv = serve(logdir, refresh_ms=60_000, workers=2)
    first = srv.worker_pids()
    os.kill(first[0], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = child_pids(srv.proc.pid)
        if len(now) == 2 and first[0] not in now:
            break
        time.sleep(0.1)
    now = child_pids(srv.proc.pid)
    assert len(now) == 2 and first[0] not in now and first[1] in now
    status, _, _ = _request(srv.port, "GET", "/files/alpha/run.json")
    assert status == 200
    srv.proc.kill()  # no chance to clean up: the workers must go by themselves
    srv.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in now) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in now)


def test_ctrl_c_stops_the_workers(logdir):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir), "--port",
         str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "2 worker processes" in line
        deadline = time.monotonic() + 30
        while len(child_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        kids = child_pids(proc.pid)
        assert len(kids) == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 130
        assert not any(pid_alive(p) for p in kids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


# -- bounded reader cache -----------------------------------------------------------------------
def test_reader_cache_is_a_bounded_lru(tmp_path):
    for name in ("a", "b", "c"):
        with cs.Run(tmp_path, name) as run:
            run.log_scalars(0, x=1.0)
    state = AppState(tmp_path, max_readers=2)
    ra = state.reader("a")
    state.reader("b")
    assert state.reader("a") is ra  # a hit, now the most recent
    state.reader("c")  # evicts b, the least recently used
    assert list(state._readers) == ["a", "c"]
    assert state.reader("a") is ra
    rb = state.reader("b")
    assert rb.name == "b" and list(state._readers) == ["a", "b"]
    for _ in range(100):
        for n in ("a", "b", "c"):
            state.reader(n)
    assert len(state._readers) == 2


# -- the browser --------------------------------------------------------------------------------
@pytest.mark.browser
def test_browser_token_flow(logdir, serve, browser, page):
    srv = serve(logdir, refresh_ms=60_000, token=TOKEN, workers=2)
    page.goto(f"{srv.url}/?token={TOKEN}")
    assert page.url == srv.url + "/"  # redirected: the token left the address bar
    # the page loads and its callbacks (sent with the cookie) fill the runs table and selector
    page.wait_for_selector("tr[data-run='alpha']")
    assert "scalars (5 rows)" in page.locator("tr[data-run='alpha']").inner_text()
    page.goto(srv.url + "/scalars")
    page.wait_for_selector("#scalars-graph .js-plotly-plot")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    ctx = browser.new_context()
    try:
        fresh = ctx.new_page()
        resp = fresh.goto(srv.url + "/")
        assert resp.status == 403
        assert "needs its access token" in fresh.inner_text("body")
        assert "alpha" not in fresh.content()
    finally:
        ctx.close()


# -- the CLI passes --trust-checkpoints on -------------------------------------------------------
@pytest.mark.parametrize("command", ["diagnose", "analyze"])
def test_trust_checkpoints_reaches_load_model(command, logdir, monkeypatch, capsys):
    from convscope.store import RunReader

    seen = []

    def fake_load_model(self, key="model", map_location="cpu", *, trust=False):
        seen.append(trust)
        raise cs.errors.StoreError("stop here")

    monkeypatch.setattr(RunReader, "load_model", fake_load_model)
    run = str(logdir / "alpha")
    extra = ["--what", "diagnosis"] if command == "analyze" else []
    assert main([command, run, *extra]) == 2
    assert main([command, run, *extra, "--trust-checkpoints"]) == 2
    assert seen == [False, True]
    assert "stop here" in capsys.readouterr().err


def test_serve_passes_trust_checkpoints_to_the_app(logdir, monkeypatch):
    import convscope.app.shell as shell

    seen = []
    real = shell.create_app

    def spy(logdir, refresh_ms=None, *, trust_checkpoints=False):
        seen.append(trust_checkpoints)
        return real(logdir, refresh_ms, trust_checkpoints=trust_checkpoints)

    monkeypatch.setattr(shell, "create_app", spy)
    monkeypatch.setattr(server, "_run_waitress", lambda wsgi, sock, threads: None)
    assert main(["serve", "--logdir", str(logdir), "--port", "0", "--workers", "1"]) == 0
    assert main(["serve", "--logdir", str(logdir), "--port", "0", "--workers", "1",
                 "--trust-checkpoints"]) == 0
    assert seen == [False, True]
