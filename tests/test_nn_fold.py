"""Batch norm folded into the convolution before it (``convscope.nn.fold_batchnorm``).

Oracles: a hand-computed 1 x 1 case, the unfolded model's own outputs on torchvision models with
randomised batch-norm statistics, a count of the conv -> batch-norm pairs made by walking the
model's modules, and Score-CAM's brute-force and unfolded maps.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from convscope.explain import cams
from convscope.nn import fold_batchnorm

from .test_explain import pearson


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def test_hand_computed_one_by_one():
    """conv w = 2 (no bias); bn mean 1, var 3, eps 1, gamma 4, beta 5:
    y = (2x - 1) / sqrt(3 + 1) * 4 + 5 = 4x + 3."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    bn = nn.BatchNorm2d(1, eps=1.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        bn.running_mean.fill_(1.0)
        bn.running_var.fill_(3.0)
        bn.weight.fill_(4.0)
        bn.bias.fill_(5.0)
    model = nn.Sequential(conv, bn).eval()
    folded, n = fold_batchnorm(model)
    assert n == 1
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    used = [m for m in convs if m is not conv]
    assert len(used) == 1
    assert float(used[0].weight.detach()) == pytest.approx(4.0) and float(used[0].bias.detach()) == pytest.approx(3.0)
    x = torch.tensor([[[[0.0, 1.0], [-2.0, 0.5]]]])
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), 4 * x + 3)
    # one call remains: the folded convolution (the batch norm is no longer called)
    assert [n.target for n in folded.graph.nodes if n.op == "call_module"] == ["_folded_0"]


def _pairs(model: nn.Module) -> int:
    """Conv -> batch norm pairs, by walking the module tree: torchvision's ResNets name them
    convN / bnN side by side (and downsample.0 / .1), its Conv2dNormActivation blocks hold them
    as [0] and [1]."""
    n = 0
    for mod in model.modules():
        kids = list(mod.children())
        for a, b in zip(kids, kids[1:], strict=False):
            n += isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d)
    return n


@pytest.mark.parametrize("arch,pairs", [("resnet18", 20), ("mobilenet_v3_small", 34),
                                        ("efficientnet_b0", 49)])
def test_torchvision_models_keep_their_function(arch, pairs):
    torch.manual_seed(0)
    model = _randomise_bn(getattr(torchvision.models, arch)(weights=None).eval())
    if arch == "resnet18":  # ResNet's modules are declared conv1, bn1, relu, conv2, bn2
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == pairs
    else:
        assert _pairs(model) == pairs
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        want = model(x)
        folded, n = fold_batchnorm(model)
        got = folded(x)
    assert n == pairs
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # the user's model is untouched: same values, its batch norms still in place
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), want)


class Branchy(nn.Module):
    """A convolution whose output feeds its batch norm and a skip: not foldable."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.c(x)
        return self.bn2(self.c2(self.bn(y) + y))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        if x.sum() > 0:  # symbolic tracing cannot follow this
            return self.bn(self.c(x))
        return self.c(x)


def test_only_safe_pairs_fold_and_refusals_return_the_model():
    m = _randomise_bn(Branchy().eval())
    folded, n = fold_batchnorm(m)
    assert n == 1  # c2 -> bn2 only: c's output has two users
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-5, atol=1e-5)
    for model in (DataDependent().eval(), Branchy().train(), Branchy().eval().half()):
        got, n = fold_batchnorm(model)
        assert got is model and n == 0
    hooked = Branchy().eval()
    handle = hooked.bn2.register_forward_hook(lambda *a: None)
    assert fold_batchnorm(hooked) == (hooked, 0)  # a folded pair's hook would never run
    handle.remove()
    assert fold_batchnorm(hooked)[1] == 1


def test_score_cam_folds_and_keeps_the_map(monkeypatch):
    """Exact Score-CAM on resnet18 at 32² (4 images x 64 channels = 256 masked passes): the
    passes run on the folded model, and the map equals the unfolded computation."""
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(weights=None).eval())
    with torch.no_grad():
        model.fc.weight.mul_(100.0)
    x = torch.randn(4, 3, 32, 32)
    got, info = cams.score_cam_info(model, x, target=[1, 5, 7, 9], layer="layer1", quiet=True)
    assert info.folded == 20 and info.mode == "exact"
    monkeypatch.setattr(cams, "SCORE_CAM_FOLD_PASSES", 10**9)
    plain, info0 = cams.score_cam_info(model, x, target=[1, 5, 7, 9], layer="layer1",
                                       quiet=True)
    assert info0.folded == 0
    assert (pearson(got, plain) >= 0.9999).all(), pearson(got, plain)
    assert float((got - plain).abs().max()) < 1e-3
