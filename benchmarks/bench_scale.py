"""The whole standard recording of real models at 224², and the dashboard's server time on it.

    .venv/bin/python benchmarks/bench_scale.py                    # the six models, 8 images, 224²
    .venv/bin/python benchmarks/bench_scale.py --models resnet50 --json /tmp/scale.json
    .venv/bin/python benchmarks/bench_scale.py --quick            # a smoke run (small sizes)
    .venv/bin/python benchmarks/bench_scale.py --pages-only DIR   # time the pages of kept runs
    .venv/bin/python benchmarks/bench_scale.py --device cuda      # record on a GPU

For each model (torchvision, random weights: nothing downloads) one run directory gets the
*standard recording* of ``--images`` procedural Shapes images (``convscope.data.Shapes``) at
``--size``²:

==========================  =================================================================
``log_model``               graph and per-layer profile (its defaults; ``--quick``: repeat=1)
``log_feature_maps``        its defaults
``log_attributions``        all seven methods with their defaults (Score-CAM included:
                            ``"auto"`` mode, exact up to 256 channels, else fast)
``log_diagnosis``           its defaults
``log_preferred_inputs``    its defaults, for a middle and a late layer
``log_top_examples``        a ``--dataset`` of procedural images (64), a middle and a late layer
                            (a layer whose crops would take more than ``--max-crops-mb`` is
                            left out, and that is printed)
``log_checkpoint``          the weights (counted apart: "weights aside" leaves out checkpoints/)
==========================  =================================================================

Per step: seconds (median of ``--repeats`` runs, default 1: the later repeats record into a
scratch run, so the MB are those of one recording) and the MB the step added to the run
directory. A step that fails on a model is reported with its reason, never hidden.

Then the pages: a real ``convscope serve --workers 1`` subprocess serves each model's run on
127.0.0.1, Debian's chromium (Playwright) loads every page once and the Model and Diagnosis pages
open a layer, and every ``/_dash-update-component`` request the pages sent is recorded. Each
recorded request (and the page's ``GET``) is then replayed ``--page-repeats`` times over HTTP:
the tables give the server time per callback (first answer, cold caches, and p95 of the replays)
and per page load (the sum over the load's requests, p95 over the replays). Server time here
includes the local HTTP round trip, not the browser's drawing. Without chromium or Playwright
the pages part is skipped with a message.

The issue's goal (14, item 5): p95 <= 300 ms per page load and per callback on the ResNet-50 run.
Timings depend on the machine's load: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

import convscope as cs  # noqa: E402

MB = 1e6
MODELS = "resnet50,convnext_tiny,efficientnet_b0,regnet_y_800mf,vit_b_16,swin_t"
#: per model: (middle layer, late layer) for the preferred inputs and the top examples
LAYERS: dict[str, list[str]] = {
    "resnet50": ["layer3.0.conv2", "layer4.0.conv2"],
    "convnext_tiny": ["features.3.0.block.0", "features.7.0.block.0"],
    "efficientnet_b0": ["features.4.0.block.1.0", "features.8.0"],
    "regnet_y_800mf": ["trunk_output.block3.block3-0.f.b.0",
                       "trunk_output.block4.block4-0.f.b.0"],
    "vit_b_16": ["conv_proj", "encoder.layers.encoder_layer_11.mlp"],
    "swin_t": ["features.0.0", "features.7.1.mlp"],
}
#: models whose input size is fixed (torchvision's ViT checks it)
MIN_SIZE = {"vit_b_16": 224}
STEPS = ["log_model", "log_feature_maps", "log_attributions", "log_diagnosis",
         "log_preferred_inputs", "log_top_examples", "log_checkpoint"]
GOAL_MS = 300.0
REQUEST_TIMEOUT_S = 120  #: a replayed request still unanswered is reported as "HTTP 0"


# -- recording ---------------------------------------------------------------------------------
def files(root: Path) -> dict[str, int]:
    """{relative path: bytes} of every file under ``root``."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def added_mb(before: dict[str, int], after: dict[str, int], weights: bool) -> float:
    """MB added between two listings; ``weights=False`` leaves out ``checkpoints/``."""
    return sum(v - before.get(k, 0) for k, v in after.items()
               if weights or not k.startswith("checkpoints/")) / MB


def images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` procedural Shapes images at ``size``², normalised like ImageNet inputs."""
    x, y, _ = cs.data.Shapes(n=n, size=size, seed=seed).tensors(quiet=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, y


def crops_mb(model: torch.nn.Module, layer: str, x: torch.Tensor, k: int = 9) -> float:
    """MB the top-example crops of ``layer`` would take as uint8 ``[C, k, 3, h, w]`` with
    ``h, w`` the receptive field (at most the image) shrunk to at most
    :data:`~convscope.formats.quantized.DISPLAY_SIDE` a side, as they are stored: an upper bound
    (identical crops are stored once)."""
    from convscope.features.top import receptive_field
    from convscope.formats.quantized import DISPLAY_SIDE
    from convscope.model import capture

    with torch.no_grad():
        out = capture(model, x[:1], layer)[layer]
    size = receptive_field(model, layer, x[:1]).size or x.shape[2:]
    h, w = min(int(size[0]), x.shape[2]), min(int(size[1]), x.shape[3])
    scale = min(1.0, DISPLAY_SIDE / max(h, w))
    h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return int(out.shape[1]) * k * x.shape[1] * h * w / MB


def per_layer(fn: Callable[[str], object], layers: list[str], notes: list[str]) -> None:
    """Call ``fn`` on each layer; a layer that fails is noted; all failing raises."""
    done = 0
    for layer in layers:
        try:
            fn(layer)
            done += 1
        except Exception as exc:  # an architecture the call does not support: reported
            notes.append(f"{layer}: {type(exc).__name__}: {str(exc)[:160]}")
    if not done:
        raise RuntimeError("; ".join(notes))


def steps(model: torch.nn.Module, name: str, x: torch.Tensor, y: torch.Tensor,
          data: torch.Tensor, args, notes: dict[str, list[str]]
          ) -> list[tuple[str, Callable[[cs.Run], object]]]:
    layers = LAYERS.get(name, [])
    top_layers = []
    for n in layers:
        try:
            mb = crops_mb(model, n, x)
        except Exception:  # the step itself reports what fails
            mb = 0.0
        if mb > args.max_crops_mb:
            notes["log_top_examples"].append(
                f"{n} left out: its crops would take up to {mb:,.0f} MB (> --max-crops-mb "
                f"{args.max_crops_mb:,.0f})")
        else:
            top_layers.append(n)
    quick = {"repeat": 1} if args.quick or args.light else {}
    pref_quick = {"steps": 4} if args.quick or args.light else {}
    methods = {"methods": args.methods.split(",")} if args.methods else {}
    return [
        ("log_model", lambda run: run.log_model(model, x, quiet=True, **quick)),
        ("log_feature_maps", lambda run: run.log_feature_maps(model, x, labels=y)),
        ("log_attributions", lambda run: run.log_attributions(model, x, labels=y, quiet=True,
                                                              **methods)),
        ("log_diagnosis", lambda run: run.log_diagnosis(model, x, quiet=True)),
        ("log_preferred_inputs", lambda run: per_layer(
            lambda n: run.log_preferred_inputs(model, [n], quiet=True, **pref_quick),
            layers, notes["log_preferred_inputs"])),
        ("log_top_examples", lambda run: per_layer(
            lambda n: run.log_top_examples(model, [n], data, quiet=True),
            top_layers, notes["log_top_examples"]) if top_layers else None),
        ("log_checkpoint", lambda run: run.log_checkpoint(model, example_inputs=x)),
    ]


def record(name: str, args, logdir: Path) -> dict | None:
    import torchvision

    try:
        model = torchvision.models.get_model(name, weights=None).eval().to(args.device)
    except Exception as exc:  # an unknown name or an older torchvision
        print(f"{name}: skipped, cannot build it ({exc})", flush=True)
        return None
    torch.manual_seed(0)
    size = max(args.size, MIN_SIZE.get(name, 0))
    if size != args.size:
        print(f"{name}: recorded at {size}² (its input size is fixed)", flush=True)
    x, y = images(args.images, size)
    data, _ = images(args.dataset, size, seed=1)
    x, y, data = x.to(args.device), y.to(args.device), data.to(args.device)
    notes: dict[str, list[str]] = {s: [] for s in STEPS}
    out: dict = {"name": name, "params": sum(p.numel() for p in model.parameters()),
                 "seconds": {}, "runs": {}, "mb": {}, "skipped": {}, "notes": notes}
    scratch = Path(tempfile.mkdtemp(prefix="cs-scale-scratch-"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with cs.Run(logdir / name, name, quiet=True) as run:
                for step, fn in steps(model, name, x, y, data, args, notes):
                    before = files(run.path)
                    print(f"{name}: {step} ...", flush=True)
                    t0 = time.perf_counter()
                    try:
                        del caught[:]
                        fn(run)
                        run.flush()
                        for w in caught:  # the budget warnings are part of the figures
                            if type(w.message).__name__ == "BudgetWarning":
                                notes[step].append(f"warned: {str(w.message)[:240]}")
                                print(f"{name}: {step} warned: {w.message}", flush=True)
                    except Exception as exc:  # reported, never hidden
                        out["skipped"][step] = f"{type(exc).__name__}: {str(exc)[:300]}"
                        if args.verbose:
                            traceback.print_exc()
                        continue
                    times = [time.perf_counter() - t0]
                    out["mb"][step] = added_mb(before, files(run.path), step == "log_checkpoint")
                    for i in range(args.repeats - 1):  # later repeats into a scratch run
                        with cs.Run(scratch, f"{name}-{step}-{i}", quiet=True) as other:
                            t0 = time.perf_counter()
                            fn(other)
                            other.flush()
                            times.append(time.perf_counter() - t0)
                    out["runs"][step] = times
                    out["seconds"][step] = statistics.median(times)
                    print(f"{name}: {step} {out['seconds'][step]:.1f} s, "
                          f"{out['mb'][step]:.1f} MB", flush=True)
                path = run.path
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    final = files(path)
    out["total_mb"] = sum(final.values()) / MB
    out["weights_mb"] = sum(v for k, v in final.items() if k.startswith("checkpoints/")) / MB
    out["run"] = str(path)
    return out


# -- pages -------------------------------------------------------------------------------------
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: pages loaded, and the layer-opening interaction of some (see ``interact``)
PAGES = ["/", "/scalars", "/model", "/attribution", "/diagnosis", "/live", "/resources",
         "/embedding", "/training"]


class Serve:
    """``python -m convscope serve --workers 1`` on a free port of 127.0.0.1."""

    def __init__(self, logdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, CONVSCOPE_REFRESH_MS="3600000")  # no refresh while measured
        env.pop("CONVSCOPE_TOKEN", None)
        # the server's log goes to a file: a pipe nobody reads blocks the server's thread that
        # writes to it once 64 KiB are waiting (the request it serves then never answers)
        self.log = Path(tempfile.mkstemp(prefix="bench-scale-serve-", suffix=".log")[1])
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir), "--port",
                 str(port), "--workers", "1"], stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"convscope serve exited: {self.tail()}")
            try:
                urllib.request.urlopen(self.url + "/_dash-layout", timeout=5).read()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("convscope serve did not answer within 120 s") from None
                time.sleep(0.2)

    def tail(self, chars: int = 2000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def interact(page, path: str, layer: str | None) -> None:
    """What a user does first on a page: the Model page finds ``layer`` (opening its panel), the
    Diagnosis page opens the first layer of its findings."""
    if path == "/model" and layer:
        page.wait_for_selector("#model-find", timeout=120_000)
        page.click("#model-find")
        page.keyboard.type(layer)
        page.wait_for_timeout(300)
        page.keyboard.press("Enter")
        page.wait_for_selector("#fm-grid, #model-panel .notice", timeout=120_000)
    elif path == "/diagnosis":
        link = page.locator("[id*='diag-open']").first
        try:
            link.wait_for(timeout=30_000)
        except Exception:  # a report without layer links: nothing to open
            return
        link.click()


def settle(page, seen: list, quiet_ms: int = 1500, limit_s: float = 180) -> None:
    """Wait until no callback request has been sent or answered for ``quiet_ms``."""
    deadline = time.monotonic() + limit_s
    last = (len(seen), time.monotonic())
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        n = len(seen)
        if n != last[0]:
            last = (n, time.monotonic())
        elif (time.monotonic() - last[1]) * 1000 > quiet_ms:
            pending = page.evaluate("() => !!document.querySelector('._dash-loading')")
            if not pending:
                return


def is_callback(url: str) -> bool:
    """Whether ``url`` is a callback request (Dash adds a query string)."""
    return urllib.parse.urlsplit(url).path.endswith("/_dash-update-component")


def record_requests(url: str, layer: str | None) -> dict[str, list[dict]]:
    """Load every page in chromium; {path: [callback request bodies, in order sent]} and the
    browser's first (cold) time of each, in ms."""
    from playwright.sync_api import sync_playwright

    out: dict[str, list[dict]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=CHROMIUM_ARGS)
        try:
            for path in PAGES:
                ctx = browser.new_context(viewport={"width": 1400, "height": 900})
                page = ctx.new_page()
                seen: list[dict] = []
                started: dict[object, float] = {}

                def on_request(req, started=started) -> None:
                    if is_callback(req.url):
                        started[req] = time.perf_counter()

                def on_finished(req, seen=seen, started=started) -> None:
                    if is_callback(req.url) and req in started:
                        seen.append({"body": json.loads(req.post_data),
                                     "first_ms": (time.perf_counter() - started[req]) * 1000})

                page.on("request", on_request)
                page.on("requestfinished", on_finished)
                page.goto(url + path, wait_until="networkidle", timeout=180_000)
                settle(page, seen)
                interact(page, path, layer)
                settle(page, seen)
                out[path] = seen
                ctx.close()
        finally:
            browser.close()
    return out


def cpu_ms(pid: int) -> float:
    """CPU time (user + system, all threads, ms; 10 ms ticks) process ``pid`` has used so far:
    unlike wall time, it barely depends on what else the machine runs. NaN without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def post_ms(url: str, body: dict, referer: str) -> tuple[float, int]:
    """Server time (ms, with the local HTTP round trip) of one callback request, and status."""
    req = urllib.request.Request(
        url + "/_dash-update-component", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Origin": url, "Referer": url + referer})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    except TimeoutError:  # reported as status 0 with the time waited
        status = 0
    return (time.perf_counter() - t0) * 1000, status


def get_ms(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=300) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, int(round(0.95 * len(v) + 0.5)) - 1))]


def callback_name(body: dict) -> str:
    """``first-output-id.property`` (``+n`` for n more outputs) of a request body."""
    outs = body.get("outputs")
    if isinstance(outs, list):
        first = outs[0]
        more = f" +{len(outs) - 1}" if len(outs) > 1 else ""
    else:
        first, more = outs, ""
    cid = first["id"]
    if isinstance(cid, dict):
        cid = json.dumps(cid, sort_keys=True)
    return f"{cid}.{first['property']}{more}"


def time_pages(logdir: Path, layer: str | None, repeats: int, dump: str | None = None) -> dict:
    """Record the pages' requests in chromium, replay them ``repeats`` times; the figures."""
    if shutil.which("chromium") is None:
        return {"skipped": "Debian's chromium is not installed (apt-get install chromium)"}
    try:
        import playwright  # noqa: F401
    except ImportError:
        return {"skipped": "playwright is not installed (a dev dependency)"}
    server = Serve(logdir)
    try:
        recorded = record_requests(server.url, layer)
        if dump:
            Path(dump).write_text(json.dumps(recorded, indent=1))
        pages: dict[str, dict] = {}
        for path, seen in recorded.items():
            loads: list[float] = []
            per_cb: dict[str, list[float]] = {}
            first: dict[str, float] = {}
            bad: dict[str, int] = {}
            names, count = [], {}
            for item in seen:  # the n-th request of one callback in a load: "name [n]"
                name = callback_name(item["body"])
                count[name] = count.get(name, 0) + 1
                names.append(name if count[name] == 1 else f"{name} [{count[name]}]")
                first[names[-1]] = item["first_ms"]
            cpu: dict[str, list[float]] = {}
            cpu_loads: list[float] = []
            pid = server.proc.pid
            for _ in range(repeats):
                c0 = cpu_ms(pid)
                total = get_ms(server.url + path)
                cpu_total = cpu_ms(pid) - c0
                for item, name in zip(seen, names, strict=True):
                    c0 = cpu_ms(pid)
                    ms, status = post_ms(server.url, item["body"], path)
                    c1 = cpu_ms(pid) - c0
                    if status not in (200, 204):
                        bad[name] = status
                    per_cb.setdefault(name, []).append(ms)
                    cpu.setdefault(name, []).append(c1)
                    total += ms
                    cpu_total += c1
                loads.append(total)
                cpu_loads.append(cpu_total)
            # one page load sends a callback once per request; the same callback sent n times
            # in a load gives n samples per repeat
            pages[path] = {"requests": len(seen), "load_p95_ms": p95(loads),
                           "load_median_ms": statistics.median(loads),
                           "load_cpu_p95_ms": p95(cpu_loads),
                           "callbacks": {n: {"p95_ms": p95(v), "median_ms": statistics.median(v),
                                             "cpu_p95_ms": p95(cpu[n]),
                                             "first_ms": first.get(n, float("nan")),
                                             "samples": len(v)} for n, v in per_cb.items()},
                           "errors": bad}
        logged = server.log.stat().st_size
        return {"pages": pages, "repeats": repeats, "server_log_bytes": logged,
                "server_log_tail": server.tail(1500) if logged else ""}
    finally:
        server.stop()
        server.log.unlink(missing_ok=True)


# -- report ------------------------------------------------------------------------------------
def report(r: dict, args) -> None:
    print(f"\n## {r['name']} ({r['params'] / 1e6:.1f} M parameters), {args.images} images at "
          f"{args.size}², {args.device}\n")
    if "seconds" in r:
        print("| step | s | MB | notes |")
        print("|---|---:|---:|---|")
        for step in STEPS:
            note = "; ".join(r["notes"].get(step, []))
            if step in r["skipped"]:
                print(f"| {step} | failed | | {r['skipped'][step]} |")  # names every layer
            elif step in r["seconds"]:
                runs = r["runs"][step]
                spread = f" (runs {', '.join(f'{t:.1f}' for t in runs)})" if len(runs) > 1 else ""
                what = "MB with weights" if step == "log_checkpoint" else ""
                print(f"| {step} | {r['seconds'][step]:.1f}{spread} | {r['mb'][step]:.1f} | "
                      f"{' '.join(x for x in (what, note) if x)} |")
        aside = r["total_mb"] - r["weights_mb"]
        print(f"| **whole recording** | **{sum(r['seconds'].values()):.1f}** | "
              f"**{aside:.1f}** | weights aside; with weights {r['total_mb']:.1f} MB |")
    pages = r.get("pages")
    if not pages:
        return
    if "skipped" in pages:
        print(f"\npages: skipped ({pages['skipped']})")
        return
    print(f"\nServer time (ms; p95 of {pages['repeats']} replays, first = the browser's first "
          f"load, cold caches; goal p95 <= {GOAL_MS:.0f}; server CPU = the server process's "
          "CPU time per request, 10 ms ticks, which a busy machine inflates far less than "
          "wall time):\n")
    print("| page | callback | first | median | p95 | server CPU p95 |")
    print("|---|---|---:|---:|---:|---:|")
    for path, pg in pages["pages"].items():
        flag = " **over**" if pg["load_p95_ms"] > GOAL_MS else ""
        what = "page load + opening a layer" if path in ("/model", "/diagnosis") else "page load"
        print(f"| {path} | *{what}, {pg['requests']} requests* | | "
              f"{pg['load_median_ms']:.0f} | {pg['load_p95_ms']:.0f}{flag} | "
              f"{pg['load_cpu_p95_ms']:.0f} |")
        for n, c in sorted(pg["callbacks"].items(), key=lambda kv: -kv[1]["p95_ms"]):
            flag = " **over**" if c["p95_ms"] > GOAL_MS else ""
            err = f" (HTTP {pg['errors'][n]})" if n in pg["errors"] else ""
            print(f"| {path} | `{n}`{err} | {c['first_ms']:.0f} | {c['median_ms']:.0f} | "
                  f"{c['p95_ms']:.0f}{flag} | {c['cpu_p95_ms']:.0f} |")
    worst = max(((c["p95_ms"], p, n) for p, pg in pages["pages"].items()
                 for n, c in pg["callbacks"].items()), default=None)
    loads = max((pg["load_p95_ms"], p) for p, pg in pages["pages"].items())
    if worst:
        print(f"\nworst callback p95: {worst[0]:.0f} ms ({worst[1]} {worst[2]}); worst page load "
              f"p95: {loads[0]:.0f} ms ({loads[1]})")
    if pages.get("server_log_bytes"):
        print(f"\nthe server logged {pages['server_log_bytes']:,} bytes; its end:\n"
              + pages["server_log_tail"])


def summary(results: list[dict]) -> None:
    print("\n## Summary (seconds / MB per step; page p95 = the worst page load, ms)\n")
    print("| model | " + " | ".join(s.removeprefix("log_") for s in STEPS)
          + " | total s | MB weights aside | page p95 | worst callback p95 | its CPU p95 |")
    print("|---|" + "---:|" * (len(STEPS) + 5))
    for r in results:
        cells = []
        for s in STEPS:
            if s in r.get("seconds", {}):
                cells.append(f"{r['seconds'][s]:.1f} / {r['mb'][s]:.1f}")
            else:
                cells.append("failed" if s in r.get("skipped", {}) else "")
        pg = (r.get("pages") or {}).get("pages") or {}
        load = max((p["load_p95_ms"] for p in pg.values()), default=float("nan"))
        cb, cb_cpu = max(((c["p95_ms"], c["cpu_p95_ms"]) for p in pg.values()
                          for c in p["callbacks"].values()), default=(float("nan"),) * 2)
        total = sum(r.get("seconds", {}).values())
        aside = r.get("total_mb", float("nan")) - r.get("weights_mb", 0.0)
        print(f"| {r['name']} | " + " | ".join(cells)
              + f" | {total:.0f} | {aside:.1f} | {load:.0f} | {cb:.0f} | {cb_cpu:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=MODELS, help=f"comma-separated (default {MODELS})")
    ap.add_argument("--images", type=int, default=8, help="images recorded (default 8)")
    ap.add_argument("--size", type=int, default=224, help="image side (default 224)")
    ap.add_argument("--dataset", type=int, default=64,
                    help="procedural images of log_top_examples' data set (default 64)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed runs of each recording step, median reported (default 1)")
    ap.add_argument("--page-repeats", type=int, default=20,
                    help="replays of each page's requests (default 20)")
    ap.add_argument("--max-crops-mb", type=float, default=500.0,
                    help="leave out of log_top_examples a layer whose stored crops (uint8, at "
                         "most 96 px a side) would take more (default 500)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 2 images at 64², 8 in the data set, log_model repeat=1, "
                         "4 render steps, 3 page replays")
    ap.add_argument("--light", action="store_true",
                    help="cheaper settings that store arrays of the same size (the pages' "
                         "work): log_model repeat=1, 4 render steps")
    ap.add_argument("--methods", default="",
                    help="comma-separated attribution methods (default: all seven)")
    ap.add_argument("--no-pages", action="store_true", help="skip the dashboard part")
    ap.add_argument("--pages-only", metavar="DIR",
                    help="only time the pages of runs kept earlier with --keep DIR")
    ap.add_argument("--keep", metavar="DIR", help="write the runs here and keep them")
    ap.add_argument("--dump-requests", metavar="PREFIX",
                    help="write the recorded callback requests to PREFIX-<model>.json")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    ap.add_argument("--verbose", action="store_true", help="tracebacks of failing steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.size, args.dataset = min(args.images, 2), 64, min(args.dataset, 8)
        args.page_repeats = min(args.page_repeats, 3)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch sees no CUDA device (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda}); run on a machine with one or pass "
              "--device cpu", file=sys.stderr)
        return 2
    device_name = (torch.cuda.get_device_name(torch.device(args.device))
                   if args.device.startswith("cuda") else platform.processor() or "cpu")
    print(f"# convscope scale — {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
          f"{platform.machine()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"device {args.device} ({device_name}), torch {torch.__version__}, "
          f"convscope {cs.__version__}", flush=True)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    results: list[dict] = []
    if args.pages_only:
        logdir = Path(args.pages_only)
    else:
        logdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cs-scale-"))
    try:
        for name in names:
            if args.pages_only:
                r: dict | None = {"name": name, "params": float("nan")}
                if not (logdir / name).is_dir():
                    print(f"{name}: no runs under {logdir / name}", file=sys.stderr)
                    continue
            else:
                r = record(name, args, logdir)
            if r is None:
                continue
            if not args.no_pages:
                layers = LAYERS.get(name, [None])
                try:
                    r["pages"] = time_pages(
                        logdir / name, layers[-1], args.page_repeats,
                        args.dump_requests and f"{args.dump_requests}-{name}.json")
                except Exception as exc:  # reported, never hidden
                    r["pages"] = {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    if args.verbose:
                        traceback.print_exc()
            report(r, args)
            results.append(r)
            if args.json:
                Path(args.json).write_text(json.dumps(
                    {"args": vars(args), "results": results}, indent=1, default=str))
        summary(results)
    finally:
        if not args.keep and not args.pages_only:
            shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
