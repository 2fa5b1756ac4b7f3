"""Reduced precision (issue 14, item 6): every method computes its reductions in float32 and
returns the inputs' dtype; the CAMs run the model in its own dtype and memory format, the
input-space methods (whose maps are the backward pass itself) a float32 copy of a float16 /
bfloat16 model (``precision="auto"``) that leaves the model as it was.

Oracle: the float32 run of the same weights (per-image Pearson r >= 0.99), the original float32
model, and for the Grad-CAM++ edge cases eq. 19 of Chattopadhay et al. (2018) evaluated by hand
in float64, next to the plain float16 formula that gave an all-zero map.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import convscope as cs

from .test_explain import pearson

METHODS = ("saliency", "deconvnet", "guided_backprop", "cam", "grad_cam", "grad_cam_pp",
           "score_cam")
FORMATS = {  # name: (dtype, channels_last)
    "float16": (torch.float16, False),
    "bfloat16": (torch.bfloat16, False),
    "channels_last": (torch.float32, True),
    "bfloat16+channels_last": (torch.bfloat16, True),
}


class Net(nn.Module):
    """A small CNN with what real ones have: batch norm with non-trivial statistics, max pooling,
    an in-place ReLU, a residual sum, global average pooling and a linear head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.act = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.relu(self.bn1(self.conv1(x))))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.act(self.conv3(h) + h)
        return self.fc(self.gap(h).flatten(1))


def to_format(model: nn.Module, x: torch.Tensor, fmt: str) -> tuple[nn.Module, torch.Tensor]:
    dtype, channels_last = FORMATS[fmt]
    m, y = copy.deepcopy(model).to(dtype), x.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        y = y.contiguous(memory_format=torch.channels_last)
    return m, y


def heatmap(method: str, model: nn.Module, x: torch.Tensor, target, layer: str) -> torch.Tensor:
    fn = cs.explain.get(method)
    out = fn(model, x, target, layer=None if fn.kind == "input" else layer, quiet=True)
    assert out.dtype == x.dtype and out.device == x.device  # the inputs' dtype, always
    return cs.explain.to_heatmap(out) if out.ndim == 4 else out


@pytest.fixture(scope="module")
def net_case() -> tuple[nn.Module, torch.Tensor, list[int]]:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, x, [0, 2, 4]


def assert_agree(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """Per image: r >= 0.99, or (where the reference map is constant, e.g. all zero after the
    ReLU) the same constant map."""
    flat = ref.double().flatten(1)
    constant = flat.amax(1) == flat.amin(1)
    r = pearson(got, ref)
    ok = torch.where(constant, (got.double() - ref.double()).flatten(1).abs().amax(1) < 1e-2,
                     r >= 0.99)
    assert bool(ok.all()), f"{what}: r = {r.tolist()}"


def rounded(model: nn.Module, x: torch.Tensor, fmt: str) -> tuple[nn.Module, torch.Tensor]:
    """float32 arithmetic on the weights and inputs rounded to ``fmt``'s dtype."""
    dtype = FORMATS[fmt][0]
    return copy.deepcopy(model).to(dtype).float(), x.to(dtype).float()


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("method", METHODS)
def test_maps_in_reduced_precision_match_float32(method: str, fmt: str, net_case) -> None:
    model, x, target = net_case
    low_model, low_x = to_format(model, x, fmt)
    got = heatmap(method, low_model, low_x, target, "act")
    assert bool(torch.isfinite(got).all()) and float(got.float().amax()) > 0  # not all zero
    # the same weights and inputs, float32 arithmetic: only the computation's precision differs
    same = heatmap(method, *rounded(model, x, fmt), target, "act")
    assert_agree(got, same, f"{method} {fmt}")
    if cs.explain.get(method).kind == "input":  # a float32 copy: the float32 computation itself
        assert bool((pearson(got, same) >= 0.999).all()), pearson(got, same)
    # the original float32 model. Input-space methods in bfloat16 are exempt: rounding the
    # inputs to bfloat16 alone (float32 arithmetic, float32 weights) moves this model's max-pool
    # switches and gives r = 0.978 for DeconvNet on one image -- a property of the bfloat16
    # inputs, not of the computation, which is float32 here (docs/explain.md, "Reduced
    # precision")
    if not (FORMATS[fmt][0] == torch.bfloat16 and cs.explain.get(method).kind == "input"):
        assert_agree(got, heatmap(method, model, x, target, "act"), f"{method} {fmt} vs float32")
    # the user's model is left in its own dtype and memory format
    assert all(p.dtype == FORMATS[fmt][0] for p in low_model.parameters())
    if FORMATS[fmt][1]:
        assert low_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "channels_last"])
def test_cams_on_resnet18_in_reduced_precision_match_float32(fmt: str) -> None:
    # a real architecture (random weights, nothing downloaded) at its automatic layer 'layer4'
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    low_model, low_x = to_format(model, x, fmt)
    for method in ("cam", "grad_cam", "grad_cam_pp", "guided_backprop", "deconvnet"):
        ref = heatmap(method, model, x, None, "layer4")
        got = heatmap(method, low_model, low_x, None, "layer4")
        assert_agree(got, ref, f"{method} {fmt}")


# ------------------------------------------------------------------------------------------------
# input-space methods: the backward on a float32 copy of a half-precision model
# ------------------------------------------------------------------------------------------------
@functools.cache
def _resnet18() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    return model, torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided_backprop"])
@pytest.mark.parametrize("fmt", ["float16", "bfloat16", "bfloat16+channels_last"])
def test_input_space_methods_on_resnet18_match_the_same_weights_in_float32(method, fmt):
    """resnet18 at 64²: the bfloat16 backward (``precision="model"``) gave saliency r = 0.979 and
    0.982 against the same weights run in float32; the float32 copy (default) is that float32
    computation. The model keeps its parameters (the same tensors, values and dtype), memory
    format and hooks."""
    model, x = _resnet18()
    low, low_x = to_format(model, x, fmt)
    calls: list[torch.dtype] = []
    handle = low.layer4.register_forward_hook(lambda m, a, out: calls.append(out.dtype))
    before = [(p, p.detach().clone(), p._version) for p in low.parameters()]
    hooks = dict(low.layer4._forward_hooks)
    fn = cs.explain.get(method)
    got = fn(low, low_x, [1, 2])
    ref = cs.explain.to_heatmap(fn(*rounded(model, x, fmt), [1, 2]))
    assert got.dtype == low_x.dtype and got.shape == low_x.shape
    assert bool((pearson(cs.explain.to_heatmap(got), ref) >= 0.999).all())
    # the model is unchanged: same parameter tensors and values, dtype and memory format
    for (p, saved, version), q in zip(before, low.parameters(), strict=True):
        assert p is q and p.dtype == FORMATS[fmt][0] and p._version == version
        assert torch.equal(p, saved) and p.requires_grad
    if FORMATS[fmt][1]:
        assert low.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # its hooks too: still registered, and they ran (on the copy, in float32) as on the model
    assert dict(low.layer4._forward_hooks) == hooks and calls == [torch.float32]
    handle.remove()
    with torch.no_grad():
        low(low_x)
    assert calls == [torch.float32]  # removing the user's handle removed the hook
    # precision="model": the model's own dtype, the backward rounded (the pre-change behaviour)
    own = fn(low, low_x, [1, 2], precision="model")
    assert own.dtype == low_x.dtype
    if method == "saliency" and fmt == "bfloat16":
        assert bool((pearson(cs.explain.to_heatmap(own), ref) < 0.99).all())


def test_float32_inputs_to_a_half_model_and_precision_values() -> None:
    """The float32 copy also takes float32 inputs (nothing rounded but the weights); the result
    is float32, the float32 computation with the rounded weights. A bad ``precision`` says what
    the values are."""
    model, x = _resnet18()
    low = copy.deepcopy(model).bfloat16()
    got = cs.explain.saliency(low, x, [1, 2])
    assert got.dtype == torch.float32
    ref = cs.explain.saliency(copy.deepcopy(model).bfloat16().float(), x, [1, 2])
    torch.testing.assert_close(got, ref)
    forced = cs.explain.saliency(low, x.bfloat16(), [1, 2], precision="float32")
    assert forced.dtype == torch.bfloat16
    with pytest.raises(cs.errors.InputError, match="precision must be one of"):
        cs.explain.saliency(low, x, precision="fp32")
    with pytest.raises(cs.errors.InputError, match="precision must be one of"):
        cs.explain.get("deconvnet")(low, x, precision=32)


def test_float32_copy_is_reused_inside_a_pass_while_weights_are_unchanged(monkeypatch) -> None:
    """Inside ``reuse_float32_copies()`` the three input-space methods share one copy; an
    optimiser step (weights changed in place) makes a new one, whose maps are those of the new
    weights; outside the block every call makes its own."""
    from convscope.explain import base

    made: list[int] = []
    real = base._float32_copy
    monkeypatch.setattr(base, "_float32_copy", lambda m: made.append(1) or real(m))
    model, x = _resnet18()
    low, low_x = to_format(model, x, "bfloat16")
    with base.reuse_float32_copies():
        for name in ("saliency", "deconvnet", "guided_backprop"):
            cs.explain.get(name)(low, low_x, [1, 2])
        assert len(made) == 1
        with torch.no_grad():
            low.fc.weight.mul_(-1.0)  # in place, as an optimiser step
        got = cs.explain.saliency(low, low_x, [1, 2])
        assert len(made) == 2
    assert not base._COPIES
    fresh = cs.explain.saliency(low, low_x, [1, 2])
    assert len(made) == 3
    torch.testing.assert_close(got, fresh, rtol=0, atol=0)
    with torch.no_grad():
        low.fc.weight.mul_(-1.0)


def test_float32_copy_keeps_tied_weights_and_weight_norm() -> None:
    """Tied parameters stay one tensor in the copy; a model whose weight comes from a forward
    pre-hook (``torch.nn.utils.weight_norm``) runs as a copy (the shared hook recomputes the
    weight from the copy's float32 ``weight_g`` / ``weight_v``)."""
    from convscope.explain import base

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = nn.Conv2d(3, 3, 3, padding=1)
            self.b.weight = self.a.weight
            self.fc = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))

    model = Tied().bfloat16().eval()
    twin = base._float32_copy(model)
    assert twin.a.weight is twin.b.weight and twin.a.weight.dtype == torch.float32
    assert model.a.weight.dtype == torch.bfloat16
    torch.testing.assert_close(twin.a.weight, model.a.weight.float(), rtol=0, atol=0)

    import warnings

    def weight_normed() -> nn.Module:  # deepcopy refuses it (its `weight` is no graph leaf)
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # weight_norm is deprecated, still used
            return nn.Sequential(nn.utils.weight_norm(nn.Conv2d(3, 4, 3)), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()

    x = torch.randn(2, 3, 16, 16)
    ref = cs.explain.saliency(weight_normed().bfloat16().float(), x.bfloat16().float(), 1)
    wn = weight_normed().bfloat16()
    got = cs.explain.saliency(wn, x.bfloat16(), 1)
    assert wn[0].weight_v.dtype == torch.bfloat16
    assert bool((pearson(cs.explain.to_heatmap(got), cs.explain.to_heatmap(ref)) >= 0.999).all())


def test_to_heatmap_and_metrics_in_reduced_precision() -> None:
    model = Net().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    maps = cs.explain.grad_cam(model, x, [1, 2], layer="act")
    ref = cs.explain.metrics.insertion(model, x, maps, [1, 2], steps=8, quiet=True)
    half_model, half_x = to_format(model, x, "bfloat16")
    got = cs.explain.metrics.insertion(half_model, half_x, maps.bfloat16(), [1, 2], steps=8,
                                       quiet=True)
    assert got.scores.dtype == torch.float32  # probabilities are scores, kept in float32
    torch.testing.assert_close(got.scores, ref.scores, atol=3e-2, rtol=0)


# ------------------------------------------------------------------------------------------------
# tiny gradients: Grad-CAM++ in float16 (and float32 at 1e-24)
# ------------------------------------------------------------------------------------------------
class Head(nn.Module):
    """``A = relu(conv3x3(x))`` with 6 channels of distinct patterns, GAP and a linear head whose
    weights set the gradient at ``act``: ``dS/dA = W_c / (h * w)`` where ``A > 0``."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(6, 1, 3, 3, generator=gen))
            self.conv.bias.copy_(torch.rand(6, generator=gen))
            self.fc.weight.copy_((torch.rand(2, 6, generator=gen) + 0.2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def layer_act_grad(model: Head, x: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``dS/dA`` at ``act`` by plain autograd in the model's own dtype."""
    a = model.act(model.conv(x)).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.fc(a.mean(dim=(2, 3)))[:, target].sum(), a)
    return a.detach(), g


def eq19_map(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++'s eq. 19 as written (``g^2 / (2 g^2 + sum(A) g^3)``), in ``a``'s dtype, with
    the ReLU, bilinear upsampling and per-image min-max of the maps."""
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, 1), 0)
    w = (alpha * g.clamp(min=0)).sum(dim=(2, 3))
    raw = (w[:, :, None, None] * a).sum(1).clamp(min=0)
    up = F.interpolate(raw[:, None].double(), size=a.shape[-2:], mode="bilinear")[:, 0]
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return torch.where(hi > lo, (up - lo) / (hi - lo).clamp_min(1e-300), 0.0)


def test_grad_cam_pp_float16_tiny_gradients_match_float32() -> None:
    # W ~ 0.03, 256 positions: dS/dA ~ 1e-4, whose square (1e-8) is below float16's 6e-8
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) + 0.5
    model = Head(0.03).eval()
    a16, g16 = layer_act_grad(model.half(), x.half(), 0)
    assert bool((g16 != 0).any()) and bool((g16 * g16 == 0).all())  # the bug's mechanism
    naive = eq19_map(a16, g16)  # the pre-change float16 computation
    assert float(naive.abs().max()) == 0.0  # ... gave an all-zero map
    a, g = layer_act_grad(model.float(), x, 0)
    oracle = eq19_map(a.double(), g.double())
    got = cs.explain.grad_cam_pp(model.half(), x.half(), target=0, layer="act")
    assert got.dtype == torch.float16
    assert bool((pearson(got, oracle) >= 0.99).all())
    torch.testing.assert_close(got.double(), oracle, atol=5e-3, rtol=0)
    ref32 = cs.explain.grad_cam_pp(model.float(), x, target=0, layer="act")
    assert bool((pearson(got, ref32) >= 0.99).all())


def test_float16_gradients_below_the_subnormal_range_are_rescaled() -> None:
    # W ~ 1e-5 over 256 positions: dS/dA ~ 4e-8, which a float16 backward rounds to 0 or 6e-8
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(4)) + 0.5
    model = Head(1e-5).eval()
    _, g16 = layer_act_grad(model.half(), x.half(), 1)
    _, g32 = layer_act_grad(model.float(), x, 1)
    # the plain float16 gradient has lost the channels' ratios (at most a few distinct values)
    assert float((g16.float() - g32).abs().max()) > 0.2 * float(g32.abs().max())
    for method in (cs.explain.grad_cam, cs.explain.grad_cam_pp):
        ref = method(model.float(), x, target=1, layer="act")
        got = method(model.half(), x.half(), target=1, layer="act")
        assert got.dtype == torch.float16
        assert bool((pearson(got, ref) >= 0.999).all()), method.__name__
        raw = method(model.half(), x.half(), target=1, layer="act", normalize=False)
        ref_raw = method(model.float(), x, target=1, layer="act", normalize=False)
        # the rescaling is undone: the raw map is the float32 one to float16's resolution
        # (6e-8 among subnormals, 2**-11 relative above), not 2**k times larger
        assert float(ref_raw.abs().max()) < 1e-4
        torch.testing.assert_close(raw.float(), ref_raw, rtol=4e-3, atol=6e-8)


def test_grad_cam_pp_float32_gradients_of_1e_minus_24() -> None:
    # g ~ 1e-24: g^2 = 1e-48 is 0 in float32, so eq. 19 as written gives an all-zero map
    x = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(6)) + 0.5
    model = Head(2.5e-22).eval()
    a, g = layer_act_grad(model, x, 0)
    assert float(eq19_map(a, g).abs().max()) == 0.0
    oracle = eq19_map(a.double(), g.double())
    got = cs.explain.grad_cam_pp(model, x, target=0, layer="act")
    torch.testing.assert_close(got.double(), oracle, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_maximize_runs_a_reduced_precision_model_like_float32(dtype):
    """The image is optimised in float32 and fed to the model in its own dtype; the objective is
    promoted to float32. The reached values follow the float32 run (the same seeds) and rise
    from the first step, so the optimisation really worked in that dtype."""
    import copy

    import convscope as cs

    torch.manual_seed(0)
    model = cs.zoo.resnet(width=8).eval()
    low = copy.deepcopy(model).to(dtype)
    kw = dict(steps=32, return_values=True, quiet=True, size=32)
    ref_img, ref = cs.features.maximize(model, "layer2", [0, 1], **kw)
    img, vals = cs.features.maximize(low, "layer2", [0, 1], **kw)
    _, first = cs.features.maximize(low, "layer2", [0, 1], **{**kw, "steps": 1})
    assert img.dtype == torch.float32 and vals.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert (vals > 3 * first).all(), (vals, first)
    torch.testing.assert_close(vals, ref, rtol=0.2, atol=1e-3)
    assert next(low.parameters()).dtype == dtype  # the model is left as it was


def test_a_model_that_cannot_be_copied(monkeypatch, caplog) -> None:
    """``"auto"`` falls back to the model's own dtype with a warning (its result is then the
    ``precision="model"`` one); ``"float32"`` raises a ModelError naming the way out."""
    import logging

    from convscope.explain import base

    def refuse(model):
        raise RuntimeError("cannot deepcopy this")

    monkeypatch.setattr(base, "_float32_copy", refuse)
    model, x = _resnet18()
    low, low_x = to_format(model, x, "bfloat16")
    with caplog.at_level(logging.WARNING, logger="convscope.explain"):
        got = cs.explain.saliency(low, low_x, [1, 2])
    assert "no float32 copy" in caplog.text
    torch.testing.assert_close(got, cs.explain.saliency(low, low_x, [1, 2], precision="model"))
    with pytest.raises(cs.errors.ModelError, match="precision='model'"):
        cs.explain.saliency(low, low_x, [1, 2], precision="float32")


def test_attribute_all_makes_one_float32_copy_per_pass(monkeypatch) -> None:
    """attribute_all over two batches of a bfloat16 model: the three input-space methods of
    both batches share one float32 copy, and their maps equal the single calls'."""
    from convscope.explain import base

    made: list[int] = []
    real = base._float32_copy
    monkeypatch.setattr(base, "_float32_copy", lambda m: made.append(1) or real(m))
    model, x = _resnet18()
    low, low_x = to_format(model, x, "bfloat16")
    methods = ("saliency", "deconvnet", "guided_backprop")
    result = cs.explain.attribute_all(low, low_x, methods=methods, target=1,
                                      batch_size=max(1, len(x) // 2), quiet=True)
    assert len(made) == 1 and not base._COPIES
    for name in methods:  # the pass's maps are min-max scaled single-call heatmaps
        single = cs.explain.to_heatmap(cs.explain.get(name)(low, low_x, 1)).float()
        r = pearson(torch.as_tensor(result.maps[name]).float(), single)
        assert r.min() > 0.999, (name, r)
