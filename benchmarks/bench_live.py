"""Frame rate of the Live page (Yosinski et al. 2015's live view; issue 16 item 1): how many
frames a second a layer's grid updates for the demo model, through HTTP against a real
``convscope serve``, and end to end in chromium with its fake camera.

Run:  .venv/bin/python benchmarks/bench_live.py [--rounds 5] [--frames 60]
      [--layers conv1,layer2.0.conv2,layer4.0.conv2,fc] [--no-browser] [--json FILE]

1. The run: the demo's model (``DemoConfig().make_model()``: the zoo ResNet, width 16, 32 x 32
   inputs; random weights: training does not change the cost) with its graph, a checkpoint,
   8 sample images and the Shapes class names, recorded into a temporary directory.
2. A fresh ``convscope serve --workers 1`` on 127.0.0.1 (its output goes to a log file).
3. A 64-frame MP4 of moving shapes (PyAV) is uploaded through the page's video callback (its
   decode time is reported); the model-sized frames it returns are what is posted per frame.
4. Per round and layer, one client on one keep-alive connection, one request at a time:
   - **live**: each frame posted to the Live page's frame endpoint (``FRAME_PATH``), the answer
     (grid PNG, zoom, top-5) read in full: frames/s = frames / seconds;
   - **baseline**: the same frames through the still-image path (the ``live-grid`` Dash
     callback: the frame decoded, the model run, a plotly channel grid built and serialised).
   After one warm-up pass each. Medians over rounds; the ratio live / baseline is per round.
5. ``--browser`` (default on): chromium (Debian's, via Playwright) opens the Live page with
   ``--use-fake-device-for-media-stream``, starts the webcam and reads the page's own frame
   rate (answers received in the last 3 s) after 6 s, per layer (the page paces the camera at
   30 frames/s at most).

Prints a markdown table; the machine may be busy with other work: say so with the figures.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
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
from pathlib import Path

LAYERS = "conv1,layer2.0.conv2,layer4.0.conv2,fc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record_run(root: Path) -> Path:
    import torch

    import convscope as cs
    from convscope.training import DemoConfig

    torch.manual_seed(0)
    cfg = DemoConfig()
    model = cfg.make_model().eval()
    x, _, _ = cs.data.Shapes(n=16, split="test").tensors(quiet=True)
    with cs.Run(root, "demo-model", config={"class_names": list(cs.data.class_names)},
                quiet=True) as run:
        run.log_model(model, x[:4], profile=False)
        run.log_feature_maps(model, x[:8], layers=["conv1"])
        run.log_checkpoint(model)
    return root


def moving_shapes_mp4(n: int = 64, w: int = 160, h: int = 120) -> bytes:
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=15)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            img = np.full((h, w, 3), 25, np.uint8)
            img[20:60, 5 + 2 * i: 45 + 2 * i] = (230, 50, 40)
            img[(yy - 20 - i) ** 2 + (xx - 110) ** 2 < 300] = (40, 70, 230)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


class Server:
    def __init__(self, logdir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        env = dict(os.environ, CONVSCOPE_REFRESH_MS="600000")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convscope", "serve", "--logdir", str(logdir), "--port",
             str(self.port), "--workers", "1"], stdout=self.log, stderr=subprocess.STDOUT,
            env=env)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {log}")
            try:
                self.conn().request("GET", "/_dash-layout")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(
                        f"the server did not answer within 120 s; see {log}") from None
                time.sleep(0.3)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def post(conn: http.client.HTTPConnection, url: str, path: str, body: dict) -> dict:
    data = json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={
        "Content-Type": "application/json", "Origin": url, "Referer": url + "/live"})
    r = conn.getresponse()
    raw = r.read()
    if r.status != 200:
        raise SystemExit(f"{path} answered {r.status}: {raw[:300]!r}")
    return json.loads(raw)


def dash_body(deps: list, output: str, values: dict, changed: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dash_http import find, payload

    return payload(find(deps, output), values, changed)


def frames_of_video(srv: Server, deps: list) -> tuple[list[str], float]:
    uri = "data:video/mp4;base64," + base64.b64encode(moving_shapes_mp4()).decode()
    conn = srv.conn()
    t0 = time.perf_counter()
    ans = post(conn, srv.url, "/_dash-update-component", dash_body(
        deps, "live-video", {"live-video-upload.contents": uri,
                             "live-video-upload.filename": "bench.mp4",
                             "live-run.value": "demo-model"}, "live-video-upload.contents"))
    seconds = time.perf_counter() - t0
    data = ans["response"]["live-video"]["data"]
    if not data:
        raise SystemExit(f"the video was refused: {json.dumps(ans)[:500]}")
    return data["frames"], seconds


def live_rate(srv: Server, frames: list[str], layer: str, n: int) -> tuple[float, float]:
    """Frames/s of the frame endpoint and the server's median ms a frame."""
    from convscope.app.pages.live import FRAME_PATH

    conn = srv.conn()
    for f in frames[:5]:  # warm-up
        post(conn, srv.url, FRAME_PATH, {"run": "demo-model", "layer": layer, "image": f,
                                         "zoom": 0})
    ms = []
    t0 = time.perf_counter()
    for i in range(n):
        ans = post(conn, srv.url, FRAME_PATH, {"run": "demo-model", "layer": layer,
                                               "image": frames[i % len(frames)], "zoom": 0,
                                               "frame": i})
        if "error" in ans:
            raise SystemExit(f"the frame endpoint refused a frame: {ans['error']}")
        ms.append(ans["ms"])
    return n / (time.perf_counter() - t0), statistics.median(ms)


def baseline_rate(srv: Server, deps: list, frames: list[str], layer: str, n: int) -> float:
    """Frames/s of the still-image path (the live-grid Dash callback, a plotly figure)."""
    conn = srv.conn()

    def one(f: str) -> None:
        ans = post(conn, srv.url, "/_dash-update-component", dash_body(
            deps, "live-grid", {"live-image.data": {"upload": f}, "live-layer.value": layer,
                                "live-run.value": "demo-model"}, "live-image.data"))
        if "live-grid" not in ans.get("response", {}):
            raise SystemExit(f"the still path failed: {json.dumps(ans)[:300]}")

    for f in frames[:3]:
        one(f)
    t0 = time.perf_counter()
    for i in range(n):
        one(frames[i % len(frames)])
    return n / (time.perf_counter() - t0)


def browser_rates(srv: Server, layers: list[str], seconds: float) -> dict[str, float]:
    """The page's own frames/s with chromium's fake camera, per layer."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    out = {}
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=args)
        page = b.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(srv.url + "/live")
        page.wait_for_function("() => window.convscopeLive && window.convscopeLive.config && "
                               "window.convscopeLive.config.run")
        page.click("#live-webcam")
        for layer in layers:
            page.evaluate("l => window.dash_clientside.set_props('live-layer', {value: l})",
                          layer)
            page.wait_for_function(f"() => window.convscopeLive.last && window.convscopeLive"
                                   f".last.answer && window.convscopeLive.last.answer.layer "
                                   f"=== {layer!r} && window.convscopeLive.last.source === "
                                   "'webcam'")
            page.wait_for_timeout(seconds * 1000)
            out[layer] = float(page.evaluate("() => window.convscopeLive.rate || 0"))
        b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--browser", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--browser-seconds", type=float, default=6.0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    layers = [s for s in a.layers.split(",") if s]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.dash_http import dependencies

    with tempfile.TemporaryDirectory() as tmp:
        root = record_run(Path(tmp) / "runs")
        srv = Server(root, Path(tmp) / "server.log")
        try:
            deps = dependencies(srv.url)
            frames, decode_s = frames_of_video(srv, deps)
            rows: dict[str, dict[str, list[float]]] = {
                layer: {"live": [], "base": [], "ratio": [], "ms": []} for layer in layers}
            for r in range(a.rounds):
                for layer in layers:
                    live, ms = live_rate(srv, frames, layer, a.frames)
                    base = baseline_rate(srv, deps, frames, layer, a.frames)
                    rows[layer]["live"].append(live)
                    rows[layer]["base"].append(base)
                    rows[layer]["ratio"].append(live / base)
                    rows[layer]["ms"].append(ms)
                print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
            e2e = browser_rates(srv, layers, a.browser_seconds) if a.browser else {}
        finally:
            srv.stop()
    med = statistics.median
    print(f"\nLive page frame rate, demo model (ResNet width 16, 32 x 32 input); "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{a.rounds} rounds x {a.frames} frames; video of 64 frames decoded in "
          f"{decode_s:.2f} s\n")
    print("| layer | live frames/s (median) | server ms/frame | still-image path frames/s "
          "| live / still | chromium webcam frames/s |")
    print("|---|---|---|---|---|---|")
    for layer, v in rows.items():
        print(f"| {layer} | {med(v['live']):.1f} | {med(v['ms']):.1f} | {med(v['base']):.1f} | "
              f"{med(v['ratio']):.2f} x | "
              f"{e2e[layer]:.1f} |" if layer in e2e else
              f"| {layer} | {med(v['live']):.1f} | {med(v['ms']):.1f} | {med(v['base']):.1f} | "
              f"{med(v['ratio']):.2f} x | - |")
    if a.json:
        a.json.write_text(json.dumps({"rows": rows, "browser": e2e, "decode_s": decode_s},
                                     indent=1))


if __name__ == "__main__":
    main()
