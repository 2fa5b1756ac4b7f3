"""cs.diagnose: distances, clustering and KDE against independent oracles; Wang & Li's weight grid
checked by hand; each rule on a constructed pattern and its healthy twin; bad input; Report
serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import squareform
from scipy.stats import gaussian_kde
from torch import nn

import convscope as cs
from convscope.diagnose import (
    Report,
    Thresholds,
    channel_clustering,
    cosine_distances,
    diagnose,
    diagnose_activations,
    kde,
    output_view,
    param_grid,
    param_view,
)
from convscope.errors import InputError, LayerNotFoundError

# ------------------------------------------------------------------------------------------------
# distances, clustering, KDE


def brute_cosine(vectors: np.ndarray) -> np.ndarray:
    """Wang & Li (2020)'s formula, one pair at a time, in float64."""
    n = vectors.shape[0]
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            a, b = vectors[i], vectors[j]
            na, nb = math.sqrt(float((a * a).sum())), math.sqrt(float((b * b).sum()))
            if na == 0 or nb == 0:
                d[i, j] = 2.0
            else:
                d[i, j] = 1.0 - float((a * b).sum()) / (na * nb)
    return d


def maps_with_dead(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(4, 7, 5, 5, generator=g))
    x[:, 2] = 0  # dead channels
    x[:, 5] = 0
    x[:, 4] = -x[:, 3]  # opposite of channel 3 where live: distance up to 2
    x[:, 6] = 3.0 * x[:, 0]  # same direction as channel 0: distance 0
    return x


def test_cosine_distance_matches_brute_force_and_dead_channels_sit_at_2():
    x = maps_with_dead()
    vec = x.permute(1, 0, 2, 3).reshape(7, -1).double().numpy()
    want = brute_cosine(vec)
    got = cosine_distances(cs.diagnose.channel_vectors(x)).double().numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[2, [0, 1, 3, 4, 5, 6]] == 2.0) and got[2, 2] == 0.0
    assert got[2, 5] == 2.0  # two dead channels are also at 2 from each other
    assert got[0, 6] == pytest.approx(0.0, abs=1e-6)
    assert got.min() >= 0.0 and got.max() <= 2.0


def test_linkage_and_dendrogram_match_scipy_on_brute_force_distances():
    x = maps_with_dead(1)
    vec = x.permute(1, 0, 2, 3).reshape(7, -1).double().numpy()
    z_want = linkage(squareform(brute_cosine(vec), checks=False), method="single")
    cl = channel_clustering(x)
    np.testing.assert_allclose(cl.linkage, z_want, atol=1e-6)
    np.testing.assert_allclose(cl.heights, z_want[:, 2], atol=1e-6)
    dg = dendrogram(z_want, no_plot=True)
    assert list(cl.leaves) == dg["leaves"]
    np.testing.assert_allclose(np.array(cl.icoord), np.array(dg["icoord"]))
    np.testing.assert_allclose(np.array(cl.dcoord), np.array(dg["dcoord"]), atol=1e-6)
    assert cl.n_dead == 2
    # the live tree: dropping the two merges at height 2 gives the tree of the live channels
    live = [0, 1, 3, 4, 6]
    z_live = linkage(squareform(brute_cosine(vec[live]), checks=False), method="single")
    np.testing.assert_allclose(cl.live_heights(), np.sort(z_live[:, 2]), atol=1e-6)


def test_features_cluster_over_the_batch():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(16, 9, generator=g)
    cl = channel_clustering(f)
    z_want = linkage(squareform(brute_cosine(f.T.double().numpy()), checks=False), "single")
    np.testing.assert_allclose(cl.linkage, z_want, atol=1e-6)


def test_kde_matches_scipy_gaussian_kde():
    rng = np.random.default_rng(0)
    rows = np.stack([rng.normal(0, 1, 300), rng.normal(3, 0.2, 300), rng.uniform(-2, 5, 300)])
    grid = np.linspace(-4, 6, 101)
    for bw in ("scott", "silverman"):
        got = kde(torch.tensor(rows), grid=grid, bandwidth=bw)
        for c in range(3):
            want = gaussian_kde(rows[c], bw_method=bw)(grid)
            np.testing.assert_allclose(got.density[c], want, rtol=1e-6, atol=1e-9)
            assert got.bandwidth[c] == pytest.approx(
                math.sqrt(gaussian_kde(rows[c], bw_method=bw).covariance[0, 0]), rel=1e-9
            )
    # a fixed bandwidth h is scipy's factor h / std
    got = kde(torch.tensor(rows[:1]), grid=grid, bandwidth=0.5)
    want = gaussian_kde(rows[0], bw_method=0.5 / rows[0].std(ddof=1))(grid)
    np.testing.assert_allclose(got.density[0], want, rtol=1e-6)


def test_kde_default_grid_integrates_to_one_and_ignores_nan():
    rng = np.random.default_rng(1)
    v = torch.tensor(rng.normal(0, 1, (2, 200)))
    v[1, :10] = float("nan")
    k = kde(v, points=400)
    area = np.trapezoid(k.density, k.grid, axis=1)
    np.testing.assert_allclose(area, 1.0, atol=2e-3)
    want = gaussian_kde(v[1, 10:].numpy())(k.grid)
    np.testing.assert_allclose(k.density[1], want, rtol=1e-6, atol=1e-12)


def test_kde_of_a_constant_row_is_a_marked_peak_not_an_error():
    v = torch.stack([torch.zeros(50), torch.randn(50)])
    k = kde(v)
    assert k.degenerate.tolist() == [True, False]
    assert np.isfinite(k.density).all()
    assert k.grid[np.argmax(k.density[0])] == pytest.approx(0.0, abs=0.1)


# ------------------------------------------------------------------------------------------------
# Wang & Li's parameter grid


def minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


def test_conv_param_grid_layout_by_hand():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(3, 2, (2, 3))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(2, 3, 2, 3, generator=g))
        conv.weight[1, 2] = 0.7  # a constant cell
        conv.bias.copy_(torch.tensor([-1.0, 3.0]))
    grid = param_grid(conv).numpy()
    w = conv.weight.detach().numpy()
    assert grid.shape == (2 * 2, 3 * 3 + 1)  # rows: c_out x kh; columns: c_in x kw + bias
    for o in range(2):
        for i in range(3):
            cell = grid[o * 2 : o * 2 + 2, i * 3 : i * 3 + 3]
            if (o, i) == (1, 2):
                np.testing.assert_array_equal(cell, 0.5)
            else:
                np.testing.assert_allclose(cell, minmax(w[o, i]), atol=1e-6)
    np.testing.assert_array_equal(grid[:2, -1], 0.0)  # smallest bias
    np.testing.assert_array_equal(grid[2:, -1], 1.0)  # largest bias


def test_transposed_conv_grid_is_oriented_like_a_conv_and_gap_is_nan():
    deconv = nn.ConvTranspose2d(3, 4, 2)  # PyTorch weight [c_in=3, c_out=4, 2, 2]
    grid = param_grid(deconv)
    same = param_grid(deconv.weight.detach().transpose(0, 1).contiguous(), deconv.bias)
    assert grid.shape == (4 * 2, 3 * 2 + 1)
    torch.testing.assert_close(grid, same)
    torch.testing.assert_close(grid, param_grid(deconv.weight, deconv.bias, transposed=True))
    gapped = param_grid(deconv, gap=1).numpy()
    assert gapped.shape == (4 * 3 - 1, 3 * 3 - 1 + 1 + 1)
    assert np.isnan(gapped[2]).all() and np.isnan(gapped[:, 2]).all()
    np.testing.assert_allclose(gapped[:2, :2], grid[:2, :2].numpy())
    np.testing.assert_allclose(gapped[:2, -1], grid[:2, -1].numpy())


def test_linear_grid_is_the_raw_heatmap_with_bias_column():
    lin = nn.Linear(5, 3)
    grid = param_grid(lin)
    want = torch.cat([lin.weight, lin.bias[:, None]], 1).detach()
    torch.testing.assert_close(grid, want)
    assert param_grid(nn.Linear(5, 3, bias=False)).shape == (3, 5)
    with pytest.raises(InputError):
        param_grid(lin.weight, torch.zeros(4))


def test_param_view_clusters_along_outputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3)
    pv = param_view(conv, name="c")
    rows = conv.weight.detach().reshape(6, -1).double().numpy()
    z = linkage(squareform(brute_cosine(rows), checks=False), "single")
    np.testing.assert_allclose(pv.clustering.linkage, z, atol=1e-6)
    assert pv.grid.shape == (6 * 3, 4 * 3 + 1) and pv.has_bias and pv.cell == [3, 3]
    assert pv.kde.density.shape[0] == 6
    assert pv.stats["shape_label"] == "uniform"  # PyTorch's default init
    again = cs.diagnose.ParamView.from_dict(pv.to_dict())
    np.testing.assert_array_equal(again.grid, pv.grid)
    np.testing.assert_array_equal(again.clustering.linkage, pv.clustering.linkage)


# ------------------------------------------------------------------------------------------------
# rules: each fires on its pattern and stays silent on the healthy twin


def healthy_maps(b: int = 16, c: int = 12, s: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(b, c, s, s, generator=g))


def codes(report: Report, layer: str = "x") -> set[str]:
    return {f.code for f in report.findings if f.layer == layer}


def run(x, **kw) -> Report:
    return diagnose_activations({"x": x}, **kw)


def test_healthy_twin_is_silent():
    assert codes(run(healthy_maps())) == set()


def test_dead_maps_rule():
    x = healthy_maps()
    x[:, :4] = 0
    r = run(x)
    f = r.select(code="dead-maps")[0]
    assert f.evidence["dead_channels"] == 4 and f.severity == "warning"
    assert "batch normalisation" not in f.advice and "activation" in f.advice
    x = healthy_maps()
    x[:, :2] = 0  # 2 of 12 = 17 % < 25 %
    assert "dead-maps" not in codes(run(x))


def test_low_diversity_rule():
    base = healthy_maps(c=1)
    same = base * torch.linspace(0.5, 2.0, 12).view(1, 12, 1, 1)
    r = run(same)
    assert "low-diversity" in codes(r)
    assert r.layer("x").merge_median == pytest.approx(0.0, abs=1e-5)
    assert "batch normalisation" in r.select(code="low-diversity")[0].advice
    assert "low-diversity" not in codes(run(healthy_maps()))


def test_near_zero_rule():
    x = healthy_maps() * 1e-5
    x[:, :, 0, 0] = 1.0  # 1 in 64 values large
    assert "near-zero-outputs" in codes(run(x))
    assert "near-zero-outputs" not in codes(run(healthy_maps()))  # ReLU: ~50 % zeros is fine


def smooth_images(b: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(b, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear")


def test_maps_far_from_input_rule():
    img = smooth_images()
    near = torch.relu(torch.cat([img, -img, 2 * img, img[:, :1] - img[:, 1:2]], 1))
    r = run(near, reference=img)
    assert r.layer("x").abstraction == "low" and r.layer("x").input_similarity > 0.5
    assert "maps-far-from-input" not in codes(r)
    far = torch.relu(torch.randn(8, 10, 32, 32, generator=torch.Generator().manual_seed(5)))
    r = run(far, reference=img)
    assert "maps-far-from-input" in codes(r)
    assert r.select(code="maps-far-from-input")[0].evidence["input_similarity"] < 0.2
    # a small (high-abstraction) map is not compared with the image
    small = torch.randn(8, 10, 2, 2)
    assert run(small, reference=img).layer("x").abstraction == "high"


def test_exploding_and_saturated_rules():
    assert "exploding-outputs" in codes(run(healthy_maps() * 1000))
    assert "exploding-outputs" not in codes(run(healthy_maps()))
    g = torch.Generator().manual_seed(0)
    sat = torch.tanh(10 * torch.randn(16, 8, 4, 4, generator=g))
    ok = torch.tanh(0.5 * torch.randn(16, 8, 4, 4, generator=g))
    assert "saturated-outputs" in codes(run(sat, types={"x": "Tanh"}))
    assert "saturated-outputs" not in codes(run(ok, types={"x": "Tanh"}))
    assert run(sat).layer("x").saturation is None  # unknown type: no bounds, no number


def test_nonfinite_outputs_rule_and_all_nan_layer():
    x = healthy_maps()
    x[0, 0, 0, 0] = float("nan")
    r = run(x)
    f = r.select(code="nonfinite-outputs")[0]
    assert f.severity == "error" and f.evidence["nonfinite"] == 1
    assert r.layer("x").merge_median is not None  # still clustered (NaN counts as 0)
    all_nan = torch.full((4, 3, 2, 2), float("nan"))
    r = run(all_nan)
    assert codes(r) == {"nonfinite-outputs"}
    assert r.layer("x").nonfinite_share == 1.0
    assert "nonfinite-outputs" not in codes(run(healthy_maps()))


def test_wide_uniform_params_rule():
    g = torch.Generator().manual_seed(0)
    fan = 16 * 9
    wide = torch.empty(32, 16, 3, 3).uniform_(-9 / fan**0.5, 9 / fan**0.5, generator=g)
    r = diagnose_activations({}, {"conv": wide})
    f = r.select(code="wide-uniform-params")[0]
    assert f.stage == "conv parameters" and f.evidence["gain"] == pytest.approx(9 / 3**0.5, 0.05)
    narrow = wide / 9  # uniform, PyTorch-default-like width
    wide_normal = torch.randn(32, 16, 3, 3, generator=g) * 5 / fan**0.5
    for twin in (narrow, wide_normal):
        assert diagnose_activations({}, {"conv": twin}).select(code="wide-uniform-params") == []
    lin = diagnose_activations({}, {"fc": wide.reshape(32, -1)})
    assert lin.select(code="wide-uniform-params")[0].stage == "dense parameters"


def test_concentrated_param_splits_rule():
    g = torch.Generator().manual_seed(0)
    random_units = torch.randn(64, 2048, generator=g)  # near-orthogonal: heights ~1, tight
    r = diagnose_activations({}, {"fc": random_units})
    # pure noise: its split points concentrate, and the noisy-dense rule names it too
    assert [f.code for f in r.findings] == ["concentrated-param-splits", "noisy-dense-params"]
    centres = torch.randn(4, 2048, generator=g)
    grouped = centres.repeat(16, 1) + 0.3 * torch.randn(64, 2048, generator=g)
    assert diagnose_activations({}, {"fc": grouped}).findings == []


def test_nonfinite_params_rule():
    w = torch.randn(8, 4)
    w[1, 1] = float("inf")
    r = diagnose_activations({}, {"fc": (w, torch.zeros(8))})
    assert r.select(code="nonfinite-params")[0].evidence["nonfinite"] == 1


def test_thresholds_are_overridable_and_checked():
    x = healthy_maps()
    x[:, :2] = 0  # 17 % dead
    assert "dead-maps" in codes(run(x, thresholds={"dead_fraction": 0.1}))
    assert "dead-maps" in codes(run(x, thresholds=Thresholds(dead_fraction=0.1)))
    with pytest.raises(InputError, match="dead_fraction"):
        run(x, thresholds={"dead_fractoin": 0.1})
    assert Thresholds.from_dict(Thresholds().to_dict()) == Thresholds()


# ------------------------------------------------------------------------------------------------
# bad input


def test_one_channel_layer_says_no_clustering():
    r = run(torch.rand(8, 1, 4, 4))
    f = r.select(code="no-clustering")[0]
    assert f.severity == "note" and "at least two" in f.message


def test_batch_of_one_features_say_no_clustering_maps_still_cluster():
    r = run(torch.rand(1, 10))
    f = r.select(code="no-clustering")[0]
    assert "one sample" in f.message
    r = run(torch.rand(1, 6, 5, 5))
    assert r.layer("x").merge_median is not None and not r.select(code="no-clustering")
    v = output_view(torch.rand(1, 10))
    assert not v.clustering.ok and "one sample" in v.clustering.note


def test_enormous_layer_is_sampled_deterministically_and_reported():
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(3, 700, generator=g))
    r1 = run(x)
    r2 = run(x)
    st = r1.layer("x")
    assert st.clustered == 512 and st.sampled and st.channels == 700
    f = r1.select(code="sampled")[0]
    assert "512 of 700" in f.message
    assert st.merge_median == r2.layer("x").merge_median
    assert st.dead_fraction == pytest.approx(float((x.amax(0) == 0).float().mean()))  # full data
    big = torch.rand(2, 4, 300, 300)  # 90,000 values per channel
    r = run(big, max_elements=4096)
    assert "sampled" in codes(r) and "values per channel" in r.select(code="sampled")[0].message


def test_bad_arguments_raise_convscope_errors():
    with pytest.raises(InputError):
        diagnose_activations([torch.rand(2, 2)])
    with pytest.raises(InputError):
        run(healthy_maps(), reference=torch.rand(3, 4))
    with pytest.raises(InputError):
        diagnose_activations({}, {"w": "not weights"})


# ------------------------------------------------------------------------------------------------
# diagnose on models


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


def test_diagnose_finds_injected_dead_relu_on_the_right_layer():
    torch.manual_seed(0)
    m = Tiny()
    x = smooth_images(16)
    healthy = diagnose(m, x, quiet=True)
    assert healthy.meta["layers"] == ["relu1", "relu2", "fc"]  # activations + the head
    assert healthy.meta["params"] == ["conv1", "conv2", "fc"]
    assert healthy.meta["reference"] == "input"
    assert healthy.select(code="dead-maps") == []
    with torch.no_grad():
        m.conv2.bias -= 100
    r = diagnose(m, x, quiet=True)
    dead = r.select(code="dead-maps")
    assert [f.layer for f in dead] == ["relu2"]
    assert r.layer("relu2").dead_fraction == 1.0


def test_findings_follow_the_seeds_order():
    g = torch.Generator().manual_seed(0)
    img = smooth_images()
    acts = {
        "fc_out": torch.zeros(8, 5),  # high abstraction, dead
        "maps": torch.zeros(8, 4, 32, 32),  # low abstraction, dead
    }
    wide = torch.empty(8, 5).uniform_(-20, 20, generator=g)
    conv = torch.empty(4, 3, 3, 3).uniform_(-20, 20, generator=g)
    r = diagnose_activations(acts, {"fc": wide, "conv": conv}, reference=img)
    stages = [f.stage for f in r.findings]
    assert stages == sorted(stages, key=cs.diagnose.STAGES.index)
    assert r.findings[0].layer == "maps" and r.findings[-1].layer == "fc"


def test_diagnose_layers_argument_and_unknown_layer():
    torch.manual_seed(0)
    m = Tiny()
    r = diagnose(m, smooth_images(4), layers="relu1", quiet=True)
    assert [s.name for s in r.layers] == ["relu1"] and r.meta["params"] == []
    r = diagnose(m, smooth_images(4), layers=nn.Conv2d, quiet=True)
    assert [s.name for s in r.layers] == ["conv1", "conv2"] and r.meta["params"] == ["conv1",
                                                                                    "conv2"]
    with pytest.raises(LayerNotFoundError, match="relu1"):
        diagnose(m, smooth_images(4), layers="relu_1", quiet=True)


def test_generator_is_compared_with_its_output_and_views_round_trip():
    torch.manual_seed(0)
    gen = cs.zoo.dcgan_generator(2, latent_dim=8, image_size=16, output="tanh")
    r = diagnose(gen, torch.randn(6, 8), views=True, quiet=True)
    assert r.meta["reference"] == "output"
    assert r.layer("tanh").input_similarity == pytest.approx(1.0, abs=1e-4)
    assert r.layer("relu1").abstraction == "high" and r.layer("relu3").abstraction == "low"
    v = r.output_views["relu2"]
    assert v.kind == "maps" and v.data.shape[1] == len(v.channels) == 32
    assert sorted(v.leaf_order().tolist()) == list(range(32))
    again = cs.diagnose.OutputView.from_dict(v.to_dict())
    np.testing.assert_array_equal(again.data, v.data)
    np.testing.assert_array_equal(again.clustering.linkage, v.clustering.linkage)
    np.testing.assert_array_equal(again.kde.density, v.kde.density)
    assert set(r.param_views) == {"fc1", "deconv1", "deconv2", "deconv3"}
    assert r.param_views["deconv1"].grid.shape == (32 * 5, 64 * 5 + 1)


def test_report_round_trips_and_converts():
    x = healthy_maps()
    x[:, :6] = 0
    x[0, 7, 0, 0] = float("nan")
    r = diagnose_activations({"x": x, "f": torch.rand(16, 3)}, {"fc": nn.Linear(3, 2)},
                             meta={"model": "M"})
    d = r.to_dict()
    text = json.dumps(d, allow_nan=False)  # strict JSON: no NaN leaks
    back = Report.from_json(text)
    assert back == r
    assert Report.from_dict(d).to_dict() == d
    frame = r.to_frame()
    assert list(frame.columns) == ["order", "stage", "severity", "code", "layer", "message",
                                   "advice", "evidence"]
    assert len(frame) == len(r.findings) and set(frame["code"]) == r.codes()
    assert json.loads(frame.loc[frame.code == "dead-maps", "evidence"].iloc[0])["dead_channels"] == 6
    lf = r.layers_frame()
    assert list(lf["name"]) == ["x", "f"] and lf.loc[0, "dead_fraction"] == pytest.approx(0.5)
    assert list(r.params_frame()["name"]) == ["fc"]
    s = str(r)
    assert "1. Low-abstraction outputs" in s and "dead-maps at x" in s and "advice:" in s
    assert "Per-layer numbers" in s


def test_diagnose_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = Tiny()
    with torch.no_grad():
        m.conv1.bias -= 100
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": m.state_dict()}, path)
    r = cs.diagnose.diagnose_checkpoint(path, Tiny, smooth_images(8), quiet=True)
    assert [f.layer for f in r.select(code="dead-maps")][0] == "relu1"
    with pytest.raises(InputError):
        cs.diagnose.diagnose_checkpoint(tmp_path / "missing.pt", Tiny, smooth_images(2))
    with pytest.raises(cs.errors.ModelError):
        cs.diagnose.diagnose_checkpoint({"nope": torch.zeros(1)}, Tiny, smooth_images(2))
