"""convscope.track.clusters: class_error vs pandas, k-means vs planted clusters, sklearn, brute force."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from convscope.errors import InputError
from convscope.track.clusters import class_clusters, class_error, kmeans, standardize_rows


# --------------------------------------------------------------------------------------------
# class_error
# --------------------------------------------------------------------------------------------
def test_class_error_matches_pandas_groupby():
    rng = np.random.default_rng(0)
    t, n = 30, 500
    labels = rng.choice([3, 5, 9, 20, 21, 40, 41], size=n)
    correct = rng.random((t, n)) < rng.random(n)[None, :]
    err, classes = class_error(correct, labels)

    long = pd.DataFrame({
        "t": np.repeat(np.arange(t), n),
        "label": np.tile(labels, t),
        "wrong": (~correct).reshape(-1).astype(float),
    })
    expected = long.groupby(["t", "label"])["wrong"].mean().unstack("label")
    np.testing.assert_array_equal(classes, expected.columns.to_numpy())
    np.testing.assert_allclose(err, expected.to_numpy(), rtol=0, atol=1e-12)
    assert err.shape == (t, 7)


def test_class_error_hand_case():
    correct = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=bool)
    err, classes = class_error(correct, [1, 1, 0, 1])
    np.testing.assert_array_equal(classes, [0, 1])
    np.testing.assert_allclose(err, [[0.0, 1 / 3], [0.0, 1.0]])


# --------------------------------------------------------------------------------------------
# standardisation
# --------------------------------------------------------------------------------------------
def test_standardize_rows_hand_values_and_constant_rows():
    z = standardize_rows([[0.0, 1.0, 2.0], [0.3, 0.3, 0.3], [5.0, 5.0, 7.0]])
    s = np.sqrt(2 / 3)
    np.testing.assert_allclose(z[0], [-1 / s, 0.0, 1 / s])
    np.testing.assert_array_equal(z[1], [0.0, 0.0, 0.0])  # constant -> zeros, no NaN
    np.testing.assert_allclose(z[2], [-1 / np.sqrt(2), -1 / np.sqrt(2), np.sqrt(2)])
    rng = np.random.default_rng(1)
    z = standardize_rows(rng.random((6, 40)))
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-12)


# --------------------------------------------------------------------------------------------
# planted clusters
# --------------------------------------------------------------------------------------------
def planted(seed=0, noise=0.02, per=3, t=50):
    """Error curves of 4 * per classes around 4 prototype learning curves, interleaved."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, t)
    protos = [
        np.exp(-5 * x),                          # learned early
        1 / (1 + np.exp(20 * (x - 0.6))),        # learned late
        0.5 + 0.3 * np.sin(6 * x),               # oscillates
        0.2 + 0.6 * x,                           # gets worse
    ]
    truth = np.tile(np.arange(4), per)
    scale = rng.uniform(0.5, 1.5, size=len(truth))  # z-scoring removes level and scale
    shift = rng.uniform(-0.2, 0.2, size=len(truth))
    err = np.stack(
        [scale[i] * protos[c] + shift[i] + noise * rng.standard_normal(t)
         for i, c in enumerate(truth)],
        axis=1,
    )
    return err, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_clusters(seed):
    err, truth = planted(seed)
    res = class_clusters(err, k=4, seed=seed)
    assert adjusted_rand_score(truth, res.labels) == 1.0
    assert res.k == 4 and res.k_requested == 4 and res.standardized


def test_inertia_matches_sklearn_and_definition():
    err, _ = planted(3)
    res = class_clusters(err, k=4, seed=0)
    z = standardize_rows(err.T)
    np.testing.assert_allclose(res.points, z)
    km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(z)
    assert abs(res.inertia - km.inertia_) <= 1e-6 * km.inertia_
    assert adjusted_rand_score(km.labels_, res.labels) == 1.0
    # centroids are the member means, inertia the sum of squared distances to them
    for j in range(res.k):
        np.testing.assert_allclose(res.centroids[j], z[res.labels == j].mean(axis=0))
    assert np.isclose(res.inertia, ((z - res.centroids[res.labels]) ** 2).sum())


def test_deterministic_by_seed():
    rng = np.random.default_rng(7)
    err = rng.random((20, 15))  # no clear structure: restarts matter
    a = class_clusters(err, k=4, seed=3)
    b = class_clusters(err, k=4, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.order, b.order)
    assert a.inertia == b.inertia
    # on a clear-cut case any seed finds the same partition
    err, truth = planted(4)
    parts = {tuple(class_clusters(err, seed=s).labels) for s in range(5)}
    assert len(parts) == 1


def test_kmeans_reaches_brute_force_optimum():
    rng = np.random.default_rng(11)
    pts = np.concatenate([rng.normal(0, 1, (4, 2)), rng.normal(2.0, 1, (4, 2))])
    best = np.inf
    for assign in itertools.product([0, 1], repeat=len(pts) - 1):
        lab = np.array((0, *assign))
        if lab.min() == lab.max():
            continue
        cost = sum(((pts[lab == j] - pts[lab == j].mean(0)) ** 2).sum() for j in (0, 1))
        best = min(best, cost)
    _, _, inertia, _ = kmeans(pts, 2, seed=0, n_init=10)
    assert inertia == pytest.approx(best, rel=1e-9)


def test_invariant_to_level_and_scale_of_each_curve():
    err, _ = planted(5)
    rng = np.random.default_rng(0)
    moved = err * rng.uniform(0.1, 3, size=err.shape[1]) + rng.uniform(-1, 1, size=err.shape[1])
    a = class_clusters(err, seed=0)
    b = class_clusters(moved, seed=0)
    assert adjusted_rand_score(a.labels, b.labels) == 1.0
    np.testing.assert_allclose(a.points, b.points, atol=1e-9)


def test_order_groups_clusters_by_mean_error():
    err, _ = planted(6)
    classes = np.arange(100, 100 + err.shape[1])
    res = class_clusters(err, classes=classes)
    lab_in_order = res.labels[res.order]
    assert np.all(np.diff(lab_in_order) >= 0)  # grouped, clusters in numbering order
    assert sorted(res.order.tolist()) == list(range(err.shape[1]))
    mean = err.mean(axis=0)
    cl_mean = [mean[res.labels == j].mean() for j in range(res.k)]
    assert np.all(np.diff(cl_mean) > 0)  # cluster 0 has the lowest mean error
    for j in range(res.k):
        members = res.order[lab_in_order == j]
        assert np.all(np.diff(mean[members]) >= 0)
        np.testing.assert_array_equal(res.members(j), classes[members])
    f = res.to_frame()
    np.testing.assert_array_equal(f["class"], res.classes_ordered)
    np.testing.assert_array_equal(f["cluster"], lab_in_order)


def test_raw_curves_when_not_standardized():
    # two levels, same shape: only visible without standardisation
    x = np.linspace(0, 1, 20)
    err = np.stack([0.1 * x, 0.1 * x + 0.01, 0.9 * x, 0.9 * x + 0.01], axis=1)
    raw = class_clusters(err, k=2, standardize=False)
    np.testing.assert_array_equal(raw.labels, [0, 0, 1, 1])
    np.testing.assert_allclose(raw.points, err.T)


# --------------------------------------------------------------------------------------------
# edge cases
# --------------------------------------------------------------------------------------------
def test_k_larger_than_classes_is_clamped():
    err, _ = planted(0, per=1)  # 4 classes
    with pytest.warns(UserWarning, match=r"k=6 reduced to 3 \(only 3 classes\)"):
        res = class_clusters(err[:, :3], k=6)
    assert res.k == 3 and res.k_requested == 6
    assert sorted(res.labels.tolist()) == [0, 1, 2]
    assert res.inertia == pytest.approx(0.0, abs=1e-12)


def test_constant_curves_give_one_cluster_without_nan():
    err = np.tile(np.array([0.1, 0.5, 0.9, 0.9, 0.3]), (8, 1))  # each class constant over time
    with pytest.warns(UserWarning, match="1 distinct error curve after standardisation"):
        res = class_clusters(err, k=4)
    assert res.k == 1
    np.testing.assert_array_equal(res.labels, np.zeros(5, dtype=int))
    assert np.isfinite(res.centroids).all() and res.inertia == 0.0
    np.testing.assert_array_equal(res.order, [0, 4, 1, 2, 3])  # by mean error, ties by index


def test_one_class():
    with pytest.warns(UserWarning, match="only 1 class"):
        res = class_clusters(np.linspace(1, 0, 10)[:, None])
    assert res.labels.tolist() == [0] and res.order.tolist() == [0] and res.k == 1
    assert res.inertia == 0.0


def test_no_warning_when_k_fits():
    err, _ = planted(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_clusters(err, k=4)


def test_errors():
    with pytest.raises(InputError, match="2-D"):
        class_clusters(np.zeros(5))
    with pytest.raises(InputError, match="NaN"):
        class_clusters(np.array([[0.1, np.nan], [0.2, 0.3]]))
    with pytest.raises(InputError, match="k must be"):
        class_clusters(np.zeros((3, 3)), k=0)
    with pytest.raises(InputError, match="one label per column"):
        class_clusters(np.zeros((3, 3)), classes=[1, 2])
    with pytest.raises(InputError, match="at least one"):
        class_clusters(np.zeros((3, 0)))
