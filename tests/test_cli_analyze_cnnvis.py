"""``convscope analyze --what cnnvis`` (CNNVis, Liu et al. 2017): on a small saved run it records
the view ``run.log_cnnvis`` records from Python with the same model and images (the oracle: a
direct call on a fresh run), read back through ``formats.cnnvis``; its options reach the call;
bad values fail before the model is loaded, saying what to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import convscope as cs
from convscope.cli import main
from convscope.formats import cnnvis as fmt

CHAIN = ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = cs.zoo.resnet(width=4).eval()
    with cs.Run(tmp_path, "saved", quiet=True) as run:
        run.log_checkpoint(model)
    return tmp_path / "saved"


def _oracle(tmp_path, path, **options):
    """What run.log_cnnvis stores when called directly on the saved model and the same images."""
    model = cs.open_run(path).load_model()
    x, y, _ = cs.data.Shapes(n=24, split="test").tensors()
    with cs.Run(tmp_path / "oracle", "o", quiet=True) as run:
        run.log_cnnvis(model, TensorDataset(x, y), **options)
    return fmt.load(cs.open_run(run.path), options.get("key") or fmt.DEFAULT_KEY)


def test_analyze_cnnvis_records_what_log_cnnvis_records(saved, tmp_path, capsys):
    assert main(["analyze", str(saved), "--what", "cnnvis", "--images", "24", "--clusters",
                 "3", "--quiet"]) == 0
    assert "stored cnnvis in" in capsys.readouterr().out
    got = fmt.load(cs.open_run(saved))
    want = _oracle(tmp_path, saved, clusters=3)
    # the default chain (the first 5 convolutions after the stem), described per class
    assert got.layers == want.layers and len(got.layers) == 5
    assert got.by == want.by == "class" and got.n_images == 24
    for layer in got.layers:
        assert got.clusters[layer].n_clusters == 3
        np.testing.assert_array_equal(got.clusters[layer].labels, want.clusters[layer].labels)
        np.testing.assert_allclose(got.descriptors[layer], want.descriptors[layer], rtol=1e-5,
                                   atol=1e-6)
    for a, b in zip(got.pairs, want.pairs, strict=True):
        assert (a.source, a.target, a.method) == (b.source, b.target, b.method)
        np.testing.assert_allclose(a.influence, b.influence, rtol=1e-3, atol=1e-6)


def test_analyze_cnnvis_options_reach_the_call(saved, tmp_path):
    assert main(["analyze", str(saved), "--what", "cnnvis", "--layers", ",".join(CHAIN),
                 "--images", "24", "--clusters", "layer1.0.conv1=2,layer2.0.conv1=auto",
                 "--cnnvis-by", "image", "--influence", "gradient", "--influence-images", "2",
                 "--key", "mine", "--quiet"]) == 0
    got = fmt.load(cs.open_run(saved), "mine")
    want = _oracle(tmp_path, saved, layers=CHAIN, key="mine", by="image",
                   influence="gradient", influence_images=2,
                   clusters={"layer1.0.conv1": 2, "layer2.0.conv1": None})
    assert got.layers == CHAIN and got.by == "image" and got.n_images == 24
    assert got.clusters["layer1.0.conv1"].n_clusters == 2
    assert {p.method for p in got.pairs} == {"gradient"}
    for layer in CHAIN:
        assert got.clusters[layer].requested == want.clusters[layer].requested
        np.testing.assert_array_equal(got.clusters[layer].labels, want.clusters[layer].labels)
    for a, b in zip(got.pairs, want.pairs, strict=True):
        np.testing.assert_allclose(a.influence, b.influence, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("value", ["0", "-2", "many", "layer1.0.conv1=", "=3", "3.5"])
def test_a_bad_cluster_count_fails_before_the_model_is_loaded(saved, capsys, monkeypatch,
                                                              value):
    cls = type(cs.open_run(saved))
    loaded = []
    real = cls.load_model
    monkeypatch.setattr(cls, "load_model",
                        lambda self, *a, **k: loaded.append(1) or real(self, *a, **k))
    assert main(["analyze", str(saved), "--what", "cnnvis", "--clusters", value]) == 2
    err = capsys.readouterr().err
    assert "--clusters takes 'auto', a count >= 1 or LAYER=N pairs" in err and not loaded
    assert not fmt.keys(cs.open_run(saved))


def test_the_help_names_cnnvis_and_its_options(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("cnnvis (CNNVis, Liu et al. 2017", "--clusters", "--cnnvis-by",
                  "--influence", "--influence-images"):
        assert words in out
