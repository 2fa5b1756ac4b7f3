"""Load benchmark of the dashboard: the Model, Attribution, Training and Diagnosis pages'
callbacks replayed from 1, 8 and 32 concurrent clients against a real ``convscope serve``.

Run:  .venv/bin/python benchmarks/bench_load.py [--seconds 30] [--clients 1,8,32] [--rounds 3]
      [--workers 1,default] [--logdir DIR] [--requests FILE] [--json FILE]

1. The run: ``--logdir`` (a directory of runs) or, by default, ``convscope demo --small
   --no-serve`` recorded into a temporary directory.
2. The requests: the callback POSTs chromium (Playwright, Debian's chromium) sends while it opens
   each of the four pages, recorded once from a real browser session (``--requests FILE`` reuses
   or saves them).
3. For every round and every worker setting (``1`` = the single-process baseline, ``default`` =
   what ``convscope serve`` picks on this machine), a fresh server on 127.0.0.1 is started (its
   output goes to a log file), warmed up (every request once per worker), then each client level
   runs for ``--seconds``: each client is a thread with one keep-alive connection that replays the
   pages' callbacks in order, page after page, and records each request's latency. A level stops
   after ``--seconds`` or ``--max-requests``, whichever comes first; a request taking more than
   ``--timeout`` seconds counts as an error.
4. The server's memory is sampled every 0.25 s (VmRSS summed over the server and its workers;
   PSS too, which counts shared pages once).

Prints a markdown table of medians over rounds (requests/s, p50, p95, p99, errors, peak RSS), the
ratio of each setting to the ``--workers 1`` baseline measured in the same run, and the slowest
callbacks (p95 per callback at the highest client level).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGES = ["/model", "/attribution", "/training", "/diagnosis"]
OK = {200, 204}


# -- the server ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MB summed over ``pid`` and its children."""
    rss = pss = 0.0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss, pss


class Server:
    def __init__(self, logdir: Path, workers: str, log_path: Path) -> None:
        self.port = free_port()
        self.log = open(log_path, "a")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir), "--port",
               str(self.port)]
        if workers != "default":
            cmd += ["--workers", workers]
        env = dict(os.environ, CONVSCOPE_REFRESH_MS="3600000")
        env.pop("CONVSCOPE_TOKEN", None)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {log_path}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/_dash-layout")
                if c.getresponse().status == 200:
                    c.close()
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not answer within 120 s; see {log_path}")
            time.sleep(0.2)
        time.sleep(0.5)  # let every worker start
        self.workers = max(1, len(children(self.proc.pid)))

    def stop(self) -> None:
        kids = children(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for k in kids:  # the server stops its workers; this only guards against a bug
            try:
                os.kill(k, 9)
            except ProcessLookupError:
                pass
        self.log.close()


# -- recording the callbacks from a real browser ---------------------------------------------------
def record_requests(logdir: Path, log_path: Path) -> list[dict]:
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("Debian's chromium is needed to record the callbacks: apt-get install "
                         "-y --no-install-recommends chromium (or pass --requests FILE)")
    server = Server(logdir, "1", log_path)
    out: list[dict] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox",
                                                                    "--disable-gpu"])
            ctx = browser.new_context(viewport={"width": 1400, "height": 900})
            page = ctx.new_page()
            current = {"page": None}

            def on_request(req) -> None:
                if req.method == "POST" and "/_dash-update-component" in req.url:
                    body = req.post_data or ""
                    try:
                        output = json.loads(body).get("output", "?")
                    except ValueError:
                        output = "?"
                    out.append({"page": current["page"], "output": output, "body": body})

            page.on("request", on_request)
            for path in PAGES:
                current["page"] = path
                page.goto(f"http://127.0.0.1:{server.port}{path}")
                page.wait_for_load_state("networkidle", timeout=120_000)
                page.wait_for_timeout(3000)  # late callbacks chained on the first answers
                page.wait_for_load_state("networkidle", timeout=120_000)
            browser.close()
    finally:
        server.stop()
    if not out:
        raise SystemExit("no callback requests were recorded")
    return out


# -- load ---------------------------------------------------------------------------------------
def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def run_level(port: int, pid: int, requests: list[dict], clients: int, seconds: float,
              max_requests: int, timeout: float) -> dict:
    by_page = [[r for r in requests if r["page"] == p] for p in PAGES]
    by_page = [x for x in by_page if x]
    stop = threading.Event()
    lock = threading.Lock()
    lat: list[float] = []
    per_output: dict[str, list[float]] = {}
    errors: list[str] = []
    count = [0]
    peak = [0.0, 0.0]

    def sampler() -> None:
        while not stop.is_set():
            rss, pss = memory_mb(pid)
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            stop.wait(0.25)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        i = k  # clients start on different pages
        while not stop.is_set():
            for req in by_page[i % len(by_page)]:
                if stop.is_set():
                    break
                body = req["body"].encode()
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/_dash-update-component", body=body, headers={
                        "Content-Type": "application/json",
                        "Origin": f"http://127.0.0.1:{port}",
                        "Sec-Fetch-Site": "same-origin"})
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException) as exc:
                    status = None
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                    err = f"{req['output'][:60]}: {type(exc).__name__}"
                else:
                    err = None if status in OK else f"{req['output'][:60]}: HTTP {status}"
                dt_ = time.perf_counter() - t0
                with lock:
                    if stop.is_set():
                        break
                    count[0] += 1
                    if err:
                        errors.append(err)
                    else:
                        lat.append(dt_)
                        per_output.setdefault(req["output"], []).append(dt_)
                    if count[0] >= max_requests:
                        stop.set()
            i += 1
        conn.close()

    mem = threading.Thread(target=sampler, daemon=True)
    mem.start()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    elapsed = time.perf_counter() - t0
    for t in threads:
        t.join(timeout + 5)
    mem.join(2)
    n = len(lat) + len(errors)
    return {
        "clients": clients, "seconds": elapsed, "requests": n, "rps": len(lat) / elapsed,
        "p50_ms": percentile(lat, 50) * 1e3, "p95_ms": percentile(lat, 95) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3, "errors": len(errors),
        "error_kinds": sorted(set(errors))[:10], "rss_mb": peak[0], "pss_mb": peak[1],
        "per_output_p95_ms": {o: percentile(v, 95) * 1e3 for o, v in per_output.items()},
        "per_output_n": {o: len(v) for o, v in per_output.items()},
    }


def warm_up(port: int, requests: list[dict], workers: int, timeout: float) -> None:
    """Every request once per worker (in parallel, so each worker gets its share)."""
    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        for r in requests:
            try:
                conn.request("POST", "/_dash-update-component", body=r["body"].encode(),
                             headers={"Content-Type": "application/json"})
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.close()

    ts = [threading.Thread(target=one) for _ in range(2 * workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


# -- main ---------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30, help="seconds per client level")
    ap.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (medians reported)")
    ap.add_argument("--workers", default="1,default", help="worker settings to compare; the "
                    "first is the baseline ('default' = what convscope serve picks)")
    ap.add_argument("--logdir", default=None, help="directory of runs to serve (default: the "
                    "small demo run, recorded into a temporary directory)")
    ap.add_argument("--requests", default=None, help="JSON file of recorded callback requests "
                    "(read if it exists, else recorded and written there)")
    ap.add_argument("--max-requests", type=int, default=200_000, help="cap per client level")
    ap.add_argument("--timeout", type=float, default=60, help="per-request timeout (s)")
    ap.add_argument("--json", default=None, help="write the raw results here")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    settings = [w.strip() for w in args.workers.split(",") if w.strip()]

    work = Path(tempfile.mkdtemp(prefix="bench_load_"))
    log_path = work / "server.log"
    if args.logdir:
        logdir = Path(args.logdir).resolve()
    else:
        logdir = work / "runs"
        print(f"recording the small demo run into {logdir} ...", flush=True)
        subprocess.run([sys.executable, "-m", "convscope", "demo", "--small", "--no-serve",
                        "--quiet", "--logdir", str(logdir), "--name", "demo"], check=True,
                       stdout=subprocess.DEVNULL)
    if args.requests and Path(args.requests).is_file():
        requests = json.loads(Path(args.requests).read_text())
    else:
        print("recording the pages' callbacks in chromium ...", flush=True)
        requests = record_requests(logdir, log_path)
        if args.requests:
            Path(args.requests).write_text(json.dumps(requests))
    counts = {p: sum(r["page"] == p for r in requests) for p in PAGES}
    print(f"{len(requests)} callback requests: {counts}", flush=True)

    results: dict[str, dict[int, list[dict]]] = {w: {c: [] for c in levels} for w in settings}
    nworkers: dict[str, int] = {}
    for rnd in range(args.rounds):
        for w in settings:  # interleaved: every setting once per round
            server = Server(logdir, w, log_path)
            nworkers[w] = server.workers
            try:
                warm_up(server.port, requests, server.workers, args.timeout)
                for c in levels:
                    r = run_level(server.port, server.proc.pid, requests, c, args.seconds,
                                  args.max_requests, args.timeout)
                    results[w][c].append(r)
                    print(f"round {rnd + 1} workers={w}({server.workers}) clients={c}: "
                          f"{r['rps']:.1f} req/s p50 {r['p50_ms']:.0f} ms p95 "
                          f"{r['p95_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms errors {r['errors']} "
                          f"RSS {r['rss_mb']:.0f} MB PSS {r['pss_mb']:.0f} MB", flush=True)
                    for e in r["error_kinds"]:
                        print(f"    error: {e}")
            finally:
                server.stop()

    def med(w: str, c: int, key: str) -> float:
        return statistics.median(r[key] for r in results[w][c])

    base = settings[0]
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print()
    print(f"`bench_load.py --seconds {args.seconds:g} --clients {args.clients} --rounds "
          f"{args.rounds} --workers {args.workers}`, {dt.date.today()}, {platform.node()}, "
          f"{os.cpu_count()} cores, load {load:.1f} at the end; run: {logdir}; "
          f"{len(requests)} recorded callbacks of {', '.join(PAGES)}. Medians of "
          f"{args.rounds} round(s).")
    print()
    print("| workers | clients | requests/s | p50 | p95 | p99 | errors | peak RSS (PSS) | "
          "req/s vs 1 worker | p95 vs 1 worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w in settings:
        for c in levels:
            rps, p95 = med(w, c, "rps"), med(w, c, "p95_ms")
            ratio_rps = rps / med(base, c, "rps") if med(base, c, "rps") else float("nan")
            ratio_p95 = p95 / med(base, c, "p95_ms") if med(base, c, "p95_ms") else float("nan")
            errs = sum(r["errors"] for r in results[w][c])
            print(f"| {w} ({nworkers[w]}) | {c} | {rps:.1f} | {med(w, c, 'p50_ms'):.0f} ms | "
                  f"{p95:.0f} ms | {med(w, c, 'p99_ms'):.0f} ms | {errs} | "
                  f"{med(w, c, 'rss_mb'):.0f} ({med(w, c, 'pss_mb'):.0f}) MB | "
                  f"{ratio_rps:.2f}× | {ratio_p95:.2f}× |")
    top = max(levels)
    print()
    print(f"Slowest callbacks at {top} clients (p95, last round, workers={settings[-1]}):")
    last = results[settings[-1]][top][-1]
    ranked = sorted(last["per_output_p95_ms"].items(), key=lambda kv: -kv[1])[:8]
    for out, p95 in ranked:
        print(f"  {p95:8.0f} ms  n={last['per_output_n'][out]:5d}  {out[:100]}")
    # the same callbacks alone: one client, the baseline server
    one = results[base][min(levels)][-1]
    print(f"Same callbacks at {min(levels)} client(s), workers={base} (p95):")
    for out, _ in ranked:
        print(f"  {one['per_output_p95_ms'].get(out, float('nan')):8.0f} ms  {out[:100]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "workers": nworkers,
                                               "results": results}, indent=1, default=str))
    print(f"\nserver log: {log_path}")


if __name__ == "__main__":
    main()
