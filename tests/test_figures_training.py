"""The Training page's figures (DeepTracker, Liu et al. 2018) against hand-computed values:
triangles by flip direction, cluster rows, correlation by anomaly class, the cube's slices and
the image strips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convscope.figures.training import (
    MARKS,
    class_images_figure,
    correlation_figure,
    cube_figure,
    flip_direction,
    validation_figure,
)
from convscope.formats.training import ClassImageStrips
from convscope.track import correlation_cube


def _error():
    steps = np.arange(0, 500, 50)
    rng = np.random.default_rng(0)
    err = pd.DataFrame(rng.random((len(steps), 6)), index=steps, columns=list(range(6)))
    err.iloc[3, 1] = np.nan  # a checkpoint that did not cover class 1
    anomalies = pd.DataFrame({"step": [100, 100, 300, 450, 200],
                              "class": [2, 5, 0, 9, 1], "n_flips": [7, 5, 6, 8, 4],
                              "n_to_right": [7, 0, 3, 8, 1], "n_to_wrong": [0, 5, 3, 0, 3]})
    return err, anomalies


def test_flip_direction_and_marks():
    assert flip_direction(5, 1) == "learned" and MARKS["learned"][0] == "triangle-up"
    assert flip_direction(1, 5) == "forgotten" and MARKS["forgotten"][0] == "triangle-down"
    assert flip_direction(2, 2) == "mixed"


def test_flat_validation_rows_and_triangles():
    err, anomalies = _error()
    order, clusters = [3, 0, 5, 1, 2, 4], [1, 0, 0, 1, 2, 0]
    fig = validation_figure(err, order=order, clusters=clusters, anomalies=anomalies,
                            class_names=["a", "b", "c", "d", "e", "f"])
    heat, *traces = fig.data
    np.testing.assert_array_equal(np.asarray(heat.z, dtype=float), err[order].to_numpy().T)
    # clusters align with the columns: class 0 -> 1, 1 -> 0, 2 -> 0, 3 -> 1, 4 -> 2, 5 -> 0
    assert list(heat.y) == ["[1] d", "[1] a", "[0] f", "[0] b", "[0] c", "[2] e"]
    # class 9 is not shown: left out; one trace per direction, one triangle per anomaly
    got = {t.meta["direction"]: (list(t.x), list(t.y), t.marker.symbol) for t in traces}
    assert got == {"learned": ([100], ["[0] c"], "triangle-up"),
                   "forgotten": ([100, 200], ["[0] f", "[0] b"], "triangle-down"),
                   "mixed": ([300], ["[1] a"], "diamond")}
    assert [list(t.customdata[0]) for t in traces] == [[7, 7, 0], [5, 0, 5], [6, 3, 3]]
    assert [s.y0 for s in fig.layout.shapes] == [1.5, 4.5]  # before rows 2 and 5


def test_cluster_rows_are_the_mean_of_their_classes_and_closed_rows_carry_marks():
    err, anomalies = _error()
    order, clusters = [0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 1, 2]
    fig = validation_figure(err, order=order, clusters=clusters, anomalies=anomalies,
                            open_clusters=[1])
    rows = fig.layout.meta["rows"]
    assert [(r["kind"], r["id"]) for r in rows] == [
        ("cluster", 0), ("cluster", 1), ("class", 2), ("class", 3), ("class", 4),
        ("cluster", 2)]
    z = np.asarray(fig.data[0].z, dtype=float)
    e = err.to_numpy()
    # cluster 0 = classes 0, 1 (class 1 missing at checkpoint 3: the mean of class 0 alone)
    want0 = (e[:, 0] + e[:, 1]) / 2
    want0[3] = e[3, 0]
    np.testing.assert_allclose(z[0], want0, rtol=1e-12)
    np.testing.assert_allclose(z[1], e[:, 2:5].sum(axis=1) / 3, rtol=1e-12)
    np.testing.assert_allclose(z[2], e[:, 2])
    np.testing.assert_allclose(z[5], e[:, 5])
    labels = list(fig.data[0].y)
    assert labels[0].startswith("\u25b8 cluster 0") and labels[1].startswith("\u25be cluster 1")
    # class 0's and class 1's marks sit on the closed cluster 0's row, class 5's on cluster 2's
    where = {c: y for t in fig.data[1:] for c, y in zip(t.meta["classes"], t.y, strict=True)}
    assert where == {2: labels[2], 5: labels[5], 0: labels[0], 1: labels[0]}


def test_correlation_by_class_counts_by_hand():
    top = pd.DataFrame({
        "step": [30, 10, 10, 30, 10, 30], "layer": ["b", "a", "a", "b", "zz", "a"],
        "filter": [4, 7, 2, 1, 0, 3], "cos_prev": [0.5, 0.25, 0.125, 0.75, 0.9, 0.0625],
        "classes": [[1], [0, 2], [0, 2], [1], [0, 2], [1]],
    })
    fig = correlation_figure(top, ["a", "b"], class_names=["cat", "dog", "eel"])
    heat = fig.data[0]
    assert list(heat.x) == ["cat", "dog", "eel"] and list(heat.y) == ["a", "b"]
    # step 10 (cat, eel): a holds 7 and 2; step 30 (dog): b holds 4 and 1, a holds 3; zz is
    # not a shown layer
    np.testing.assert_array_equal(np.asarray(heat.z), [[2, 1, 2], [0, 2, 0]])
    assert heat.text[0][1] == "step 30 #3 (0.062)"
    assert heat.text[0][0] == "step 10 #7 (0.250), step 10 #2 (0.125)"
    assert fig.layout.meta["classes"] == [0, 1, 2] and fig.layout.meta["steps"] == [10, 30]


def test_cube_slices_count_by_hand():
    top = pd.DataFrame({
        "step": [10, 10, 10, 30, 30], "layer": ["a", "a", "b", "b", "a"],
        "filter": [1, 2, 3, 4, 5], "cos_prev": [0.1] * 5,
        "classes": [[0, 2], [0, 2], [0, 2], [2], [2]],
    })
    cube = correlation_cube(top, layers=["a", "b", "c"])
    fig = cube_figure(cube, layer="b", cls=2, class_names=["x", "y", "z"])
    a, b, c = (np.asarray(t.z) for t in fig.data)
    np.testing.assert_array_equal(a, [[2, 1], [1, 1], [0, 0]])  # layers x steps, class 2
    np.testing.assert_array_equal(b, [[1, 0], [1, 1]])  # classes (0, 2) x steps, layer b
    np.testing.assert_array_equal(c, [[2, 3], [1, 2], [0, 0]])  # layers x classes
    assert list(fig.data[1].y) == ["x", "z"]
    whole = cube_figure(cube)  # no slice chosen: sums
    np.testing.assert_array_equal(np.asarray(whole.data[0].z), [[4, 1], [2, 1], [0, 0]])
    np.testing.assert_array_equal(np.asarray(whole.data[1].z), [[3, 0], [3, 2]])


def test_class_images_figure():
    strips = ClassImageStrips(3, np.array([7, 9]), np.array([0, 1]), np.array([2, 0]),
                              np.array([10, 20, 30]),
                              np.array([[1, 0, 1], [np.nan, 1, 1]], dtype=np.float32), 5, 4)
    thumb = "data:image/png;base64,AAAA"
    fig = class_images_figure(strips, {7: thumb}, "cat")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float),
                                  [[1, 0, 1], [np.nan, 1, 1]])
    assert len(fig.layout.images) == 1 and fig.layout.images[0].source == thumb
    assert fig.layout.meta["ids"] == [7, 9] and fig.layout.meta["thumbnails"] == 1
    assert "2 of 5 images" in fig.layout.title.text and "3 of 4 checkpoints" in \
        fig.layout.title.text
    assert list(fig.layout.yaxis.ticktext) == ["id 7 (2 flips)", "id 9 (0 flips)"]


def test_new_figures_are_built_once_from_dicts(monkeypatch):
    import plotly.basedatatypes as bdt
    import plotly.subplots

    def forbidden(*a, **k):
        raise AssertionError("per-update plotly path used")

    err, anomalies = _error()
    top = pd.DataFrame({"step": [10], "layer": ["a"], "filter": [1], "cos_prev": [0.1],
                        "classes": [[0]]})
    monkeypatch.setattr(bdt.BaseFigure, "update", forbidden)
    monkeypatch.setattr(plotly.subplots, "make_subplots", forbidden)
    validation_figure(err, clusters=[0, 0, 1, 1, 2, 2], anomalies=anomalies,
                      open_clusters=[0])
    correlation_figure(top, ["a"])
    cube_figure(correlation_cube(top, layers=["a"]))


@pytest.mark.parametrize("opened", [None, [], [0, 1, 2]])
def test_rows_labels_are_unique_with_repeated_class_names(opened):
    err, _ = _error()
    fig = validation_figure(err, clusters=[0, 0, 1, 1, 2, 2], class_names=["same"] * 6,
                            open_clusters=opened)
    labels = list(fig.data[0].y)
    assert len(set(labels)) == len(labels)
    assert [r["label"] for r in fig.layout.meta["rows"]] == labels
