"""convscope.track.correlation_cube against brute-force counts of a correlate() table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convscope.errors import ConvscopeError
from convscope.track import correlate, correlation_cube


def _table(seed=0):
    rng = np.random.default_rng(seed)
    layers = ["l0", "l1", "l2", "l3"]
    rows = []
    for step in range(10, 110, 10):
        for layer in layers:
            for f in range(6):
                rows.append((step, layer, f, float(rng.random())))
    changes = pd.DataFrame(rows, columns=["step", "layer", "filter", "cos_prev"])
    anomalies = {15: [1, 3], 40: [2], 41: [1], 70: [0, 1, 2], 100: [3]}
    return layers, correlate(anomalies, changes, top=5, scope="both")


def test_cube_equals_brute_force_counts():
    layers, top = _table()
    cube = correlation_cube(top, layers=layers)
    overall = top[top["scope"] == "overall"]
    assert cube.layers == layers
    assert cube.steps.tolist() == [15, 40, 41, 70, 100]
    assert cube.classes.tolist() == [0, 1, 2, 3]
    for li, layer in enumerate(layers):
        for si, step in enumerate(cube.steps):
            for ci, c in enumerate(cube.classes):
                n = sum(1 for _, r in overall.iterrows() if r["layer"] == layer
                        and r["step"] == step and c in r["classes"])
                assert cube.counts[li, si, ci] == n
    # each step's top 5 filters are counted once per flagged class
    np.testing.assert_array_equal(cube.counts.sum(axis=0).sum(axis=1),
                                  [5 * 2, 5, 5, 5 * 3, 5])
    np.testing.assert_array_equal(cube.by_class(), cube.counts.sum(axis=1))


def test_select_slices():
    layers, top = _table()
    cube = correlation_cube(top, layers=layers)
    sub = cube.select(layers=["l2", "l0"], steps=(40, 70), classes=[1])
    assert sub.layers == ["l2", "l0"] and sub.steps.tolist() == [40, 41, 70]
    np.testing.assert_array_equal(sub.counts, cube.counts[[2, 0]][:, 1:4][:, :, [1]])
    assert cube.select(steps=(200, 300)).counts.shape == (4, 0, 4)
    with pytest.raises(ConvscopeError):
        cube.select(layers=["nope"])
    with pytest.raises(ConvscopeError):
        cube.select(classes=[9])


def test_layer_axis_and_bad_tables():
    layers, top = _table()
    cube = correlation_cube(top, layers=[*layers, "empty"])
    assert cube.counts[-1].sum() == 0  # a watched layer without changed filters: zeros
    with pytest.raises(ConvscopeError):
        correlation_cube(top, layers=["l0"])  # rows of other layers
    with pytest.raises(ConvscopeError):
        correlation_cube(top.drop(columns="classes"))
    with pytest.raises(ConvscopeError):
        correlation_cube("table")
    empty = correlation_cube(top.iloc[:0], layers=layers)
    assert empty.counts.shape == (4, 0, 0)
