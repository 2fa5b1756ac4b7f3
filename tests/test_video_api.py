"""A video through the Python API (issue 16 item 1): ``cs.data.read_video`` decodes a local MP4 or
WebM file safely into ``[T, C, H, W]`` frames, and ``cs.features.play`` runs them through a model
in batches, per frame the layer's channels and the top-k classes.

Oracles: flat-colour videos encoded here (each frame's mean is the colour encoded, within codec
loss; which source frames are taken follows from their known times); ``cs.features.live`` on
each frame alone; the softmax of the model's output computed here and ranked by hand (numpy
argsort); the model's own state before the call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.app import video as app_video
from convscope.errors import InputError, LayerNotFoundError, ModelError

pytest.importorskip("av")  # the video extra is a dev dependency: installed where tests run

#: Distinct flat colours, one per frame of the test videos.
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 200, 210),
           (128, 128, 128), (230, 230, 230), (20, 20, 20)]
TOL = 0.04  # codec loss (yuv420p at crf 12, limited range) on a flat colour, in [0, 1]


def encode(path: Path, frames: list[np.ndarray], fps: int = 8, fmt: str = "mp4",
           codec: str = "libx264") -> Path:
    import av

    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height = frames[0].shape[1], frames[0].shape[0]
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "12"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def flat(colour, h: int = 48, w: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (h, w, 3)).copy()


def colour_clip(tmp_path: Path, n: int = 8, fps: int = 8, **kw) -> Path:
    return encode(tmp_path / f"flat{n}_{fps}.mp4",
                  [flat(COLOURS[i % len(COLOURS)]) for i in range(n)], fps=fps, **kw)


# -- read_video -------------------------------------------------------------------------------
def test_read_video_gives_the_colours_that_were_encoded(tmp_path):
    clip = colour_clip(tmp_path)
    got = cs.data.read_video(clip, size=(16, 20), quiet=True)
    frames, times = got  # unpacks as (frames, times)
    assert frames.shape == (8, 3, 16, 20) and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    want = torch.tensor(COLOURS, dtype=torch.float32) / 255
    assert torch.allclose(frames.mean(dim=(2, 3)), want, atol=TOL), frames.mean(dim=(2, 3))
    assert torch.allclose(times, torch.arange(8, dtype=torch.float64) / 8, atol=1e-6)
    assert got.fps == 8 and got.codec == "h264" and got.container == "mp4"
    assert got.size == (64, 48) and got.duration == pytest.approx(1.0, abs=0.01)
    assert got.note == "" and len(got) == 8
    # bytes give the same frames as the path; size=None keeps the source's picture
    same = cs.data.read_video(clip.read_bytes(), size=(16, 20), quiet=True)
    assert torch.equal(same.frames, frames)
    whole = cs.data.read_video(clip, quiet=True)
    assert whole.frames.shape == (8, 3, 48, 64)
    # grey: the luma of each colour (ITU-R BT.601 weights)
    grey = cs.data.read_video(clip, size=(8, 8), channels=1, quiet=True).frames
    luma = (want * torch.tensor([0.299, 0.587, 0.114])).sum(1)
    assert grey.shape == (8, 1, 8, 8)
    assert torch.allclose(grey.mean(dim=(1, 2, 3)), luma, atol=TOL)


def test_read_video_takes_frames_at_the_asked_rate_and_count(tmp_path):
    clip = colour_clip(tmp_path, n=16, fps=8)  # 2 s; frame i shows COLOURS[i % 8]
    got = cs.data.read_video(clip, size=(8, 8), fps=2, quiet=True)
    # frame k is the first source frame at or after k / 2 s: source frames 0, 4, 8, 12
    assert torch.allclose(got.times, torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64))
    want = torch.tensor([COLOURS[i % 8] for i in (0, 4, 8, 12)], dtype=torch.float32) / 255
    assert torch.allclose(got.frames.mean(dim=(2, 3)), want, atol=TOL)
    cut = cs.data.read_video(clip, size=(8, 8), max_frames=3, quiet=True)
    # max_frames frames spread over the declared duration: the rate is lowered (fps says so)
    assert len(cut) == 3 and cut.fps == pytest.approx(1.5)
    # 3 frames of a 2 s clip: 1.5 a second, at or after 0, 2/3, 4/3 s -> source frames 0, 6, 11
    assert torch.allclose(cut.times, torch.tensor([0.0, 0.75, 1.375], dtype=torch.float64)), \
        cut.times
    picked = torch.tensor([COLOURS[i % 8] for i in (0, 6, 11)], dtype=torch.float32) / 255
    assert torch.allclose(cut.frames.mean(dim=(2, 3)), picked, atol=TOL)


def test_read_video_refuses_with_what_to_do(tmp_path, monkeypatch):
    from PIL import Image

    with pytest.raises(InputError, match="no video file"):
        cs.data.read_video(tmp_path / "missing.mp4")
    png = tmp_path / "image.mp4"  # the name does not decide: the first bytes do
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with pytest.raises(InputError, match="not an MP4 or WebM"):
        cs.data.read_video(png, quiet=True)
    playlist = tmp_path / "list.mp4"
    playlist.write_bytes(b"#EXTM3U\n#EXT-X-VERSION:3\nfile:///etc/passwd\n")
    with pytest.raises(InputError, match="not an MP4 or WebM"):
        cs.data.read_video(playlist, quiet=True)
    mj = encode(tmp_path / "mjpeg.mp4", [flat(c, 32, 32) for c in COLOURS[:3]], codec="mjpeg")
    with pytest.raises(InputError, match="codec is 'mjpeg'.*re-encode"):
        cs.data.read_video(mj, quiet=True)
    clip = colour_clip(tmp_path)
    from dataclasses import replace

    small = replace(cs.data.LOCAL_LIMITS, max_bytes=100)
    with pytest.raises(InputError, match="MB.*raise the limit"):
        cs.data.read_video(clip, limits=small, quiet=True)
    narrow = replace(cs.data.LOCAL_LIMITS, max_side=32)
    with pytest.raises(InputError, match="64 x 48 pixels"):
        cs.data.read_video(clip, limits=narrow, quiet=True)
    short = replace(cs.data.LOCAL_LIMITS, max_seconds=0.2)
    with pytest.raises(InputError, match="1.0 s long"):
        cs.data.read_video(clip, limits=short, quiet=True)
    for bad in ({"size": (0, 8)}, {"size": "32"}, {"fps": 0}, {"fps": float("nan")},
                {"max_frames": 0}, {"channels": 2}):
        with pytest.raises(InputError):
            cs.data.read_video(clip, quiet=True, **bad)
    with pytest.raises(InputError, match="a path or the file's bytes"):
        cs.data.read_video(12, quiet=True)
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV not installed
    with pytest.raises(InputError, match=r"pip install 'convscope\[video\]'"):
        cs.data.read_video(clip, quiet=True)


def test_the_live_pages_decoder_is_the_same_decoder(tmp_path):
    clip = colour_clip(tmp_path, n=20, fps=20)  # 1 s at 20 frames/s; the page takes 15 a second
    page = app_video.decode(clip.read_bytes(), (3, 16, 16))
    local = cs.data.read_video(clip, size=(16, 16), fps=app_video.MAX_FPS, quiet=True)
    assert page.fps == local.fps == 15 and page.times == local.times.tolist()
    assert torch.equal(torch.from_numpy(page.frames).permute(0, 3, 1, 2).float() / 255,
                       local.frames)
    # the page's limits are the upload's, not the local ones
    assert app_video.limits().max_bytes == app_video.MAX_VIDEO_BYTES < cs.data.LOCAL_LIMITS.max_bytes


# -- play --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return cs.zoo.resnet(width=4).eval()


def frames_of(n: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=g)


def test_play_is_live_on_each_frame_and_the_softmax_top_k(model):
    x = frames_of(7)
    names = [f"shape {i}" for i in range(10)]
    model.train()  # the call runs in eval mode and gives the train mode back
    stats = {k: v.clone() for k, v in model.state_dict().items()}
    got = cs.features.play(model, "layer1.0.conv1", x, top=3, classes=names, batch=3, quiet=True)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, stats[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()
    assert got.maps.shape == (7, 4, 16, 16) and got.layer == "layer1.0.conv1" and not got.flat
    for t in range(7):
        assert torch.allclose(got.maps[t], cs.features.live(model, "layer1.0.conv1", x[t]),
                              atol=1e-5)
    with torch.no_grad():
        p = torch.softmax(model(x).double(), dim=1).numpy()
    assert np.allclose(got.probs.numpy(), p, atol=1e-6)
    order = np.argsort(-p, axis=1)[:, :3]
    assert np.array_equal(got.top_index.numpy(), order)
    assert np.allclose(got.top_p.numpy(), np.take_along_axis(p, order, 1), atol=1e-6)
    assert got.top(2) == [(int(i), f"shape {i}", pytest.approx(float(p[2, i]), abs=1e-6))
                          for i in order[2]]
    one = cs.features.play(model, "layer1.0.conv1", x, top=3, batch=1, quiet=True)
    assert torch.allclose(one.maps, got.maps, atol=1e-5) and one.class_names is None
    assert one.top(0)[0][1] == f"class {order[0, 0]}"


def test_play_takes_read_video_frames_and_fc_layers(model, tmp_path):
    video = cs.data.read_video(colour_clip(tmp_path), size=(32, 32), quiet=True)
    got = cs.features.play(model, "fc", video, quiet=True)
    assert got.flat and got.maps.shape == (8, 10, 1, 1) and torch.equal(got.times, video.times)
    for t in (0, 7):
        assert torch.allclose(got.maps[t], cs.features.live(model, "fc", video.frames[t]),
                              atol=1e-5)
    with torch.no_grad():
        logits = model(video.frames)
    assert torch.allclose(got.maps[:, :, 0, 0], logits, atol=1e-5)  # fc's output is the logits
    assert got.top_index.shape == (8, 5)


def test_play_refuses_and_explains(model):
    x = frames_of(2)
    with pytest.raises(InputError, match="cs.features.live"):
        cs.features.play(model, "layer1", x[0], quiet=True)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        cs.features.play(model, "layer1", bad, quiet=True)
    for kw in ({"top": -1}, {"top": 2.5}, {"batch": 0}):
        with pytest.raises(InputError):
            cs.features.play(model, "layer1", x, quiet=True, **kw)
    with pytest.raises(LayerNotFoundError):
        cs.features.play(model, "layer9", x, quiet=True)

    class NaNOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3)) * float("nan")

    with pytest.raises(ModelError, match="NaN"):
        cs.features.play(NaNOut(), "conv", x, quiet=True)
    conv = nn.Sequential(nn.Conv2d(3, 2, 3))  # output [N, 2, h, w]: no class scores
    got = cs.features.play(conv, "0", x, quiet=True)
    assert got.maps.shape == (2, 2, 30, 30) and got.top_index is None and got.top(0) == []
    assert "not class scores" in got.note
    none = cs.features.play(model, "layer1", x, top=0, quiet=True)
    assert none.probs is None and "top=0" in none.note
