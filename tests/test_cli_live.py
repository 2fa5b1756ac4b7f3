"""``convscope live VIDEO --logdir DIR --run RUN --layer LAYER --out OUT`` end to end (issue 16
item 1): a generated MP4 played through a tiny recorded run's saved model writes one PNG per
frame and top5.csv; bad arguments exit 2 with a message saying what to do.

Oracles: the Python API (``cs.data.read_video`` + ``cs.features.play``) on the model the test
recorded, for the CSV; ``cs.features.live`` on each frame, scaled to colour levels by hand and
compared with the PNG's Viridis colours inverted; ``figures.live.bars_image`` for fc frames.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.cli import build_parser, main
from convscope.figures.live import bars_image, grid_layout

from .test_app_live_video_browser import expected_levels, levels_from_colors, moving_shapes
from .test_video_api import encode

pytest.importorskip("av")
LAYER = "layer1.0.conv1"
NAMES = [f"shape {i}" for i in range(10)]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("clilive")
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with cs.Run(root, "tiny", config={"class_names": NAMES}, quiet=True) as run:
        run.log_object("graph", "model", cs.model.graph(model, x[:1]).to_dict())
        run.log_feature_maps(model, x, layers=[LAYER])
        run.log_checkpoint(model)
    clip = encode(root / "moving.mp4", [moving_shapes(i) for i in range(12)], fps=10)
    return root, model, clip


def _pngs(out) -> list:
    return sorted(out.glob("frame_*.png"))


def test_live_writes_a_grid_per_frame_and_the_apis_top5(recorded, tmp_path, capsys):
    from PIL import Image

    root, model, clip = recorded
    out = tmp_path / "out"
    rc = main(["live", str(clip), "--logdir", str(root), "--run", "tiny", "--layer", LAYER,
               "--out", str(out), "--batch-size", "5", "--quiet"])
    said = capsys.readouterr().out
    assert rc == 0 and "wrote 12 frames" in said, said
    pngs = _pngs(out)
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(12)]
    video = cs.data.read_video(clip, size=(32, 32), quiet=True)
    api = cs.features.play(model, LAYER, video, classes=NAMES, quiet=True)
    with open(out / "top5.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 * 5
    for r in rows:
        t, rank = int(r["frame"]), int(r["rank"])
        index, name, p = api.top(t)[rank - 1]
        assert int(r["class"]) == index and r["name"] == name == NAMES[index]
        assert float(r["p"]) == pytest.approx(p, abs=1e-6)
        assert float(r["time_s"]) == pytest.approx(float(video.times[t]), abs=1e-6)
    # each PNG is the frame's channels, each scaled on its own (levels by hand)
    for t in (0, 11):
        img = np.asarray(Image.open(pngs[t]).convert("RGB"))
        acts = cs.features.live(model, LAYER, video.frames[t]).numpy()
        c, h, w = acts.shape
        lay = grid_layout(c, h, w)
        size = (lay["rows"] * (h + 1) - 1, lay["cols"] * (w + 1) - 1)
        k = 256 // max(size)  # enlarged by default: the longer side within 256 pixels
        assert k > 1 and img.shape == (size[0] * k, size[1] * k, 3)
        block = img.reshape(size[0], k, size[1], k, 3)
        assert (block == block[:, :1, :, :1]).all()  # every value one flat k x k block
        img = img[::k, ::k]
        lev = levels_from_colors(img)
        tiles = np.stack([lev[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w]
                          for r, q in (divmod(i, lay["cols"]) for i in range(c))])
        assert np.abs(tiles - expected_levels(acts)).max() <= 1


def test_live_draws_fc_layers_as_bars_and_takes_fps(recorded, tmp_path):
    from PIL import Image

    root, model, clip = recorded
    out = tmp_path / "fc"
    rc = main(["live", str(clip), "--logdir", str(root), "--run", "tiny", "--layer", "fc",
               "--out", str(out), "--fps", "5", "--max-frames", "4", "--top", "2", "--scale", "1",
               "--quiet"])
    assert rc == 0
    pngs = _pngs(out)
    assert len(pngs) == 4  # 5 a second of a 10 frames/s clip, at most 4
    video = cs.data.read_video(clip, size=(32, 32), fps=5, max_frames=4, quiet=True)
    with torch.no_grad():
        logits = model(video.frames)
    for t in (0, 3):
        img = np.asarray(Image.open(pngs[t]).convert("RGB"))
        assert np.array_equal(img, bars_image(logits[t].numpy()))
    with open(out / "top5.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = torch.softmax(logits, 1)
    assert len(rows) == 4 * 2
    assert [int(r["class"]) for r in rows[:2]] == torch.topk(p[0], 2).indices.tolist()


def test_live_refuses_with_exit_2_and_a_message(recorded, tmp_path, capsys):
    root, _, clip = recorded
    base = ["live", str(clip), "--logdir", str(root), "--run", "tiny", "--layer", LAYER,
            "--out", str(tmp_path / "o"), "--quiet"]
    cases = [
        (["--layer", "layer9"], "layer9"),
        (["--run", "nope"], "no run named 'nope'"),
        (["--logdir", str(tmp_path / "none")], "no logdir"),
        (["--size", "big"], "--size takes HxW"),
        (["--max-frames", "0"], "--max-frames"),
        (["--fps", "0"], "fps"),
        (["--scale", "65"], "--scale"),
    ]
    for extra, says in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert "convscope: error:" in err and says in err, (extra, err)
    png = tmp_path / "still.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    assert main(["live", str(png)] + base[2:]) == 2
    assert "not an MP4 or WebM" in capsys.readouterr().err
    assert main(["live", str(tmp_path / "missing.mp4")] + base[2:]) == 2
    assert "no video file" in capsys.readouterr().err
    assert not _pngs(tmp_path / "o")


def test_live_help_says_what_it_writes():
    sub = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
               if a[0] == "live")[1]
    text = sub.format_help()
    for says in ("top5.csv", "frame_00000.png", "--fps", "--max-frames", "convscope[video]",
                 "cs.features.play"):
        assert says in text, says
