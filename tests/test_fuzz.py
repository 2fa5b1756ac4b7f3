"""Property-based fuzz test over every public analysis entry point (issue 12, Build 4).

Hypothesis draws a model (fine, in train mode with batch norm, NaN outputs, on the meta device),
inputs (fine, non-contiguous, NaN, inf, integer, empty, wrong rank, wrong channels, meta, not a
tensor), targets (valid, out of range, bool, string, float, wrong length, a callable), layers
(valid, unknown, wrongly typed, a foreign module) and sizes (valid, 0, -1, 2.5, True, None).

The property: a call whose arguments hold a flaw it must notice raises a ``ConvscopeError``
whose message says what to do; a call with valid arguments returns a result that passes a cheap
invariant (shape, finite, [0, 1] for normalised maps; a non-contiguous input gives the
contiguous result). Anything else -- another exception type, a NaN map, a silent result for bad
input -- fails. After every call, also after errors, the model has the same modes,
``requires_grad``, batch-norm statistics and no hooks.

Deterministic (``derandomize=True``, no example database) so CI is stable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: an error message must say what to do: it contains one of these verbs
ADVICE = re.compile(
    r"\b(pass|use|choose|check|give|convert|replace|drop|make|materiali[sz]e|run|call|lower|"
    r"add|load|set|map|compute|build|flatten|stack|see|re-create|filter|install|name|keep|"
    r"return|pick|fix|try|reduce|upsample|resize|lower|raise|scale|split|train)\b",
    re.IGNORECASE,
)

CLASSES = 5
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, CLASSES),
    )


class Scale(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.value


def make_model(kind: str) -> nn.Module:
    m = tiny()
    if kind == "train":  # batch norm with statistics, train mode, a frozen parameter
        with torch.no_grad():
            m.train()
            m(torch.rand(6, 3, 8, 8))
        m[0].bias.requires_grad_(False)
        m[4].eval()
        return m
    m.eval()
    if kind == "nan":
        return nn.Sequential(*m, Scale(math.nan)).eval()
    if kind == "meta":
        return m.to("meta")
    return m


# ------------------------------------------------------------------------------------------------
# what a drawn case holds
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    model_kind: str
    model: nn.Module
    x: Any
    x_kind: str
    batch: int
    target: Any = None
    target_kind: str = "none"
    layer: Any = None
    layer_kind: str = "none"
    size: Any = None
    size_kind: str = "none"
    flaws: set[str] = field(default_factory=set)


BAD_X = {"nan", "inf", "int", "empty", "rank3", "rank5", "channels", "meta", "list"}


def draw_inputs(data: st.DataObject, b: int, clean: bool = False) -> tuple[Any, str]:
    kind = data.draw(st.sampled_from(
        ["ok", "noncontig"] if clean else
        ["ok", "ok", "ok", "noncontig", "nan", "inf", "int", "empty", "rank3", "rank5",
         "channels", "meta", "list"]), label="x")
    gen = torch.Generator().manual_seed(b)
    x = torch.rand(b, 3, 8, 8, generator=gen)
    if kind == "noncontig":
        x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    elif kind == "nan":
        x[-1, 0, 1, 1] = math.nan
    elif kind == "inf":
        x[0, 2, 3, 4] = -math.inf
    elif kind == "int":
        x = (x * 255).to(torch.uint8)
    elif kind == "empty":
        x = x[:0]
    elif kind == "rank3":
        x = x[0]
    elif kind == "rank5":
        x = x[None]
    elif kind == "channels":
        x = torch.rand(b, 2, 8, 8, generator=gen)
    elif kind == "meta":
        x = x.to("meta")
    elif kind == "list":
        x = x.tolist()
    return x, kind


def draw_target(data: st.DataObject, b: int, clean: bool = False) -> tuple[Any, str]:
    kind = data.draw(st.sampled_from(
        ["none", "int", "list", "callable"] if clean else
        ["none", "int", "list", "out", "negative", "bool", "bool_list", "str", "float",
         "float_list", "length", "float_tensor", "callable"]), label="target")
    value = {
        "none": None,
        "int": data.draw(st.integers(0, CLASSES - 1), label="class"),
        "list": [i % CLASSES for i in range(b)],
        "out": data.draw(st.sampled_from([CLASSES, 100, 2**40]), label="out"),
        "negative": -1,
        "bool": True,
        "bool_list": [True] + [0] * (b - 1),
        "str": "cat",
        "float": 1.5,
        "float_list": [1.0] * b,
        "length": [0] * (b + 1),
        "float_tensor": torch.zeros(b),
        "callable": lambda out: out[:, 1] - out[:, 0],
    }[kind]
    return value, kind


def draw_layer(data: st.DataObject, clean: bool = False) -> tuple[Any, str]:
    kind = data.draw(st.sampled_from(["none", "ok"] if clean else
                                     ["none", "ok", "ok", "unknown", "int", "foreign"]),
                     label="layer")
    return {"none": None, "ok": "3", "unknown": "layer9", "int": 3,
            "foreign": nn.Conv2d(4, 4, 1)}[kind], kind


def draw_size(data: st.DataObject, allow_none: bool = True, clean: bool = False
              ) -> tuple[Any, str]:
    options = ["ok", "ok", "zero", "negative", "float", "bool", "str"] + (
        ["none"] if allow_none else ["none_bad"])
    if clean:
        options = ["ok", "none"] if allow_none else ["ok"]
    kind = data.draw(st.sampled_from(options), label="size")
    value = {"ok": data.draw(st.integers(1, 4), label="n"), "zero": 0, "negative": -1,
             "float": 2.5, "bool": True, "str": "2", "none": None, "none_bad": None}[kind]
    return value, kind


def draw_case(data: st.DataObject, *, target: bool = False, layer: bool = False,
              size: str | None = None) -> Case:
    # about a third of the cases are valid throughout (else almost every case has some flaw
    # and the "correct result" side of the property would hardly be exercised)
    clean = data.draw(st.integers(0, 2), label="clean") == 0
    model_kind = data.draw(st.sampled_from(["ok", "train"] if clean else
                                           ["ok", "ok", "train", "nan", "meta"]), label="model")
    b = data.draw(st.integers(1, 3), label="batch")
    x, x_kind = draw_inputs(data, b, clean)
    case = Case(model_kind, make_model(model_kind), x, x_kind, b)
    if model_kind == "meta":
        case.flaws.add("meta model")
    if x_kind in BAD_X:
        case.flaws.add(f"{x_kind} inputs")
    if target:
        case.target, case.target_kind = draw_target(data, b, clean)
        if case.target_kind not in ("none", "int", "list", "callable"):
            case.flaws.add(f"{case.target_kind} target")
    if layer:
        case.layer, case.layer_kind = draw_layer(data, clean)
        if case.layer_kind in ("unknown", "int", "foreign"):
            case.flaws.add(f"{case.layer_kind} layer")
    if size is not None:
        case.size, case.size_kind = draw_size(data, allow_none=size == "optional", clean=clean)
        if case.size_kind not in ("ok", "none"):
            case.flaws.add(f"{case.size_kind} size")
    return case


# ------------------------------------------------------------------------------------------------
# the property
# ------------------------------------------------------------------------------------------------
def snapshot(m: nn.Module) -> tuple:
    if any(t.is_meta for t in m.state_dict().values()):
        return ([mod.training for mod in m.modules()], [p.requires_grad for p in m.parameters()])
    return (
        [mod.training for mod in m.modules()],
        [p.requires_grad for p in m.parameters()],
        [(k, v.clone()) for k, v in m.state_dict().items() if "running" in k or "num_b" in k],
        sum(len(getattr(mod, d)) for mod in m.modules() for d in HOOK_DICTS),
    )


def same(a: tuple, b: tuple) -> bool:
    if len(a) != len(b) or a[:2] != b[:2]:
        return False
    if len(a) == 2:
        return True
    return a[3] == b[3] == 0 and all(
        ka == kb and torch.equal(va, vb) for (ka, va), (kb, vb) in zip(a[2], b[2], strict=True))


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


def unit(t: torch.Tensor) -> bool:
    return finite(t) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0 + 1e-6


def check(case: Case, run, invariant, *, expect_error: set[str] | None = None) -> None:
    """Run ``run(case)``; the outcome must be a ConvscopeError with advice when the case has a
    flaw (or one of ``expect_error``), else a result satisfying ``invariant``."""
    flaws = set(case.flaws) | (expect_error or set())
    before = snapshot(case.model)
    try:
        result = run(case)
    except ConvscopeError as exc:
        msg = str(exc)
        assert msg.strip(), f"empty message from {type(exc).__name__}"
        assert ADVICE.search(msg), f"message does not say what to do: {msg!r}"
        assert flaws, f"valid call raised {type(exc).__name__}: {msg} ({case})"
    else:
        assert not flaws, f"{sorted(flaws)} gave a result instead of an error ({case})"
        invariant(case, result)
    assert same(snapshot(case.model), before), "the model's state changed"


def contiguous_twin(case: Case, run, result) -> None:
    """A non-contiguous input must give the contiguous input's result."""
    if case.x_kind == "noncontig":
        twin = Case(**{**case.__dict__, "x": case.x.contiguous(), "x_kind": "ok"})
        torch.testing.assert_close(result, run(twin))


# ------------------------------------------------------------------------------------------------
# the entry points
# ------------------------------------------------------------------------------------------------
def attribution(method: str):
    def run(c: Case) -> torch.Tensor:
        kw: dict[str, Any] = {"target": c.target}
        if method in ("grad_cam", "grad_cam_pp", "score_cam", "cam"):
            kw["layer"] = c.layer
        if method == "score_cam":
            kw.update(batch_size=c.size, quiet=True)
        return getattr(cs.explain, method)(c.model, c.x, **kw)

    def invariant(c: Case, out: torch.Tensor) -> None:
        if method in ("saliency", "deconvnet", "guided_backprop"):
            assert out.shape == c.x.shape and finite(out)
        else:
            assert out.shape == (c.batch, 8, 8) and unit(out)
        assert out.dtype == c.x.dtype
        contiguous_twin(c, run, out)

    return run, invariant


@pytest.mark.parametrize("method", ["saliency", "deconvnet", "guided_backprop", "cam",
                                    "grad_cam", "grad_cam_pp", "score_cam"])
@FUZZ
@given(data=st.data())
def test_fuzz_attribution_methods(method: str, data: st.DataObject) -> None:
    case = draw_case(data, target=True, layer=method in ("cam", "grad_cam", "grad_cam_pp",
                                                         "score_cam"),
                     size="optional" if method == "score_cam" else None)
    extra = set()
    if case.model_kind == "nan":
        extra.add("NaN outputs")
    if method == "cam" and case.target_kind == "callable":
        extra.add("CAM needs classes")  # the callable returns [B] scores, not [B, K]
    if method == "cam" and case.layer_kind == "ok":
        extra.add("CAM layer not before GAP")  # '3' is the conv, the GAP sees ReLU '4'
    run, invariant = attribution(method)
    check(case, run, invariant, expect_error=extra)


@FUZZ
@given(data=st.data())
def test_fuzz_attribute_all(data: st.DataObject) -> None:
    case = draw_case(data, target=True, layer=True, size="required")
    extra = {"NaN outputs"} if case.model_kind == "nan" else set()

    def run(c: Case):
        return cs.explain.attribute_all(c.model, c.x, target=c.target, layer=c.layer,
                                        batch_size=c.size, score_cam_batch_size=8, quiet=True)

    def invariant(c: Case, res) -> None:
        assert len(res) == c.batch and res.methods
        for method in res.methods:
            assert res.maps[method].shape == (c.batch, 8, 8) and unit(res.maps[method])
            assert unit(res.drop[method])
        assert unit(res.prob)

    check(case, run, invariant, expect_error=extra)


@pytest.mark.parametrize("metric", ["confidence_change", "deletion", "insertion"])
@FUZZ
@given(data=st.data())
def test_fuzz_metrics(metric: str, data: st.DataObject) -> None:
    case = draw_case(data, target=True, size="required")
    maps_kind = data.draw(st.sampled_from(["ok", "ok", "nan", "shape", "range"]), label="maps")
    b = case.batch
    maps = {"ok": torch.rand(b, 8, 8, generator=torch.Generator().manual_seed(b)),
            "nan": torch.full((b, 8, 8), math.nan), "shape": torch.rand(b, 4, 4),
            "range": torch.full((b, 8, 8), 3.0)}[maps_kind]
    extra = {"NaN outputs"} if case.model_kind == "nan" else set()
    if maps_kind in ("nan", "shape") or (maps_kind == "range" and metric == "confidence_change"):
        extra.add(f"{maps_kind} maps")

    def run(c: Case):
        fn = getattr(cs.explain.metrics, metric)
        kw = {} if metric == "confidence_change" else {"steps": 2, "quiet": True}
        return fn(c.model, c.x, maps, c.target, batch_size=c.size, **kw)

    def invariant(c: Case, res) -> None:
        if metric == "confidence_change":
            assert unit(res.original) and unit(res.explained) and unit(res.drop)
        else:
            assert res.scores.shape == (c.batch, 3) and unit(res.scores) and unit(res.auc)

    check(case, run, invariant, expect_error=extra)


@FUZZ
@given(data=st.data())
def test_fuzz_maximize(data: st.DataObject) -> None:
    case = draw_case(data, layer=True, size="optional")
    case.flaws = {f for f in case.flaws if "inputs" not in f}  # maximize takes no inputs
    units_kind = data.draw(st.sampled_from(["ok", "ok", "bool", "range", "str", "empty", "float"]),
                           label="units")
    units = {"ok": [0, 1], "bool": [True], "range": [99], "str": ["a"], "empty": [],
             "float": [1.5]}[units_kind]
    extra = set() if units_kind == "ok" else {f"{units_kind} units"}
    if case.model_kind == "nan" and case.layer_kind == "none":
        extra.add("NaN logits")  # layer None optimises the (NaN) output; layer '3' is finite

    def run(c: Case):
        return cs.features.maximize(c.model, c.layer, units, steps=2, size=8, batch_size=c.size,
                                    objective="channel" if c.layer is not None else "logit",
                                    quiet=True)

    def invariant(c: Case, out: torch.Tensor) -> None:
        assert out.shape == (len(units), 3, 8, 8) and unit(out)

    check(case, run, invariant, expect_error=extra)


@FUZZ
@given(data=st.data())
def test_fuzz_top_examples(data: st.DataObject) -> None:
    case = draw_case(data, layer=True, size="required")
    if case.layer_kind == "none":
        case.flaws.add("no layer")  # top_examples needs a layer
    k, k_kind = draw_size(data, allow_none=False)
    extra = set() if k_kind == "ok" else {f"{k_kind} k"}

    def run(c: Case):
        return cs.features.top_examples(c.model, c.layer, c.x, k=k, batch_size=c.size,
                                        quiet=True)

    def invariant(c: Case, res) -> None:
        used = res.indices >= 0
        assert res.values.shape == (6, k)  # layer '3' has 6 channels
        assert int(used.sum()) == 6 * min(k, c.batch)
        assert finite(res.values[used]) and bool((res.indices[used] < c.batch).all())

    check(case, run, invariant, expect_error=extra)


@pytest.mark.parametrize("entry", ["diagnose", "diagnose_dataset"])
@FUZZ
@given(data=st.data())
def test_fuzz_diagnose(entry: str, data: st.DataObject) -> None:
    case = draw_case(data, size="required" if entry == "diagnose_dataset" else None)
    if entry == "diagnose":
        case.layer, case.layer_kind = draw_layer(data)
        if case.layer_kind in ("unknown", "int", "foreign"):
            case.flaws.add(f"{case.layer_kind} layer")
    def run(c: Case):
        if entry == "diagnose":
            return cs.diagnose(c.model, c.x, layers=c.layer, quiet=True)
        return cs.diagnose.diagnose_dataset(c.model, c.x, batch_size=c.size, quiet=True)

    def invariant(c: Case, report) -> None:
        codes = {f.code for f in report.findings}
        # NaN outputs are a finding with severity "error", never silence
        assert ("nonfinite-outputs" in codes) == (c.model_kind == "nan")
        assert report.layers

    check(case, run, invariant)


@pytest.mark.parametrize("entry", ["capture", "capture_inputs", "graph", "profile",
                                   "collect_features", "live"])
@FUZZ
@given(data=st.data())
def test_fuzz_model(entry: str, data: st.DataObject) -> None:
    case = draw_case(data, layer=entry in ("capture", "capture_inputs", "live"))
    if entry == "capture_inputs" and case.layer_kind == "none":
        case.flaws.add("no layer")
    if entry == "live":
        if case.layer_kind == "none":
            case.flaws.add("no layer")
        if case.x_kind not in BAD_X and case.batch > 1:
            case.flaws.add("a batch, not one image")
        if case.x_kind == "rank3":  # one image [C, H, W] is what live takes
            case.flaws.discard("rank3 inputs")
            case.batch = 1
    extra: set[str] = set()

    def run(c: Case):
        if entry == "capture":
            return cs.model.capture(c.model, c.x, c.layer)
        if entry == "capture_inputs":
            return cs.model.capture_inputs(c.model, c.x, c.layer)
        if entry == "graph":
            return cs.model.graph(c.model, c.x)
        if entry == "profile":
            return cs.model.profile(c.model, c.x, repeat=1, warmup=0)
        if entry == "live":
            return cs.features.live(c.model, c.layer, c.x)
        return cs.model.collect_features(c.model, [c.x], quiet=True)

    def invariant(c: Case, res) -> None:
        if entry in ("capture", "capture_inputs"):
            assert res and all(isinstance(v, torch.Tensor) and v.shape[0] == c.batch
                               for v in res.values())
            if c.model_kind != "nan":
                assert all(finite(v) for v in res.values())
        elif entry == "graph":
            assert len(list(res)) >= 8
        elif entry == "profile":
            assert len(res) >= 8 and bool((res["forward_s"] >= 0).all())
        elif entry == "live":
            assert res.shape == (6, 8, 8) and finite(res)
        else:
            feats, labels = res
            assert feats.shape == (c.batch, 6) and labels is None
            if c.model_kind != "nan":
                assert finite(feats)

    check(case, run, invariant, expect_error=extra)


@FUZZ
@given(data=st.data())
def test_fuzz_pca(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["ok", "ok", "ok", "int", "noncontig", "nan", "meta",
                                      "rank1", "rank3", "one_row", "bool", "list"]), label="f")
    n = data.draw(st.integers(2, 12), label="n")
    d = data.draw(st.integers(1, 6), label="d")
    gen = torch.Generator().manual_seed(n * 7 + d)
    f = torch.randn(n, d, generator=gen, dtype=torch.float64)
    make = {"ok": lambda: f, "int": lambda: (f * 10).long(),
            "noncontig": lambda: f.T.contiguous().T,
            "nan": lambda: f.masked_fill(f.abs() >= f.abs().max(), math.nan),
            "meta": lambda: f.to("meta"), "rank1": lambda: f[:, 0], "rank3": lambda: f[None],
            "one_row": lambda: f[:1], "bool": lambda: f > 0, "list": lambda: f.tolist()}
    f = make[kind]()
    k_kind = data.draw(st.sampled_from(["ok", "ok", "zero", "big", "bool", "float"]), label="k")
    k = {"ok": data.draw(st.integers(1, min(n, d)), label="kv"), "zero": 0, "big": min(n, d) + 1,
         "bool": True, "float": 1.5}[k_kind]
    method = data.draw(st.sampled_from(["auto", "covariance", "eigh", "gram", "lowrank",
                                        "nope"]), label="method")
    flawed = kind in ("nan", "meta", "rank1", "rank3", "one_row", "bool", "list") or \
        k_kind != "ok" or method == "nope"
    try:
        res = cs.embed.pca(f, k, method=method)
    except ConvscopeError as exc:
        assert ADVICE.search(str(exc)), str(exc)
        assert flawed, f"valid PCA raised: {exc}"
        return
    assert not flawed, f"{kind} features / k={k!r} / {method} gave a result"
    assert res.projections.shape == (n, k) and finite(res.projections)
    var = res.projections.double().var(dim=0, unbiased=True)
    torch.testing.assert_close(res.explained_variance.double(), var, rtol=1e-4, atol=1e-8)
    assert bool((res.explained_variance_ratio >= -1e-9).all())
    assert float(res.explained_variance_ratio.sum()) <= 1 + 1e-6
