"""Findings of the red-team review of issue 12, each reproduced against a real ``convscope serve``
on 127.0.0.1 over HTTP (or a real ``convscope`` command), and shown to fail now:

1. a run picker flooded with a long string or 50,000 names tied a worker up for seconds to
   minutes (every name re-listed the logdir);
2. non-string ``url.pathname``, numeric ``run-select.value`` and deeply nested request bodies
   answered HTTP 500; a deeply nested ``run.json`` killed ``convscope runs``;
3. ``--token`` is readable by every local user in ``/proc/<pid>/cmdline``: ``--token-file``;
4. malformed Host headers were accepted, the Origin's scheme ignored, and nothing forbade
   framing the dashboard (clickjacking).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import convscope as cs
from convscope.app import server as app_server
from convscope.app.auth import AccessGuard, parse_host
from convscope.app.state import MAX_SELECTED, AppState, selected_names
from convscope.cli import main
from convscope.errors import NotARunError, ServeError

from .conftest import free_port
from .dash_http import dependencies, find, payload, post

N_RUNS = 25
TOKEN = "redteam-token-0123456789abcdef"
PICKERS = ("model-run", "attr-run", "diag-run", "live-run", "res-run", "emb-run", "trn-run")
FRAME = {"x-frame-options": "DENY", "content-security-policy": "frame-ancestors 'none'"}


@pytest.fixture(scope="module")
def logdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("redteam")
    for i in range(N_RUNS):
        with cs.Run(root, f"run{i:02d}") as run:
            run.log_scalars(0, loss=float(i))
    return root


@pytest.fixture(scope="module")
def srv(logdir, module_serve):
    return module_serve(logdir, refresh_ms=60_000)


@pytest.fixture(scope="module")
def deps(srv):
    return dependencies(srv.url)


def raw_request(port: int, request: bytes, timeout: float = 60) -> tuple[int, dict, bytes]:
    """Send bytes as they are (any Host header, or none) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def get(port: int, path: str, host: str | None, version: str = "HTTP/1.1",
        extra: str = "") -> tuple[int, dict, bytes]:
    host_line = "" if host is None else f"Host: {host}\r\n"
    req = f"GET {path} {version}\r\n{host_line}{extra}Connection: close\r\n\r\n"
    return raw_request(port, req.encode("latin-1"))


def callback_post(url: str, body: bytes, headers: dict, timeout: float = 60
                  ) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url + "/_dash-update-component", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def _response(raw: bytes) -> dict:
    return json.loads(raw)["response"]


# -- 1. bounded work per picker request ---------------------------------------------------------
def test_selected_names_are_typed_deduplicated_and_capped():
    assert selected_names(["b", "a", "b", 3, None, ["a"], {"x": 1}, "", "c" * 256]) == ["b", "a"]
    assert selected_names("a") == ["a"]
    for bad in (None, 5, 1.5, True, {"a": 1}, b"a"):
        assert selected_names(bad) == []
    many = [f"r{i}" for i in range(50_000)]
    assert selected_names(many) == many[:MAX_SELECTED]
    assert selected_names(["x"] * 50_000 + ["y"]) == ["x", "y"]


def test_run_path_only_finds_runs_directly_inside_the_logdir(logdir, tmp_path):
    state = AppState(logdir)
    assert state.run_path("run03") == logdir / "run03"
    (logdir / "not-a-run").mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    with cs.Run(tmp_path, "outside"):
        pass
    for bad in ("not-a-run", "..", ".", "", "run03/..", "run03/tables", str(outside),
                "../" + outside.parent.name + "/outside", "a\x00b", "x" * 300, 5, None,
                ["run03"], {"run03": 1}):
        with pytest.raises(NotARunError):
            state.run_path(bad)
    names = ["run01", "nope", "run01", 7, "run02"] + [f"n{i}" for i in range(10_000)]
    assert [r.name for r in state.readers(names)] == ["run01", "run02"]


def test_a_flooded_run_picker_answers_quickly(srv, deps):
    """50,000 names (489 KB) took ~24 s with 25 runs; a 100,000-character string took 9 s."""
    real = [f"run{i:02d}" for i in range(0, N_RUNS, 2)]  # 13 runs, first in the list
    flood = real + [f"nope{i}" for i in range(50_000)] + [f"run{i:02d}" for i in range(1, 9)]
    for picker in PICKERS:
        dep = find(deps, picker)
        for value in (flood, "x" * 100_000, real * 4000):
            t0 = time.monotonic()
            status, raw = post(srv.url, payload(dep, {"run-select.value": value},
                                                "run-select.value"))
            took = time.monotonic() - t0
            assert status == 200, (picker, raw[-500:])
            assert took < 5, (picker, type(value).__name__, took)
            resp = _response(raw)
            assert resp[picker]["options"] == [] and resp[picker]["value"] is None
            status_text = json.dumps(resp[picker.replace("-run", "-status")])
            if isinstance(value, list):
                # none of these runs has the page's data: the notice names exactly the selected
                # runs that exist among the first MAX_SELECTED names, each once
                for name in real:
                    assert status_text.count(name) == 1, (picker, name, status_text[:500])
                if value is flood:  # the odd runs come after the cap: never looked up
                    for i in (1, 3, 5, 7):
                        assert f"run{i:02d}" not in status_text, (picker, i)
            else:
                assert "run0" not in status_text


def test_concurrent_floods_do_not_stop_the_server(srv, deps):
    """8 concurrent 300 KB picker requests made the server stop answering for over 60 s."""
    body = json.dumps(payload(find(deps, "model-run"), {"run-select.value": "x" * 300_000},
                              "run-select.value")).encode()
    results: list[tuple[int, float]] = []

    def attack() -> None:
        t0 = time.monotonic()
        status, _, _ = callback_post(srv.url, body, {"Origin": srv.url}, timeout=120)
        results.append((status, time.monotonic() - t0))

    threads = [threading.Thread(target=attack) for _ in range(8)]
    for t in threads:
        t.start()
    t0 = time.monotonic()
    with urllib.request.urlopen(srv.url + "/_dash-layout", timeout=60) as r:
        assert r.status == 200
    probe = time.monotonic() - t0
    for t in threads:
        t.join(120)
    assert probe < 5, probe
    assert len(results) == 8 and all(s == 200 for s, _ in results), results
    assert max(dt for _, dt in results) < 10, results


def test_the_header_run_selector_accepts_only_run_names(srv, deps):
    dep = find(deps, "run-select")
    names = [f"run{i:02d}" for i in range(N_RUNS)]
    for value in (5, 1.5, True, {"a": 1}, [[["run01"]]], "x" * 100_000):
        status, raw = post(srv.url, payload(dep, {"run-select.value": value}))
        assert status == 200, (value, raw[-500:])
        resp = _response(raw)["run-select"]
        assert resp["value"] == []
        assert [o["value"] for o in resp["options"]] == names[::-1]
    flood = ["run03", "run01", "run03"] + ["nope"] * 50_000
    t0 = time.monotonic()
    status, raw = post(srv.url, payload(dep, {"run-select.value": flood}))
    assert status == 200 and time.monotonic() - t0 < 5
    assert _response(raw)["run-select"]["value"] == ["run03", "run01"]
    # remembered selections from local storage are cleaned the same way
    status, raw = post(srv.url, payload(dep, {"run-select.value": None,
                                              "run-select-memory.data": ["run02", 4, "zz"]}))
    assert status == 200 and _response(raw)["run-select"]["value"] == ["run02"]


# -- 2. no HTTP 500 -----------------------------------------------------------------------------
def test_non_string_pathnames_render_page_not_found(srv, deps):
    dep = find(deps, "page")
    for value in ({"a": {"b": 1}}, [1, 2, 3], 10**40, -1, 1e308, True, float("nan"),
                  "/" + "x" * 100_000):
        status, raw = post(srv.url, payload(dep, {"url.pathname": value}))
        assert status == 200, (value, raw[-300:])
        text = raw.decode()
        assert "Page not found" in text and "Traceback" not in text
        assert len(raw) < 5_000  # a long path is not echoed back in full
    status, raw = post(srv.url, payload(dep, {"url.pathname": "/scalars/"}))
    assert status == 200 and "Page not found" not in raw.decode()


@pytest.mark.parametrize("body", [
    b"[" * 20_000_000,
    b'{"a":' * 50_000,
    json.dumps({"output": "page.children", "inputs": [{"id": "url", "property": "pathname",
                                                       "value": None}]}).encode()[:-1]
    + b', "state": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
], ids=["brackets-20MB", "objects-50k", "nested-state"])
def test_deeply_nested_request_bodies_get_a_400(srv, body):
    status, headers, data = callback_post(srv.url, body, {"Origin": srv.url}, timeout=120)
    assert status == 400, (status, data[:300])
    assert b"nested too deeply" in data and b"Traceback" not in data
    assert headers["x-frame-options"] == "DENY"
    with urllib.request.urlopen(srv.url + "/_dash-layout", timeout=30) as r:
        assert r.status == 200  # the server is still up


def test_a_deeply_nested_run_json_is_reported_as_damaged(tmp_path, capsys):
    with cs.Run(tmp_path, "deep") as run:
        run.log_scalars(0, loss=1.0)
    with cs.Run(tmp_path, "fine") as run:
        run.log_scalars(0, loss=1.0)
    (tmp_path / "deep" / "run.json").write_text(
        '{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["runs", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("deep\t") and "scalars=1" in lines[0]
    assert "problem: run.json" in lines[1] and "nested too deeply" in lines[1]
    assert any(line.startswith("fine\t") and "ended" in line for line in lines)
    (tmp_path / "deep" / "run.json").write_text("[1, 2]")  # valid JSON, not an object
    info = cs.store.RunInfo.of(tmp_path / "deep")
    assert any("not an object" in p for p in info.problems)
    # the report command names the damaged file instead of dying with a traceback
    (tmp_path / "deep" / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    code = main(["report", str(tmp_path / "deep"), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and "run.json" in err and "Traceback" not in err, err


# -- 3. the token off the command line ----------------------------------------------------------
def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "token"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_read_token_file(tmp_path):
    assert app_server.read_token_file(_token_file(tmp_path, f"  {TOKEN}  \nignored\n")) == TOKEN
    for text, mode, words in [
        (TOKEN, 0o644, "chmod 600"), (TOKEN, 0o640, "chmod 600"), (TOKEN, 0o604, "chmod 600"),
        ("\n\n", 0o600, "empty"), ("x" * 5000, 0o600, "larger than 4 KB"),
    ]:
        with pytest.raises(ServeError, match=words):
            app_server.read_token_file(_token_file(tmp_path, text, mode))
    with pytest.raises(ServeError, match="cannot read"):
        app_server.read_token_file(tmp_path / "absent")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ServeError, match="not a regular file"):  # and does not block
        app_server.read_token_file(fifo)


def test_token_on_the_command_line_warns_and_options_exclude_each_other(logdir, tmp_path,
                                                                       monkeypatch, capsys):
    import convscope.app as app_pkg

    calls = []
    monkeypatch.setattr(app_pkg, "serve", lambda logdir, **kw: calls.append(kw))
    assert main(["serve", "--logdir", str(logdir), "--token", TOKEN]) == 0
    err = capsys.readouterr().err
    assert "visible to every user" in err and "CONVSCOPE_TOKEN" in err and "--token-file" in err
    f = _token_file(tmp_path, TOKEN)
    assert main(["serve", "--logdir", str(logdir), "--token-file", str(f)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert calls[-1]["token_file"] == str(f) and calls[-1]["token"] is None
    for extra in (["--token", TOKEN], ["--no-token"]):
        assert main(["serve", "--logdir", str(logdir), "--token-file", str(f), *extra]) == 2
        assert "contradict" in capsys.readouterr().err


def test_a_server_started_with_a_token_file(logdir, tmp_path):
    f = _token_file(tmp_path, TOKEN + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CONVSCOPE_TOKEN"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir), "--port",
         str(port), "--workers", "1", "--token-file", str(f)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "convscope serve --token-file exited"
            try:
                with urllib.request.urlopen(url + "/_dash-layout", timeout=2) as r:
                    pytest.fail(f"answered {r.status} without the token")
            except urllib.error.HTTPError as exc:
                assert exc.code == 403 and b"access token" in exc.read()
                break
            except OSError:
                assert time.monotonic() < deadline, "no answer within 60 s"
                time.sleep(0.2)
        req = urllib.request.Request(url + "/files/run01/run.json",
                                     headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.load(r)["name"] == "run01"
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert TOKEN.encode() not in cmdline and b"--token-file" in cmdline
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


# -- 4. Host, Origin and framing ------------------------------------------------------------------
def test_parse_host():
    assert parse_host("LocalHost.:8765") == ("localhost", 8765)
    assert parse_host("[::1]:80") == ("::1", 80)
    assert parse_host("127.0.0.1") == ("127.0.0.1", None)
    for bad in ("localhost:evil.example", "[::1]evil.example", "[::1].evil.example",
                "evil.example#.localhost", "evil.example/.localhost", "", " ", "localhost:",
                "127.0.0.1:8765:evil.example", "127.0.0.1 evil.example", "evil.example,127.0.0.1",
                "127.0.0.1@evil.example", "localhost:99999", "[::1", "[zz::1]:80", ".localhost",
                "a..localhost", "127.0.0.1\tevil"):
        assert parse_host(bad) is None, bad


def test_malformed_and_missing_host_headers_are_refused(srv):
    port = srv.port
    bad = ["localhost:evil.example", "[::1]evil.example", "[::1].evil.example",
           "evil.example#.localhost", "evil.example/.localhost", "", f"127.0.0.1:{port}:evil",
           "127.0.0.1,evil.example", "127.0.0.1@evil.example"]
    for host in bad:
        status, headers, data = get(port, "/files/run01/run.json", host)
        assert status == 400, (host, status)
        assert b"not a host name" in data and b"run01" not in data
        assert headers["x-frame-options"] == "DENY"
    status, _, data = get(port, "/files/run01/run.json", None)  # HTTP/1.1 without Host
    assert status == 400 and b"no Host header" in data
    # two Host headers (waitress joins them with a comma): refused whichever comes first
    for a, b in (("evil.example", "127.0.0.1"), ("127.0.0.1", "evil.example")):
        status, _, _ = get(port, "/_dash-layout", a, extra=f"Host: {b}\r\n")
        assert status in (400, 403), (a, b, status)
    # well-formed foreign names: 403 (DNS rebinding); loopback names and HTTP/1.0 without Host
    for host in ("evil.example", f"localhost.evil.example:{port}", "127.0.0.1.evil.example"):
        assert get(port, "/_dash-layout", host)[0] == 403, host
    for host in (f"127.0.0.1:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", "localhost"):
        assert get(port, "/_dash-layout", host)[0] == 200, host
    status, _, data = get(port, "/files/run01/run.json", None, version="HTTP/1.0")
    assert status == 200 and json.loads(data)["name"] == "run01"


def test_origin_must_match_the_scheme_too(srv, deps):
    body = json.dumps(payload(find(deps, "run-select"), {"run-select.value": ["run01"]})).encode()
    host = f"127.0.0.1:{srv.port}"
    for origin in (f"https://{host}", f"HTTPS://{host}", f"ftp://{host}", f"http://x@{host}"):
        status, _, data = callback_post(srv.url, body, {"Origin": origin})
        assert status == 403 and b"cross-site request refused" in data, (origin, status)
    for headers in ({"Origin": f"http://{host}"}, {"Origin": f"HTTP://{host}"}):
        status, _, data = callback_post(srv.url, body, headers)
        assert status == 200, (headers, status, data[:200])
    env = {"CONTENT_TYPE": "application/json", "HTTP_HOST": host, "wsgi.url_scheme": "http"}
    reason = AccessGuard.cross_site_reason
    assert reason({**env, "HTTP_ORIGIN": f"http://{host}"}) is None
    assert "https" in reason({**env, "HTTP_ORIGIN": f"https://{host}"})
    for loop in ("localhost", "[::1]:8050", "app.localhost"):
        assert reason({**env, "HTTP_HOST": loop, "HTTP_ORIGIN": f"https://{loop}"})
    # behind a TLS proxy forwarding its own name (allowed with --allow-host): https is this site
    proxied = {**env, "HTTP_HOST": "dash.example"}
    assert reason({**proxied, "HTTP_ORIGIN": "https://dash.example"}) is None
    assert reason({**proxied, "HTTP_ORIGIN": "https://evil.example"})
    assert reason({**proxied, "HTTP_ORIGIN": "ftp://dash.example"})


def test_every_answer_forbids_framing(srv, deps):
    port = srv.port
    page = urllib.request.urlopen(srv.url + "/", timeout=30).read().decode()
    suite = page.split('src="/_dash-component-suites/', 1)[1].split('"', 1)[0]
    answers = {
        "page": get(port, "/", f"127.0.0.1:{port}"),
        "unknown page": get(port, "/no/such/page", f"127.0.0.1:{port}"),
        "layout": get(port, "/_dash-layout", f"127.0.0.1:{port}"),
        "asset": get(port, "/assets/convscope.css", f"127.0.0.1:{port}"),
        "suite": get(port, "/_dash-component-suites/" + suite, f"127.0.0.1:{port}"),
        "file": get(port, "/files/run01/run.json", f"127.0.0.1:{port}"),
        "missing file": get(port, "/files/run01/nope.json", f"127.0.0.1:{port}"),
        "path guard 404": get(port, "/files/run01/%2e%2e/%2e%2e/etc/passwd",
                              f"127.0.0.1:{port}"),
        "rebinding 403": get(port, "/", "evil.example"),
    }
    body = json.dumps(payload(find(deps, "run-select"), {"run-select.value": ["run01"]})).encode()
    answers["callback"] = callback_post(srv.url, body, {"Origin": srv.url})
    answers["csrf 403"] = callback_post(srv.url, body, {"Origin": "http://evil.example"})
    expected = {"page": 200, "unknown page": 200, "layout": 200, "asset": 200, "suite": 200,
                "file": 200, "missing file": 404, "path guard 404": 404, "rebinding 403": 403,
                "callback": 200, "csrf 403": 403}
    for name, (status, headers, _) in answers.items():
        assert status == expected[name], (name, status)
        for k, v in FRAME.items():
            assert headers.get(k) == v, (name, k, headers.get(k))


@pytest.mark.browser
def test_another_local_page_cannot_frame_the_dashboard(srv, page, tmp_path):
    """A page on another port puts the dashboard in an iframe: the browser refuses to show it,
    while the dashboard itself still renders (the headers do not break its inline scripts)."""
    import http.server

    html = f'<html><body><iframe id="f" src="{srv.url}/scalars"></iframe></body></html>'
    (tmp_path / "index.html").write_text(html)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        page.goto(srv.url + "/scalars")
        page.wait_for_selector("#run-select")
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html")
        page.wait_for_load_state("load")  # the frame's navigation has ended, one way or another
        frame = next(f for f in page.frames if f != page.main_frame)
        # a refused frame shows the browser's error page in place of the dashboard
        assert frame.url.startswith("chrome-error://"), frame.url
        assert frame.query_selector("#run-select") is None
    finally:
        httpd.shutdown()
        httpd.server_close()
