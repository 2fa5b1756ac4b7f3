"""Tests of convscope.training: fit, evaluate, callbacks and the demo configuration."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from convscope.data import Shapes
from convscope.errors import InputError, ModelError
from convscope.training import (
    DemoConfig,
    as_tensors,
    auto_threads,
    evaluate,
    fit,
    train_demo,
)
from convscope.zoo import resnet


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny models on a shared 2-core machine run faster (and steadier) on one thread
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model(num_classes: int = 4, width: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return resnet(num_classes=num_classes, width=width)


@pytest.mark.slow
def test_tiny_fit_lowers_the_loss_and_beats_chance():
    train = Shapes(n=600, num_classes=4, split="train")
    test = Shapes(n=200, num_classes=4, split="test")
    model = _model(4, width=8)
    hist = fit(model, train, test, epochs=6, batch_size=32, lr=3e-3, quiet=True, num_threads=1)
    first, last = hist.loss[:5], hist.loss[-5:]
    assert sum(last) / 5 < 0.6 * sum(first) / 5
    # chance is 0.25 on 4 balanced classes; 200 test images give a binomial sd of 0.031
    assert hist.test_acc is not None and hist.test_acc >= 0.33
    assert hist.epochs[-1]["train_acc"] > 0.7
    assert not model.training  # left in eval mode


def test_callbacks_are_called_once_per_step_and_epoch():
    data = Shapes(n=100, size=16, num_classes=3)  # 100 = 3 * 32 + 4: four steps per epoch
    steps, epochs = [], []
    hist = fit(
        _model(3), data, Shapes(n=20, size=16, num_classes=3, split="test"), epochs=2,
        batch_size=32, lr=1e-3, quiet=True,
        on_step=lambda s, m: steps.append((s, m)),
        on_epoch=lambda e, s, m: epochs.append((e, s, m)),
    )
    assert [s for s, _ in steps] == list(range(1, 9))
    assert all(set(m) == {"loss", "acc", "lr"} for _, m in steps)
    assert [(e, s) for e, s, _ in epochs] == [(1, 4), (2, 8)]
    assert {"test_acc", "test_loss", "train_loss", "train_acc"} <= set(epochs[0][2])
    assert len(hist.steps) == 8 and len(hist.epochs) == 2
    assert hist.epochs[1]["test_acc"] == epochs[1][2]["test_acc"]
    # a last batch of one image is dropped (batch norm cannot train on it): 97 = 3 * 32 + 1
    count = []
    fit(_model(3), Shapes(n=97, size=16, num_classes=3), epochs=1, batch_size=32, quiet=True,
        on_step=lambda s, m: count.append(s))
    assert count == [1, 2, 3]


def test_one_cycle_schedule_warms_up_then_decays():
    lrs = []
    fit(_model(), Shapes(n=64, size=16, num_classes=4), epochs=5, batch_size=16, lr=0.01,
        quiet=True, on_step=lambda s, m: lrs.append(m["lr"]))
    assert len(lrs) == 20
    assert lrs[0] == pytest.approx(0.01 / 25)
    peak = max(range(20), key=lambda i: lrs[i])
    assert 3 <= peak <= 6 and lrs[peak] == pytest.approx(0.01, rel=0.05)
    assert lrs[-1] < 0.01 / 25
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:], strict=False))


def test_evaluate_matches_a_brute_force_computation():
    model = _model(4).eval()
    data = Shapes(n=50, size=16, num_classes=4, split="test")
    x, y, _ = data.tensors()
    model.train()
    res = evaluate(model, data, batch_size=16, return_predictions=True)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + 1]) for i in range(50)])
    assert res["n"] == 50
    assert res["acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert res["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert torch.equal(res["predictions"], logits.argmax(1))
    assert torch.equal(res["correct"], logits.argmax(1) == y)


def test_as_tensors_accepts_datasets_tuples_and_plain_datasets():
    ds = Shapes(n=12, size=16)
    x, y, _ = ds.tensors()
    for data in (ds, (x, y), torch.utils.data.TensorDataset(x, y),
                 torch.utils.data.Subset(ds, range(12))):
        xa, ya = as_tensors(data)
        assert torch.equal(xa, x) and torch.equal(ya, y)
    with pytest.raises(InputError, match="not a data set"):
        as_tensors(42)
    with pytest.raises(InputError, match="labels must be"):
        as_tensors((x, y[:5]))


def test_eval_every_reports_per_image_results():
    seen = []
    fit(_model(3), Shapes(n=64, size=16, num_classes=3), Shapes(n=10, size=16, num_classes=3,
        split="test"), epochs=2, batch_size=16, quiet=True, eval_every=3,
        on_eval=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == [3, 6]  # 8 steps in all
    assert seen[0][1]["predictions"].shape == (10,) and seen[0][1]["correct"].dtype == torch.bool
    assert seen[0][1]["test_acc"] == pytest.approx(float(seen[0][1]["correct"].float().mean()))


def test_fit_rejects_bad_arguments():
    ds = Shapes(n=8, size=16)
    with pytest.raises(InputError, match="epochs"):
        fit(_model(), ds, epochs=0)
    with pytest.raises(InputError, match="optimizer"):
        fit(_model(), ds, epochs=1, optimizer="adam")
    with pytest.raises(ModelError, match="nn.Module"):
        fit("resnet", ds, epochs=1)


def test_num_threads_is_restored_and_sgd_works():
    before = torch.get_num_threads()
    hist = fit(_model(), Shapes(n=32, size=16, num_classes=4), epochs=1, batch_size=16,
               optimizer="sgd", lr=0.05, num_threads=2, quiet=True)
    assert before == 1  # set by the fixture
    assert hist.num_threads == 2 and torch.get_num_threads() == before
    assert all(torch.isfinite(torch.tensor(hist.loss)))
    assert 1 <= auto_threads() <= len(os.sched_getaffinity(0))


def test_small_demo_runs_end_to_end():
    cfg = DemoConfig.small()
    assert cfg.epochs == 1 and cfg.n_train < 1000
    json.dumps(cfg.to_dict())
    epochs = []
    res = train_demo(cfg, quiet=True, on_epoch=lambda e, s, m: epochs.append(e))
    assert epochs == [1]
    assert res.test_images.shape == (cfg.n_test, 3, 32, 32)
    assert res.test_masks.shape == (cfg.n_test, 32, 32) and res.test_labels.shape == (cfg.n_test,)
    assert res.history.test_acc is not None and 0.0 <= res.history.test_acc <= 1.0
    assert res.model(res.test_images[:2]).shape == (2, 10)
    # the model is deterministic given the config seed, and the global RNG is untouched
    state = torch.random.get_rng_state()
    a, b = cfg.make_model(), cfg.make_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_default_demo_config_is_the_documented_one():
    cfg = DemoConfig()
    train, test = cfg.make_data()
    assert len(test) >= 2000 and train.split == "train" and test.split == "test"
    assert train.size == 32 and cfg.make_model().fc.out_features == 10
