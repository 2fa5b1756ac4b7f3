"""``convscope experiment resnet50-cifar10`` end to end on a small CIFAR-format data set written
here (python-pickle batches, 60 images per class in all), and the pieces it is made of.

Oracles: the split's class counts and disjointness computed by hand; the bottleneck ResNet-50's
parameter count against torchvision's resnet50 with a 10-class head (the same blocks; the only
difference is the 3x3 stem instead of 7x7); the augmentation against a per-pixel loop; the
run's contents against what the paper shows.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import convscope as cs
from convscope.experiments.resnet50_cifar10 import STEM_LAYERS, conv_layers, paper_split, shift_flip
from convscope.formats import embedding as emb_format
from convscope.formats import feature_maps as fm_format
from convscope.formats import preferred_inputs as pi_format
from convscope.zoo import resnet50_cifar


def _write_cifar(root, per_batch: int = 10):
    """5 training batches and a test batch of ``per_batch`` images per class each: 60 per class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels = np.repeat(np.arange(10), per_batch)
        data = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        data[:, :1024] = (labels[:, None] * 25).astype(np.uint8)  # red plane tells the class
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, fh)
    return root


def test_paper_split():
    labels = torch.arange(10).repeat_interleave(60)
    images = torch.arange(600, dtype=torch.float32)[:, None, None, None].expand(600, 3, 2, 2)
    (xtr, ytr), (xte, yte) = paper_split(images, labels, test_per_class=7, seed=3)
    assert torch.bincount(yte).tolist() == [7] * 10 and torch.bincount(ytr).tolist() == [53] * 10
    ids_tr, ids_te = set(xtr[:, 0, 0, 0].long().tolist()), set(xte[:, 0, 0, 0].long().tolist())
    assert not ids_tr & ids_te and len(ids_tr | ids_te) == 600
    assert all(int(labels[i]) == int(y) for i, y in zip(xte[:, 0, 0, 0].long(), yte, strict=True))
    assert ytr[:20].tolist() != sorted(ytr[:20].tolist())  # the training set is shuffled
    with pytest.raises(cs.errors.InputError, match="test-per-class"):
        paper_split(images, labels, test_per_class=60)


def test_bottleneck_resnet50_has_resnet50s_blocks():
    ours = resnet50_cifar(num_classes=10)
    tv = torchvision.models.resnet50(weights=None, num_classes=10)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_tv = sum(p.numel() for p in tv.parameters())
    assert n_tv - n_ours == 64 * 3 * (7 * 7 - 3 * 3)  # only the stem's kernel differs
    assert [len(getattr(ours, f"layer{k}")) for k in range(1, 5)] == [3, 4, 6, 3]
    out = {}
    for n in ("maxpool", "layer1", "layer2", "layer3", "layer4"):
        getattr(ours, n).register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.shape))
    assert ours(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert out["maxpool"][-1] == 16 and out["layer4"][1:] == (2048, 2, 2)


def test_shift_flip_against_a_pixel_loop():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 8, 8)
    got = shift_flip(x, pad=2, generator=torch.Generator().manual_seed(5))
    dy, dx = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    for i in range(6):
        for r in range(8):
            for c in range(8):
                cc = 7 - c if flip[i] else c
                sy, sx = r + int(dy[i]) - 2, cc + int(dx[i]) - 2
                want = x[i, :, sy, sx] if 0 <= sy < 8 and 0 <= sx < 8 else torch.zeros(3)
                assert torch.equal(got[i, :, r, c], want)


def test_experiment_runs_end_to_end_and_records_the_papers_views(tmp_path):
    data = _write_cifar(tmp_path / "data")
    logdir = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "convscope", "experiment", "resnet50-cifar10", "--data", str(data),
         "--logdir", str(logdir), "--name", "r50", "--epochs", "1", "--batch-size", "32",
         "--test-per-class", "5", "--limit-train", "96", "--units", "2", "--steps", "2",
         "--profile-images", "2", "--profile-repeat", "1", "--quiet"],
        capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = cs.open_run(logdir / "r50")
    cfg = reader.config
    assert cfg["n_train"] == 96 and cfg["n_test"] == 50 and cfg["experiment"] == "resnet50-cifar10"
    assert reader.meta["status"] == "ended"
    # training scalars and the test accuracy of the epoch
    df = reader.scalars()
    assert df["train/loss"].notna().sum() == 3 and df["test/acc"].notna().sum() == 1
    # the stem's stages and stage 4's blocks have feature maps of the 10 sample images
    layers = fm_format.layers(reader)
    assert set(STEM_LAYERS) <= set(layers)
    assert {"layer4", "layer4.0", "layer4.1", "layer4.2"} <= set(layers)
    # input preference of every conv layer of stages 1 and 4
    model = resnet50_cifar()
    want = conv_layers(model)
    assert len(want) == 3 * 3 + 1 + 3 * 3 + 1  # 3 blocks x 3 convs + a shortcut conv, per stage
    assert sorted(pi_format.layers(reader)) == sorted(want)
    # 3-D PCA of the test set and the structure + profile behind the rings
    assert emb_format.names(reader) == ["penultimate (fc input)"]
    assert len(emb_format.frame(reader, "penultimate (fc input)")) == 50
    assert reader.has_table("profile")
    # the saved model rebuilds without unpickling and gives the trained network's outputs
    from convscope.formats import checkpoints as ck

    assert ck.form(reader, "model") == "rebuild"


def test_cli_experiments_need_their_data_and_run_the_dcgan_rounds(tmp_path):
    """``convscope experiment resnet50-cifar10`` without --data says what to pass; ``dcgan``
    runs its three rounds on procedural faces, each its own run."""
    bad = subprocess.run([sys.executable, "-m", "convscope", "experiment", "resnet50-cifar10",
                          "--logdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "needs --data" in bad.stderr and "Traceback" not in bad.stderr
    out = subprocess.run([sys.executable, "-m", "convscope", "experiment", "dcgan", "--logdir",
                          str(tmp_path), "--gan-steps", "2", "--image-size", "40",
                          "--batch-size", "8", "--sample-every", "1", "--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == ["dcgan-g1d1", "dcgan-g2d1", "dcgan-g2d3"]
    for n in names:
        assert f"recorded {tmp_path / n}" in out.stdout
        assert cs.open_run(tmp_path / n).meta["status"] == "ended"
