"""cs.explain.metrics against hand-computed values and brute-force loops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError
from convscope.explain import metrics


class RegionModel(nn.Module):
    """Two classes; logit of class 0 = 4 * mean of channel 0 inside the top-left 4x4 patch,
    class 1 logit = 0. So P(class 0) = sigmoid(4 * patch mean)."""

    def forward(self, x):
        s = 4 * x[:, 0, :4, :4].mean((1, 2))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_confidence_change_by_hand():
    model = RegionModel()
    x = torch.zeros(3, 1, 8, 8)
    x[:, 0, :4, :4] = 1.0  # patch mean 1 -> P = sigmoid(4)
    maps = torch.zeros(3, 8, 8)
    maps[0] = 1.0  # keeps everything
    maps[1, :4, :4] = 0.25  # scales the patch by 1/4 -> P = sigmoid(1)
    maps[2, 4:, 4:] = 1.0  # deletes the patch -> P = sigmoid(0)
    res = metrics.confidence_change(model, x, maps, target=0)
    y = _sigmoid(4)
    torch.testing.assert_close(res.original, torch.full((3,), y))
    expect_o = torch.tensor([y, _sigmoid(1), 0.5])
    torch.testing.assert_close(res.explained, expect_o)
    drops = (y - expect_o).clamp(min=0) / y
    torch.testing.assert_close(res.drop, drops)
    assert res.average_drop == pytest.approx(float(drops.mean()) * 100, rel=1e-5)
    assert res.increase_in_confidence == 0.0
    assert metrics.average_drop(model, x, maps, target=0) == pytest.approx(res.average_drop)
    # a map that doubles nothing but hides a negative patch raises the confidence
    x2 = x.clone()
    x2[:, 0, :2, :2] = -1.0
    up = torch.ones(3, 8, 8)
    up[:, :2, :2] = 0.0
    assert metrics.increase_in_confidence(model, x2, up, target=0) == 100.0
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        metrics.average_drop(model, x, maps * 3, target=0)


def _brute_curve(model, x, saliency, first, second, steps, cls):
    """One image, one step at a time, pixels ranked with Python's sort."""
    h, w = saliency.shape
    flat = saliency.flatten().tolist()
    order = sorted(range(h * w), key=lambda i: (-flat[i], i))
    out = []
    for s in range(steps + 1):
        n = round(s * h * w / steps)
        img = second.clone()
        for i in order[:n]:
            img[:, i // w, i % w] = first[:, i // w, i % w]
        with torch.no_grad():
            out.append(float(model(img[None]).softmax(1)[0, cls]))
    return out


def test_deletion_and_insertion_match_brute_force():
    torch.manual_seed(0)
    model = RegionModel()
    x = torch.rand(2, 1, 8, 8) + 0.5
    sal = torch.rand(2, 8, 8)
    sal[0, :4, :4] += 1.0  # image 0: a good map (the patch first)
    steps = 8
    dele = metrics.deletion(model, x, sal, target=0, steps=steps, baseline=0.0, batch_size=5, quiet=True)
    ins = metrics.insertion(model, x, sal, target=0, steps=steps, start=0.0, batch_size=7, quiet=True)
    for b in range(2):
        zero = torch.zeros_like(x[b])
        ref_del = _brute_curve(model, x[b], sal[b], zero, x[b], steps, 0)
        ref_ins = _brute_curve(model, x[b], sal[b], x[b], zero, steps, 0)
        torch.testing.assert_close(dele.scores[b], torch.tensor(ref_del))
        torch.testing.assert_close(ins.scores[b], torch.tensor(ref_ins))
        fr = [s / steps for s in range(steps + 1)]
        auc = sum((fr[i + 1] - fr[i]) * (ref_del[i] + ref_del[i + 1]) / 2 for i in range(steps))
        assert float(dele.auc[b]) == pytest.approx(auc, rel=1e-5)
    torch.testing.assert_close(dele.fractions, torch.linspace(0, 1, steps + 1))
    # the good map deletes the evidence first (lower AUC) and inserts it first (higher AUC)
    assert dele.auc[0] < dele.auc[1]
    assert ins.auc[0] > ins.auc[1]


def test_insertion_blur_canvas_keeps_mean_and_smooths():
    model = RegionModel()
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, ::2, ::2] = 1.0  # a checkerboard-like high-frequency pattern
    sal = torch.rand(1, 16, 16)
    res = metrics.insertion(model, x, sal, target=0, steps=4, quiet=True)
    blurred = metrics._gaussian_blur(x, 5.0)
    assert float(blurred.std()) < 0.1 * float(x.std())
    assert float(blurred.mean()) == pytest.approx(float(x.mean()), rel=0.05)
    expect0 = float(model(blurred).softmax(1)[0, 0])
    assert float(res.scores[0, 0]) == pytest.approx(expect0, rel=1e-5)
    assert float(res.scores[0, -1]) == pytest.approx(float(model(x).softmax(1)[0, 0]), rel=1e-5)


def test_pointing_game():
    maps = torch.zeros(3, 10, 10)
    masks = torch.zeros(3, 10, 10, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    maps[0, 3, 3] = 1.0  # inside
    maps[1, 8, 8] = 1.0  # far outside
    maps[2, 6, 4] = 1.0  # 2 pixels below the mask
    hits = metrics.pointing_game(maps, masks)
    assert hits.tolist() == [True, False, False]
    assert metrics.pointing_game(maps, masks, tolerance=2).tolist() == [True, False, True]
    assert metrics.pointing_game(maps, masks, tolerance=1.9).tolist() == [True, False, False]
    assert not metrics.pointing_game(maps[:1], torch.zeros(1, 10, 10)).item()  # empty mask
    with pytest.raises(InputError, match="shape"):
        metrics.pointing_game(maps, masks[:, :5])


def test_metrics_with_explain_maps_end_to_end():
    """The saliency of a model that looks at one patch points into that patch."""
    torch.manual_seed(1)

    class Patchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, 0, 1, 1] = 1.0
                self.conv.bias.zero_()

        def forward(self, x):
            a = torch.relu(self.conv(x))
            s = a[:, :, 2:5, 2:5].mean((1, 2, 3))
            return torch.stack([s, -s], 1)

    x = torch.rand(4, 1, 12, 12)
    maps = cs.explain.to_heatmap(cs.explain.saliency(Patchy(), x, target=0), normalize=True)
    masks = torch.zeros(4, 12, 12, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    assert metrics.pointing_game(maps, masks).all()
    assert not metrics.pointing_game(maps, ~masks).any()
    dele = metrics.deletion(Patchy(), x, maps, target=0, steps=4, quiet=True)
    torch.testing.assert_close(dele.scores[:, -1], torch.full((4,), 0.5))  # all deleted: s = 0
    with pytest.raises(InputError, match=r"\[B, H, W\]"):
        metrics.deletion(Patchy(), x, maps[:, :6], target=0, quiet=True)
