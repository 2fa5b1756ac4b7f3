"""``maximize``'s render configuration: ``Render`` values, factories, the old keywords as a shim,
regularisers in the order given.

Oracles: the old keyword calls (same seed -> the same images, bit for bit), hand-computed
regularised starts (the public regulariser functions applied in a known order to the unit's own
seeded start), and one hand-computed ascent step (plain autograd on the model).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError
from convscope.features import (
    Blur,
    ContributionClip,
    Decay,
    NormClip,
    Pad,
    RandomRotate,
    RandomScale,
    Render,
    channel,
    clip_small_norm,
    gaussian_blur,
    unit_seed,
    yosinski,
)
from convscope.features.regularizers import sort_regularizers

from .conftest import auto_threads_fixture

_threads = pytest.fixture(autouse=True, scope="module")(auto_threads_fixture)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return cs.zoo.resnet(width=8).eval()


def M(net, units, **kw):  # noqa: N802
    return cs.features.maximize(net, "layer2", units, quiet=True, size=16, **kw)


def test_render_defaults_are_the_old_defaults(net):
    r = Render()
    assert (r.steps, r.param, r.optimizer, r.lr, r.transforms, r.regularizers) == (
        cs.features.DEFAULTS["steps"], "fft", "adam", 0.1, "standard", ()
    )
    a = M(net, [0, 3], steps=5)
    assert torch.equal(a, M(net, [0, 3], render=Render(steps=5)))
    # a factory for the same optimiser, and lucid's Adam written by hand, give the same images
    assert torch.equal(a, M(net, [0, 3], render=Render(steps=5, optimizer=cs.features.adam(0.1))))
    hand = Render(steps=5, optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    assert torch.equal(a, M(net, [0, 3], render=hand))
    # decorrelate=False is the FFT factory's option
    b = M(net, [0, 3], steps=5, decorrelate=False)
    assert not torch.equal(a, b)
    assert torch.equal(b, M(net, [0, 3], render=Render(steps=5,
                                                        param=cs.features.fft_image(False))))


def test_old_keywords_build_the_same_render(net):
    regs = [Decay(0.01), Blur(0.5, 2), NormClip(20)]
    kw = dict(steps=4, lr=0.02, optimizer="sgd", param="pixel", transforms=(), regularizers=regs)
    a = M(net, [1, 2], **kw)
    r = Render(steps=4, lr=0.02, optimizer="sgd", param="pixel", transforms=(), regularizers=regs)
    assert torch.equal(a, M(net, [1, 2], render=r))
    assert torch.equal(a, M(net, [1, 2], render=r.replace(optimizer=cs.features.sgd(0.02),
                                                          lr=None)))
    prog = dict(steps=3, optimizer="progress", lr=0.5, max_lr=3.0, param="pixel", transforms=())
    p = M(net, [1], **prog)
    q = M(net, [1], render=Render(steps=3, param="pixel", transforms=(),
                                  optimizer=cs.features.progress(0.5, max_lr=3.0)))
    assert torch.equal(p, q)
    # a preset: as keywords, as regularizers= (fills what is left out) and as render=
    y = M(net, [1], **{**yosinski(3), "steps": 3})
    assert torch.equal(y, M(net, [1], regularizers=yosinski(3), steps=3))
    assert torch.equal(y, M(net, [1], render=yosinski(3).render(steps=3)))
    assert yosinski(3).render().regularizers == (Decay(1e-4), Blur(1.0, 4))


def _start(net_units, seed: int, c: int, h: int, w: int) -> torch.Tensor:
    """Each unit's pixel start, drawn as the pixel parameterisation draws it (0.04 * N(0, 1))."""
    return torch.stack([
        torch.randn(c, h, w, generator=torch.Generator().manual_seed(unit_seed(seed, u))) * 0.04
        for u in net_units
    ])


def test_regularizers_run_in_the_order_given(net):
    # lr = 0: the step changes nothing, so after one step the image is the start regularised by
    # the list in its order (pixel values centred at 0.5 and clipped to [0, 1])
    units = [0, 5]
    x0 = _start(units, 0, 3, 16, 16).clamp(-0.5, 0.5)
    norm_then_blur = gaussian_blur(clip_small_norm(x0, 50.0), 1.0).clamp(-0.5, 0.5) + 0.5
    blur_then_norm = clip_small_norm(gaussian_blur(x0, 1.0), 50.0).clamp(-0.5, 0.5) + 0.5
    assert not torch.allclose(norm_then_blur, blur_then_norm, atol=1e-3)
    base = Render(steps=1, lr=0.0, optimizer="sgd", param="pixel", transforms=())
    a = M(net, units, render=base.replace(regularizers=[NormClip(50.0), Blur(1.0)]))
    b = M(net, units, render=base.replace(regularizers=[Blur(1.0), NormClip(50.0)]))
    assert torch.allclose(a, norm_then_blur, atol=1e-6)
    assert torch.allclose(b, blur_then_norm, atol=1e-6)
    # the old keyword honours the given order too; the paper's order is one call away
    c = M(net, units, steps=1, lr=0.0, optimizer="sgd", param="pixel", transforms=(),
          regularizers=[Blur(1.0), NormClip(50.0)])
    assert torch.equal(b, c)
    assert sort_regularizers([Blur(1.0), NormClip(50.0)]) == [Blur(1.0), NormClip(50.0)]
    assert sort_regularizers([NormClip(50.0), Blur(1.0)]) == [Blur(1.0), NormClip(50.0)]


def test_presets_keep_the_papers_order(net):
    # the presets list their regularisers in the paper's order, so honouring the given order
    # leaves their images as they were
    for n in (1, 2, 3, 4):
        regs = list(yosinski(n)["regularizers"])
        assert regs == sort_regularizers(regs[::-1])
    paper = M(net, [2], render=yosinski(1).render(steps=3))
    shuffled = yosinski(1).render(steps=3, regularizers=[NormClip(50.0), Blur(0.5, 4)])
    assert not torch.equal(M(net, [2], render=shuffled), paper)
    assert torch.equal(M(net, [2], render=shuffled.replace(
        regularizers=sort_regularizers(shuffled.regularizers))), paper)


def test_one_sgd_step_by_hand(net):
    # pixel parameterisation, no transforms: x1 = clip(x0 + lr * d mean(layer2[c]) / d x0)
    lr, units = 0.05, [3, 6]
    x0 = (_start(units, 7, 3, 16, 16).clamp(-0.5, 0.5) + 0.5).requires_grad_(True)
    acts = {}
    h = net.layer2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        net(x0)
    finally:
        h.remove()
    obj = acts["a"][torch.arange(2), torch.tensor(units)].mean(dim=(1, 2)).sum()
    (g,) = torch.autograd.grad(obj, x0)
    want = (x0.detach() + lr * g).clamp(0, 1)
    got = M(net, units, seed=7, render=Render(steps=1, lr=lr, optimizer="sgd", param="pixel",
                                              transforms=()))
    assert torch.allclose(got, want, atol=1e-6)


def test_custom_parameterisation_factory(net):
    # lucent's shape: a factory returning (params, to_image)
    def sigmoid_pixels(canvas):
        gen = canvas.generators
        z = torch.stack([torch.randn(canvas.shape[1:], generator=g) * 0.1 for g in gen])
        z = z.to(canvas.device).requires_grad_(True)
        return [z], lambda: torch.sigmoid(z) * (canvas.hi - canvas.lo) + canvas.lo

    r = Render(steps=30, param=sigmoid_pixels, transforms=(), optimizer=cs.features.adam(0.1))
    imgs, vals = cs.features.maximize(net, "layer2", [1, 4], render=r, quiet=True, size=16,
                                      return_values=True)
    _, v0 = cs.features.maximize(net, "layer2", [1, 4], render=r.replace(steps=1,
                                 optimizer=cs.features.adam(0.0)), quiet=True, size=16,
                                 return_values=True)
    assert imgs.shape == (2, 3, 16, 16) and imgs.min() >= 0 and imgs.max() <= 1
    assert (vals > v0).all()
    # regularisers need a parameterisation that can be set from an image
    with pytest.raises(InputError, match="set_centred"):
        M(net, [1], render=r.replace(regularizers=[Decay(0.1)]))


def test_bad_render_settings_raise_input_errors(net):
    with pytest.raises(InputError, match="not both"):
        M(net, [0], render=Render(steps=2), steps=3)
    with pytest.raises(InputError, match="not both"):
        M(net, [0], render=Render(steps=2), decorrelate=False)
    with pytest.raises(InputError, match="Render"):
        M(net, [0], render={"steps": 2})
    for bad in (dict(optimizer="rmsprop"), dict(optimizer=5), dict(param="wavelet"),
                dict(param=5), dict(transforms="lucid"), dict(transforms=5),
                dict(regularizers=[5]), dict(steps=0), dict(lr=-1.0),
                dict(optimizer=cs.features.adam(), lr=0.1)):
        with pytest.raises(InputError):
            Render(**bad)
    with pytest.raises(InputError, match="factory"):
        M(net, [0], render=Render(steps=1, param=lambda canvas: 5))
    with pytest.raises(InputError, match="step"):
        M(net, [0], render=Render(steps=1, optimizer=lambda params: 5))
    with pytest.raises(InputError):
        cs.features.progress(0.5, max_lr="x")
    with pytest.raises(InputError, match="seed"):
        M(net, [0], steps=1, seed="x")
    for make in (lambda: Decay("a"), lambda: Decay(2.0), lambda: Blur(1.0, every="x"),
                 lambda: Blur("x"), lambda: NormClip("x"), lambda: ContributionClip(200),
                 lambda: Pad("x"), lambda: RandomScale(()), lambda: RandomRotate("abc"),
                 lambda: cs.features.standard_transforms("x"), lambda: channel("layer2", "x"),
                 lambda: channel("layer2", [0.5]), lambda: cs.features.neuron("layer2", [True]),
                 lambda: cs.features.l2_decay([1.0], 0.1),
                 lambda: cs.features.gaussian_blur(torch.rand(1, 3, 4, 4), 1.0, truncate="a")):
        with pytest.raises(InputError):
            make()
