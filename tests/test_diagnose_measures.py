"""The diagnosis measures of Wang & Li (2020) added for issue 15: channel-distribution distance,
split-point collapse, the whole layer's distribution, the depth profile of the weights and the
dense heatmap's noise; each against a hand-computed case, each rule on an injected fault, and a
briefly trained model that raises none of the new alarms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.diagnose import diagnose, diagnose_activations
from convscope.diagnose.cluster import split_collapse
from convscope.diagnose.rules import profile_findings
from convscope.diagnose.stats import (
    ParamStats,
    channel_distance,
    dense_noise,
    depth_profile,
    distribution_shape,
)
from convscope.diagnose.thresholds import Thresholds

NEW = {"alike-channel-distributions", "outlier-outputs", "collapsed-param-splits",
       "noisy-dense-params", "param-depth-profile"}

# ------------------------------------------------------------------------------------------------
# measures against hand-computed cases


def test_split_collapse_hand_case():
    assert split_collapse([0.0, 0.001, 0.002, 0.5, 0.9], 0.01) == pytest.approx(3 / 5)
    assert split_collapse([0.1, 0.2, 0.3, 0.4], 0.01) == pytest.approx(1 / 4)
    assert split_collapse([0.7] * 6, 0.0) == 1.0
    assert split_collapse([], 0.01) is None


def test_distribution_shape_hand_case():
    v = torch.tensor([0.0, 0, 0, 0, -1, 1, -2, 2])
    d = distribution_shape(v)
    # mean 0, m2 = 10/8, m4 = 34/8; active [-1, 1, -2, 2]: m2 = 2.5, m4 = 8.5
    assert d["zero_share"] == 0.5 and d["skewness"] == pytest.approx(0.0)
    assert d["excess_kurtosis"] == pytest.approx((34 / 8) / (10 / 8) ** 2 - 3)
    assert d["active_kurtosis"] == pytest.approx(8.5 / 2.5**2 - 3)
    skewed = distribution_shape(torch.tensor([0.0, 0.0, 0.0, 3.0]))
    dev = np.array([-0.75, -0.75, -0.75, 2.25])  # deviations from the mean 0.75
    assert skewed["skewness"] == pytest.approx((dev**3).mean() / (dev**2).mean() ** 1.5)
    assert skewed["active_kurtosis"] is None  # one non-zero value


@pytest.mark.parametrize("atol", [0.0, 0.05])
def test_distribution_shape_matches_scipy(atol):
    from scipy import stats

    g = torch.Generator().manual_seed(3)
    x = torch.relu(torch.randn(4000, generator=g)) ** 2 + 0.01 * (torch.rand(4000, generator=g) > 0.5)
    d = distribution_shape(x, dead_atol=atol)
    v = x.double().numpy()
    assert d["skewness"] == pytest.approx(stats.skew(v), rel=1e-6)
    assert d["excess_kurtosis"] == pytest.approx(stats.kurtosis(v), rel=1e-6)
    act = v[np.abs(v) > atol]
    assert d["active_kurtosis"] == pytest.approx(stats.kurtosis(act), rel=1e-6)
    assert d["zero_share"] == pytest.approx(1 - len(act) / len(v))


def test_channel_distance_hand_case():
    base = torch.linspace(0.0, 1.0, 1000)
    x = torch.stack([base, base + 2.0], 1)  # [B=1000, F=2]: same shape, shifted by 2
    std = float(base.std(unbiased=False))
    assert channel_distance(x) == pytest.approx(2.0 / std, rel=1e-4)
    same = torch.stack([base, base.flip(0), base[torch.randperm(1000)]], 1)
    assert channel_distance(same) == pytest.approx(0.0, abs=1e-6)
    assert channel_distance(x[:10]) is None  # fewer than 64 values per channel
    assert channel_distance(x, torch.tensor([True, False])) is None  # one live channel


def test_dense_noise_hand_cases():
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(16, 1, generator=g), torch.randn(1, 24, generator=g)
    assert dense_noise(u @ v) == pytest.approx(0.0, abs=1e-9)  # rank one: all structure
    # identity: every singular value 1 < edge = sqrt(16/256) * (4 + 4) = 2: all "noise"
    assert dense_noise(torch.eye(16)) == pytest.approx(1.0)
    assert dense_noise(torch.zeros(4, 4)) is None
    spiked = u @ v
    spiked[0, 0] = float("inf")  # counts as 0: still rank-one-like, and a number, not an error
    assert 0.0 <= dense_noise(spiked) < 0.5
    # scale-free: the share is the same for the matrix times 1e6
    w = torch.randn(12, 20, generator=torch.Generator().manual_seed(2)) + u[:12] @ v[:, :20]
    assert dense_noise(w * 1e6) == pytest.approx(dense_noise(w), rel=1e-6)  # float32 input


def test_depth_profile_and_rule_hand_case():
    ps = [ParamStats(name=f"l{i}", gain=g, shape_label="normal") for i, g in
          enumerate([1.0, 2.0, 3.0, 10.0])]
    depth_profile(ps)
    assert [p.depth for p in ps] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [p.gain_ratio for p in ps] == pytest.approx([0.4, 0.8, 1.2, 4.0])
    assert profile_findings(ps, Thresholds()) == []  # the last layer may be wide
    ps = [ParamStats(name=f"l{i}", gain=g) for i, g in enumerate([1.0, 10.0, 1.0, 1.0])]
    f = profile_findings(ps, Thresholds())
    assert [x.layer for x in f] == ["l1"] and f[0].evidence["gain_ratio"] == pytest.approx(10)
    assert f[0].severity == "info" and "§1.3.5" in f[0].advice


def test_outlier_outputs_rule_on_tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(16, 12, 8, 8, generator=g))
    assert "outlier-outputs" not in diagnose_activations({"x": x}).codes()
    x[0, 3, 2, 2] = 1000.0
    r = diagnose_activations({"x": x})
    f = r.select(code="outlier-outputs")[0]
    assert f.evidence["active_kurtosis"] > 50 and "exploding-outputs" not in r.codes()


def test_alike_channel_distributions_rule_on_tensors():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(512, generator=g)
    perm = torch.stack([v[torch.randperm(512, generator=g)] for _ in range(8)], 1)  # [512, 8]
    r = diagnose_activations({"f": perm})
    assert r.layer("f").abstraction == "high"
    assert r.layer("f").channel_distance == pytest.approx(0.0, abs=1e-6)
    assert "alike-channel-distributions" in r.codes()
    spread = perm * torch.linspace(0.5, 3, 8) + torch.arange(8.0)  # own scale and offset
    assert "alike-channel-distributions" not in diagnose_activations({"f": spread}).codes()


# ------------------------------------------------------------------------------------------------
# a briefly trained model and injected faults


@pytest.fixture(scope="module")
def trained():
    from convscope.data.shapes import Shapes

    torch.manual_seed(0)
    x, y, _ = Shapes(n=512, size=16, num_classes=4, seed=0).tensors()
    model = cs.zoo.resnet(num_classes=4, width=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        i = torch.randint(0, len(x), (32,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, x[:64]


def _new_codes(model, x) -> dict[str, set[str]]:
    r = diagnose(model, x, quiet=True)
    out: dict[str, set[str]] = {}
    for f in r.findings:
        if f.code in NEW:
            out.setdefault(f.code, set()).add(f.layer)
    return out


def _faulty(model, fault: str):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        if fault == "identical channel distributions":
            m.fc.weight.copy_(m.fc.weight[:1].expand_as(m.fc.weight))
            m.fc.bias.fill_(0.1)
        elif fault == "collapsed split points":
            w = m.layer3[0].conv1.weight
            w.copy_(w[:1].expand_as(w) + 1e-4 * torch.randn_like(w))
        elif fault == "wide-uniform middle layer":
            nn.init.uniform_(m.layer2[0].conv2.weight, -2.0, 2.0)
        elif fault == "noisy dense layer":
            w = m.fc.weight
            w.add_(5 * float(w.std()) * torch.randn_like(w))
    return m


FAULTS = {
    "identical channel distributions": ("alike-channel-distributions", "fc"),
    "collapsed split points": ("collapsed-param-splits", "layer3.0.conv1"),
    "wide-uniform middle layer": ("param-depth-profile", "layer2.0.conv2"),
    "noisy dense layer": ("noisy-dense-params", "fc"),
}


def test_healthy_trained_model_raises_no_new_alarm(trained):
    model, x = trained
    assert _new_codes(model, x) == {}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_rule_fires_on_its_injected_fault(trained, fault):
    model, x = trained
    code, layer = FAULTS[fault]
    found = _new_codes(_faulty(model, fault), x)
    print(f"\nFAULT {fault!r}: {sorted((c, sorted(v)) for c, v in found.items())}")
    assert layer in found.get(code, set())
    # the measured number is the evidence, next to the advice
    f = diagnose(_faulty(model, fault), x, quiet=True).select(code=code, layer=layer)[0]
    assert f.advice and f.evidence and not any(
        isinstance(v, float) and math.isnan(v) for v in f.evidence.values())


def _new_codes_dataset(model, x) -> dict[str, set[str]]:
    from convscope.diagnose import diagnose_dataset

    r = diagnose_dataset(model, x, batch_size=16, quiet=True)  # 4 batches, summed statistics
    out: dict[str, set[str]] = {}
    for f in r.findings:
        if f.code in NEW:
            out.setdefault(f.code, set()).add(f.layer)
    return out


def test_dataset_diagnosis_measures_the_output_distributions_too(trained):
    """diagnose_dataset fills the whole-output shape and the channel distance from statistics
    that add up over batches: the healthy model raises no new alarm, the identical-channel
    fault raises the same finding as the one-batch diagnosis."""
    model, x = trained
    assert _new_codes_dataset(model, x) == {}
    found = _new_codes_dataset(_faulty(model, "identical channel distributions"), x)
    assert "fc" in found.get("alike-channel-distributions", set())
