"""Score-CAM against pytorch-grad-cam, and its chunked scoring.

Small settings keep this fast: 32 x 32 inputs and early layers with 64 channels (4 images x 64
channels = 256 masked inputs per model).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import convscope as cs
from convscope.errors import InputError

TARGETS = [1, 5, 7, 9]


def pearson(a: torch.Tensor, b) -> torch.Tensor:
    b = torch.as_tensor(b)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def _peer(model, layer, x, targets):
    module = dict(model.named_modules())[layer]
    with ScoreCAM(model=model, target_layers=[module]) as extractor:
        extractor.batch_size = 64
        return extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.slow
@pytest.mark.parametrize("arch, layer", [("resnet18", "layer1"), ("vgg11", "features.2")])
def test_score_cam_matches_pytorch_grad_cam(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    head = model.fc if arch == "resnet18" else model.classifier[-1]
    with torch.no_grad():
        head.weight.mul_(100.0)  # O(1) score differences between masks: a sharp softmax
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    got = cs.explain.score_cam(model, x, target=TARGETS, layer=layer, batch_size=64, quiet=True)
    ref = _peer(model, layer, x, TARGETS)
    assert got.shape == (4, 32, 32)
    assert (torch.as_tensor(ref).flatten(1).std(1) > 0.05).all()
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)


class DeadChannels(nn.Module):
    """Half of the explained layer's channels are constant (all-zero masks)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.fc = nn.Linear(8, 6)
        with torch.no_grad():
            self.c1.weight[4:] = 0
            self.c1.bias[4:] = torch.tensor([0.0, 0.3, -1.0, 2.0])
            self.fc.weight.mul_(20)

    def forward(self, x):
        return self.fc(self.r1(self.c1(x)).mean((2, 3)))


def test_score_cam_constant_channels_and_chunking():
    torch.manual_seed(2)
    model = DeadChannels().eval()
    x = torch.randn(3, 3, 12, 12)
    ref = _peer(model, "r1", x, [0, 2, 5])
    maps = [
        cs.explain.score_cam(model, x, target=[0, 2, 5], layer="r1", batch_size=bs, quiet=True)
        for bs in (1, 5, 64)
    ]
    for m in maps[1:]:
        torch.testing.assert_close(m, maps[0], rtol=1e-5, atol=1e-6)
    assert (pearson(maps[0], ref) >= 0.999).all(), pearson(maps[0], ref)
    raw = cs.explain.score_cam(model, x, target=[0, 2, 5], layer="r1", normalize=False, quiet=True)
    assert raw.shape == (3, 12, 12) and float(raw.min()) > 0  # sum of positive weights * A >= 0


def test_score_cam_weights_are_softmax_of_masked_scores():
    """Brute force: one channel at a time, per image, each image with its own target (the
    constant channels' black-image score must use that image's class)."""
    torch.manual_seed(3)
    model = DeadChannels().eval()
    x = torch.randn(2, 3, 12, 12)
    targets = [3, 1]
    expect = []
    with torch.no_grad():
        for i, t in enumerate(targets):
            a = model.r1(model.c1(x[i : i + 1]))[0]  # [8, 12, 12]: input size, no upsampling
            scores = []
            for k in range(8):
                m = a[k]
                span = m.max() - m.min()
                mask = (m - m.min()) / span if span > 0 else torch.zeros_like(m)
                scores.append(model(x[i : i + 1] * mask)[0, t])
            w = torch.stack(scores).softmax(0)
            expect.append((w[:, None, None] * a).sum(0))
    got = cs.explain.score_cam(model, x, target=targets, layer="r1", normalize=False, quiet=True)
    torch.testing.assert_close(got, torch.stack(expect), rtol=1e-4, atol=1e-6)


def test_score_cam_bad_batch_size():
    model = DeadChannels()
    with pytest.raises(InputError, match="batch_size"):
        cs.explain.score_cam(model, torch.randn(1, 3, 8, 8), layer="r1", batch_size=0)
