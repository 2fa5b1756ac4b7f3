"""The Live page over HTTP against a real ``convscope serve``: opening a run never unpickles its
checkpoint without ``--trust-checkpoints`` (issue 12 item 2), uploads are bounded before they are
decoded and responses are bounded (item 7), and the model cache is bounded (item 8).

Oracles: a marker file a crafted pickle would create, the server process's RSS (from /proc), the
size of what comes back, and hand-computed channel selections.
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
from convscope.app.pages import live as live_page

from .dash_http import call as dash_call
from .procmem import mem_mb, reset_peak

pytestmark = pytest.mark.browser  # starts a real server

LAYER = "layer1.0.conv1"


class Exploit:
    """Unpickling this runs ``exec``: it writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _run(logdir: Path, name: str, checkpoint) -> Path:
    """A run the Live page can show: graph, sample images and a checkpoint.

    ``checkpoint``: ``"safe"`` (run.log_checkpoint) or an object pickled as checkpoints/model.pt
    the way older versions did."""
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(3, 3, 32, 32)
    with cs.Run(logdir, name, quiet=True) as run:
        run.log_object("graph", "model", cs.model.graph(model, x[:1]).to_dict())
        run.log_feature_maps(model, x, layers=[LAYER])
        if isinstance(checkpoint, str):
            run.log_checkpoint(model)
    if not isinstance(checkpoint, str):
        (run.path / "checkpoints").mkdir(exist_ok=True)
        torch.save(checkpoint, run.path / "checkpoints" / "model.pt")
    return run.path


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    marker = root / "marker"
    _run(root / "runs", "evil", Exploit(marker))
    _run(root / "runs", "good", "safe")
    torch.manual_seed(0)
    _run(root / "runs", "legacy", cs.zoo.resnet(width=4).eval())  # a harmless old pickle
    return root / "runs", marker


@pytest.fixture(scope="module")
def server(logdir, module_serve):
    return module_serve(logdir[0])


def _grid(url: str, run: str, image: dict) -> tuple[int, bytes]:
    return dash_call(url, "live-grid", {"live-image.data": image, "live-layer.value": LAYER,
                                    "live-run.value": run}, "live-image.data")


def _array(value) -> np.ndarray:
    """A plotly array from JSON: a list, or {"dtype", "bdata", "shape"} (typed-array form)."""
    if isinstance(value, dict):
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        shape = value.get("shape")
        if shape:
            arr = arr.reshape([int(s) for s in str(shape).split(",")])
        return arr.astype(np.float64)
    return np.array(value, dtype=np.float64)






def _png_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- item 2: no code from the run -------------------------------------------------------------
def test_live_page_never_unpickles_without_trust(server, logdir):
    _, marker = logdir
    status, body = dash_call(server.url, "live-run", {"run-select.value": ["evil"],
                                                  "live-run.value": None}, "run-select.value")
    assert status == 200, body[-2000:]
    text = body.decode()
    assert "--trust-checkpoints" in text and "pickle" in text
    status, body = _grid(server.url, "evil", {"sample": 0})
    assert status == 200, body[-2000:]
    resp = json.loads(body)["response"]
    status_div = next(v for k, v in resp.items() if k.startswith("live-status"))
    assert "--trust-checkpoints" in json.dumps(status_div)
    assert resp["live-body"]["style"] == {"display": "none"}
    assert not marker.exists()


def test_live_page_runs_a_safe_checkpoint(server, logdir):
    status, body = _grid(server.url, "good", {"sample": 1})
    assert status == 200, body[-2000:]
    fig = json.loads(body)["response"]["live-grid"]["figure"]
    assert fig["layout"]["meta"]["kind"] == "channel_grid"
    assert fig["layout"]["meta"]["channels"] == 4 and fig["layout"]["meta"]["layer"] == LAYER
    # the same activations as running the original model on that sample here
    reader = cs.open_run(logdir[0] / "good")
    x = torch.as_tensor(reader.array("samples", "feature_maps")[1].astype(np.float32))
    torch.manual_seed(0)
    want = cs.features.live(cs.zoo.resnet(width=4).eval(), LAYER, x).numpy()
    z = _array(fig["data"][0]["z"])
    h = want.shape[1]
    tile = z[:h, :h]
    lo, hi = want[0].min(), want[0].max()
    np.testing.assert_allclose(tile, (want[0] - lo) / (hi - lo), atol=1e-4)


def test_trust_flag_loads_an_old_pickle(logdir, serve):
    srv = serve(logdir[0], args=["--trust-checkpoints"])
    status, body = _grid(srv.url, "legacy", {"sample": 0})
    assert status == 200, body[-2000:]
    fig = json.loads(body)["response"]["live-grid"]["figure"]
    assert fig["layout"]["meta"]["kind"] == "channel_grid"
    status, body = dash_call(srv.url, "live-run", {"run-select.value": ["legacy"],
                                               "live-run.value": None}, "run-select.value")
    assert status == 200 and b"--trust-checkpoints" not in body


# -- item 7: bounded uploads ------------------------------------------------------------------
def test_decompression_bomb_upload_is_refused_before_decoding(server, logdir):
    from PIL import Image

    big = Image.new("1", (13_000, 13_000))  # 21 MB here; 507 MB once decoded to RGB
    uri = _png_uri(big)
    del big
    assert len(uri) < 1_000_000  # a small request
    assert _grid(server.url, "good", {"sample": 0})[0] == 200  # model loaded, torch imported
    pid = server.worker_pids()[0]
    reset_peak(pid)
    before = mem_mb(pid)
    for _ in range(3):
        # through the upload callback, as the browser sends it ...
        status, body = dash_call(server.url, "live-image", {
            "live-upload.contents": uri, "live-sample.value": 0, "live-run.value": "good"},
            "live-upload.contents")
        assert status == 200, body[-2000:]
        data = json.loads(body)["response"]["live-image"]["data"]
        assert set(data) == {"error"} and "13000 x 13000" in data["error"]
        assert "4096" in data["error"]
        # ... and straight to the grid callback, as an attacker could: it takes only the
        # model-sized copy the upload callback makes, and says so
        status, body = _grid(server.url, "good", {"upload": uri})
        assert status == 200 and b"upload box" in body, body[-2000:]
        assert b"channel_grid" not in body
    # the peak, not just what is left: decoding would have taken ~650 MB at once
    peak = mem_mb(pid, "VmHWM")
    print(f"server RSS {before:.0f} MB before, peak {peak:.0f} MB during 6 bomb requests")
    assert peak - before < 200


def test_oversized_and_bogus_uploads_are_refused(server):
    too_long = "data:image/png;base64," + "A" * (live_page.MAX_URI_CHARS + 10)
    data = _upload(server.url, too_long)
    assert "MB" in data["error"] and "Shrink it" in data["error"]
    status, body = _grid(server.url, "good", {"upload": too_long})
    assert status == 200 and b"upload box" in body
    for bad in ("data:image/png;base64,!!!!", "not a uri", "data:image/gif;base64,"
                + base64.b64encode(b"GIF89a" + b"\0" * 20).decode(), 12):
        status, body = _grid(server.url, "good", {"upload": bad})
        assert status == 200, (bad, body[-500:])
        assert b"live-status" in body and b"channel_grid" not in body
    # a request body far over any upload is refused before it is read in full: waitress answers
    # 413 and closes the connection, which the client may see as a reset while still sending
    try:
        status, _ = _grid(server.url, "good", {"upload": "A" * (40 * 2**20)})
    except (urllib.error.URLError, ConnectionError) as exc:
        assert "reset" in str(exc).lower() or "broken pipe" in str(exc).lower(), exc
    else:
        assert status == 413
    status, body = _grid(server.url, "good", {"upload": "not a uri"})  # still serving
    assert status == 200 and b"live-status" in body


def test_accepted_upload_comes_back_small(server):
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (800, 1200, 3), dtype=np.uint8)
    uri = _png_uri(Image.fromarray(noise))  # 0.96 megapixels: accepted for a 32 x 32 model
    status, body = dash_call(server.url, "live-image", {
        "live-upload.contents": uri, "live-sample.value": 0, "live-run.value": "good"},
        "live-upload.contents")
    assert status == 200
    data = json.loads(body)["response"]["live-image"]["data"]
    assert "upload" in data, data
    assert len(body) < 20_000 < len(uri)  # the 32 x 32 copy, not the upload
    small = Image.open(io.BytesIO(base64.b64decode(data["upload"].split(",", 1)[1])))
    assert small.size == (32, 32)
    status, body = _grid(server.url, "good", data)
    assert status == 200 and json.loads(body)["response"]["live-grid"]["figure"]["layout"][
        "meta"]["source"] == "upload"


# -- unit checks of the bounds ------------------------------------------------------------------
def test_grid_keeps_the_most_active_channels_and_bounds_values():
    acts = torch.zeros(300, 64, 64)
    strong = [5, 17, 299]
    for c in range(300):
        acts[c] = 0.01 * (c % 7)
    for c in strong:
        acts[c] = 10.0 + c
    out, said = live_page._bound(acts)
    side = int(np.sqrt(live_page.MAX_GRID_VALUES // live_page.MAX_GRID_CHANNELS))
    assert out.shape == (live_page.MAX_GRID_CHANNELS, side, side)
    assert out.numel() <= live_page.MAX_GRID_VALUES
    # the strong channels survive, in channel order, with their values (area mean of constants)
    means = out.flatten(1).mean(1)
    assert [round(v) for v in sorted(means.tolist())[-3:]] == [15, 27, 309]
    assert "256 most active of 300 channels" in said and "64 x 64 to 32 x 32" in said
    small, said = live_page._bound(torch.rand(4, 8, 8))
    assert small.shape == (4, 8, 8) and said == ""


def test_model_cache_is_bounded_lru(tmp_path):
    paths = [_run(tmp_path, f"r{i}", "safe") for i in range(3)]
    readers = [cs.open_run(p) for p in paths]
    live_page._models.clear()
    a, _ = live_page._model(readers[0], "model", False)
    assert live_page._model(readers[0], "model", False)[0] is a  # cached
    live_page._model(readers[1], "model", False)
    live_page._model(readers[0], "model", False)  # r0 is now the most recent
    live_page._model(readers[2], "model", False)  # evicts r1
    assert len(live_page._models) == live_page.MAX_MODELS == 2
    assert {k[0] for k in live_page._models} == {str(paths[0]), str(paths[2])}
    # re-saving the checkpoint changes its identity: the new model is loaded
    with cs.Run(tmp_path, "r0", resume=True, quiet=True) as run:
        run.log_checkpoint(cs.zoo.resnet(width=8).eval())
    b, _ = live_page._model(readers[0], "model", False)
    assert b is not a and b.conv1.out_channels == 8
    live_page._models.clear()


# -- red-team findings: memory per upload, the grid callback, concurrency -------------------------
def _upload(url: str, uri: str) -> dict:
    status, body = dash_call(url, "live-image", {
        "live-upload.contents": uri, "live-sample.value": 0, "live-run.value": "good"},
        "live-upload.contents")
    assert status == 200, body[-2000:]
    return json.loads(body)["response"]["live-image"]["data"]


def test_small_files_of_many_pixels_are_refused_with_bounded_memory(server):
    """A 4096 x 4096 PNG is 44 KB as 16-bit grayscale and 87 KB as RGBA; 8 at once took the
    server from 1,065 MB to 1,675-1,812 MB peak before (the upload callback and the grid
    callback alike). Now such an image is refused on its header: at most 16 x the model's
    input pixels (at least 1 MP) are decoded."""
    import threading

    from PIL import Image

    bombs = [_png_uri(Image.fromarray(np.zeros((4096, 4096), np.uint16))),
             _png_uri(Image.new("RGBA", (4096, 4096)))]
    assert all(len(u) < 100_000 for u in bombs)
    fits = _png_uri(Image.fromarray(np.full((1024, 1024), 40000, np.uint16)))  # 1 MP: accepted
    assert _grid(server.url, "good", {"sample": 0})[0] == 200
    pid = server.worker_pids()[0]
    before = reset_peak(pid)
    answers: list = []

    def send(uri: str, direct: bool) -> None:
        if direct:  # straight to the grid callback, as an attacker could
            status, body = _grid(server.url, "good", {"upload": uri})
            answers.append((status, body.decode(errors="replace")))
        else:
            answers.append((200, json.dumps(_upload(server.url, uri))))

    jobs = [threading.Thread(target=send, args=(u, d)) for u in bombs for d in (False, True)
            for _ in range(4)] + [threading.Thread(target=send, args=(fits, False))
                                  for _ in range(8)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join()
    peak = mem_mb(pid, "VmHWM")
    print(f"server RSS {before:.0f} MB before, peak {peak:.0f} MB during {len(jobs)} uploads")
    assert all(st == 200 for st, _ in answers)
    refused = [t for _, t in answers if "4096 x 4096" in t]  # by the upload callback
    assert len(refused) == 8 and all("1.0 megapixels" in t for t in refused), answers[:3]
    direct = [t for _, t in answers if "upload box" in t]  # by the grid callback
    assert len(direct) == 8 and not any("channel_grid" in t for t in direct)
    accepted = [t for _, t in answers if '"upload"' in t]
    assert len(accepted) == 8  # 16-bit, converted: a mid-grey copy of the model's size
    small = json.loads(accepted[0])["upload"]
    from PIL import Image as _I
    img = _I.open(io.BytesIO(base64.b64decode(small.split(",", 1)[1])))
    assert img.size == (32, 32)
    assert peak - before < 150


def test_grid_takes_only_a_model_sized_image(server):
    from PIL import Image

    for size in ((33, 32), (64, 64), (1024, 1024)):
        uri = _png_uri(Image.new("RGB", size, (200, 10, 10)))
        status, body = _grid(server.url, "good", {"upload": uri})
        assert status == 200 and b"not the model's 32 x 32" in body, body[-500:]
        assert b"channel_grid" not in body
    uri = _png_uri(Image.new("RGB", (32, 32), (200, 10, 10)))
    status, body = _grid(server.url, "good", {"upload": uri})
    assert status == 200 and b"channel_grid" in body
    # a model-sized PNG padded far past what 32 x 32 pixels can take is refused on its length
    status, body = _grid(server.url, "good", {"upload": uri + "A" * 20_000})
    assert status == 200 and b"upload box" in body and b"channel_grid" not in body


def test_large_jpeg_is_decoded_at_reduced_scale(server):
    """A 12-megapixel photo is over the 1 MP a 32 x 32 model allows, but JPEG decodes at 1/8
    scale (0.19 MP): accepted, and the copy matches PIL's own full decode shrunk."""
    from PIL import Image

    yy, xx = np.mgrid[0:3000, 0:4000]
    rgb = np.stack([xx * 255 // 3999, yy * 255 // 2999, np.full_like(xx, 128)], -1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, format="JPEG", quality=90)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    data = _upload(server.url, uri)
    assert "upload" in data, data
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["upload"].split(",", 1)[1]))))
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB").resize(
        (32, 32), Image.BILINEAR), dtype=np.float64)
    assert got.shape == (32, 32, 3)
    assert np.abs(got - want).mean() < 4  # the same ramps, up to scaling differences
    png = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(png, format="PNG", compress_level=1)
    assert "1.0 megapixels" in _upload(server.url, "data:image/png;base64," + base64.b64encode(
        png.getvalue()).decode()).get("error", "")  # a PNG cannot be decoded at reduced scale


def test_decoding_is_limited_per_process(monkeypatch):
    from PIL import Image

    from convscope.errors import InputError

    uri = _png_uri(Image.new("RGB", (64, 64)))
    monkeypatch.setattr(live_page, "DECODE_WAIT_S", 0.2)
    held = [live_page._decoding.acquire(timeout=1) for _ in range(live_page.MAX_DECODES)]
    try:
        assert all(held)
        with pytest.raises(InputError, match="busy.*try again"):
            live_page._decode(uri, (3, 32, 32))
    finally:
        for _ in held:
            live_page._decoding.release()
    assert live_page._decode(uri, (3, 32, 32)).shape == (3, 32, 32)
    assert live_page.decode_pixels((3, 32, 32)) == 2**20  # the floor
    assert live_page.decode_pixels((3, 300, 300)) == 16 * 300 * 300
    assert live_page.decode_pixels((3, 1024, 1024)) == 2048 * 2048  # the ceiling


def test_layer_list_survives_bad_runs(server):
    for run in ("no-such-run", ["good"], {"a": 1}, 7, "../good"):
        status, body = dash_call(server.url, "live-layer", {
            "live-run.value": run, "live-layer.value": None}, "live-run.value")
        assert status in (200, 204), (run, body[-500:])
        assert b"Traceback" not in body
    status, body = dash_call(server.url, "live-layer", {
        "live-run.value": "no-such-run", "live-layer.value": None}, "live-run.value")
    assert b"no-such-run" in body  # the notice says which run
    status, body = dash_call(server.url, "live-layer", {
        "live-run.value": "good", "live-layer.value": None}, "live-run.value")
    resp = json.loads(body)["response"]
    assert resp["live-layer"]["value"] == "conv1" or LAYER in resp["live-layer"]["options"]
