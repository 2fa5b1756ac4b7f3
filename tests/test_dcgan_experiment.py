"""Wang & Li (2020)'s DCGAN story end to end (convscope.experiments.dcgan) on a short CPU run:
each round its own run with losses, generated image grids, diagnosis reports and views, and the
paper's direction (dead FC outputs in generator v1, gone in v2; low diversity in discriminator
v1's conv layers, gone in v3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.errors import InputError
from convscope.experiments import EXPERIMENTS
from convscope.experiments.dcgan import grid_key, image_grid, run_experiment, run_names
from convscope.formats import diagnosis as fdiag
from convscope.formats import scalars as fscalars
from convscope.formats.feature_maps import SAMPLES_KIND

STEPS = 150


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """The three rounds at 40 x 40 (the architectures need a multiple of 8; 160 costs ~5 s a
    step here), batch 32, 150 steps each: about 30 s in all on one core."""
    logdir = tmp_path_factory.mktemp("dcgan")
    with torch.random.fork_rng(devices=[]):
        paths = run_experiment(logdir, steps=STEPS, batch_size=32, image_size=40,
                               sample_every=50, images=512, num_threads=1, quiet=True)
    return paths


def _warnings(run_path, key):
    f = fdiag.load(cs.open_run(run_path), key).findings
    return {(c, lay) for c, lay, s in zip(f.code, f.layer, f.severity, strict=True)
            if s != "note"}


def test_each_round_is_its_own_run_with_losses_grids_and_checkpoints(short_runs):
    assert [p.name for p in short_runs] == run_names("dcgan") == [
        "dcgan-g1d1", "dcgan-g2d1", "dcgan-g2d3"]
    assert EXPERIMENTS["dcgan"] == "dcgan:run_experiment"
    for path, (gv, dv) in zip(short_runs, [(1, 1), (2, 1), (2, 3)], strict=True):
        r = cs.open_run(path)
        assert (r.config["generator_version"], r.config["discriminator_version"]) == (gv, dv)
        w = fscalars.wide(r, ["loss/d", "loss/g", "d/real", "d/fake"])
        assert len(w) == STEPS and w["loss/d"].notna().all() and w["loss/g"].notna().all()
        assert ((w["d/real"] > 0) & (w["d/real"] < 1)).all()
        idx = r.arrays(SAMPLES_KIND)
        keys = sorted(idx["key"])
        assert keys == [grid_key(s) for s in (0, 50, 100, 150)]
        first, last = r.array(SAMPLES_KIND, grid_key(0)), r.array(SAMPLES_KIND, grid_key(STEPS))
        assert first.shape == last.shape == (1, 3, 160, 160)  # 4 x 4 tiles of 40 x 40
        assert 0.0 <= float(last.min()) and float(last.max()) <= 1.0
        assert not np.array_equal(first, last)  # training changed what the generator draws
        gen, disc = r.load_model("generator"), r.load_model("discriminator")
        assert (gen.version, disc.version, gen.latent_dim, gen.output) == (gv, dv, 256, "relu")
        assert gen(torch.randn(2, 256)).shape == (2, 3, 40, 40)


def test_the_papers_layer_views_are_stored(short_runs):
    r = cs.open_run(short_runs[0])
    assert set(fdiag.keys(r)) == {"generator", "discriminator"}
    layers = set(fdiag.view_layers(r))
    # generator v1 layers 3-5 (the transposed convolutions: outputs after their ReLUs relu3-5,
    # parameters deconv1-3) and its FC 1-2 outputs (relu1, relu2); discriminator layers 1-3
    # outputs and parameters (conv1-3, FC 160 = fc1)
    assert {"deconv1", "deconv2", "deconv3", "relu1", "relu2", "relu3", "relu4", "relu5"} <= layers
    assert {"lrelu1", "lrelu2", "lrelu3", "conv1", "conv2", "conv3", "fc1"} <= layers
    assert fdiag.output_view(r, "relu2").meta["key"] == "generator"
    assert fdiag.output_view(r, "relu5").data.ndim == 4  # maps
    assert fdiag.output_view(r, "relu1").data.ndim == 2  # FC features
    assert fdiag.param_view(r, fdiag.param_view_for(r, "deconv3")).meta["key"] == "generator"
    assert fdiag.param_view(r, fdiag.param_view_for(r, "conv2")).meta["key"] == "discriminator"


def test_the_papers_direction_on_a_short_run(short_runs):
    g1, g2, g2b = (_warnings(p, "generator") for p in short_runs)
    d1, d1b, d3 = (_warnings(p, "discriminator") for p in short_runs)
    # generator v1: its two ReLU FC layers leave dead outputs; v2 (one FC layer) has none
    assert {lay for c, lay in g1 if c == "dead-maps"} & {"relu1", "relu2"}
    assert not {c for c, _ in g2 | g2b} & {"dead-maps"}
    # discriminator v1: conv layers 1-3 extract features of little diversity; v3 (batch norm)
    # has no low-diversity finding on them
    convs = {"lrelu1", "lrelu2", "lrelu3"}
    assert {lay for c, lay in d1 | d1b if c == "low-diversity"} & convs
    assert not {lay for c, lay in d3 if c == "low-diversity"} & convs


def test_numbers_behind_the_direction(short_runs):
    """The per-layer numbers agree with the findings (an oracle independent of the rules:
    dead fraction from the stored layer table, merge heights of the channel trees)."""
    def layer_table(path, key):
        return fdiag.load(cs.open_run(path), key).layers.set_index("name")
    g1, g2 = layer_table(short_runs[0], "generator"), layer_table(short_runs[1], "generator")
    assert float(g1.loc["relu2", "dead_fraction"]) > 0.25
    assert float(g2["dead_fraction"].max()) == 0.0
    d1, d3 = layer_table(short_runs[0], "discriminator"), layer_table(short_runs[2], "discriminator")
    convs = ["lrelu1", "lrelu2", "lrelu3"]
    assert float(d1.loc[convs, "merge_median"].min()) < 0.05 <= float(
        d3.loc[convs, "merge_median"].min())


def test_celeba_folder_data_and_bad_arguments(tmp_path):
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(
            folder / f"{i + 1:06d}.jpg")
    (p,) = run_experiment(tmp_path / "runs", data=tmp_path / "celeba", name="celeb",
                          versions=[(2, 3)], steps=2, batch_size=4, image_size=16,
                          sample_every=1, diagnose_images=4, quiet=True)
    r = cs.open_run(p)
    assert p.name == "celeb-g2d3" and r.config["data"].endswith("celeba")
    assert sorted(r.arrays(SAMPLES_KIND)["key"]) == [grid_key(s) for s in (0, 1, 2)]
    assert set(fdiag.keys(r)) == {"generator", "discriminator"}
    with pytest.raises(InputError, match="not a folder"):
        run_experiment(tmp_path / "runs", data=tmp_path / "nowhere", quiet=True)
    with pytest.raises(InputError, match="steps"):
        run_experiment(tmp_path / "runs", steps=0, quiet=True)


def test_image_grid_by_hand():
    x = torch.full((5, 3, 2, 2), -1.0)
    x[1] = 1.0
    g = image_grid(x, nrow=2)
    assert g.shape == (1, 3, 6, 4)
    assert float(g[0, :, 0:2, 2:4].min()) == 1.0  # image 1: top right, white
    assert float(g[0, :, 0:2, 0:2].max()) == 0.0  # image 0: black
    assert float(g[0, :, 4:6, 2:4].abs().max()) == 0.0  # the missing sixth tile
