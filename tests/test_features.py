"""cs.features: regularisers on closed-form cases, objectives, transforms, parameterisations,
batched-equals-one-at-a-time, bad input and hook hygiene. (Dataset examples: test_features_top.py;
quality on a trained model: test_features_quality.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError, InputError, LayerNotFoundError, ModelError, TargetError
from convscope.features import (
    Blur,
    ContributionClip,
    Decay,
    FFTImage,
    Jitter,
    NormClip,
    Pad,
    PixelImage,
    RandomRotate,
    RandomScale,
    channel,
    class_logit,
    clip_small_contribution,
    clip_small_norm,
    gaussian_blur,
    l2_decay,
    neuron,
    yosinski,
)
from convscope.features.regularizers import sort_regularizers
from convscope.features.transforms import apply_transforms, standard_transforms

from .conftest import auto_threads_fixture

_threads = pytest.fixture(autouse=True, scope="module")(auto_threads_fixture)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return cs.zoo.resnet(width=8).eval()


def hook_count(model: nn.Module) -> int:
    """Every hook of every module (all the ``*hooks*`` dicts nn.Module keeps)."""
    total = 0
    for m in model.modules():
        for name, value in vars(m).items():
            if "hook" in name and isinstance(value, dict):
                total += len(value)
    return total


# ------------------------------------------------------------------------------------------------
# regularisers, each on its own


def test_decay_shrinks_by_exactly_one_minus_theta():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = l2_decay(x, 0.3)
    assert torch.equal(y, x * 0.7)
    assert torch.allclose(y.norm(), 0.7 * x.norm())
    assert torch.equal(l2_decay(x, 0.0), x)
    with pytest.raises(InputError):
        l2_decay(x, 1.5)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5, 4.0])
def test_blur_matches_scipy_gaussian_filter(sigma):
    # sigma 4 on 9 x 7 images: the kernel (radius 16) is wider than the image, so the border
    # reflection has to repeat
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    got = gaussian_blur(x, sigma)
    want = np.stack(
        [[scipy.ndimage.gaussian_filter(x[n, c].numpy(), sigma) for c in range(3)] for n in range(2)]
    )
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)


def test_blur_keeps_constant_images_and_mean():
    x = torch.full((1, 2, 6, 6), 0.25, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(x, 1.0), x)
    assert torch.equal(gaussian_blur(x, 0.0), x)


@pytest.mark.parametrize("pct", [20.0, 50.0, 90.0])
def test_norm_clip_zeroes_stated_share(pct):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    x[1] *= 100.0  # a much brighter image: percentiles must be per image
    y = clip_small_norm(x, pct)
    for n in range(3):
        norms = x[n].norm(dim=0).numpy().ravel()
        thr = np.percentile(norms, pct)
        small = norms < thr
        zeroed = (y[n].abs().sum(0) == 0).numpy().ravel()
        assert (zeroed == small).all()
        assert abs(zeroed.mean() - pct / 100) <= 1 / norms.size
        # untouched pixels keep their values
        keep = torch.from_numpy(~small).reshape(16, 16)
        assert torch.equal(y[n][:, keep], x[n][:, keep])


def test_contribution_clip_uses_abs_of_x_times_grad():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 3, 10, 10, generator=g, dtype=torch.float64)
    y = clip_small_contribution(x, grad, 90.0)
    for n in range(2):
        contrib = np.abs((x[n] * grad[n]).sum(0).numpy()).ravel()
        small = contrib < np.percentile(contrib, 90.0)
        zeroed = (y[n].abs().sum(0) == 0).numpy().ravel()
        assert (zeroed == small).all()
        assert zeroed.sum() == 90  # 90 % of 100 pixels
    # sign does not matter: flipping the gradient gives the same result
    assert torch.equal(clip_small_contribution(x, -grad, 90.0), y)
    with pytest.raises(InputError):
        clip_small_contribution(x, grad[:, :2], 50.0)


def test_blur_every_k_steps_and_paper_order():
    x = torch.randn(1, 3, 8, 8)
    b = Blur(1.0, every=4)
    assert not torch.equal(b(x, x, 0), x)
    assert all(torch.equal(b(x, x, s), x) for s in (1, 2, 3, 5))
    assert not torch.equal(b(x, x, 8), x)
    custom = lambda x, g, s: x  # noqa: E731
    regs = sort_regularizers([ContributionClip(10), custom, NormClip(5), Blur(1, 2), Decay(0.1)])
    assert [type(r).__name__ for r in regs] == [
        "Decay", "Blur", "NormClip", "ContributionClip", "function"
    ]


def test_yosinski_presets_follow_the_paper_scaled_to_unit_range():
    p3 = yosinski(3)
    assert list(p3["regularizers"]) == [Decay(1e-4), Blur(1.0, 4)]
    assert p3["steps"] == 1000 and p3["optimizer"] == "sgd"
    assert p3["lr"] == pytest.approx(100 / 255**2)
    p2 = yosinski(2)
    assert list(p2["regularizers"]) == [Decay(0.3), NormClip(20.0)] and p2["steps"] == 750
    p1, p4 = yosinski(1), yosinski(4)
    assert list(p1["regularizers"]) == [Blur(0.5, 4), NormClip(50.0)] and p1["steps"] == 500
    assert list(p4["regularizers"]) == [Blur(0.5, 4), ContributionClip(90.0)]
    assert p1["optimizer"] == p4["optimizer"] == "progress" and p4["steps"] == 1000
    with pytest.raises(InputError):
        yosinski(5)


# ------------------------------------------------------------------------------------------------
# objectives


def test_objectives_compose_on_hand_computed_activations():
    a = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3, 3)
    acts = {"l": a, "": torch.tensor([[1.0, 5.0], [7.0, 2.0]])}
    ch = channel("l", [0, 2])
    assert torch.equal(ch(acts), torch.stack([a[0, 0].mean(), a[1, 2].mean()]))
    nr = neuron("l", 1)
    assert torch.equal(nr(acts), a[:, 1, 1, 1])
    nr2 = neuron("l", [(0, 0, 2), (2, 2, 0)])
    assert torch.equal(nr2(acts), torch.stack([a[0, 0, 0, 2], a[1, 2, 2, 0]]))
    both = ch + 0.5 * nr - 1
    assert torch.allclose(both(acts), ch(acts) + 0.5 * nr(acts) - 1)
    assert torch.equal((-ch)(acts), -ch(acts))
    assert torch.equal(class_logit([1, 0])(acts), torch.tensor([5.0, 7.0]))
    assert set(both.layers) == {"l"}


def test_objective_checks_ranges():
    with pytest.raises(InputError, match="0..2"):
        channel("l", 3).check({"l": (1, 3, 4, 4)})
    with pytest.raises(InputError, match="no channel"):
        channel("l", 0).check({"l": (1,)})
    with pytest.raises(TargetError):
        class_logit(10).check({"": (1, 10)})
    (channel("l", 0) + neuron("m", 1)).check({"l": (1, 3, 4, 4), "m": (1, 2)})
    with pytest.raises(InputError):
        (channel("l", 0) + neuron("m", 2)).check({"l": (1, 3, 4, 4), "m": (1, 2)})


# ------------------------------------------------------------------------------------------------
# transforms and parameterisations


def test_jitter_crops_at_drawn_offsets():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    u = torch.tensor([[0.0, 0.99], [0.5, 0.2]])  # d = 2: offsets floor(u * 3)
    y = Jitter(2)(x, u, torch.zeros(1))
    assert torch.equal(y[0], x[0, :, 0:4, 2:6])
    assert torch.equal(y[1], x[1, :, 1:5, 0:4])


def test_identity_scale_rotate_and_pad_fill():
    x = torch.rand(3, 3, 10, 10)
    u = torch.rand(3, 1)
    fill = torch.tensor([0.1, 0.2, 0.3])
    assert torch.allclose(RandomScale((1.0,))(x, u, fill), x, atol=1e-6)
    assert torch.allclose(RandomRotate((0.0,))(x, u, fill), x, atol=1e-6)
    p = Pad(2)(x, None, fill)
    assert p.shape == (3, 3, 14, 14)
    assert torch.allclose(p[:, :, 0, 0], fill.expand(3, 3))
    # zooming out fills the border with the mean colour
    z = RandomScale((0.5,))(x, u, fill)
    assert torch.allclose(z[:, :, 0, 0], fill.expand(3, 3), atol=1e-6)
    # 90 degrees: output (i, j) samples input (j, W - 1 - i), i.e. numpy's rot90
    r = RandomRotate((90.0,))(x, u, fill)
    assert torch.allclose(r, torch.rot90(x, 1, (2, 3)), atol=1e-5)


def test_transforms_treat_batch_items_independently():
    x = torch.rand(4, 3, 32, 32)
    ts = standard_transforms(32)
    u = torch.rand(4, sum(getattr(t, "draws", 0) for t in ts))
    fill = torch.full((3,), 0.5)
    together = apply_transforms(ts, x, u, fill)
    alone = torch.cat([apply_transforms(ts, x[i : i + 1], u[i : i + 1], fill) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_fft_parameterisation_round_trips_images():
    g = torch.Generator().manual_seed(3)
    centre = torch.full((3,), 0.5)
    p = FFTImage(torch.randn(2, 3, 16, 9, 2, generator=g) * 0.01, (16, 16), centre, 0.0, 1.0)
    target = torch.rand(2, 3, 16, 16, generator=g) * 0.9 + 0.05
    p.set_centred(target - 0.5)
    assert torch.allclose(p.image(), target, atol=1e-4)
    q = PixelImage(torch.zeros(1, 1, 4, 4), torch.tensor([0.5]), 0.0, 1.0)
    q.set_centred(torch.full((1, 1, 4, 4), 3.0))
    assert torch.allclose(q.image(), torch.ones(1, 1, 4, 4))  # clipped to the value range


# ------------------------------------------------------------------------------------------------
# maximize


def test_batched_equals_one_at_a_time(net):
    """Tolerance: 1e-4 absolute on [0, 1] pixels (batched convolutions may round differently)."""
    units = [3, 7, 12]
    kw = dict(steps=24, quiet=True, seed=5)
    together = cs.features.maximize(net, "layer2", units, **kw)
    alone = torch.cat([cs.features.maximize(net, "layer2", [u], **kw) for u in units])
    assert together.shape == (3, 3, 32, 32)
    assert (together - alone).abs().max() < 1e-4
    # batch_size splits give the same images; a different seed gives different ones
    split = cs.features.maximize(net, "layer2", units, batch_size=2, **kw)
    assert (together - split).abs().max() < 1e-4
    other = cs.features.maximize(net, "layer2", units, steps=24, quiet=True, seed=6)
    assert (together - other).abs().max() > 1e-2


def test_batched_equals_one_at_a_time_pixel_with_regularizers(net):
    units = [(1, 2, 2), (5, 4, 3)]
    kw = dict(objective="neuron", steps=12, quiet=True, param="pixel", transforms=(),
              optimizer="sgd", lr=0.02,
              regularizers=[Decay(0.01), Blur(0.5, 4), NormClip(20), ContributionClip(30)])
    together = cs.features.maximize(net, "layer1", units, **kw)
    alone = torch.cat([cs.features.maximize(net, "layer1", [u], **kw) for u in units])
    assert (together - alone).abs().max() < 1e-4


def test_maximize_raises_objective_over_start_and_stays_in_range(net):
    units = list(range(8))
    imgs, vals = cs.features.maximize(net, "layer1", units, steps=40, quiet=True,
                                      return_values=True)
    start, start_vals = cs.features.maximize(net, "layer1", units, steps=1, lr=0.0, quiet=True,
                                             return_values=True)
    assert (vals > start_vals).all()
    assert imgs.min() >= 0 and imgs.max() <= 1
    acts = cs.model.capture(net, imgs, "layer1")["layer1"].mean((2, 3))
    assert torch.allclose(acts[torch.arange(8), torch.tensor(units)], vals, atol=1e-5)


def test_composed_objective_and_minimise(net):
    up = cs.features.maximize(net, None, [0], objective=lambda u: channel("layer1", u), steps=30,
                              quiet=True)
    down = cs.features.maximize(net, None, [0], objective=lambda u: -channel("layer1", u),
                                steps=30, quiet=True)
    a = cs.model.capture(net, torch.cat([up, down]), "layer1")["layer1"][:, 0].mean((1, 2))
    assert a[0] > a[1]
    logit = cs.features.maximize(net, None, [4], objective="logit", steps=30, quiet=True)
    assert logit.shape == (1, 3, 32, 32)


def test_yosinski_preset_runs_and_raises_activation(net):
    pre = yosinski(1)
    imgs, vals = cs.features.maximize(net, "layer2", [0, 1], regularizers=pre, steps=30,
                                      quiet=True, return_values=True)
    _, v0 = cs.features.maximize(net, "layer2", [0, 1], regularizers=pre, steps=1, lr=0.0,
                                 quiet=True, return_values=True)
    assert (vals > v0).all()
    assert imgs.min() >= 0 and imgs.max() <= 1


def test_normalisation_and_value_range():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU()).eval()
    img = cs.features.maximize(m, "0", [1, 2], size=20, steps=5, quiet=True,
                               **cs.features.IMAGENET)
    assert img.shape == (2, 3, 20, 20) and img.min() >= 0 and img.max() <= 1
    img = cs.features.maximize(m, "0", [1], size=12, steps=5, quiet=True, value_range=(-1, 1),
                               param="pixel")
    assert img.min() >= -1 and img.max() <= 1 and img.min() < 0


@pytest.mark.parametrize("cin", [1, 4])
def test_one_and_four_channel_models(cin):
    torch.manual_seed(0)
    m = cs.zoo.resnet(in_channels=cin, width=4).eval()
    for param in ("fft", "pixel"):
        img = cs.features.maximize(m, "layer1", [0, 3], steps=4, quiet=True, param=param)
        assert img.shape == (2, cin, 32, 32)


def test_bad_input_is_explained(net):
    with pytest.raises(InputError, match="out of range"):
        cs.features.maximize(net, "layer1", [0, 99], steps=2, quiet=True)
    with pytest.raises(LayerNotFoundError, match="layer1"):
        cs.features.maximize(net, "layer_1", [0], steps=2, quiet=True)
    with pytest.raises(InputError):
        cs.features.maximize(net, "layer1", [], steps=2, quiet=True)
    with pytest.raises(TargetError):
        cs.features.maximize(net, None, [10], objective="logit", steps=2, quiet=True)

    class Summed(nn.Module):  # a layer whose output has no channel dimension
        def forward(self, x):
            return x.sum((1, 2, 3))

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.total = Summed()

        def forward(self, x):
            return self.total(self.conv(x))

    with pytest.raises(InputError, match="no channel"):
        cs.features.maximize(M().eval(), "total", [0], size=16, steps=2, quiet=True)
    assert hook_count(net) == 0


def test_nan_gradient_stops_with_clear_message():
    class Sqrt(nn.Module):
        def forward(self, x):
            return x + torch.sqrt(x * 0)  # d sqrt(u) / du at u = 0 is inf, times 0: NaN

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), Sqrt(), nn.Conv2d(4, 4, 1)).eval()
    with pytest.raises(ModelError, match="NaN") as info:
        cs.features.maximize(m, "2", [0, 1], size=16, steps=5, quiet=True, param="pixel")
    assert isinstance(info.value, ConvscopeError)
    assert hook_count(m) == 0


def test_no_hooks_left_after_many_calls(net):
    before = hook_count(net)
    for i in range(5):
        cs.features.maximize(net, "layer1", [i], steps=2, quiet=True)
        cs.features.live(net, "layer2", torch.rand(3, 32, 32))
        with pytest.raises(InputError):
            cs.features.maximize(net, "layer1", [100], steps=2, quiet=True)
    assert hook_count(net) == before == 0
    assert not any(m.training for m in net.modules())  # modes restored (eval fixture)


def test_live_gives_all_channels_of_one_image(net):
    x = torch.rand(3, 32, 32)
    a = cs.features.live(net, "layer2", x)
    assert a.shape == (16, 8, 8)
    want = cs.model.capture(net, x[None], "layer2")["layer2"][0]
    assert torch.equal(a, want)
    assert cs.features.live(net, "fc", x).shape == (10, 1, 1)
    with pytest.raises(InputError):
        cs.features.live(net, "layer2", torch.rand(2, 3, 32, 32))


def test_unit_forms(net):
    a = cs.features.maximize(net, "layer1", torch.tensor([1, 2]), steps=3, quiet=True)
    b = cs.features.maximize(net, "layer1", [np.int64(1), 2], steps=3, quiet=True)
    c = cs.features.maximize(net, "layer1", 1, steps=3, quiet=True)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    assert (a[:1] - c).abs().max() < 1e-4  # batch of 2 vs alone: float rounding only
    with pytest.raises(InputError, match="outside"):
        cs.features.maximize(net, "layer1", [(0, 99, 0)], objective="neuron", steps=2,
                             quiet=True)
    with pytest.raises(InputError, match="not a channel index"):
        cs.features.maximize(net, "layer1", ["a"], steps=2, quiet=True)
