"""Bad input gets a clear error, never silent garbage (issue 12, Build 4).

Each test states its oracle: a float32 run of the same model, a brute-force computation, a
hand-built case, or the model's own state recorded before the call.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import (
    ConvscopeError,
    InputError,
    LayerNotFoundError,
    ModelError,
    NotApplicableError,
    TargetError,
)
from convscope.explain.base import _AUTO_CACHE, finish_map, minmax
from convscope.nn import positive_int

CAMS = ("cam", "grad_cam", "grad_cam_pp", "score_cam")
INPUT_SPACE = ("saliency", "deconvnet", "guided_backprop")
METHODS = INPUT_SPACE + CAMS


def tiny(classes: int = 5, seed: int = 0) -> nn.Sequential:
    """conv -> BN -> ReLU -> conv -> ReLU -> GAP -> linear: every method applies (CAM too)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, classes),
    )


def warmed(seed: int = 0) -> nn.Sequential:
    """``tiny`` with non-trivial batch-norm statistics, left in train mode, conv bias frozen."""
    m = tiny(seed=seed)
    with torch.no_grad():
        m.train()
        m(torch.rand(8, 3, 8, 8) * 2)
    m[0].bias.requires_grad_(False)
    return m


def images(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def call(method: str, model: nn.Module, x: torch.Tensor, **kw) -> torch.Tensor:
    fn = getattr(cs.explain, method)
    if method == "score_cam":
        kw.setdefault("quiet", True)
    if method in CAMS and method != "cam":
        kw.setdefault("layer", "3")
    return fn(model, x, **kw)


class NaNHead(nn.Module):
    """Multiplies the logits by ``value`` (NaN or inf): a model whose outputs are not finite."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


def nonfinite_model(value: float) -> nn.Module:
    return nn.Sequential(*tiny().eval(), NaNHead(value)).eval()


# ------------------------------------------------------------------------------------------------
# NaN / inf model outputs and inputs
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("method", METHODS)
def test_nonfinite_model_outputs_raise_from_every_method(method: str, value: float) -> None:
    # Oracle: the model's output is NaN/inf by construction; before the fix Grad-CAM,
    # Grad-CAM++ and Score-CAM returned an all-zero "valid" map and saliency a NaN map.
    m = nonfinite_model(value)
    with pytest.raises(ModelError, match="non-finite"):
        call(method, m, images(), target=1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_model_outputs_raise_from_passes_and_metrics(value: float) -> None:
    m = nonfinite_model(value)
    x = images()
    maps = torch.full((2, 8, 8), 0.5)
    with pytest.raises(ModelError, match="non-finite"):
        cs.explain.attribute_all(m, x, quiet=True, batch_size=2)
    for fn in (cs.explain.metrics.confidence_change, cs.explain.metrics.deletion,
               cs.explain.metrics.insertion):
        kwargs = {"quiet": True} if fn is not cs.explain.metrics.confidence_change else {}
        with pytest.raises(ModelError, match="non-finite"):
            fn(m, x, maps, **kwargs)


def test_nonfinite_layer_raises_from_features_and_is_a_diagnosis_finding() -> None:
    m = tiny().eval()
    with torch.no_grad():
        m[3].weight[0, 0, 0, 0] = math.nan  # channel 0 of layer '3' becomes NaN
    x = images()
    with pytest.raises(ModelError, match="non-finite"):
        cs.features.top_examples(m, "3", x, k=1, quiet=True)
    with pytest.raises(ModelError, match="non-finite"):
        cs.features.live(m, "3", x[0])
    with pytest.raises(ModelError, match="NaN"):
        cs.features.maximize(m, "3", [0], steps=2, size=8, quiet=True)
    # diagnose's job is to find such layers: it reports them as an error finding, not silence
    report = cs.diagnose(m, x, quiet=True)
    bad = [f for f in report.findings if f.code == "nonfinite-outputs"]
    assert bad and all(f.severity == "error" for f in bad)
    assert {f.layer for f in bad} >= {"4"}  # the ReLU after the poisoned conv


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_inputs_raise_everywhere(value: float) -> None:
    m = tiny().eval()
    x = images()
    x[1, 0, 2, 3] = value
    maps = torch.full((2, 8, 8), 0.5)
    calls = [lambda meth=meth: call(meth, m, x) for meth in METHODS] + [
        lambda: cs.explain.attribute_all(m, x, quiet=True),
        lambda: cs.explain.metrics.confidence_change(m, x, maps),
        lambda: cs.explain.to_heatmap(x),
        lambda: cs.features.top_examples(m, "3", x, quiet=True),
        lambda: cs.diagnose(m, x, quiet=True),
        lambda: cs.diagnose.diagnose_dataset(m, x, quiet=True),
        lambda: cs.model.capture(m, x, "3"),
        lambda: cs.model.graph(m, x),
        lambda: cs.model.profile(m, x, repeat=1, warmup=0),
        lambda: cs.embed.pca(x.flatten(1), 2),
    ]
    for fn in calls:
        with pytest.raises(InputError, match="NaN|non-finite"):
            fn()
    with pytest.raises(InputError, match="non-finite"):  # the maps given to a metric too
        cs.explain.metrics.deletion(m, images(), torch.full((2, 8, 8), math.nan), quiet=True)


# ------------------------------------------------------------------------------------------------
# reduced precision: reductions in float32, results in the input's dtype
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("method", METHODS)
def test_reduced_precision_matches_float32(method: str, dtype: torch.dtype, tol: float) -> None:
    # Oracle: the float32 run of the same weights.
    ref_model = tiny().eval()
    low_model = tiny().eval().to(dtype)
    x = images(3)
    ref = call(method, ref_model, x, target=[0, 2, 4])
    got = call(method, low_model, x.to(dtype), target=[0, 2, 4])
    assert got.dtype == dtype and got.device == x.device and got.shape == ref.shape
    scale = float(ref.abs().max())
    assert scale > 0
    assert float((got.float() - ref).abs().max()) <= tol * scale


class Fixed(nn.Module):
    """``A = relu(a * x)`` (one input channel, ``C`` maps), GAP and a linear head with weights
    ``w``: activations and gradients at chosen scales."""

    def __init__(self, a: torch.Tensor, w: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, a.numel(), 1, bias=False)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(a.numel(), w.shape[0], bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(a.view(-1, 1, 1, 1))
            self.fc.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.mark.parametrize("case", ["underflow", "overflow"])
def test_grad_cam_pp_half_precision_edge_cases(case: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 16, 16, generator=gen) + 0.5
    if case == "underflow":  # dS/dA = w / 256 ~ 1e-4: g**2 ~ 1e-8 is below fp16's 6e-8
        a = torch.tensor([1.0, 2.0, 3.0, 0.5])
        w = torch.tensor([[0.03, 0.01, 0.02, 0.04], [0.02, 0.03, 0.01, 0.02]])
        g = (w[0] / 256).half()
        assert bool((g * g == 0).all())  # the bug's mechanism, in plain fp16 arithmetic
    else:  # sum(A) over 256 positions ~ 1e5 exceeds fp16's 65504
        a = torch.tensor([300.0, 200.0, 400.0, 250.0])
        w = torch.tensor([[0.5, 0.2, 0.3, 0.4], [0.1, 0.3, 0.2, 0.5]]) * 1e-2
        assert math.isinf(float((torch.relu(a[2] * x[0, 0]).half()).sum()))
    ref = cs.explain.grad_cam_pp(Fixed(a, w), x, target=0, layer="act")
    got = cs.explain.grad_cam_pp(Fixed(a, w).half(), x.half(), target=0, layer="act")
    assert got.dtype == torch.float16
    assert float(got.float().amax()) == pytest.approx(1.0)  # not an all-zero map
    torch.testing.assert_close(got.float(), ref, atol=5e-3, rtol=0)


def test_reductions_upcast_half_tensors() -> None:
    # minmax of a half map whose span (6e4 - -6e4) overflows fp16: float32 internally
    m = torch.tensor([[[-60000.0, 0.0], [30000.0, 60000.0]]], dtype=torch.float16)
    out = minmax(m)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.tensor([[[0.0, 0.5], [0.75, 1.0]]]))
    # finish_map: a NaN map is an error, never zeros
    with pytest.raises(ModelError, match="non-finite"):
        finish_map(torch.tensor([[[math.nan, 1.0]]]), (1, 2), True)
    # to_heatmap's l2 squares 300**2 = 9e4 > fp16 max: reduced in float32, result representable
    attr = torch.full((1, 3, 2, 2), 300.0, dtype=torch.float16)
    heat = cs.explain.to_heatmap(attr, reduce="l2")
    assert heat.dtype == torch.float16
    torch.testing.assert_close(heat.float(), torch.full((1, 2, 2), 300.0 * math.sqrt(3)),
                               rtol=1e-3, atol=0)


# ------------------------------------------------------------------------------------------------
# targets, batch sizes, units
# ------------------------------------------------------------------------------------------------
BAD_TARGETS = [[True, 0], True, np.bool_(True), "cat", b"cat", 1.5, [1.0, 2.0], [[1], [2]],
               [[1], [2, 3]], [1, "a"], torch.tensor([0.5, 1.0]), torch.tensor([True, False]),
               [1, 2, 3], object()]


@pytest.mark.parametrize("target", BAD_TARGETS, ids=repr)
@pytest.mark.parametrize("method", METHODS)
def test_bad_targets_raise_target_error(method: str, target) -> None:
    with pytest.raises(TargetError) as info:
        call(method, tiny().eval(), images(2), target=target)
    assert "pass" in str(info.value) or "map class" in str(info.value)


@pytest.mark.parametrize("target", [5, -1, [0, 5], torch.tensor([0, 99])])
def test_out_of_range_targets_raise_and_are_never_skipped(target) -> None:
    m = tiny().eval()
    for method in METHODS:
        with pytest.raises(TargetError, match="out of range"):
            call(method, m, images(2), target=target)
    # attribute_all used to "skip" every method on such an error and return nothing
    with pytest.raises(TargetError, match="out of range"):
        cs.explain.attribute_all(m, images(2), target=target, quiet=True)
    with pytest.raises(TargetError):
        cs.explain.attribute_all(m, images(2), target="cat", quiet=True)
    with pytest.raises(TargetError):
        cs.explain.attribute_all(m, images(2), target=[True, False], quiet=True)


def test_attribute_all_skips_only_methods_that_do_not_apply() -> None:
    # CAM needs GAP + one linear classifier: with two linear layers it does not apply
    m = nn.Sequential(*tiny().eval()[:-1], nn.Linear(6, 6), nn.Linear(6, 3)).eval()
    res = cs.explain.attribute_all(m, images(2), methods=["cam", "grad_cam"], layer="3",
                                   quiet=True)
    assert res.methods == ["grad_cam"] and "cam" in res.skipped
    with pytest.raises(NotApplicableError):
        cs.explain.cam(m, images(2))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3", None, float("nan")])
def test_bad_batch_sizes(bad) -> None:
    m = tiny().eval()
    x = images(2)
    maps = torch.full((2, 8, 8), 0.5)
    checks = [
        lambda: cs.explain.attribute_all(m, x, batch_size=bad, quiet=True),
        lambda: cs.explain.metrics.confidence_change(m, x, maps, batch_size=bad),
        lambda: cs.explain.metrics.deletion(m, x, maps, batch_size=bad, quiet=True),
        lambda: cs.features.top_examples(m, "3", x, batch_size=bad, quiet=True),
        lambda: cs.features.top_examples(m, "3", x, k=bad, quiet=True),
        lambda: cs.diagnose.diagnose_dataset(m, x, batch_size=bad, quiet=True),
    ]
    if bad is not None:  # None means "automatic" for these
        checks += [
            lambda: cs.features.maximize(m, "3", [0], steps=bad, size=8, quiet=True),
            lambda: cs.explain.score_cam(m, x, layer="3", batch_size=bad, quiet=True),
            lambda: cs.explain.attribute_all(m, x, score_cam_batch_size=bad, quiet=True),
            lambda: cs.features.maximize(m, "3", [0], steps=1, size=8, batch_size=bad,
                                         quiet=True),
        ]
    for fn in checks:
        with pytest.raises(InputError, match="positive int"):
            fn()


def test_positive_int_accepts_integers_only() -> None:
    assert positive_int(np.int64(3), "k") == 3 and positive_int(torch.tensor(2), "k") == 2
    assert positive_int(None, "k", allow_none=True) is None
    for bad in (0, -2, 2.0, 2.5, True, "2", torch.tensor(2.0), torch.tensor(True), [2]):
        with pytest.raises(InputError):
            positive_int(bad, "k")


def test_maximize_rejects_bool_units() -> None:
    m = tiny().eval()
    for units in ([True], True, [(True, 0, 0)], [np.bool_(False)]):
        with pytest.raises(InputError, match="not a channel index"):
            cs.features.maximize(m, "3", units, steps=1, size=8, quiet=True,
                                 objective="neuron" if isinstance(units, list)
                                 and isinstance(units[0], tuple) else "channel")
    # and unit 1 given as an int still works: the bool was the problem, not the index
    out = cs.features.maximize(m, "3", [1], steps=1, size=8, quiet=True)
    assert out.shape == (1, 3, 8, 8) and bool(torch.isfinite(out).all())


# ------------------------------------------------------------------------------------------------
# tensors of the wrong kind: meta, integer, non-contiguous, wrong rank, empty
# ------------------------------------------------------------------------------------------------
def test_meta_models_and_tensors_raise() -> None:
    meta_model = tiny().to("meta")
    x = images(2)
    for fn in [
        *[lambda meth=meth: call(meth, meta_model, x) for meth in METHODS],
        lambda: cs.explain.attribute_all(meta_model, x, quiet=True),
        lambda: cs.features.maximize(meta_model, "3", [0], steps=1, size=8, quiet=True),
        lambda: cs.features.top_examples(meta_model, "3", x, quiet=True),
        lambda: cs.diagnose(meta_model, x, quiet=True),
        lambda: cs.diagnose.diagnose_dataset(meta_model, x, quiet=True),
        lambda: cs.model.capture(meta_model, x),
        lambda: cs.model.graph(meta_model, x),
        lambda: cs.model.profile(meta_model, x, repeat=1, warmup=0),
    ]:
        with pytest.raises(ModelError, match="meta device.*to_empty"):
            fn()
    m = tiny().eval()
    xm = x.to("meta")
    for fn in [
        *[lambda meth=meth: call(meth, m, xm) for meth in METHODS],
        lambda: cs.explain.attribute_all(m, xm, quiet=True),
        lambda: cs.features.top_examples(m, "3", xm, quiet=True),
        lambda: cs.diagnose(m, xm, quiet=True),
        lambda: cs.model.capture(m, xm),
        lambda: cs.model.profile(m, xm, repeat=1, warmup=0),
        lambda: cs.explain.to_heatmap(xm),
        lambda: cs.embed.pca(torch.zeros(4, 3, device="meta"), 2),
    ]:
        with pytest.raises(InputError, match="meta device"):
            fn()


def test_integer_and_wrong_rank_inputs_raise() -> None:
    m = tiny().eval()
    ints = (images(2) * 255).to(torch.uint8)
    for meth in METHODS:
        with pytest.raises(InputError, match="floating-point"):
            call(meth, m, ints)
        with pytest.raises(InputError, match="unsqueeze"):
            call(meth, m, images(1)[0])
        with pytest.raises(InputError, match="4 dimensions"):
            call(meth, m, images(2)[None])
    with pytest.raises(InputError, match="floating-point"):
        cs.features.top_examples(m, "3", ints, quiet=True)
    with pytest.raises(ConvscopeError, match="'0'"):  # conv of uint8: fails, layer named
        cs.model.capture(m, ints, "3")


def test_empty_batches_raise() -> None:
    m = tiny().eval()
    empty = torch.zeros(0, 3, 8, 8)
    # diagnose on an empty batch used to report 0 findings
    for fn in [
        *[lambda meth=meth: call(meth, m, empty) for meth in METHODS],
        lambda: cs.diagnose(m, empty, quiet=True),
        lambda: cs.diagnose.diagnose_dataset(m, empty, quiet=True),
        lambda: cs.explain.attribute_all(m, empty, quiet=True),
        lambda: cs.features.top_examples(m, "3", empty, quiet=True),
        lambda: cs.model.capture(m, empty),
        lambda: cs.model.graph(m, empty),
    ]:
        with pytest.raises(InputError, match="empty"):
            fn()


@pytest.mark.parametrize("method", METHODS)
def test_non_contiguous_inputs_give_the_contiguous_result(method: str) -> None:
    m = tiny().eval()
    x = images(2)
    nc = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # same values, strided
    assert not nc.is_contiguous() and torch.equal(nc, x)
    torch.testing.assert_close(call(method, m, nc, target=1), call(method, m, x, target=1))


def test_unknown_layers_raise_layer_not_found() -> None:
    m = tiny().eval()
    x = images(2)
    for fn in [
        *[lambda meth=meth: call(meth, m, x, layer="nope") for meth in CAMS if meth != "cam"],
        lambda: cs.explain.grad_cam(m, x, layer=nn.Conv2d(3, 3, 1)),
        lambda: cs.features.maximize(m, "nope", [0], steps=1, quiet=True),
        lambda: cs.features.top_examples(m, "nope", x, quiet=True),
        lambda: cs.features.top_examples(m, 3, x, quiet=True),
        lambda: cs.diagnose(m, x, layers="nope", quiet=True),
        lambda: cs.model.capture(m, x, "nope"),
    ]:
        with pytest.raises(LayerNotFoundError):
            fn()


# ------------------------------------------------------------------------------------------------
# PCA lowrank: variances consistent with its own projections
# ------------------------------------------------------------------------------------------------
def test_pca_lowrank_variances_match_its_projections() -> None:
    gen = torch.Generator().manual_seed(0)
    # a flat spectrum (pure noise) is where the randomised sketch underestimates most
    x = torch.randn(300, 60, generator=gen, dtype=torch.float64)
    res = cs.embed.pca(x, 4, method="lowrank")
    # oracle 1: the variance of each projected column, computed independently with numpy
    proj = res.projections.numpy()
    np.testing.assert_allclose(res.explained_variance.numpy(), proj.var(axis=0, ddof=1),
                               rtol=1e-10)
    assert bool((res.explained_variance[:-1] >= res.explained_variance[1:]).all())
    # oracle 2: Ky Fan -- no k orthonormal directions hold more variance than the top k
    # eigenvalues of the covariance (brute force)
    evals = np.linalg.eigvalsh(np.cov(x.numpy(), rowvar=False))[::-1]
    assert float(res.explained_variance.sum()) <= evals[:4].sum() * (1 + 1e-12)
    total = np.trace(np.cov(x.numpy(), rowvar=False))
    np.testing.assert_allclose(res.explained_variance_ratio.numpy(),
                               res.explained_variance.numpy() / total, rtol=1e-10)


def test_pca_lowrank_agrees_with_sklearn_on_a_clear_spectrum() -> None:
    from sklearn.decomposition import PCA

    gen = torch.Generator().manual_seed(1)
    scales = torch.tensor([10.0, 6.0, 3.0] + [0.1] * 27, dtype=torch.float64)
    x = torch.randn(400, 30, generator=gen, dtype=torch.float64) * scales
    res = cs.embed.pca(x, 3, method="lowrank")
    ref = PCA(n_components=3, svd_solver="full").fit(x.numpy())
    np.testing.assert_allclose(res.explained_variance.numpy(), ref.explained_variance_,
                               rtol=1e-6)
    np.testing.assert_allclose(res.explained_variance_ratio.numpy(),
                               ref.explained_variance_ratio_, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# the user's model leaves every call as it came in (also after errors)
# ------------------------------------------------------------------------------------------------
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def snapshot(m: nn.Module) -> dict:
    return {
        "modes": [mod.training for mod in m.modules()],
        "grad": [p.requires_grad for p in m.parameters()],
        "stats": {k: v.clone() for k, v in m.state_dict().items() if "running" in k
                  or "num_batches" in k},
        "hooks": sum(len(getattr(mod, d)) for mod in m.modules() for d in HOOK_DICTS),
    }


def assert_same(m: nn.Module, before: dict) -> None:
    after = snapshot(m)
    assert after["modes"] == before["modes"]
    assert after["grad"] == before["grad"]
    assert after["hooks"] == before["hooks"] == 0
    for k, v in before["stats"].items():
        assert torch.equal(after["stats"][k], v), k


class Armed(nn.Module):
    """Raises in its forward once ``armed`` is set: an error deep inside every entry point."""

    armed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if Armed.armed:
            raise RuntimeError("boom")
        return x


def state_model() -> nn.Sequential:
    m = warmed()
    m.insert(3, Armed())  # after the batch norm and ReLU: the BN has already run
    m.train()
    m[5].eval()  # one sub-module in another mode than its parent
    return m


def method_entry(meth: str):
    layer = {"layer": "4"} if meth in CAMS and meth != "cam" else {}
    return lambda m, x: call(meth, m, x, **layer)


ENTRY_POINTS = {
    **{meth: method_entry(meth) for meth in METHODS},
    # (the choice is cached per model: forget it, so the armed call runs a forward again)
    "auto_layer": lambda m, x: (_AUTO_CACHE.pop(m, None), cs.explain.auto_layer(m, x))[1],
    "attribute_all": lambda m, x: cs.explain.attribute_all(m, x, layer="4", quiet=True),
    "confidence_change": lambda m, x: cs.explain.metrics.confidence_change(
        m, x, torch.full((x.shape[0], 8, 8), 0.5)),
    "deletion": lambda m, x: cs.explain.metrics.deletion(
        m, x, torch.rand(x.shape[0], 8, 8), steps=2, quiet=True),
    "insertion": lambda m, x: cs.explain.metrics.insertion(
        m, x, torch.rand(x.shape[0], 8, 8), steps=2, quiet=True),
    "maximize": lambda m, x: cs.features.maximize(m, "4", [0, 1], steps=2, size=8, quiet=True),
    "top_examples": lambda m, x: cs.features.top_examples(m, "4", x, k=1, quiet=True),
    "live": lambda m, x: cs.features.live(m, "4", x[0]),
    "receptive_field": lambda m, x: cs.features.receptive_field(m, "4", x[:1]),
    "diagnose": lambda m, x: cs.diagnose(m, x, quiet=True),
    "diagnose_dataset": lambda m, x: cs.diagnose.diagnose_dataset(m, x, quiet=True),
    "capture": lambda m, x: cs.model.capture(m, x, "1"),
    "capture_train": lambda m, x: cs.model.capture(m, x, "1", eval=False),
    "capture_inputs": lambda m, x: cs.model.capture_inputs(m, x, "8"),
    "collect_features": lambda m, x: cs.model.collect_features(m, [x], quiet=True),
    "default_feature_layer": lambda m, x: cs.model.default_feature_layer(m, x),
    "graph": lambda m, x: cs.model.graph(m, x),
    "graph_train": lambda m, x: cs.model.graph(m, x, eval=False, method="hooks"),
    "profile": lambda m, x: cs.model.profile(m, x, repeat=1, warmup=0),
    "profile_train": lambda m, x: cs.model.profile(m, x, repeat=1, warmup=0, train=True),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_model_state_is_restored_after_success_and_error(name: str) -> None:
    fn = ENTRY_POINTS[name]
    m = state_model()
    x = images(3) * 2
    before = snapshot(m)
    Armed.armed = False
    fn(m, x)
    assert_same(m, before)
    Armed.armed = True
    try:
        with pytest.raises(ConvscopeError, match="boom"):
            fn(m, x)
    finally:
        Armed.armed = False
    assert_same(m, before)
    # the oracle is sensitive: a plain train-mode forward does change the statistics
    with torch.no_grad():
        m(x)
    assert not torch.equal(m[1].running_mean, before["stats"]["1.running_mean"])
