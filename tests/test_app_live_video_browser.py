"""The Live page plays a video file and the webcam through the saved model (Yosinski et al.
2015's live view), zooms a clicked channel beside its preferred input and top-9, and shows fc
layers and the top-5 classes live (issue 16 item 1), in Debian's chromium.

Oracles: the model's activations computed here with ``cs.features.live`` on the very frame the
page sent (its PNG, read back from the page), turned into colour levels by hand and compared with
the grid PNG the page shows (its Viridis colours inverted); the softmax of the model's output
computed here; the procedural frames the test encoded (moving shapes), resized by PIL.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.figures.images import colormap_lut

from .conftest import CHROMIUM_ARGS
from .test_video_api import encode

pytestmark = pytest.mark.browser
LAYER = "layer1.0.conv1"
SHOTS = Path("/tmp/shots16/D")
W, H, FPS, N = 96, 64, 10, 40  # the generated video: 96 x 64 pixels, 4 s at 10 frames/s
LAST = "(window.convscopeLive && window.convscopeLive.last)"


def moving_shapes(i: int) -> np.ndarray:
    """Frame ``i`` of the test video: a red square moving right, a blue disc moving down and a
    green bar growing, on dark grey."""
    img = np.full((H, W, 3), 30, np.uint8)
    x0 = 4 + 2 * i
    img[10:30, x0:x0 + 20] = (230, 40, 40)
    yy, xx = np.mgrid[0:H, 0:W]
    cy = 8 + i
    img[(yy - cy) ** 2 + (xx - 70) ** 2 < 81] = (40, 60, 230)
    img[H - 8:H - 4, 0:min(W, 2 * i + 2)] = (40, 220, 60)
    return img


def encode_video(path: Path, frames: list[np.ndarray], fmt: str = "mp4",
                 codec: str = "libx264", fps: int = FPS) -> Path:
    """``frames`` (RGB uint8) encoded to ``path`` (test_video_api's encoder, at this file's
    frame rate)."""
    return encode(path, frames, fps=fps, fmt=fmt, codec=codec)


def uri_array(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert(
        "RGB"))


def levels_from_colors(rgb: np.ndarray) -> np.ndarray:
    """Invert the Viridis lookup: each pixel's nearest colour's level (0..255)."""
    lut = colormap_lut("Viridis").astype(np.int64)
    d = ((rgb[..., None, :].astype(np.int64) - lut[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def expected_levels(acts: np.ndarray) -> np.ndarray:
    """Each channel scaled on its own to 0..255, by hand."""
    out = []
    for a in acts.astype(np.float64):
        lo, hi = a.min(), a.max()
        out.append(np.zeros_like(a) if hi <= lo else np.round((a - lo) / (hi - lo) * 255))
    return np.stack(out)


def tiles(grid: np.ndarray, ans: dict) -> np.ndarray:
    """The grid image cut back into its tiles ``[C, th, tw]`` (levels)."""
    lev = levels_from_colors(grid)
    th, tw, gap, cols = ans["th"], ans["tw"], ans["gap"], ans["cols"]
    out = []
    for i in range(ans["channels"] if ans.get("shown") is None else len(ans["shown"])):
        r, q = divmod(i, cols)
        out.append(lev[r * (th + gap): r * (th + gap) + th, q * (tw + gap): q * (tw + gap) + tw])
    return np.stack(out)


def frame_tensor(uri: str) -> torch.Tensor:
    return torch.as_tensor(uri_array(uri).transpose(2, 0, 1) / 255.0, dtype=torch.float32)


def check_grid(model, layer: str, last: dict) -> np.ndarray:
    """The grid shown for ``last`` = the levels of the model's own activations on its frame."""
    ans = last["answer"]
    acts = cs.features.live(model, layer, frame_tensor(last["input"])).numpy()
    assert ans["kind"] == "map" and ans["channels"] == acts.shape[0]
    got = tiles(uri_array(ans["grid"]), ans)
    want = expected_levels(acts)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1, np.abs(got - want).max()
    return got


def check_top5(model, names: list[str], last: dict) -> None:
    with torch.no_grad():
        p = torch.softmax(model.eval()(frame_tensor(last["input"])[None])[0], 0)
    vals, idx = torch.topk(p, 5)
    top = last["answer"]["top"]
    assert [t["index"] for t in top] == idx.tolist()
    np.testing.assert_allclose([t["p"] for t in top], vals.numpy(), rtol=1e-4, atol=1e-6)
    assert [t["name"] for t in top] == [names[i] for i in idx.tolist()]


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("livevideo")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x, _, _ = cs.data.Shapes(n=20, split="test").tensors()
    names = list(cs.data.class_names)
    with cs.Run(logdir, "vid", config={"class_names": names}, quiet=True) as run:
        run.log_checkpoint(model)
        run.log_model(model, x[:4], profile=False)
        run.log_feature_maps(model, x[:4], layers=[LAYER])
        run.log_preferred_inputs(model, [LAYER], units=[0, 1, 2, 3], steps=8)
        top = run.log_top_examples(model, [LAYER], x, k=9)[LAYER]
    return logdir, model, names, top


@pytest.fixture(scope="module")
def server(live_run, module_serve):
    return module_serve(live_run[0], refresh_ms=60_000)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return encode_video(tmp_path_factory.mktemp("video") / "shapes.mp4",
                        [moving_shapes(i) for i in range(N)])


def open_live(page, url: str, layer: str = LAYER) -> None:
    page.goto(url + "/live")
    page.wait_for_function("() => window.convscopeLive && window.convscopeLive.config && "
                           "window.convscopeLive.config.run")
    pick_layer(page, layer)
    # the stored sample runs first: wait for its answer
    page.wait_for_function(f"() => {LAST} && {LAST}.answer && {LAST}.answer.layer === "
                           f"{layer!r}")


def pick_layer(page, layer: str) -> None:
    if page.evaluate("() => window.convscopeLive.config.layer") == layer:
        return
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(4):  # the list may re-render under the pointer: retry from closed
        try:
            page.locator("#live-layer").click()
            page.keyboard.type(layer)
            page.get_by_role("option", name=layer, exact=True).click(timeout=15_000)
            page.wait_for_function(f"() => window.convscopeLive.config.layer === {layer!r}",
                                   timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt == 3:
                raise
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)


def show_frame(page, i: int) -> dict:
    """Pause, move the slider to frame ``i``; the answer for that frame."""
    page.evaluate(f"""() => {{ const s = document.getElementById('lv-slider');
        s.value = '{i}'; s.dispatchEvent(new Event('input')); }}""")
    try:
        page.wait_for_function(f"() => {LAST}.frame === {i} && {LAST}.source === 'video' && "
                               f"{LAST}.answer && !{LAST}.answer.error && "
                               "!window.convscopeLive.busy")
    except Exception:
        print(page.evaluate(f"() => JSON.stringify({{f: {LAST}.frame, s: {LAST}.source, a: {LAST}.answer, busy: window.convscopeLive.busy}})")[:3000])
        raise
    return page.evaluate(f"() => {LAST}")


def test_video_file_plays_through_the_model(live_run, server, video, page):
    _, model, names, _ = live_run
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_live(page, server.url)
    page.set_input_files("#live-video-upload input[type=file]", str(video))
    # it plays: answers arrive for successive frames
    page.wait_for_function(f"() => {LAST}.source === 'video' && {LAST}.frame >= 3",
                           timeout=120_000)
    status = page.locator("#live-status").inner_text()
    assert "shapes.mp4" in status and "40 frames" in status and "10 frames/s" in status, status
    assert page.evaluate("() => window.convscopeLive.playing") is True
    assert page.locator("#live-still-box").is_hidden()  # the still image's grid is not shown
    page.screenshot(path=str(SHOTS / "video_playing.png"), full_page=True)
    a = show_frame(page, 5)
    b = show_frame(page, 30)
    # each grid is the model's own activations on the frame it was computed for
    ga = check_grid(model, LAYER, a)
    gb = check_grid(model, LAYER, b)
    assert np.abs(ga - gb).mean() > 2  # the scene changed, and so did the grid
    check_top5(model, names, b)
    # the frames are the video's: the procedural frame, shrunk (short side) and centre-cropped
    from PIL import Image

    for last, i in ((a, 5), (b, 30)):
        want = np.asarray(Image.fromarray(moving_shapes(i)).resize((48, 32), Image.BOX),
                          dtype=np.float64)[:, 8:40]
        got = uri_array(last["input"]).astype(np.float64)
        assert got.shape == (32, 32, 3)
        assert np.abs(got - want).mean() < 12, np.abs(got - want).mean()
    assert page.locator("#lv-frame").inner_text().startswith("frame 31 / 40")
    rows = page.locator("#lv-top5 .lv-bar-row")
    assert rows.count() == 5
    assert rows.nth(0).locator(".lv-bar-name").inner_text() == b["answer"]["top"][0]["name"]
    page.screenshot(path=str(SHOTS / "video_frame30.png"), full_page=True)


def tile_centre(page, ans: dict, channel: int) -> tuple[float, float]:
    """Page coordinates of the middle of ``channel``'s tile in the grid image."""
    return tuple(page.evaluate("""([a, c]) => {
        const img = document.getElementById('lv-grid'), r = img.getBoundingClientRect();
        const pos = a.shown ? a.shown.indexOf(c) : c;
        const col = pos % a.cols, row = Math.floor(pos / a.cols);
        return [r.left + (col * (a.tw + a.gap) + a.tw / 2) / img.naturalWidth * r.width,
                r.top + (row * (a.th + a.gap) + a.th / 2) / img.naturalHeight * r.height];
    }""", [ans, channel]))


def test_clicking_a_channel_zooms_it_beside_its_preferred_input_and_top9(live_run, server,
                                                                          page):
    from convscope.figures.images import to_rgb

    _, model, _, top = live_run
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_live(page, server.url)
    ans = page.evaluate(f"() => {LAST}.answer")
    page.mouse.click(*tile_centre(page, ans, 2))
    page.wait_for_function(f"() => {LAST}.answer.zoom && {LAST}.answer.zoom.channel === 2")
    last = page.evaluate(f"() => {LAST}")
    acts = cs.features.live(model, LAYER, frame_tensor(last["input"])).numpy()
    zoom = levels_from_colors(uri_array(last["answer"]["zoom"]["image"]))
    assert np.abs(zoom - expected_levels(acts[2:3])[0]).max() <= 1
    assert last["answer"]["zoom"]["lo"] == pytest.approx(float(acts[2].min()), abs=1e-5)
    assert last["answer"]["zoom"]["hi"] == pytest.approx(float(acts[2].max()), abs=1e-5)
    assert page.locator("#lv-zoom-cap").inner_text() == f"Channel 2 of {LAYER}"
    # beside it: the unit's preferred input and its top-9 crops, as stored
    pane = "document.querySelector('#live-unit .js-plotly-plot')"
    page.wait_for_function(f"() => {pane} && {pane}.layout && {pane}.layout.meta && "
                           f"{pane}.layout.meta.unit === 2")
    meta = page.evaluate(f"() => {pane}.layout.meta")
    assert meta == {"kind": "unit_pane", "unit": 2, "k": 9, "has_preferred": True}
    z = np.array(page.evaluate(f"() => {pane}._fullData[2].z"), dtype=np.int64)[..., :3]
    want = to_rgb(top.crops[2, 1].numpy().astype(np.float32)).astype(np.int64)
    assert z.shape == want.shape and np.abs(z - want).max() <= 1
    page.screenshot(path=str(SHOTS / "zoom.png"), full_page=True)
    # a layer without preferred inputs or top examples: the zoom works, and a note says why
    # nothing is beside it
    pick_layer(page, "conv1")
    page.wait_for_function(f"() => {LAST}.answer.layer === 'conv1' && !{LAST}.answer.zoom")
    ans = page.evaluate(f"() => {LAST}.answer")
    page.mouse.click(*tile_centre(page, ans, 1))
    page.wait_for_function(f"() => {LAST}.answer.zoom && {LAST}.answer.zoom.channel === 1")
    page.wait_for_function("() => document.getElementById('live-zoom-note').innerText"
                           ".includes('no preferred input')")
    note = page.locator("#live-zoom-note").inner_text()
    assert "Channel 1 of conv1" in note and "run.log_preferred_inputs" in note
    assert page.locator("#live-unit-box").is_hidden()


def test_fc_layer_and_top5_classes_show_live(live_run, server, video, page):
    _, model, names, _ = live_run
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_live(page, server.url, layer="fc")
    last = page.evaluate(f"() => {LAST}")
    ans = last["answer"]
    assert ans["kind"] == "vector" and ans["channels"] == 10
    with torch.no_grad():
        logits = model.eval()(frame_tensor(last["input"])[None])[0]
    np.testing.assert_allclose(ans["values"], logits.numpy(), atol=1e-5)
    check_top5(model, names, last)
    # the bars: one per value, the largest magnitude reaching the edge
    bars = uri_array(ans["grid"])
    assert bars.shape[1] % 10 == 0
    assert page.locator("#lv-grid-cap").inner_text().startswith("fc: 10 values")
    assert page.locator("#live-body").is_hidden()  # no grid of 1 x 1 tiles
    # and live on a video: each frame's fc values and probabilities are its own
    page.set_input_files("#live-video-upload input[type=file]", str(video))
    page.wait_for_function(f"() => {LAST}.source === 'video' && {LAST}.frame >= 2",
                           timeout=120_000)
    b = show_frame(page, 20)
    with torch.no_grad():
        logits = model.eval()(frame_tensor(b["input"])[None])[0]
    np.testing.assert_allclose(b["answer"]["values"], logits.numpy(), atol=1e-5)
    check_top5(model, names, b)
    page.screenshot(path=str(SHOTS / "fc_top5.png"), full_page=True)


def test_webcam_frames_run_through_the_model(live_run, server, browser):
    """Chromium's fake camera (a moving test pattern) through getUserMedia."""
    _, model, names, _ = live_run
    SHOTS.mkdir(parents=True, exist_ok=True)
    cam = browser.browser_type.launch(
        executable_path=shutil.which("chromium"),
        args=CHROMIUM_ARGS + ["--use-fake-device-for-media-stream",
                              "--use-fake-ui-for-media-stream"])
    try:
        ctx = cam.new_context(viewport={"width": 1400, "height": 900})
        ctx.set_default_timeout(60_000)
        page = ctx.new_page()
        open_live(page, server.url)
        page.click("#live-webcam")
        page.wait_for_function(f"() => {LAST}.source === 'webcam' && {LAST}.frame >= 4 && "
                               f"{LAST}.answer && !{LAST}.answer.error")
        assert page.locator("#live-webcam").inner_text() == "Stop webcam"
        seen = []
        for _ in range(8):  # the grid follows the camera: several different frames
            last = page.evaluate(f"() => {LAST}")
            if last["answer"].get("kind") == "map":
                seen.append(last)
            page.wait_for_timeout(300)
        inputs = {s["input"] for s in seen}
        assert len(inputs) >= 2
        for last in (seen[0], seen[-1]):
            assert uri_array(last["input"]).shape == (32, 32, 3)  # shrunk in the browser
            check_grid(model, LAYER, last)
            check_top5(model, names, last)
        page.screenshot(path=str(SHOTS / "webcam.png"), full_page=True)
        page.click("#live-webcam")
        page.wait_for_function("() => !window.convscopeLive.stream && "
                               "window.convscopeLive.source === 'still'")
        assert page.locator("#live-webcam").inner_text() == "Start webcam"
        assert page.locator("#live-still-box").is_visible()  # back to the still image
    finally:
        cam.close()
