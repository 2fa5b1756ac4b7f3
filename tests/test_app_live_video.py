"""The Live page's video and per-frame paths over HTTP against a real ``convscope serve``, and
their parts (issue 16 item 1): bad uploads (not a video, too big, too long, a damaged file, a
codec or a container not allowed) get a clear message and never take the server down; the
frame endpoint refuses whatever a client can post; the grid and bar pictures are laid out as
their callers assume.

Oracles: the model run here on the same image; the softmax computed here; hand-placed tiles;
the files' own sizes and durations.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.app import video as video_mod
from convscope.app.pages import live as live_page
from convscope.errors import InputError
from convscope.figures import live as live_fig

from .dash_http import call as dash_call
from .test_app_live_video_browser import (
    encode_video,
    expected_levels,
    levels_from_colors,
    moving_shapes,
    tiles,
)

pytestmark = pytest.mark.browser  # starts a real server
LAYER = "layer1.0.conv1"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("livehttp")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    with cs.Run(root, "good", quiet=True) as run:  # no class names stored
        run.log_object("graph", "model", cs.model.graph(model, x[:1]).to_dict())
        run.log_feature_maps(model, x, layers=[LAYER])
        run.log_checkpoint(model)
    return root, model


@pytest.fixture(scope="module")
def server(logdir, module_serve):
    return module_serve(logdir[0])


def _uri(raw: bytes, mime: str = "video/mp4") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def _video_call(url: str, contents, run="good", filename="clip.mp4") -> tuple[dict | None, str]:
    status, body = dash_call(url, "live-video", {
        "live-video-upload.contents": contents, "live-video-upload.filename": filename,
        "live-run.value": run}, "live-video-upload.contents")
    assert status == 200, body[-2000:]
    resp = json.loads(body)["response"]
    note = next(v for k, v in resp.items() if k.startswith("live-status"))
    return resp["live-video"]["data"], json.dumps(note)


def _png(arr: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _frame(url: str, body, *, ctype: str = "application/json") -> tuple[int, dict | bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + live_page.FRAME_PATH, data=data, headers={
        "Content-Type": ctype, "Origin": url})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return r.status, json.loads(raw)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw


# -- video uploads ----------------------------------------------------------------------------
def test_a_video_upload_comes_back_as_model_sized_frames(server, tmp_path):
    path = encode_video(tmp_path / "s.webm", [moving_shapes(i) for i in range(25)], "webm",
                        "libvpx-vp9", fps=25)
    data, note = _video_call(server.url, _uri(path.read_bytes(), "video/webm"), filename="s.webm")
    assert data is not None, note
    # 25 frames at 25 frames/s, taken at most 15 a second: 1 s -> 15 frames
    assert data["fps"] == 15 and len(data["frames"]) == 15 and data["shape"] == [3, 32, 32]
    assert "WEBM (vp9), 96 x 64 pixels, 1.0 s" in note
    times = np.array(data["times"])
    # frame k is the source's first frame at or after k / 15 s (source frames: every 0.04 s)
    k = np.arange(len(times))
    assert np.all(times >= k / 15 - 1e-6) and np.all(times < k / 15 + 0.04 + 1e-6), times
    first = np.asarray(__import__("PIL.Image").Image.open(io.BytesIO(base64.b64decode(
        data["frames"][0].split(",", 1)[1]))))
    assert first.shape == (32, 32, 3)


def test_bad_video_uploads_get_a_clear_message(server, tmp_path):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    cases = {
        "not a video": (_uri(buf.getvalue()), "not an MP4 or WebM"),
        "a playlist": (_uri(b"#EXTM3U\n#EXT-X-VERSION:3\nfile:///etc/passwd\n"),
                       "not an MP4 or WebM"),
        "a concat list": (_uri(b"ffconcat version 1.0\nfile '/etc/passwd'\n"),
                          "not an MP4 or WebM"),
        "damaged": (_uri(b"\0\0\0\x18ftypisom" + b"\x07" * 5000), "Cannot play"),
        "not base64": ("data:video/mp4;base64,!!!!", "not valid base64"),
        "not a data URI": ("hello", "not a base64 data URI"),
        "a number": (12, "not a video file"),
        "too big": ("data:video/mp4;base64," + "A" * (live_page.MAX_VIDEO_URI_CHARS + 8),
                    "MB"),
    }
    long_clip = encode_video(tmp_path / "long.mp4", [moving_shapes(i % 40) for i in range(62)],
                             fps=1)  # 62 s
    cases["too long"] = (_uri(long_clip.read_bytes()), "62.0 s long")
    mj = tmp_path / "mjpeg.mp4"
    import av

    with av.open(str(mj), "w", format="mp4") as c:  # an MP4 holding a codec not allowed
        s = c.add_stream("mjpeg", rate=5)
        s.width, s.height, s.pix_fmt = 32, 32, "yuvj420p"
        for i in range(3):
            for p in s.encode(av.VideoFrame.from_ndarray(moving_shapes(i)[:32, :32].copy(),
                                                         format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cases["a codec not allowed"] = (_uri(mj.read_bytes()), "codec is 'mjpeg'")
    for what, (contents, says) in cases.items():
        data, note = _video_call(server.url, contents)
        assert data is None, what
        assert says in note and "notice-bad" in note, (what, note[:500])
    data, note = _video_call(server.url, _uri(b"x"), run="../good")  # a bad run name
    assert data is None and "no run named" in note
    # still serving
    clip = encode_video(tmp_path / "ok.mp4", [moving_shapes(i) for i in range(5)])
    data, _ = _video_call(server.url, _uri(clip.read_bytes()))
    assert data is not None and len(data["frames"]) == 5


def test_decode_bounds_frames_and_refuses_before_decoding(tmp_path, monkeypatch):
    clip = encode_video(tmp_path / "c.mp4", [moving_shapes(i) for i in range(30)])
    got = video_mod.decode(clip.read_bytes(), (1, 16, 24))  # a grey model, wider than tall
    assert got.frames.shape == (30, 16, 24, 1) and got.codec == "h264"
    # the centre crop keeps the aspect: 96 x 64 -> 24 x 16 is the whole picture, shrunk
    want = np.asarray(__import__("PIL.Image").Image.fromarray(moving_shapes(0)).convert(
        "L").resize((24, 16), 2), dtype=np.float64)
    assert np.abs(got.frames[0, ..., 0] - want).mean() < 12
    monkeypatch.setattr(video_mod, "MAX_FRAMES", 7)
    got = video_mod.decode(clip.read_bytes(), (3, 32, 32))
    assert len(got.frames) == 7 and got.fps == pytest.approx(7 / 3.0)
    monkeypatch.setattr(video_mod, "MAX_DECODE_SECONDS", 0.0)  # out of time after a frame
    got = video_mod.decode(clip.read_bytes(), (3, 32, 32))
    assert len(got.frames) == 1 and "decoding stopped after 0 s" in got.note
    monkeypatch.setattr(video_mod, "MAX_VIDEO_SIDE", 64)
    with pytest.raises(InputError, match="96 x 64 pixels"):
        video_mod.decode(clip.read_bytes(), (3, 32, 32))
    monkeypatch.setattr(video_mod, "MAX_VIDEO_BYTES", 100)
    with pytest.raises(InputError, match="MB"):
        video_mod.decode(clip.read_bytes(), (3, 32, 32))
    assert video_mod.container_of(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"webm") == "webm"
    assert video_mod.container_of(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"matroska") is None


# -- the frame endpoint -----------------------------------------------------------------------
def test_frame_answer_is_the_models_own(server, logdir):
    _, model = logdir
    img = np.zeros((32, 32, 3), np.uint8)
    img[4:20, 10:30] = (250, 30, 30)
    x = torch.as_tensor(img.transpose(2, 0, 1) / 255.0, dtype=torch.float32)
    status, ans = _frame(server.url, {"run": "good", "layer": LAYER, "image": _png(img),
                                      "zoom": 3, "frame": 17})
    assert status == 200 and ans["frame"] == 17 and ans["kind"] == "map", ans
    acts = cs.features.live(model, LAYER, x).numpy()
    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(ans["grid"].split(",")[1]))))
    assert np.abs(tiles(grid, ans) - expected_levels(acts)).max() <= 1
    zoom = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        ans["zoom"]["image"].split(",")[1]))))
    assert np.abs(levels_from_colors(zoom) - expected_levels(acts[3:4])[0]).max() <= 1
    with torch.no_grad():
        p = torch.softmax(model(x[None])[0], 0)
    assert [t["index"] for t in ans["top"]] == torch.topk(p, 5).indices.tolist()
    assert [t["name"] for t in ans["top"]] == [f"class {i}" for i in torch.topk(p, 5).indices]
    assert "no class names" in ans["top_note"]
    status, ans = _frame(server.url, {"run": "good", "layer": "fc", "image": _png(img)})
    assert status == 200 and ans["kind"] == "vector"
    with torch.no_grad():
        np.testing.assert_allclose(ans["values"], model(x[None])[0].numpy(), atol=1e-5)


def test_frame_endpoint_refuses_what_a_client_can_post(server):
    ok = _png(np.zeros((32, 32, 3), np.uint8))
    bad = [
        ([1, 2], "JSON object"),
        ({"run": "good", "image": ok}, "pick a layer"),
        ({"run": "good", "layer": "x" * 600, "image": ok}, "pick a layer"),
        ({"run": "good", "layer": "no.such", "image": ok}, "not a layer of the run's graph"),
        ({"run": "good", "layer": "__class__", "image": ok}, "not a layer"),
        ({"run": "../good", "layer": LAYER, "image": ok}, "no run named"),
        ({"run": {"a": 1}, "layer": LAYER, "image": ok}, "no run named"),
        ({"run": "good", "layer": LAYER, "image": ok, "zoom": "1"}, "not a channel number"),
        ({"run": "good", "layer": LAYER, "image": ok, "zoom": True}, "not a channel number"),
        ({"run": "good", "layer": LAYER, "image": ok, "zoom": -1}, "not a channel number"),
        ({"run": "good", "layer": LAYER, "image": _png(np.zeros((64, 64, 3), np.uint8))},
         "not the model's 32 x 32"),
        ({"run": "good", "layer": LAYER, "image": 7}, "not an image file"),
        ({"run": "good", "layer": LAYER, "image": "data:image/png;base64,!!"}, "not valid base64"),
        ({"run": "good", "layer": LAYER, "image": ok + "A" * 20_000}, "upload box"),
    ]
    for body, says in bad:
        status, ans = _frame(server.url, body)
        assert status == 200 and says in ans.get("error", ""), (body if len(str(body)) < 200
                                                                else says, ans)
    status, ans = _frame(server.url, {"run": "good", "layer": LAYER, "image": ok, "zoom": 99})
    assert status == 200 and "has 4 channels" in ans["zoom_note"] and "zoom" not in ans
    status, ans = _frame(server.url, b"{not json")
    assert status == 200 and "JSON object" in ans["error"]
    # a form post (which another site could send) is refused by the guard; so is a large body
    status, _ = _frame(server.url, b"run=good", ctype="application/x-www-form-urlencoded")
    assert status == 403
    try:
        status, ans = _frame(server.url, b"[" + b" " * (live_page.MAX_FRAME_BODY + 10) + b"]")
    except (urllib.error.URLError, ConnectionError) as exc:  # closed while sending
        assert "reset" in str(exc).lower() or "broken pipe" in str(exc).lower(), exc
    else:
        assert status == 413
    status, ans = _frame(server.url, {"run": "good", "layer": LAYER, "image": ok})
    assert status == 200 and ans["kind"] == "map"  # still serving


# -- the pictures -----------------------------------------------------------------------------
def test_grid_image_places_each_channel_where_its_layout_says():
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(7, 3, 5)).astype(np.float32)
    acts[4] = 2.0  # a constant channel: level 0
    img, lay = live_fig.grid_image(acts)
    assert lay == {"cols": 3, "rows": 3, "th": 3, "tw": 5, "gap": 1}
    assert img.shape == (3 * 4 - 1, 3 * 6 - 1, 3)
    lev = levels_from_colors(img)
    for c in range(7):
        r, q = divmod(c, 3)
        tile = lev[r * 4: r * 4 + 3, q * 6: q * 6 + 5]
        a = acts[c].astype(np.float64)
        want = np.zeros_like(a) if np.ptp(a) == 0 else np.round((a - a.min()) / np.ptp(a) * 255)
        assert np.abs(tile - want).max() <= 1, c
    assert (img[3, :] == live_fig.GAP_RGB).all() and (img[:, 5] == live_fig.GAP_RGB).all()
    assert (img[8:, 6 * 1:] == live_fig.GAP_RGB).all()  # the two empty cells of the last row


def test_bars_image_draws_each_value_on_one_scale():
    img = live_fig.bars_image(np.array([1.0, -0.5, 0.0, 0.25]), height=41)
    bw = img.shape[1] // 4
    assert img.shape == (41, 4 * bw, 3)
    white = (img == 255).all(-1)
    heights = [(~white[:, i * bw]).sum() for i in range(4)]
    # the zero line is row 20; bar lengths 20, 10, 0 and 5 pixels (+ the line's pixel)
    assert heights == [21, 11, 1, 6]
    assert (~white[:20, 0]).all() and white[:20, bw].all()  # up for positive, down for negative
    wide = live_fig.bars_image(np.arange(2000.0), width=500)
    assert wide.shape[1] == 500


def test_frame_layer_kinds_come_from_the_graph(logdir):
    reader = cs.open_run(logdir[0] / "good")
    kinds = live_page._layer_kinds(reader)
    assert kinds[LAYER] == "map" and kinds["fc"] == "vector" and kinds["conv1"] == "map"
    assert list(kinds)[0] == "conv1"
    assert Path(reader.path).name == "good"
