"""Wang & Li (2020)'s DCGAN architectures exactly (Tables 1-4): shapes at 160 x 160, parameter
counts by hand, the layer lists, the tanh option, and checkpoint round trips of every option."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError
from convscope.zoo import dcgan_discriminator, dcgan_generator


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _layers(m: nn.Module) -> list[tuple[str, str]]:
    return [(n, type(x).__name__) for n, x in m.named_children()]


def test_generator_v1_is_table_1():
    with torch.device("meta"):
        g = dcgan_generator()  # the paper's defaults
        assert g(torch.empty(2, 256)).shape == (2, 3, 160, 160)
    assert _layers(g) == [
        ("fc1", "Linear"), ("relu1", "ReLU"), ("fc2", "Linear"), ("relu2", "ReLU"),
        ("unflatten", "Unflatten"), ("deconv1", "ConvTranspose2d"), ("relu3", "ReLU"),
        ("deconv2", "ConvTranspose2d"), ("relu4", "ReLU"), ("deconv3", "ConvTranspose2d"),
        ("relu5", "ReLU")]
    assert (g.fc1.in_features, g.fc1.out_features, g.fc2.out_features) == (256, 2560, 25600)
    assert g.unflatten.unflattened_size == (64, 20, 20)
    # by hand: FC 256->2560, FC 2560->25600, deconvs 64->32, 32->16, 16->3 (5x5, with bias)
    fc = (256 * 2560 + 2560) + (2560 * 25600 + 25600)
    deconv = (64 * 32 * 25 + 32) + (32 * 16 * 25 + 16) + (16 * 3 * 25 + 3)
    assert fc + deconv == 66_284_771 == _n(g)


def test_generator_v2_is_table_3():
    with torch.device("meta"):
        g = dcgan_generator(2)
        assert g(torch.empty(1, 256)).shape == (1, 3, 160, 160)
    assert _layers(g) == [
        ("fc1", "Linear"), ("relu1", "ReLU"), ("unflatten", "Unflatten"),
        ("deconv1", "ConvTranspose2d"), ("relu2", "ReLU"), ("deconv2", "ConvTranspose2d"),
        ("relu3", "ReLU"), ("deconv3", "ConvTranspose2d"), ("relu4", "ReLU")]
    assert _n(g) == (256 * 25600 + 25600) + 65_251 == 6_644_451


def test_generator_intermediate_shapes_double_each_layer():
    g = dcgan_generator(2, latent_dim=4, image_size=160)
    seen = {}
    hooks = [getattr(g, n).register_forward_hook(lambda m, i, o, n=n: seen.update({n: o.shape}))
             for n in ("unflatten", "deconv1", "deconv2", "deconv3")]
    with torch.no_grad():
        out = g(torch.randn(1, 4))
    for h in hooks:
        h.remove()
    assert [tuple(seen[n][1:]) for n in ("unflatten", "deconv1", "deconv2", "deconv3")] == [
        (64, 20, 20), (32, 40, 40), (16, 80, 80), (3, 160, 160)]
    assert float(out.min()) >= 0.0  # the paper's ReLU output


def test_generator_tanh_option_keeps_the_old_model():
    g = dcgan_generator(1, latent_dim=8, image_size=16, hidden=32, output="tanh")
    assert isinstance(g.tanh, nn.Tanh) and not hasattr(g, "relu5")
    torch.manual_seed(0)
    for p in g.parameters():
        nn.init.normal_(p, std=1.0)  # large weights: outputs saturate
    x = g(torch.randn(8, 8)).detach()
    assert float(x.abs().max()) <= 1.0 and float(x.min()) < 0.0
    with pytest.raises(InputError, match="'relu'"):
        dcgan_generator(output="sigmoid")


def test_discriminators_are_tables_2_and_4():
    with torch.device("meta"):
        d1, d3 = dcgan_discriminator(1), dcgan_discriminator(3)
        for d in (d1, d3):
            assert d(torch.empty(2, 3, 160, 160)).shape == (2, 1)
    assert _layers(d1) == [
        ("conv1", "Conv2d"), ("lrelu1", "LeakyReLU"), ("conv2", "Conv2d"), ("lrelu2", "LeakyReLU"),
        ("conv3", "Conv2d"), ("lrelu3", "LeakyReLU"), ("flatten", "Flatten"), ("fc1", "Linear"),
        ("lrelu4", "LeakyReLU"), ("fc2", "Linear"), ("sigmoid", "Sigmoid")]
    assert [n for n, _ in _layers(d3)] == [
        "conv1", "bn1", "lrelu1", "conv2", "bn2", "lrelu2", "conv3", "bn3", "lrelu3", "flatten",
        "fc1", "bn4", "lrelu4", "fc2", "sigmoid"]
    assert d1.fc1.in_features == 25600 and d1.fc1.out_features == 160
    # v1 by hand: convs 3->16->32->64 with bias, FC 25600->160, FC 160->1
    assert (3 * 16 * 25 + 16) + (16 * 32 * 25 + 32) + (32 * 64 * 25 + 64) \
        + (25600 * 160 + 160) + 161 == 4_161_633 == _n(d1)
    # v3: layers before a batch norm drop their bias; BN has weight + bias per channel
    assert (3 * 16 + 16 * 32 + 32 * 64) * 25 + 25600 * 160 + 2 * (16 + 32 + 64 + 160) \
        + 161 == 4_161_905 == _n(d3)


@pytest.mark.parametrize("output", ["relu", "tanh"])
@pytest.mark.parametrize("version", [1, 2])
def test_generator_options_round_trip_through_checkpoints(tmp_path, version, output):
    torch.manual_seed(0)
    gen = cs.zoo.DCGANGenerator(version=version, latent_dim=6, image_size=16, hidden=12,
                                output=output).eval()
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_checkpoint(gen, "gen")
    back = cs.open_run(tmp_path / "r").load_model("gen")
    assert type(back) is cs.zoo.DCGANGenerator and back.output == output
    assert repr(back) == repr(gen)
    with torch.no_grad():
        z = torch.randn(3, 6)
        torch.testing.assert_close(back(z), gen(z))
