"""CNNVis (Liu et al. 2017): convscope.model.cnnvis.

Oracles: planted groups of channels (adjusted Rand index against the truth, sklearn as the
scorer), sklearn's SpectralCoclustering on planted biclusters, a brute-force pair check and a
geometric segment-intersection count for the crossing counters, Euler's theorem for the gradient
influence of a linear layer, hand sums for the weight and cluster influence, exact merging of
shares for the data-set pass.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import SpectralCoclustering
from sklearn.metrics import adjusted_rand_score as ari
from torch import nn
from torch.utils.data import TensorDataset

from convscope.errors import ConvscopeError, InputError
from convscope.model import capture
from convscope.model.cnnvis import (
    Bundling,
    ChannelDescriptorPass,
    bundle_edges,
    channel_descriptors,
    cluster_channels,
    cluster_influence,
    cnnvis,
    count_crossings,
    gradient_influence,
    influence,
    kmeans,
    spectral_cocluster,
    weight_influence,
)
from convscope.nn import run_split
from convscope.zoo import resnet


# ------------------------------------------------------------------------------ crossing counts
def brute_pairs(t, b):
    return sum((t[i] - t[j]) * (b[i] - b[j]) < 0 for i, j in itertools.combinations(range(len(t)), 2))


def test_count_crossings_equals_the_brute_force_on_random_layouts():
    rng = np.random.default_rng(0)
    for trial in range(300):
        e = int(rng.integers(0, 40))
        span = int(rng.integers(1, 8))  # small spans: many shared ends (ties)
        t = rng.integers(0, span, e).astype(float)
        b = rng.integers(0, span, e).astype(float)
        if trial % 3 == 0:
            t, b = rng.random(e), rng.random(e)
        assert count_crossings(t, b) == brute_pairs(t, b), (t, b)
    # every pair of a reversed matching crosses
    n = 1000
    assert count_crossings(np.arange(n), -np.arange(n)) == n * (n - 1) // 2
    assert count_crossings(np.arange(n), np.arange(n)) == 0


def _orient(p, q, r):
    return np.sign((q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0]))


def geometric_crossings(segments):
    """Proper intersections of 2-D segments ((x0, y0), (x1, y1)), pair by pair."""
    n = 0
    for (p1, p2), (q1, q2) in itertools.combinations(segments, 2):
        if _orient(p1, p2, q1) * _orient(p1, p2, q2) < 0 and \
                _orient(q1, q2, p1) * _orient(q1, q2, p2) < 0:
            n += 1
    return n


def drawn_segments(bd: Bundling):
    """The bundled drawing as 2-D segments: top line y=0, hubs y=1, bottom line y=2."""
    seg = bd.segments()
    out = [((bd.row_pos[i], 0.0), (bd.hub_pos[h], 1.0)) for i, h in seg["upper"]]
    out += [((bd.hub_pos[h], 1.0), (bd.col_pos[j], 2.0)) for h, j in seg["lower"]]
    out += [((bd.row_pos[i], 0.0), (bd.col_pos[j], 2.0)) for i, j in seg["plain"]]
    return out


def test_bundled_and_plain_counts_equal_a_geometric_count_of_the_drawing():
    rng = np.random.default_rng(1)
    for _ in range(25):
        r, c = int(rng.integers(3, 11)), int(rng.integers(3, 11))
        a = rng.random((r, c)) ** 3
        bd = bundle_edges(a, int(rng.integers(2, min(r, c) + 1)), seed=int(rng.integers(100)))
        assert bd.bundled_crossings() == geometric_crossings(drawn_segments(bd))
        plain = [((bd.row_pos[i], 0.0), (bd.col_pos[j], 2.0)) for i, j in bd.edges]
        assert bd.plain_crossings() == geometric_crossings(plain)


def test_straight_edges_meeting_on_the_middle_line_count_once():
    # two straight edges 0->1 and 1->0 meet exactly on the middle line
    bd = Bundling(np.array([0, 1]), np.array([1, 0]), np.array([0.25, 0.75]),
                  np.array([0.25, 0.75]), np.array([0.3, 0.7]), np.array([[0, 1], [1, 0]]),
                  np.ones(2), np.array([False, False]))
    assert bd.bundled_crossings() == 1 == bd.plain_crossings()


# ------------------------------------------------------------------------------ biclustering
def planted_blocks(seed=0, r=40, c=30, n=4, noise=0.05):
    rng = np.random.default_rng(seed)
    rl = rng.permutation(np.arange(r) % n)
    cl = rng.permutation(np.arange(c) % n)
    a = (rl[:, None] == cl[None, :]) * rng.uniform(0.5, 1.5, (r, c)) + noise * rng.random((r, c))
    return a, rl, cl


def test_spectral_cocluster_recovers_planted_biclusters_like_sklearn():
    a, rl, cl = planted_blocks()
    r2, c2 = spectral_cocluster(a, 4)
    peer = SpectralCoclustering(n_clusters=4, random_state=0).fit(a)
    assert ari(rl, r2) == 1.0 and ari(cl, c2) == 1.0
    assert ari(peer.row_labels_, r2) == 1.0 and ari(peer.column_labels_, c2) == 1.0
    # one bicluster of row i and column j in ours iff in the peer's
    same = r2[:, None] == c2[None, :]
    assert np.array_equal(same, peer.row_labels_[:, None] == peer.column_labels_[None, :])


def test_bundling_lowers_crossings_on_planted_blocks():
    a, rl, cl = planted_blocks(seed=2)
    bd = bundle_edges(a)  # the count is chosen
    assert bd.n_bundles == 4 and bd.false_edges == 0 and bd.bundled.all()
    assert ari(rl, bd.row_labels) == 1.0 and ari(cl, bd.col_labels) == 1.0
    plain_index, plain, bundled = bd.plain_crossings("index"), bd.plain_crossings(), \
        bd.bundled_crossings()
    assert bundled == 0 < plain < plain_index, (plain_index, plain, bundled)
    # a bundle is one segment per source and per target
    seg = bd.segments()
    assert len(seg["upper"]) == 40 and len(seg["lower"]) == 30 and len(seg["plain"]) == 0


def test_fewer_bundles_than_blocks_suggest_false_edges():
    a, _, _ = planted_blocks(seed=3)
    two = bundle_edges(a, 2)
    four = bundle_edges(a, 4)
    assert two.false_edges > 0 == four.false_edges


def test_bundling_lowers_crossings_on_a_real_conv_net():
    torch.manual_seed(0)
    model = resnet(width=8).eval()
    x = torch.randn(32, 3, 32, 32)
    rows = []
    for src, tgt in [("layer1.0.relu1", "layer1.0.conv2"), ("layer2.0.relu1", "layer2.0.conv2"),
                     ("layer1", "layer2.0.conv1"), ("layer2", "layer3")]:
        m, how = influence(model, x[:8], src, tgt, quiet=True)
        bd = bundle_edges(m)
        rows.append((src, tgt, how, len(bd.edges), bd.plain_crossings("index"),
                     bd.plain_crossings(), bd.bundled_crossings()))
        assert bd.bundled_crossings() < bd.plain_crossings() <= bd.plain_crossings("index"), rows
    assert [r[2] for r in rows] == ["weights", "weights", "weights", "gradient"]


# ------------------------------------------------------------------------------ clustering
def planted_descriptors(seed=0, c=40, d=60, groups=5, noise=0.02):
    rng = np.random.default_rng(seed)
    g = rng.permutation(np.arange(c) % groups)
    base = rng.random((groups, d))
    x = base[g] * rng.uniform(0.3, 3.0, (c, 1)) + rng.uniform(-1, 1, (c, 1)) \
        + noise * rng.standard_normal((c, d))
    return x, g


def test_clusters_recover_planted_groups_and_their_count():
    x, g = planted_descriptors()
    for k in (5, None):
        cl = cluster_channels(x, k)
        assert ari(g, cl.labels) == 1.0 and cl.n_clusters == 5
    assert sorted(cl.sizes.tolist(), reverse=True) == cl.sizes.tolist() == [8] * 5
    for j in range(5):
        mem = cl.members(j)
        assert cl.representatives[j] == mem[0] and set(mem) == set(np.flatnonzero(cl.labels == j))
    assert np.array_equal(np.sort(cl.order), np.arange(40))
    assert cl.silhouette > 0.9
    # deterministic, and the same from a tensor
    again = cluster_channels(torch.as_tensor(x), None)
    assert np.array_equal(again.labels, cl.labels)


def test_dead_channels_form_their_own_cluster():
    x, g = planted_descriptors(groups=3, c=30)
    x[[2, 7, 11]] = 0.25  # constant responses
    g = g.copy()
    g[[2, 7, 11]] = 9
    cl = cluster_channels(x, 4)
    assert cl.dead[[2, 7, 11]].all() and cl.dead.sum() == 3
    assert ari(g, cl.labels) == 1.0


def test_kmeans_agrees_with_sklearn_on_separated_blobs():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(4)
    centres = rng.normal(0, 10, (6, 3))
    truth = np.repeat(np.arange(6), 30)
    pts = centres[truth] + rng.normal(0, 0.5, (180, 3))
    ours = kmeans(pts, 6, seed=1)
    peer = KMeans(6, n_init=10, random_state=0).fit_predict(pts)
    assert ari(ours, peer) == 1.0 == ari(ours, truth)


def planted_conv_model():
    """conv(3 -> 12) whose channels come in 3 groups of 4 scaled copies of one filter."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 12, 3, padding=1, bias=False)
    base = torch.randn(3, 3, 3, 3)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2])
    with torch.no_grad():
        conv.weight.copy_(base[groups] * torch.rand(12, 1, 1, 1).add(0.5)
                          + 1e-3 * torch.randn(12, 3, 3, 3))
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(12, 6, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    return model, groups.numpy()


def test_clusters_of_a_real_layer_recover_planted_filter_groups():
    model, groups = planted_conv_model()
    x = torch.randn(48, 3, 16, 16)
    desc = channel_descriptors(model, x, ["0"], quiet=True)
    assert desc.by == "image" and desc.values["0"].shape == (12, 48)
    cl = cluster_channels(desc.values["0"], 3)
    assert ari(groups, cl.labels) == 1.0
    assert cluster_channels(desc.values["0"]).n_clusters == 3  # found by the silhouette


def test_descriptors_are_spatial_means_per_image_or_class_and_shares_merge_exactly():
    torch.manual_seed(6)
    model = resnet(width=8).eval()
    x = torch.randn(20, 3, 32, 32)
    y = torch.arange(20) % 3
    layers = ["layer1.0.conv1", "layer2"]
    per_image = channel_descriptors(model, x, layers, batch_size=7, quiet=True)
    got = capture(model, x, layers)
    for name in layers:
        torch.testing.assert_close(per_image.values[name], got[name].mean((2, 3)).t())
    per_class = channel_descriptors(model, TensorDataset(x, y), layers, batch_size=6, quiet=True)
    assert per_class.by == "class" and per_class.classes == [0, 1, 2]
    for name in layers:
        ref = torch.stack([got[name][y == k].mean((0, 2, 3)) for k in range(3)], 1)
        torch.testing.assert_close(per_class.values[name], ref)
    split = run_split(ChannelDescriptorPass(model, layers, TensorDataset(x, y), batch_size=4,
                                            quiet=True), 3)
    for name in layers:
        torch.testing.assert_close(split.values[name], per_class.values[name])
    with pytest.raises(InputError, match="needs labels"):
        channel_descriptors(model, x, layers, by="class", quiet=True)


# ------------------------------------------------------------------------------ influence
def test_weight_influence_is_the_filter_l1_norm():
    conv = nn.Conv2d(6, 4, 3)
    w = weight_influence(conv)
    assert w.shape == (6, 4)
    for i, j in itertools.product(range(6), range(4)):
        assert w[i, j] == pytest.approx(float(conv.weight[j, i].detach().abs().sum()), rel=1e-6)
    grouped = weight_influence(nn.Conv2d(6, 4, 3, groups=2))
    assert (grouped[:3, 2:] == 0).all() and (grouped[3:, :2] == 0).all()
    assert (grouped[:3, :2] > 0).all()
    lin = nn.Linear(5, 3)
    np.testing.assert_allclose(weight_influence(lin), lin.weight.detach().abs().t().numpy())
    with pytest.raises(InputError, match="gradient_influence"):
        weight_influence(nn.ReLU())


def test_gradient_influence_of_a_linear_layer_is_each_channels_share_euler():
    """For B = conv(A) + bias, sum_pos A_i dB_j/dA_i = the part of sum_pos B_j that comes from
    channel i (Euler's theorem for a linear map): conv of A with only channel i kept, no bias."""
    torch.manual_seed(7)
    conv1, conv2 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1, stride=2)
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU()).eval()
    x = torch.randn(6, 3, 12, 12)
    got = gradient_influence(model, x, "1", "2", quiet=True)
    with torch.no_grad():
        a = torch.relu(conv1(x))
        ref = np.zeros((5, 4))
        for i in range(5):
            only = torch.zeros_like(a)
            only[:, i] = a[:, i]
            part = nn.functional.conv2d(only, conv2.weight, None, stride=2, padding=1)
            ref[i] = part.sum((2, 3)).abs().mean(0).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert model[0].weight.requires_grad and all(p.grad is None for p in model.parameters())
    # chunks of target channels, and the one-channel-at-a-time fallback, give the same matrix
    np.testing.assert_allclose(gradient_influence(model, x, "1", "2", chunk=3, quiet=True), got,
                               rtol=1e-6, atol=1e-9)
    real_grad = torch.autograd.grad
    calls = {"batched": 0}

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            calls["batched"] += 1
            raise RuntimeError("no batching rule")
        return real_grad(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.autograd, "grad", no_batching)
        slow = gradient_influence(model, x, "1", "2", quiet=True)
    assert calls["batched"] == 1
    np.testing.assert_allclose(slow, got, rtol=1e-6, atol=1e-9)


def test_influence_picks_weights_only_for_a_conv_reading_the_layer():
    model, _ = planted_conv_model()
    x = torch.randn(4, 3, 16, 16)
    m, how = influence(model, x, "1", "2")
    assert how == "weights"
    np.testing.assert_allclose(m, weight_influence(model[2]))
    _, how = influence(model, x, "0", "2", quiet=True)  # a ReLU in between
    assert how == "gradient"
    with pytest.raises(InputError, match="method must be"):
        influence(model, x, "0", "2", method="taylor")


def test_cluster_influence_sums_and_orders():
    rng = np.random.default_rng(8)
    src = cluster_channels(*planted_descriptors(seed=1, c=12, groups=3)[:1], 3)
    tgt = cluster_channels(planted_descriptors(seed=2, c=10, groups=2)[0], 2)
    m = rng.random((12, 10))
    ci = cluster_influence(m, src, tgt)
    for i, k in itertools.product(range(12), range(2)):
        assert ci.neuron_cluster[i, k] == pytest.approx(m[i, tgt.labels == k].sum())
    for a, b in itertools.product(range(3), range(2)):
        assert ci.cluster_cluster[a, b] == pytest.approx(
            m[np.ix_(src.labels == a, tgt.labels == b)].sum())
    assert np.array_equal(np.sort(ci.row_order), np.arange(12))
    assert (np.diff(src.labels[ci.row_order]) >= 0).all()  # grouped by cluster
    with pytest.raises(InputError, match="expected"):
        cluster_influence(m.T, src, tgt)


# ------------------------------------------------------------------------------ the whole view
def test_cnnvis_on_the_zoo_model_and_recluster():
    torch.manual_seed(9)
    model = resnet(width=8).eval()
    x = torch.randn(40, 3, 32, 32)
    ds = TensorDataset(x, torch.arange(40) % 5)
    layers = ["layer1.0.relu1", "layer1.0.conv2", "layer2", "layer3"]
    g = cnnvis(model, ds, layers, n_clusters=4, quiet=True)
    assert g.layers == layers and [p.method for p in g.pairs] == ["weights", "gradient",
                                                                  "gradient"]
    for name in layers:
        assert g.clusters[name].n_clusters == 4 and g.clusters[name].sizes.sum() == \
            g.descriptors.values[name].shape[0]
    for p in g.pairs:
        assert p.clusters.cluster_cluster.shape == (4, 4)
        assert p.bundling.bundled_crossings() <= p.bundling.plain_crossings()
        np.testing.assert_allclose(p.clusters.cluster_cluster.sum(), p.influence.sum())
    g2 = g.recluster("layer2", 2)
    assert g2.clusters["layer2"].n_clusters == 2 and g.clusters["layer2"].n_clusters == 4
    assert g2.pairs[1].clusters.cluster_cluster.shape == (4, 2)
    assert g2.pairs[2].clusters.cluster_cluster.shape == (2, 4)
    assert g2.pairs[0] is g.pairs[0]
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_arguments_raise_convscope_errors():
    x, _ = planted_descriptors()
    with pytest.raises(InputError, match="exceeds"):
        cluster_channels(x, 41)
    with pytest.raises(InputError, match=r"\[C, D\]"):
        cluster_channels(np.zeros(5))
    with pytest.raises(InputError, match="non-negative"):
        bundle_edges(-np.ones((3, 3)))
    with pytest.raises(InputError, match="exceed"):
        spectral_cocluster(np.ones((3, 5)), 4)
    with pytest.raises(ConvscopeError):
        cnnvis(resnet(width=8), torch.randn(4, 3, 32, 32), ["nope"], quiet=True)
