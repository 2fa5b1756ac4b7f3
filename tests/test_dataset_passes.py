"""Whole-data-set passes in one process: attribution over a data set in batches, diagnosis with
mergeable statistics, and the shared batch iterator. The sharded (torchrun) versions are tested
against these in test_distributed.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

import convscope as cs
from convscope.diagnose import (
    accumulate_outputs,
    cosine_distances,
    diagnose_dataset,
    merge_outputs,
)
from convscope.diagnose.cluster import gram_distances
from convscope.errors import InputError
from convscope.explain import attribute_all
from convscope.explain.dataset import unit_scale
from convscope.nn import iter_batches


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )
    with torch.no_grad():  # channel 2 of the first conv is dead on every input
        net[0].weight[2].zero_()
        net[0].bias[2] = -1.0
    return net.eval()


def _images(n: int = 45, seed: int = 1) -> torch.Tensor:
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    x[::3, :, :6] = 0.0  # flat bands: near-zero values, maps that do not vary
    return x


NUMBERS = ("dead_fraction", "dead_map_fraction", "near_zero_share", "mean", "std", "rms",
           "absmax", "saturation", "merge_median", "merge_iqr", "merge_q10", "merge_q90",
           "input_similarity", "zero_share", "skewness", "excess_kurtosis", "active_kurtosis")


# -- diagnosis over a data set -----------------------------------------------------------------

def test_diagnose_dataset_in_batches_equals_diagnose_of_one_big_batch():
    net, x = _net(), _images()
    whole = cs.diagnose(net, x, quiet=True)  # oracle: every image in one batch
    streamed = diagnose_dataset(net, x, batch_size=7, quiet=True)
    assert [s.name for s in streamed.layers] == [s.name for s in whole.layers]
    for a, b in zip(streamed.layers, whole.layers, strict=True):
        assert a.shape == b.shape and a.values == b.values and a.abstraction == b.abstraction
        for key in NUMBERS:
            va, vb = getattr(a, key), getattr(b, key)
            if vb is None:
                assert va is None, (a.name, key)
            else:  # float32 one-batch clustering against the float64 Gram matrix
                assert va == pytest.approx(vb, rel=1e-5, abs=1e-5), (a.name, key)
    assert [(f.code, f.layer) for f in streamed.findings] == \
        [(f.code, f.layer) for f in whole.findings]
    assert [s.name for s in streamed.layers] == ["1", "3", "6"]  # ReLU, Tanh, the head
    assert streamed.layers[0].dead_fraction == pytest.approx(1 / 6)  # the dead channel
    assert streamed.layers[1].saturation is not None  # Tanh
    assert streamed.layers[0].abstraction == "low" and streamed.layers[0].input_similarity
    assert streamed.meta["items"] == 45


def test_statistics_of_two_halves_merge_to_those_of_the_whole():
    net, x = _net(), _images()
    whole = accumulate_outputs(net, x, batch_size=9, quiet=True)
    a = accumulate_outputs(net, x[:18], batch_size=9, quiet=True, example=x[:9])
    b = accumulate_outputs(net, x[18:], batch_size=9, quiet=True, example=x[:9])
    merged = merge_outputs([a, b])
    for name, m in whole.items():
        g = merged[name]
        assert (g.values, g.finite, g.near_zero, g.dead_maps, g.maps, g.saturated) == \
            (m.values, m.finite, m.near_zero, m.dead_maps, m.maps, m.saturated)
        assert g.shape == m.shape and g.shape[0] == 45
        assert torch.equal(g.alive, m.alive) and g.absmax == m.absmax
        assert g.s1 == pytest.approx(m.s1, rel=1e-12) and g.s2 == pytest.approx(m.s2, rel=1e-12)
        torch.testing.assert_close(g.gram, m.gram, rtol=1e-12, atol=1e-9)
        if m.psums is not None:  # the distribution's power sums, about the same shift
            assert g.shift == m.shift and g.n0 == m.n0
            assert g.psums == pytest.approx(m.psums, rel=1e-9, abs=1e-9)
            assert g.isums == pytest.approx(m.isums, rel=1e-9, abs=1e-9)
        if m.dkeys is not None:  # b ranked from 0: its sample keys differ from the whole's
            assert not torch.equal(g.dkeys, m.dkeys)
    # with each share's place in the data set, the channel-distance sample is the whole's
    b = accumulate_outputs(net, x[18:], batch_size=9, quiet=True, example=x[:9], offset=18)
    merged = merge_outputs([a, b])
    for name, m in whole.items():
        if m.dkeys is not None:
            assert torch.equal(merged[name].dkeys, m.dkeys)
            assert torch.equal(merged[name].drows, m.drows)


def test_channel_distance_of_a_dataset_is_that_of_its_keyed_sample_by_brute_force():
    from convscope.diagnose.dataset import DISTANCE_VALUES, position_keys
    from convscope.diagnose.stats import quantile_distance

    net, x = _net(), _images(90)
    report = diagnose_dataset(net, x, batch_size=11, quiet=True)
    with torch.no_grad():
        out = cs.model.capture(net, x, "3")["3"]  # the Tanh: [90, 8, 8, 8], all channels live
    n, c, h, w = out.shape
    values = out.transpose(0, 1).reshape(c, -1)  # [C, N * P], item-major as the keys
    keys = position_keys(torch.arange(n), h * w)
    pick = torch.argsort(keys, stable=True)[:DISTANCE_VALUES]  # the data set's smallest keys
    want = quantile_distance(values[:, pick])
    got = report.layer("3").channel_distance
    assert want is not None and got == pytest.approx(want, rel=1e-6)
    # the sample spreads over the data set: every image contributes positions
    assert len(set((pick // (h * w)).tolist())) == n
    # and a different batching or a two-share split gives the same number
    again = diagnose_dataset(net, x, batch_size=64, quiet=True).layer("3").channel_distance
    assert again == pytest.approx(got, rel=1e-9)


def test_gram_distances_equal_the_cosine_distances_of_the_stacked_vectors():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(7, 300, generator=g, dtype=torch.float64)
    v[3] = 0.0  # a dead channel: distance 2 from every other
    chunks = v.split(100, dim=1)
    gram = sum(c @ c.T for c in chunks)  # accumulated over three "batches"
    d, n_dead = gram_distances(gram)
    assert n_dead == 1
    torch.testing.assert_close(d, cosine_distances(v), rtol=0, atol=1e-12)
    assert float(d[3, 0]) == 2.0 and float(d[3, 3]) == 0.0


def test_merge_refuses_different_outputs():
    net, x = _net(), _images(10)
    a = accumulate_outputs(net, x, quiet=True)
    with pytest.raises(InputError):
        merge_outputs([a, {k: v for k, v in list(a.items())[:1]}])
    with pytest.raises(InputError):
        merge_outputs([{}, {}])


# -- attribution over a data set ---------------------------------------------------------------

def test_attribute_all_equals_the_methods_called_directly_and_ignores_batching():
    net, x = _net(), _images(20)
    res = attribute_all(net, x, methods=["saliency", "grad_cam", "score_cam"], layer="2",
                        batch_size=6, score_cam_batch_size=5, quiet=True)
    assert res.methods == ["saliency", "grad_cam", "score_cam"]
    assert res.indices.tolist() == list(range(20)) and (res.labels == -1).all()
    pred = net(x).argmax(1)
    assert torch.equal(res.pred, pred) and torch.equal(res.target, pred)
    sal = unit_scale(cs.explain.to_heatmap(cs.explain.saliency(net, x)))
    gc = unit_scale(cs.explain.grad_cam(net, x, layer="2"))
    torch.testing.assert_close(res.maps["saliency"], sal, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.maps["grad_cam"], gc, rtol=0, atol=1e-6)
    for m in res.maps.values():  # scaled to [0, 1] per image
        flat = m.reshape(20, -1)
        assert flat.min() >= 0 and flat.max() <= 1
    # the average-drop term by hand for image 0: softmax of pred on x and on x * map
    with torch.no_grad():
        y = torch.softmax(net(x[:1]), 1)[0, pred[0]]
        o = torch.softmax(net(x[:1] * res.maps["grad_cam"][:1, None]), 1)[0, pred[0]]
    assert float(res.drop["grad_cam"][0]) == pytest.approx(float((y - o).clamp(min=0) / y),
                                                           abs=1e-6)
    again = attribute_all(net, x, methods=["saliency", "grad_cam", "score_cam"], layer="2",
                          batch_size=64, score_cam_batch_size=5, quiet=True)
    for k in res.methods:
        torch.testing.assert_close(res.maps[k], again.maps[k], rtol=0, atol=1e-6)


def test_attribute_all_reads_labels_from_a_dataset_and_skips_methods_that_do_not_apply():
    torch.manual_seed(0)
    no_gap = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 16 * 16, 3)).eval()
    x = _images(10)
    data = Subset(TensorDataset(x, torch.arange(10) % 3), range(2, 10))
    res = attribute_all(no_gap, data, methods=["cam", "grad_cam"], batch_size=3, quiet=True)
    assert res.indices.tolist() == list(range(2, 10))  # the parent's indices
    assert res.labels.tolist() == [i % 3 for i in range(2, 10)]
    assert res.methods == ["grad_cam"] and "cam" in res.skipped
    with pytest.raises(InputError):
        attribute_all(no_gap, x, methods=["bogus"])
    with pytest.raises(InputError):
        attribute_all(no_gap, x, labels=[1, 2])


def test_log_attributions_over_a_dataset_and_log_diagnosis_over_a_loader(tmp_path):
    net, x = _net(), _images(30)
    data = TensorDataset(x, torch.arange(30) % 4)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        maps = run.log_attributions(net, data, methods=["saliency", "grad_cam"], layer="2",
                                    batch_size=8, key="val")
        report = run.log_diagnosis(net, DataLoader(data, batch_size=8), key="val")
    assert maps["grad_cam"].shape == (30, 16, 16)
    reader = cs.open_run(tmp_path / "r")
    meta = reader.object("attributions", "val")
    assert meta["n"] == 30 and meta["labels"] == [i % 4 for i in range(30)]
    np.testing.assert_allclose(reader.array("attr_images", "val"), x.numpy(), atol=1e-3)
    assert len(reader.table("attribution_metrics")) == 60
    stored = reader.object("diagnosis", "val")
    assert stored["meta"]["items"] == 30 == report.meta["items"]
    assert stored["meta"]["views_from"] == "the first 8 images"


# -- batches -----------------------------------------------------------------------------------

def test_iter_batches_over_tensors_datasets_dicts_and_loaders():
    x = torch.rand(10, 3, 4, 4)
    y = torch.arange(10)
    (idx, xb, lb), = list(iter_batches(x[:4], 8)[0])
    assert idx.tolist() == [0, 1, 2, 3] and lb is None and torch.equal(xb, x[:4])

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"image": x[i], "label": int(y[i])}

    batches, total = iter_batches(Dicts(), 4, offset=100)
    got = list(batches)
    assert total == 10 and [len(b[0]) for b in got] == [4, 4, 2]
    assert torch.cat([b[0] for b in got]).tolist() == list(range(100, 110))
    assert torch.cat([b[2] for b in got]).tolist() == y.tolist()
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    batches, total = iter_batches(loader, 999)
    got = list(batches)
    assert total == 10 and torch.equal(torch.cat([b[1] for b in got]), x)
    assert torch.cat([b[2] for b in got]).tolist() == y.tolist()
    with pytest.raises(InputError):
        iter_batches(x[0], 4)
    with pytest.raises(InputError):
        iter_batches(x, 0)


def test_cli_analyze_diagnosis_in_one_process_and_its_errors(tmp_path, capsys):
    from convscope.cli import main

    torch.manual_seed(0)
    with cs.Run(tmp_path, "m", quiet=True) as run:
        run.log_checkpoint(cs.zoo.resnet(width=4).eval())
    path = str(tmp_path / "m")
    assert main(["analyze", path, "--what", "top-examples"]) == 2
    assert "--layers" in capsys.readouterr().err
    assert main(["analyze", path, "--what", "bogus"]) == 2
    assert "attributions, diagnosis" in capsys.readouterr().err
    assert main(["analyze", path, "--what", "diagnosis", "--images", "40", "--key", "cli",
                 "--quiet"]) == 0
    assert "stored diagnosis in" in capsys.readouterr().out
    rep = cs.open_run(path).object("diagnosis", "cli")
    assert rep["meta"]["items"] == 40 and rep["layers"]


def test_log_attributions_from_a_shuffling_loader_keeps_images_and_maps_together(tmp_path):
    net, x = _net(), _images(24)
    loader = DataLoader(TensorDataset(x, torch.arange(24) % 4), batch_size=5, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    with cs.Run(tmp_path, "r", quiet=True) as run:
        maps = run.log_attributions(net, loader, methods=["saliency"], key="shuffled")
    reader = cs.open_run(tmp_path / "r")
    stored = torch.as_tensor(reader.array("attr_images", "shuffled").astype(np.float32))
    meta = reader.object("attributions", "shuffled")
    # read twice, a shuffling loader gives another order: the stored images must be the ones
    # that were explained, so the model's predictions and saliency maps on them match
    with torch.no_grad():
        assert net(stored).argmax(1).tolist() == meta["pred"]
    again = unit_scale(cs.explain.to_heatmap(cs.explain.saliency(net, stored)))
    torch.testing.assert_close(maps["saliency"], again, rtol=0, atol=2e-3)  # float16 images
    # each stored image is one of the data set's (to float16 rounding), with its own label
    which = torch.cdist(stored.flatten(1), x.flatten(1)).argmin(1)
    assert sorted(which.tolist()) == list(range(24))
    assert meta["labels"] == (which % 4).tolist()
