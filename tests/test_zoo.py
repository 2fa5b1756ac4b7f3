"""Tests of convscope.zoo: the CIFAR-style ResNet and Wang & Li (2020)'s DCGAN models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError
from convscope.zoo import ResNet, dcgan_discriminator, dcgan_generator, resnet


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------
# ResNet


def test_resnet_output_shape_and_named_modules():
    m = resnet(num_classes=7, width=8).eval()
    assert isinstance(m, ResNet) and cs.zoo.ResNet is ResNet
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert m(torch.randn(1, 3, 48, 40)).shape == (1, 7)  # global pooling: any input size
    names = dict(m.named_modules())
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0.conv1", "layer1.0.bn1",
                 "layer1.0.relu1", "layer1.0.conv2", "layer1.0.relu2", "layer2.0.downsample",
                 "layer4.0.conv2", "avgpool", "fc"):
        assert name in names, name
    assert "layer1.0.downsample" not in names or names["layer1.0.downsample"] is None
    assert isinstance(names["conv1"], nn.Conv2d) and isinstance(names["bn1"], nn.BatchNorm2d)
    assert isinstance(names["relu"], nn.ReLU) and isinstance(names["maxpool"], nn.MaxPool2d)
    assert isinstance(names["avgpool"], nn.AdaptiveAvgPool2d)
    assert isinstance(names["fc"], nn.Linear) and names["fc"].in_features == 8 * 8


def test_resnet_feature_map_sizes():
    m = resnet(width=4).eval()
    sizes = {}
    hooks = [
        getattr(m, n).register_forward_hook(
            lambda mod, inp, out, n=n: sizes.__setitem__(n, tuple(out.shape[1:]))
        )
        for n in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
    ]
    m(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sizes == {
        "conv1": (4, 32, 32),
        "maxpool": (4, 16, 16),
        "layer1": (4, 16, 16),
        "layer2": (8, 8, 8),
        "layer3": (16, 4, 4),
        "layer4": (32, 2, 2),
        "avgpool": (32, 1, 1),
    }


def test_resnet_parameter_count_by_hand():
    # width 2, one block per stage, 3 input channels, 4 classes. Convs have no bias; BN has 2 per
    # channel; a 3x3 conv has c_in * c_out * 9 weights, a 1x1 downsample c_in * c_out.
    stem = 3 * 2 * 9 + 2 * 2                                            # 58
    layer1 = (2 * 2 * 9 + 2 * 2) * 2                                    # 80, no downsample
    layer2 = 2 * 4 * 9 + 4 * 2 + 4 * 4 * 9 + 4 * 2 + 2 * 4 + 4 * 2      # 248
    layer3 = 4 * 8 * 9 + 8 * 2 + 8 * 8 * 9 + 8 * 2 + 4 * 8 + 8 * 2      # 944
    layer4 = 8 * 16 * 9 + 16 * 2 + 16 * 16 * 9 + 16 * 2 + 8 * 16 + 16 * 2  # 3680
    fc = 16 * 4 + 4
    expected = stem + layer1 + layer2 + layer3 + layer4 + fc
    assert expected == 5078
    assert _n_params(resnet(num_classes=4, width=2)) == expected
    # a second block in layer2 (4 -> 4, no downsample) adds two 3x3 convs and two BNs
    assert _n_params(resnet(num_classes=4, width=2, blocks=(1, 2, 1, 1))) == expected + 2 * (
        4 * 4 * 9 + 4 * 2
    )
    # a single-channel input changes only the stem conv
    assert _n_params(resnet(num_classes=4, width=2, in_channels=1)) == expected - 2 * 2 * 9


def test_resnet_residual_path_is_the_identity_when_the_branch_is_zeroed():
    m = resnet(width=4, blocks=(2, 1, 1, 1)).eval()
    block = m.layer1[1]  # 4 -> 4, stride 1: no downsample
    assert block.downsample is None
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
    x = torch.randn(3, 4, 8, 8)
    assert torch.allclose(block(x), torch.relu(x))


def test_resnet_has_no_inplace_relu():
    m = resnet()
    assert all(not mod.inplace for mod in m.modules() if isinstance(mod, nn.ReLU))


def test_resnet_rejects_bad_blocks():
    with pytest.raises(InputError, match="four stage depths"):
        resnet(blocks=(1, 1, 1))
    with pytest.raises(InputError, match="four stage depths"):
        resnet(blocks=(1, 0, 1, 1))


# ------------------------------------------------------------------------------------------------
# DCGAN


def test_generator_v1_has_the_papers_layers_at_full_size():
    with torch.device("meta"):  # no memory: only shapes
        g = dcgan_generator(version=1)
        out = g(torch.empty(2, 256))
    assert out.shape == (2, 3, 160, 160)
    assert (g.fc1.in_features, g.fc1.out_features) == (256, 2560)
    assert (g.fc2.in_features, g.fc2.out_features) == (2560, 20 * 20 * 64)
    assert g.unflatten.unflattened_size == (64, 20, 20)
    assert [g.deconv1.out_channels, g.deconv2.out_channels, g.deconv3.out_channels] == [32, 16, 3]
    for d in (g.deconv1, g.deconv2, g.deconv3):
        assert d.kernel_size == (5, 5) and d.stride == (2, 2)


def test_generator_v2_removes_one_fc_layer():
    with torch.device("meta"):
        g = dcgan_generator(version=2)
        assert g(torch.empty(1, 256)).shape == (1, 3, 160, 160)
    fcs = [n for n, m in g.named_modules() if isinstance(m, nn.Linear)]
    assert fcs == ["fc1"] and g.fc1.out_features == 25600


def test_generator_small_parameter_count_by_hand():
    # latent 8, hidden 32, image 16 -> 2 x 2 x 64 = 256 features before the deconvolutions
    g1 = dcgan_generator(version=1, latent_dim=8, image_size=16, hidden=32, output="tanh")
    deconvs = (64 * 32 * 25 + 32) + (32 * 16 * 25 + 16) + (16 * 3 * 25 + 3)
    assert _n_params(g1) == (8 * 32 + 32) + (32 * 256 + 256) + deconvs
    g2 = dcgan_generator(version=2, latent_dim=8, image_size=16, output="tanh")
    assert _n_params(g2) == (8 * 256 + 256) + deconvs
    z = torch.randn(3, 8)
    for g in (g1, g2):
        x = g(z).detach()
        assert x.shape == (3, 3, 16, 16)
        assert float(x.abs().max()) <= 1.0  # tanh output


def test_discriminator_versions():
    d1 = dcgan_discriminator(version=1, image_size=32, hidden=10)
    d3 = dcgan_discriminator(version=3, image_size=32, hidden=10)
    x = torch.randn(4, 3, 32, 32)
    for d in (d1, d3):
        p = d(x)
        assert p.shape == (4, 1) and bool(((p > 0) & (p < 1)).all())
    bn1 = [n for n, m in d1.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    bn3 = [n for n, m in d3.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert bn1 == [] and bn3 == ["bn1", "bn2", "bn3", "bn4"]
    convs = [m for m in d1.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in convs)
    assert all(isinstance(getattr(d1, f"lrelu{k}"), nn.LeakyReLU) for k in range(1, 5))
    # v1 by hand: convs with bias, FC 64*4*4 -> 10 -> 1
    n1 = (3 * 16 * 25 + 16) + (16 * 32 * 25 + 32) + (32 * 64 * 25 + 64) + (1024 * 10 + 10) + 11
    assert _n_params(d1) == n1


def test_discriminator_full_size_on_meta():
    with torch.device("meta"):
        d = dcgan_discriminator(version=3)
        assert d(torch.empty(2, 3, 160, 160)).shape == (2, 1)
    assert d.fc1.in_features == 20 * 20 * 64 and d.fc1.out_features == 160


def test_dcgan_bad_arguments():
    with pytest.raises(InputError, match="versions 1"):
        dcgan_generator(version=3)
    with pytest.raises(InputError, match="versions"):
        dcgan_discriminator(version=2)
    with pytest.raises(InputError, match="multiple of 8"):
        dcgan_generator(image_size=20)
    d = dcgan_discriminator(image_size=16)
    with pytest.raises(InputError, match="image_size=32"):
        d(torch.randn(1, 3, 32, 32))
