"""cs.explain: each method against an independent oracle, robustness, and bad input.

Oracles: pytorch-grad-cam (Grad-CAM, Grad-CAM++), captum (saliency, guided backprop,
deconvolution), the closed form for CAM, hand-computed formulas on split models. Score-CAM against
pytorch-grad-cam is in test_explain_scorecam.py.

Random-weight torchvision models get their classifier head scaled by 100 so that gradients at the
explained layer are O(1): pytorch-grad-cam adds 1e-6 to the Grad-CAM++ denominator, which dominates
for the tiny gradients of an unscaled random network (see docs/explain.md).
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import Deconvolution, GuidedBackprop, Saliency
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import convscope as cs
from convscope.errors import (
    ConvscopeError,
    InputError,
    LayerNotFoundError,
    ModelError,
    TargetError,
)

TARGETS = [1, 5, 7, 9]


def pearson(a: torch.Tensor, b) -> torch.Tensor:
    """Per-image Pearson correlation of two batches of maps."""
    b = torch.as_tensor(b)
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@functools.cache
def _torchvision(arch: str) -> nn.Module:
    """Random-weight model with the head scaled by 100 (built once; explanations do not mutate it)."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    head = model.fc if arch.startswith("resnet") else model.classifier[-1]
    with torch.no_grad():
        head.weight.mul_(100.0)
    return model


# layer used for vgg11: features.19 is the ReLU after the last conv; pytorch-grad-cam records a
# conv followed by ReLU(inplace=True) after the in-place ReLU, so a conv would not be comparable.
MODELS = {"resnet18": "layer4", "vgg11": "features.19"}


@pytest.fixture(scope="module", params=list(MODELS))
def tv(request):
    arch = request.param
    torch.manual_seed(1)
    x = torch.randn(4, 3, 64, 64)
    return arch, _torchvision(arch), x, MODELS[arch]


def _peer_cam(cls, model, layer, x):
    module = dict(model.named_modules())[layer]
    with cls(model=model, target_layers=[module]) as extractor:
        return extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS])


@pytest.mark.parametrize(
    "ours, peer", [(cs.explain.grad_cam, GradCAM), (cs.explain.grad_cam_pp, GradCAMPlusPlus)]
)
def test_cams_match_pytorch_grad_cam(tv, ours, peer):
    arch, model, x, layer = tv
    got = ours(model, x, target=TARGETS, layer=layer)
    ref = _peer_cam(peer, model, layer, x)
    assert got.shape == (4, 64, 64)
    # the oracle maps must be informative for the comparison to mean anything
    assert (torch.as_tensor(ref).flatten(1).std(1) > 0.05).all(), arch
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)
    assert float(got.amin()) == 0.0 and torch.allclose(got.flatten(1).amax(1), torch.ones(4))


@pytest.mark.parametrize(
    "ours, peer, kw",
    [
        (cs.explain.saliency, Saliency, {"abs": False}),
        (cs.explain.guided_backprop, GuidedBackprop, {}),
        (cs.explain.deconvnet, Deconvolution, {}),
    ],
)
def test_input_attributions_match_captum(tv, ours, peer, kw):
    arch, model, x, _ = tv
    got = ours(model, x, target=TARGETS)
    ref = peer(model).attribute(x.clone().requires_grad_(True), target=TARGETS, **kw).detach()
    assert got.shape == x.shape
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()))


def test_rules_differ_from_plain_gradient(tv):
    """Guided backprop and DeconvNet really change the backward pass (so the captum match
    above is not the plain gradient matching itself)."""
    _, model, x, _ = tv
    sal = cs.explain.saliency(model, x, target=TARGETS)
    gbp = cs.explain.guided_backprop(model, x, target=TARGETS)
    dec = cs.explain.deconvnet(model, x, target=TARGETS)
    assert (pearson(sal, gbp) < 0.9).all()
    assert (pearson(gbp, dec) < 0.99).all()


# ---------------------------------------------------------------------------- CAM closed form
def test_cam_closed_form_resnet18():
    model = _torchvision("resnet18")
    torch.manual_seed(2)
    x = torch.randn(4, 3, 64, 64)
    got_raw = cs.explain.cam(model, x, target=TARGETS, normalize=False)
    got = cs.explain.cam(model, x, target=TARGETS)
    with torch.no_grad():  # the network run by hand, block by block
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        a = model.layer4(model.layer3(model.layer2(model.layer1(h))))
        w = model.fc.weight[TARGETS]
        closed = (w[:, :, None, None] * a).sum(1)  # M_c = sum_k w_ck A_k
        up = F.interpolate(closed[:, None], size=(64, 64), mode="bilinear")[:, 0]
        pos = F.interpolate(closed.clamp(min=0)[:, None], size=(64, 64), mode="bilinear")[:, 0]
        lo, hi = pos.amin((1, 2), keepdim=True), pos.amax((1, 2), keepdim=True)
    torch.testing.assert_close(got_raw, up, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got, (pos - lo) / (hi - lo), rtol=1e-4, atol=1e-5)
    assert (pearson(got, pos) >= 0.99).all()
    # on a GAP + linear model Grad-CAM weights are W_c / (h*w): the same map
    torch.testing.assert_close(cs.explain.grad_cam(model, x, target=TARGETS), got, atol=1e-4, rtol=0)


def test_cam_rejects_non_gap_model():
    model = _torchvision("vgg11")
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ModelError, match="grad_cam"):
        cs.explain.cam(model, x, layer="features.19")
    with pytest.raises(ModelError, match="grad_cam"):
        cs.explain.cam(model, x)  # automatic layer: avgpool, 512 channels vs Linear(25088)


class MaxPoolHead(nn.Module):
    """conv -> global *max* pool -> linear: has a Linear with C inputs, but is not CAM's form."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).amax(dim=(2, 3)))


def test_cam_rejects_max_pooled_head():
    torch.manual_seed(0)
    with pytest.raises(ModelError, match="differs"):
        cs.explain.cam(MaxPoolHead(), torch.randn(2, 3, 16, 16), layer="conv")


# ------------------------------------------------------------------ formulas on a split model
class Split(nn.Module):
    """features -> head, so A and dS/dA can be computed by hand."""

    def __init__(self, relu: str = "module", head_scale: float = 1.0):
        super().__init__()
        self.relu_kind = relu
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU(inplace=(relu == "inplace"))
        self.p1 = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(8, 12, 3, padding=1)
        self.r2 = nn.ReLU(inplace=(relu == "inplace"))
        self.c3 = nn.Conv2d(12, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 7)
        with torch.no_grad():
            self.fc.weight.mul_(head_scale)

    def _relu(self, module, t):
        if self.relu_kind in ("module", "inplace"):
            return module(t)
        if self.relu_kind == "functional":
            return F.relu(t)
        if self.relu_kind == "functional_inplace":
            return F.relu(t, inplace=True)
        if self.relu_kind == "method":
            return t.relu()
        if self.relu_kind == "method_inplace":
            t.relu_()
            return t
        return torch.relu(t)

    def features(self, x):
        return self.c2(self.p1(self._relu(self.r1, self.c1(x))))

    def head(self, a):
        return self.fc(self.c3(self._relu(self.r2, a)).flatten(1))

    def forward(self, x):
        return self.head(self.features(x))


def _split_pair(relu: str, head_scale: float = 1.0):
    torch.manual_seed(3)
    ref = Split("module", head_scale)
    other = Split(relu, head_scale)
    other.load_state_dict(ref.state_dict())
    return ref, other


def _hand_gradient(model: Split, x, targets):
    with torch.no_grad():
        a = model.features(x)
    a = a.clone().requires_grad_(True)
    out = model.head(a)
    (g,) = torch.autograd.grad(out[torch.arange(len(targets)), targets].sum(), a)
    return a.detach().double(), g.double()


def test_grad_cam_raw_map_is_the_formula():
    model, _ = _split_pair("module")
    x = torch.randn(3, 3, 16, 16)
    targets = [0, 3, 6]
    a, g = _hand_gradient(model, x, targets)
    raw = (g.mean((2, 3))[:, :, None, None] * a).sum(1)
    expect = F.interpolate(raw[:, None], size=(16, 16), mode="bilinear")[:, 0]
    got = cs.explain.grad_cam(model, x, target=targets, layer="c2", normalize=False)
    assert got.dtype == torch.float32 and (got < 0).any()  # raw keeps the sign
    torch.testing.assert_close(got.double(), expect, rtol=1e-4, atol=1e-6)


def test_grad_cam_pp_follows_eq19_at_small_gradient_scale():
    """With tiny gradients convscope still follows eq. 19, while pytorch-grad-cam's +1e-6 in the
    denominator takes over and its maps leave the formula."""
    model, _ = _split_pair("module", head_scale=1e-3)
    torch.manual_seed(4)
    x = torch.randn(3, 3, 16, 16)
    targets = [0, 3, 6]
    a, g = _hand_gradient(model, x, targets)
    assert float(g.abs().max()) < 1e-3
    denom = 2 * g**2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g**2 / denom, torch.zeros_like(denom))
    w = (alpha * g.clamp(min=0)).sum((2, 3))
    raw = (w[:, :, None, None] * a).sum(1)
    expect = F.interpolate(raw[:, None], size=(16, 16), mode="bilinear")[:, 0]
    got_raw = cs.explain.grad_cam_pp(model, x, target=targets, layer="c2", normalize=False)
    torch.testing.assert_close(got_raw.double(), expect, rtol=1e-3, atol=1e-9)
    ours = cs.explain.grad_cam_pp(model, x, target=targets, layer="c2")
    with GradCAMPlusPlus(model=model, target_layers=[model.c2]) as peer:
        ref = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    assert (pearson(ours, ref) < 0.99).any()  # the peer's epsilon changed its maps


# ---------------------------------------------------------------- F.relu / in-place twins
@pytest.mark.parametrize(
    "kind",
    ["inplace", "functional", "functional_inplace", "method", "method_inplace", "torch"],
)
@pytest.mark.parametrize(
    "method",
    [
        cs.explain.saliency,
        cs.explain.guided_backprop,
        cs.explain.deconvnet,
        cs.explain.grad_cam,
        cs.explain.grad_cam_pp,
    ],
)
def test_relu_variants_match_module_twin(kind, method):
    ref, other = _split_pair(kind)
    torch.manual_seed(5)
    x = torch.randn(3, 3, 16, 16)
    kw = {"layer": "c2"} if method in (cs.explain.grad_cam, cs.explain.grad_cam_pp) else {}
    expect = method(ref, x, target=[0, 3, 6], **kw)
    got = method(other, x, target=[0, 3, 6], **kw)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-7)


def test_guided_rule_on_functional_relu_matches_captum_on_module_twin():
    ref, other = _split_pair("functional")
    x = torch.randn(2, 3, 16, 16)
    peer = GuidedBackprop(ref).attribute(x.clone().requires_grad_(True), target=[1, 2]).detach()
    got = cs.explain.guided_backprop(other, x, target=[1, 2])
    torch.testing.assert_close(got, peer, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(got, cs.explain.saliency(other, x, target=[1, 2]))


# ---------------------------------------------------------------- targets and outputs
class TupleOut(nn.Module):
    def __init__(self, inner: nn.Module, kind: str = "tuple"):
        super().__init__()
        self.inner = inner
        self.kind = kind

    def forward(self, x):
        logits = self.inner(x)
        if self.kind == "dict":
            return {"aux": logits.detach() * 0, "logits": logits}
        return logits, logits.detach() * 0


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_tuple_and_dict_outputs_with_callable_target(kind):
    torch.manual_seed(6)
    base = Split()
    wrapped = TupleOut(base, kind)
    x = torch.randn(3, 3, 16, 16)
    pick = (lambda out: out[0]) if kind == "tuple" else (lambda out: out["logits"])
    idx = torch.tensor([[2], [4], [1]])
    for method, layer in [(cs.explain.grad_cam, "c2"), (cs.explain.guided_backprop, None)]:
        kw = {"layer": layer} if layer else {}
        kw_wrapped = {"layer": "inner." + layer} if layer else {}
        # a callable returning [B] scores
        expect = method(base, x, target=[2, 4, 1], **kw)
        got = method(wrapped, x, target=lambda out: pick(out).gather(1, idx)[:, 0], **kw_wrapped)
        torch.testing.assert_close(got, expect)
        # a callable returning [B, K] class scores: the predicted class is explained
        torch.testing.assert_close(method(wrapped, x, target=pick, **kw_wrapped), method(base, x, **kw))
    with pytest.raises(TargetError, match="callable"):
        cs.explain.saliency(wrapped, x)


def test_target_forms_agree():
    torch.manual_seed(7)
    model = Split()
    x = torch.randn(3, 3, 16, 16)
    pred = model(x).argmax(1)
    a = cs.explain.grad_cam(model, x, layer="c2")
    b = cs.explain.grad_cam(model, x, target=pred.tolist(), layer="c2")
    c = cs.explain.grad_cam(model, x, target=pred, layer="c2")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    d = cs.explain.saliency(model, x, target=4)
    e = cs.explain.saliency(model, x, target=[4, 4, 4])
    torch.testing.assert_close(d, e)
    # each image is explained on its own: batch result == one image at a time
    one = torch.cat([cs.explain.grad_cam(model, x[i : i + 1], target=[3], layer="c2") for i in range(3)])
    torch.testing.assert_close(cs.explain.grad_cam(model, x, target=3, layer="c2"), one)


# ---------------------------------------------------------------- state and hooks
class Exploding(Split):
    """conv features -> BN -> ReLU -> GAP -> linear (CAM's form); can raise inside forward."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(12)
        self.gfc = nn.Linear(12, 7)
        self.explode = False

    def forward(self, x):
        a = self.r2(self.bn(self.features(x)))
        if self.explode:
            raise RuntimeError("boom")
        return self.gfc(a.mean((2, 3)))


def _no_hooks_left(model: nn.Module) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
        if getattr(m, "_backward_pre_hooks", None):
            return False
        if "forward" in m.__dict__:
            return False
    return not torch.overrides._get_current_function_mode_stack()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: cs.explain.grad_cam(m, x, layer="r2"),
        lambda m, x: cs.explain.grad_cam_pp(m, x, layer="r2"),
        lambda m, x: cs.explain.score_cam(m, x, layer="r2", quiet=True),
        lambda m, x: cs.explain.cam(m, x, layer="r2"),
        lambda m, x: cs.explain.guided_backprop(m, x),
        lambda m, x: cs.explain.deconvnet(m, x),
        lambda m, x: cs.explain.saliency(m, x),
        lambda m, x: cs.explain.grad_cam(m, x),  # automatic layer search also hooks
    ],
)
def test_no_hooks_remain_and_state_restored_after_exception(call):
    torch.manual_seed(8)
    model = Exploding().train()
    model.c1.weight.requires_grad_(False)
    grads = [p.requires_grad for p in model.parameters()]
    stats = model.bn.running_mean.clone()
    model.explode = True
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ModelError, match="boom"):
        call(model, x)
    assert _no_hooks_left(model)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    # after a successful call too; BN statistics untouched (explanations run in eval mode)
    model.explode = False
    call(model, x)
    assert _no_hooks_left(model)
    assert all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == grads
    torch.testing.assert_close(model.bn.running_mean, stats)
    assert all(p.grad is None for p in model.parameters())


def test_auto_layer_choice_is_reported(caplog):
    model = _torchvision("resnet18")
    x = torch.randn(2, 3, 64, 64)
    assert cs.explain.auto_layer(model, x) == "layer4"
    with caplog.at_level(logging.INFO, logger="convscope.explain"):
        auto = cs.explain.grad_cam(model, x, target=[1, 2])
    assert "'layer4'" in caplog.text
    torch.testing.assert_close(auto, cs.explain.grad_cam(model, x, target=[1, 2], layer="layer4"))
    torch.testing.assert_close(auto, cs.explain.grad_cam(model, x, target=[1, 2], layer=model.layer4))
    # VGG: the last 4-D output with spatial size > 1 is the adaptive average pool (7x7)
    assert cs.explain.auto_layer(_torchvision("vgg11"), x) == "avgpool"


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_convscope_errors():
    torch.manual_seed(9)
    model = Split()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(InputError, match=r"unsqueeze\(0\)"):
        cs.explain.grad_cam(model, x[0], layer="c2")
    with pytest.raises(InputError, match="4 dimensions"):
        cs.explain.saliency(model, x[None])
    with pytest.raises(InputError, match="floating-point"):
        cs.explain.saliency(model, (x * 10).long())
    with pytest.raises(TargetError, match=r"out of range.*0\.\.6"):
        cs.explain.grad_cam(model, x, target=7, layer="c2")
    with pytest.raises(TargetError, match="out of range"):
        cs.explain.saliency(model, x, target=[0, -1])
    with pytest.raises(TargetError, match="2 images"):
        cs.explain.guided_backprop(model, x, target=[1, 2, 3])
    with pytest.raises(InputError, match="not a spatial feature map.*convolutional"):
        cs.explain.grad_cam(model, x, layer="fc")
    with pytest.raises(LayerNotFoundError, match="'c2'"):
        cs.explain.grad_cam(model, x, layer="c22")
    with pytest.raises(LayerNotFoundError, match="not part of the model"):
        cs.explain.grad_cam(model, x, layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(ModelError, match="nn.Module"):
        cs.explain.saliency(model.state_dict(), x)
    with pytest.raises(ModelError, match="input size"):
        cs.explain.saliency(model, torch.randn(2, 3, 20, 20))  # fc expects 8x8 maps
    resnet = _torchvision("resnet18")
    with pytest.raises(LayerNotFoundError, match="'layer4'"):
        cs.explain.grad_cam(resnet, torch.randn(1, 3, 64, 64), layer="layr4")
    with pytest.raises(InputError, match="spatial feature map"):
        cs.explain.grad_cam(resnet, torch.randn(1, 3, 64, 64), layer="avgpool")
    with pytest.raises(TargetError, match="range"):
        cs.explain.score_cam(resnet, torch.randn(1, 3, 32, 32), target=1000, quiet=True)
    assert issubclass(LayerNotFoundError, ConvscopeError)


def test_to_heatmap_reductions():
    a = torch.tensor([[[[1.0, -3.0]], [[-2.0, 0.5]]]])  # [1, 2, 1, 2]
    torch.testing.assert_close(cs.explain.to_heatmap(a), torch.tensor([[[2.0, 3.0]]]))
    torch.testing.assert_close(cs.explain.to_heatmap(a, "sum"), torch.tensor([[[-1.0, -2.5]]]))
    torch.testing.assert_close(
        cs.explain.to_heatmap(a, "l2"), torch.tensor([[[5.0**0.5, 9.25**0.5]]])
    )
    torch.testing.assert_close(
        cs.explain.to_heatmap(a, normalize=True), torch.tensor([[[0.0, 1.0]]])
    )
    with pytest.raises(InputError, match=r"\[B, C, H, W\]"):
        cs.explain.to_heatmap(a[0])
