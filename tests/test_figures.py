"""Figure builders on stored data: no model needed, and big models stay readable."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision

import convscope as cs
from convscope.figures.graph import graph_elements
from convscope.figures.maps import cell_at, mosaic
from convscope.figures.scalars import smooth


def test_smoothing_is_tensorboards_debiased_ema():
    v = np.array([1.0, 3.0, float("nan"), 2.0])
    w = 0.5
    # by hand: m1 = 0.5, s1 = 0.5/0.5 = 1; m2 = 0.25 + 1.5 = 1.75, s2 = 1.75/0.75;
    # NaN is shown as is; m3 = 0.875 + 1 = 1.875, s3 = 1.875/0.875
    np.testing.assert_allclose(smooth(v, w)[[0, 1, 3]], [1.0, 1.75 / 0.75, 1.875 / 0.875])
    assert np.isnan(smooth(v, w)[2])
    with pytest.raises(ValueError):
        smooth(v, 1.0)


def test_mosaic_tiles_and_cell_lookup_are_inverse():
    maps = np.random.default_rng(0).normal(size=(3, 5, 4, 6))
    tiles, h, w = mosaic(maps)
    assert tiles.shape == (3 * 5 - 1, 5 * 7 - 1)
    for i in range(3):
        for j in range(5):
            y, x = i * (h + 1) + 1, j * (w + 1) + 2
            assert cell_at(x, y, h, w) == (i, j)
            ch = maps[:, j]
            expect = (ch[i] - ch.min()) / (ch.max() - ch.min())
            np.testing.assert_allclose(tiles[i * 5: i * 5 + 4, j * 7: j * 7 + 6], expect,
                                       rtol=1e-5)
    assert np.isnan(tiles[4]).all()  # the gap row


def test_resnet152_graph_is_folded_by_default():
    model = torchvision.models.resnet152(weights=None).eval()
    g = cs.model.graph(model, __import__("torch").rand(1, 3, 64, 64))
    els = graph_elements(g.to_dict())
    nodes = [e for e in els if "source" not in e["data"]]
    assert len(g.nodes) > 500 and len(nodes) <= 15  # stem, 4 stages, head, input/output
    blocks = {e["data"]["id"] for e in nodes if e["data"]["expandable"]}
    assert blocks == {"layer1", "layer2", "layer3", "layer4"}
    opened = [e for e in graph_elements(g.to_dict(), expanded=["layer3"])
              if "source" not in e["data"]]
    assert sum(e["data"]["id"].startswith("layer3.") for e in opened) == 36  # its blocks
