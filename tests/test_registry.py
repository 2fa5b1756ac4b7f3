"""The attribution registry: one table, one call shape, CAM variants that supply only weights.

Oracles: the public functions themselves (the table must call them unchanged), a brute-force
XGrad-CAM (Fu et al. 2020) computed with plain autograd and hooks, the identity XGrad-CAM =
Grad-CAM on a global-average-pooling + linear head with non-negative activations, and
``attribute_all``'s maps for the dispatch the coordinator puts in ``explain/dataset.py``.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError, InputError, NotApplicableError
from convscope.explain import metrics
from convscope.nn import minmax

from .conftest import auto_threads_fixture

_threads = pytest.fixture(autouse=True, scope="module")(auto_threads_fixture)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return cs.zoo.resnet(width=8).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 32, 32)


class NoGap(nn.Module):
    """conv -> relu -> conv -> flatten -> linear: no global pooling, so CAM does not apply."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(F.relu(self.c1(x))).flatten(1))


def test_table_lists_every_method_in_page_order_with_its_kind():
    assert cs.explain.names() == cs.explain.ATTRIBUTION_METHODS
    assert cs.explain.names("input") == ("saliency", "deconvnet", "guided_backprop")
    assert cs.explain.names("classifier") == ("cam",)
    assert cs.explain.names("layer") == ("grad_cam", "grad_cam_pp", "score_cam")
    assert list(cs.explain.METHODS) == list(cs.explain.names())
    assert cs.explain.get("score_cam").options == ("normalize", "batch_size", "quiet", "channels")
    with pytest.raises(InputError, match="registered: .*'saliency'.*'score_cam'"):
        cs.explain.get("gradcam")
    with pytest.raises(InputError):
        cs.explain.names("other")
    with pytest.raises(TypeError):  # the table is read-only
        cs.explain.METHODS["x"] = cs.explain.METHODS["cam"]  # type: ignore[index]


def test_one_call_shape_gives_the_public_functions_results(net, x):
    target = [1, 2, 3]
    for name in ("saliency", "deconvnet", "guided_backprop"):
        public = getattr(cs.explain, name)(net, x, target)
        via = cs.explain.get(name)(net, x, target, layer="layer2", quiet=True)  # layer ignored
        assert via.shape == (3, 3, 32, 32) and torch.equal(via, public)
        heat = cs.explain.get(name).heatmap(net, x, target)
        assert torch.equal(heat, public.abs().amax(dim=1))  # max |.| over channels, by hand
    for name in ("grad_cam", "grad_cam_pp", "score_cam"):
        public = getattr(cs.explain, name)(net, x, target, "layer2", False)
        via = cs.explain.get(name)(net, x, target, layer="layer2", normalize=False, quiet=True)
        assert via.shape == (3, 32, 32) and torch.equal(via, public)
    assert torch.equal(cs.explain.get("cam")(net, x, target), cs.explain.cam(net, x, target))
    with pytest.raises(InputError, match="no option"):
        cs.explain.get("grad_cam")(net, x, target, batch_size=4)


def test_register_checks_name_kind_and_call_shape():
    def ok(model, inputs, target=None, *, layer=None, quiet=False, strength=1.0):
        return inputs

    try:
        assert cs.explain.register("my_method", kind="input")(ok) is ok  # as a decorator
        m = cs.explain.get("my_method")
        assert m.kind == "input" and m.options == ("quiet", "strength")
        assert cs.explain.names()[-1] == "my_method"
        with pytest.raises(InputError, match="already registered"):
            cs.explain.register("my_method", ok, kind="input")
        cs.explain.register("my_method", ok, kind="layer", replace=True)
        assert cs.explain.get("my_method").kind == "layer"
    finally:
        cs.explain.unregister("my_method")
    assert "my_method" not in cs.explain.names()
    with pytest.raises(InputError, match="call shape"):
        cs.explain.register("bad", lambda model, inputs: inputs)
    with pytest.raises(InputError, match="call shape"):
        cs.explain.register("bad", lambda model, inputs, target=None: inputs)
    with pytest.raises(InputError, match="kind"):
        cs.explain.register("bad", ok, kind="pixels")
    with pytest.raises(InputError, match="identifier"):
        cs.explain.register("not a name", ok)
    with pytest.raises(InputError):
        cs.explain.unregister("never_registered")
    assert "bad" not in cs.explain.names()


# --------------------------------------------------------------------------------------------
# a new CAM variant in a few lines: XGrad-CAM (Fu et al. 2020)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def xgrad_cam():
    @cs.explain.register_cam("xgrad_cam")
    def xgrad_cam(A, G):
        """XGrad-CAM (Fu et al. 2020): w_k = sum_ij A_kij dS/dA_kij / sum_ij A_kij."""
        s = A.sum(dim=(2, 3))
        return (A * G).sum(dim=(2, 3)) / torch.where(s != 0, s, 1.0)

    yield xgrad_cam
    cs.explain.unregister("xgrad_cam")


def _brute_xgrad(model: nn.Module, x: torch.Tensor, target: list[int], layer: str) -> torch.Tensor:
    """XGrad-CAM by hand: a hook keeps the layer output, plain autograd gives dS/dA."""
    module = dict(model.named_modules())[layer]
    kept = {}
    h = module.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    try:
        out = model(x)
    finally:
        h.remove()
    a = kept["a"]
    score = out[torch.arange(len(target)), torch.tensor(target)].sum()
    (g,) = torch.autograd.grad(score, a)
    a, g = a.detach().double(), g.double()
    w = torch.zeros(a.shape[:2], dtype=torch.float64)
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            s = float(a[b, k].sum())
            w[b, k] = float((a[b, k] * g[b, k]).sum()) / s if s != 0 else 0.0
    raw = torch.relu((w[:, :, None, None] * a).sum(1))
    up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return torch.where(hi > lo, (up - lo) / (hi - lo), torch.zeros_like(up)).float()


def test_new_cam_variant_matches_brute_force(net, x, xgrad_cam):
    assert cs.explain.names()[-1] == "xgrad_cam" and cs.explain.get("xgrad_cam").kind == "layer"
    target = [1, 2, 3]
    for layer in ("layer2", "layer3.0.conv1"):  # post-ReLU block output and a signed conv output
        want = _brute_xgrad(net, x, target, layer)
        got = xgrad_cam(net, x, target, layer=layer)
        assert got.shape == (3, 32, 32)
        assert torch.allclose(got, want, atol=2e-5), (layer, float((got - want).abs().max()))
        via = cs.explain.get("xgrad_cam")(net, x, target, layer=layer, quiet=True)
        assert torch.equal(via, got)
    # the restored model: eval/train flags and requires_grad as before
    assert all(p.requires_grad for p in net.parameters()) and not net.training


def test_new_variant_equals_grad_cam_on_a_gap_linear_head(net, x, xgrad_cam):
    # at the map that feeds global average pooling and one linear layer, dS/dA_kij = W_ck / hw for
    # every position, so XGrad-CAM's weight sum(A W/hw) / sum(A) = W_ck / hw = Grad-CAM's weight
    # (Fu et al. 2020), as long as no channel sums to zero (layer4 is post-ReLU: A >= 0)
    a = xgrad_cam(net, x, [4, 0, 7], layer="layer4", normalize=False)
    b = cs.explain.grad_cam(net, x, [4, 0, 7], layer="layer4", normalize=False)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max()))


def test_variant_weights_are_checked_and_errors_stay_convscope_errors(net, x):
    @cs.explain.register_cam("wrong_shape")
    def wrong_shape(A, G):
        return A.mean(dim=(1, 2, 3))  # [B], not [B, K]

    @cs.explain.register_cam("needs_context", gradients=False, context=True,
                             options={"scale": 2.0})
    def needs_context(A, G, ctx):
        assert G is None and ctx.layer == "layer2" and ctx.target.classes is not None
        return torch.full(A.shape[:2], ctx.options["scale"])

    try:
        with pytest.raises(InputError, match=r"\[B, K\]"):
            wrong_shape(net, x, layer="layer2")
        sig = inspect.signature(needs_context)
        assert list(sig.parameters)[-1] == "scale" and sig.parameters["scale"].default == 2.0
        m = needs_context(net, x, layer="layer2", normalize=False, scale=3.0)
        raw = torch.einsum("bk,bkhw->bhw", torch.full((3, 16), 3.0),
                           cs.model.capture(net, x, ["layer2"])["layer2"].float())
        want = F.interpolate(raw[:, None], size=(32, 32), mode="bilinear")[:, 0]
        assert torch.allclose(m, want, rtol=1e-5, atol=1e-5)
        with pytest.raises(InputError, match="no option"):
            needs_context(net, x, layer="layer2", strength=1)
    finally:
        cs.explain.unregister("wrong_shape")
        cs.explain.unregister("needs_context")
    with pytest.raises(NotApplicableError):  # CAM through the same base, checked as before
        cs.explain.get("cam")(NoGap(), torch.rand(2, 3, 8, 8))


def test_dispatch_for_attribute_all_equals_its_maps(net, x):
    """The lines given to the coordinator for ``explain/dataset.py`` (no name ladder)."""
    res = cs.explain.attribute_all(net, x, batch_size=3, layer="layer2", score_cam_batch_size=8,
                                   quiet=True)
    tgt = res.target
    for name in cs.explain.ATTRIBUTION_METHODS:
        m = cs.explain.get(name)
        opts = {"batch_size": 8} if "batch_size" in m.options else {}
        raw = m.heatmap(net, x, tgt, layer=None if m.kind == "classifier" else "layer2",
                        quiet=True, **opts)
        assert torch.allclose(minmax(raw.float()), res.maps[name], atol=1e-6), name


def test_attribute_all_runs_a_registered_variant(net, x, xgrad_cam):
    """A variant registered by the user is one more method of ``attribute_all`` (and so of
    ``run.log_attributions``): its maps there are the brute-force XGrad-CAM."""
    res = cs.explain.attribute_all(net, x, methods=["grad_cam", "xgrad_cam"], layer="layer2",
                                   batch_size=2, quiet=True)
    want = _brute_xgrad(net, x, res.target.tolist(), "layer2")
    torch.testing.assert_close(res.maps["xgrad_cam"], want, atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="xgrad"):  # the message lists what is registered
        cs.explain.attribute_all(net, x, methods=["no_such_method"], quiet=True)


# --------------------------------------------------------------------------------------------
# quiet= and ConvscopeError-only
# --------------------------------------------------------------------------------------------
def test_every_long_call_takes_quiet():
    long_calls = [
        cs.explain.score_cam, cs.explain.cam, cs.explain.grad_cam, cs.explain.grad_cam_pp,
        cs.explain.attribute_all, metrics.confidence_change, metrics.average_drop,
        metrics.increase_in_confidence, metrics.deletion, metrics.insertion,
        cs.features.maximize,
    ]
    missing = [f.__name__ for f in long_calls if "quiet" not in inspect.signature(f).parameters]
    assert not missing
    assert all("quiet" in m.options for m in cs.explain.METHODS.values())


def test_confidence_change_quiet_and_batches_give_the_same_numbers(net, x):
    maps = cs.explain.grad_cam(net, x, layer="layer2")
    a = metrics.confidence_change(net, x, maps, batch_size=1, quiet=True)
    b = metrics.confidence_change(net, x, maps, batch_size=64, quiet=False)
    assert torch.allclose(a.explained, b.explained, atol=1e-6)
    with torch.no_grad():  # by hand: softmax probability of the predicted class on x * map
        pred = net(x).argmax(1)
        o = net(x * maps[:, None]).softmax(1)[torch.arange(3), pred]
    assert torch.allclose(a.explained, o, atol=1e-6)
    assert metrics.average_drop(net, x, maps, quiet=True) == pytest.approx(a.average_drop)


def test_bad_inputs_raise_convscope_errors():
    maps = torch.rand(2, 5, 5)
    with pytest.raises(InputError, match="floating-point"):
        cs.explain.to_heatmap(torch.ones(1, 3, 4, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="real"):
        metrics.pointing_game(maps.to(torch.complex64), maps > 0.5)
    # a 0/1 map is a map: its maximum (first in raster order) is its first 1
    bin_maps = maps > 0.7
    hits = metrics.pointing_game(bin_maps, bin_maps)
    assert torch.equal(hits, bin_maps.flatten(1).any(1))
    net = NoGap()
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(InputError, match="real"):
        metrics.deletion(net, x, torch.rand(2, 8, 8), steps=2,
                         baseline=torch.zeros(1, dtype=torch.complex64), quiet=True)
    with pytest.raises(InputError):
        metrics.confidence_change(net, x, torch.rand(2, 8, 8), batch_size="4")
    with pytest.raises(ConvscopeError):
        cs.explain.get(["grad_cam"])  # unhashable name
