"""Wang & Li (2020, figures 7 and 10)'s parameter views drawn with their trees: the outputs'
dendrogram beside the weight grid, rows in the tree's leaf order.

Oracles: a hand-built four-output layer (distances and leaf order worked out by hand); scipy's
``linkage(pdist(W, "cosine"), "single")`` and ``dendrogram`` on the raw weights (never the
view's own clustering); scipy's ``cophenet`` for a tree pruned to the drawn outputs; the
weights themselves for the grid's rows and bias column; plotly's validated construction for
the dict-built figure.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from scipy.cluster.hierarchy import cophenet, dendrogram, linkage
from scipy.spatial.distance import pdist, squareform
from torch import nn

import convscope as cs
from convscope.figures import diagnosis as d
from convscope.formats import diagnosis as fmt
from convscope.store.reader import open_run

from .plotly_json import same_json


def _view(module: nn.Module) -> dict:
    return cs.diagnose.param_view(module, name="layer").to_dict()


def _figure(view: dict, **kw):
    return d.param_view_figure(view, view["grid"], view["kde"]["density"], **kw)


def _scipy_leaves(w: np.ndarray) -> list[int]:
    """Leaf order of scipy's single-linkage cosine tree over the rows of ``w``."""
    z = linkage(pdist(w.reshape(len(w), -1).astype(np.float64), "cosine"), "single")
    return dendrogram(z, no_plot=True)["leaves"]


def _links(fig) -> int:
    tree = [t for t in fig.data if t.name == "dendrogram"]
    return sum(v is None for v in tree[0].x) if tree else 0


def _coph_from_links(icoord, dcoord, n: int) -> np.ndarray:
    """Cophenetic distances of the drawn leaves 0..n-1, rebuilt from the drawn links only."""
    nodes = {(float(p), 0.0): [p] for p in range(n)}
    out = np.zeros((n, n))
    for p4, h4 in zip(icoord, dcoord, strict=True):
        left = nodes.pop((float(p4[0]), float(h4[0])))
        right = nodes.pop((float(p4[3]), float(h4[3])))
        for i in left:
            for j in right:
                out[i, j] = out[j, i] = h4[1]
        nodes[((p4[0] + p4[3]) / 2, float(h4[1]))] = left + right
    assert len(nodes) == 1  # one tree over every drawn leaf
    return out


# -- a hand-built case ---------------------------------------------------------------------------
def test_four_outputs_by_hand():
    """Rows a=(1,0), b=(0,1), c=(1,0.1), e=(0.2,1): cosine distances d(a,c) = 1 - 1/sqrt(1.01)
    = 0.00496 and d(b,e) = 1 - 1/sqrt(1.04) = 0.0194 merge first; the two pairs meet at their
    closest members c and e: 1 - 0.3/sqrt(1.01 * 1.04) = 0.707. Leaf order: a c | b e."""
    lin = nn.Linear(2, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.2, 1.0]]))
        lin.bias.copy_(torch.tensor([10.0, 20.0, 30.0, 40.0]))
    view = _view(lin)
    fig = _figure(view)
    meta = fig.layout.meta
    assert meta["rows"] == [0, 2, 1, 3] and meta["tree"] and meta["links"] == 3
    z = np.asarray(fig.data[0].z)
    np.testing.assert_allclose(z[:, :2], lin.weight.detach().numpy()[[0, 2, 1, 3]])
    np.testing.assert_allclose(z[:, 2], [10.0, 30.0, 20.0, 40.0])  # the bias follows its row
    heights = sorted({round(v, 6) for v in fig.data[1].x if v})
    want = [1 - 1 / math.sqrt(1.01), 1 - 1 / math.sqrt(1.04), 1 - 0.3 / math.sqrt(1.01 * 1.04)]
    np.testing.assert_allclose(heights, want, atol=1e-6)
    # the tree lies beside the rows: the a-c link spans rows 0 and 1, b-e rows 2 and 3
    _, icoord, dcoord = d.leaf_tree(view["clustering"], view["rows"])
    pairs = {(round(h4[1], 4), (p4[0], p4[3])) for p4, h4 in zip(icoord, dcoord, strict=True)}
    assert pairs == {(round(want[0], 4), (0.0, 1.0)), (round(want[1], 4), (2.0, 3.0)),
                     (round(want[2], 4), (0.5, 2.5))}
    assert [t for t in fig.data if t.name == "dendrogram"][0].yaxis == "y"
    assert fig.data[0].yaxis == "y2" and fig.layout.yaxis.range == fig.layout.yaxis2.range


# -- scipy as the oracle -------------------------------------------------------------------------
def test_the_whole_tree_is_scipys_dendrogram_of_the_weights():
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 12, 3)
    view = _view(conv)
    w = conv.weight.detach().numpy()
    order, icoord, dcoord = d.leaf_tree(view["clustering"], view["rows"])
    assert [view["rows"][i] for i in order] == _scipy_leaves(w)
    tree = dendrogram(linkage(pdist(w.reshape(12, -1).astype(np.float64), "cosine"), "single"),
                      no_plot=True)
    ours = sorted((tuple(10 * p + 5 for p in p4), tuple(h4)) for p4, h4 in
                  zip(icoord, dcoord, strict=True))
    theirs = sorted((tuple(p4), tuple(h4)) for p4, h4 in
                    zip(tree["icoord"], tree["dcoord"], strict=True))
    assert len(ours) == len(theirs) == 11
    for (pa, ha), (pb, hb) in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(pa, pb)
        np.testing.assert_allclose(ha, hb, atol=1e-5)


def test_conv_grid_rows_are_whole_cells_in_leaf_order_with_their_bias():
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 6, 3)
    view = _view(conv)
    fig = _figure(view)
    rows = fig.layout.meta["rows"]
    assert rows == _scipy_leaves(conv.weight.detach().numpy())
    z, grid = np.asarray(fig.data[0].z), np.asarray(view["grid"])
    assert z.shape == grid.shape == (18, 10)
    for p, r in enumerate(rows):  # block p is output r's 3 x 3 cells and its bias
        np.testing.assert_array_equal(z[3 * p:3 * p + 3], grid[3 * r:3 * r + 3])
    b = conv.bias.detach().numpy()
    np.testing.assert_allclose(z[1::3, -1], ((b - b.min()) / (b.max() - b.min()))[rows],
                               atol=1e-6)
    # each leaf's link ends at the middle row of its block
    tree = [t for t in fig.data if t.name == "dendrogram"][0]
    ends = {y for x, y in zip(tree.x, tree.y, strict=True) if x == 0}
    assert ends == {3 * p + 1 for p in range(6)}
    # the grid's labels name the outputs in the drawn order
    assert list(fig.layout.yaxis2.ticktext) == [str(r) for r in rows]


def test_a_pruned_tree_keeps_the_full_trees_order_and_merge_heights():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(30, 7))
    z = linkage(pdist(w, "cosine"), "single")
    full = dendrogram(z, no_plot=True)["leaves"]
    clustering = {"labels": list(range(100, 130)), "linkage": z.tolist(), "leaves": full}
    keep = list(range(100, 130, 3))[::-1]  # any order in: the tree's order out
    order, icoord, dcoord = d.leaf_tree(clustering, keep)
    drawn = [keep[i] for i in order]
    assert drawn == [100 + i for i in full if (100 + i) in set(keep)]
    assert len(icoord) == len(keep) - 1
    want = squareform(cophenet(z))[np.ix_([r - 100 for r in drawn], [r - 100 for r in drawn])]
    np.testing.assert_allclose(_coph_from_links(icoord, dcoord, len(drawn)), want, atol=1e-12)


def test_a_big_stored_layer_is_cut_and_its_tree_pruned_to_the_drawn_outputs(tmp_path):
    """200 outputs x 64 inputs x 3 x 3: 128 outputs are recorded (seeded sample) and clustered;
    the stored grid keeps 105 evenly spaced of them (<= 50,000 values); the page draws those 105
    in the order of the recorded tree and says so."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(64, 200, 3, bias=False))
    with cs.Run(tmp_path, "big", quiet=True) as run:
        run.log_diagnosis(model.eval(), torch.rand(2, 64, 6, 6))
    pv = fmt.param_view(open_run(tmp_path / "big"), "0")
    fig = d.param_view_figure(pv.meta, pv.data, pv.density)
    meta = fig.layout.meta
    labels = pv.meta["clustering"]["labels"]
    assert len(labels) == 128 and len(pv.meta["rows"]) == len(meta["rows"]) == 105
    w = model[0].weight.detach().numpy()[labels]
    full = [labels[i] for i in _scipy_leaves(w)]
    assert meta["rows"] == [r for r in full if r in set(pv.meta["rows"])]
    assert meta["tree"] and meta["links"] == 104 == _links(fig)
    assert any("pruned to the 105 drawn" in c for c in meta["capped"])
    notes = " ".join(pv.meta["notes"])
    assert "of 200 outputs" in notes and "of 64 inputs" in notes
    assert np.asarray(fig.data[0].z).size <= d.MAX_GRID_VALUES
    assert len(fig.to_json()) < 1_000_000


def test_no_tree_for_one_output_and_an_error_for_a_damaged_tree():
    one = _figure(_view(nn.Linear(3, 1)))
    assert not one.layout.meta["tree"] and _links(one) == 0
    assert any("dendrogram not drawn" in c for c in one.layout.meta["capped"])
    view = _view(nn.Linear(3, 5))
    bad = dict(view, clustering=dict(view["clustering"], linkage=[[0, 1, 0.5, 2]]))
    with pytest.raises(ValueError, match="record the diagnosis again"):
        _figure(bad)
    stranger = dict(view["clustering"], labels=[7, 8, 9, 10, 11])
    with pytest.raises(ValueError, match="record the diagnosis again"):
        d.leaf_tree(stranger, [0, 1])


# -- the dict-built figure is what plotly's validation makes of it --------------------------------
def _same(a, b, path="fig"):
    same_json(a, b, path, types=False)


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("module", [nn.Conv2d(4, 9, 3), nn.Linear(20, 12, bias=False)])
def test_the_figure_is_valid_plotly(module, compact):
    fig = _figure(_view(module), compact=compact)
    got = fig.to_plotly_json()
    validated = go.Figure(data=got["data"], layout=got["layout"])  # raises on a bad property
    _same(got, validated.to_plotly_json())
    assert fig.layout.meta["tree"]


@pytest.mark.parametrize("max_values", [d.MAX_GRID_VALUES, 300, 40])
def test_stored_views_at_any_bound_are_valid_plotly(tmp_path, max_values):
    """Stored conv and linear views (as the pages read them), cut to tiny bounds too: still a
    valid figure; rows drawn are whole outputs in the tree's order, or the note says why not."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 40))
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_diagnosis(model.eval(), torch.rand(4, 3, 6, 6))
    reader = open_run(tmp_path / "r")
    for layer, kh in (("0", 3), ("3", 1)):
        pv = fmt.param_view(reader, layer)
        fig = d.param_view_figure(pv.meta, pv.data, pv.density, max_values=max_values)
        got = fig.to_plotly_json()
        _same(got, go.Figure(data=got["data"], layout=got["layout"]).to_plotly_json())
        meta = fig.layout.meta
        assert np.asarray(fig.data[0].z).size <= max_values
        if meta["tree"]:
            labels = pv.meta["clustering"]["labels"]
            w = dict(model.named_parameters())[f"{layer}.weight"].detach().numpy()[labels]
            full = [labels[i] for i in _scipy_leaves(w)]
            assert meta["rows"] == [r for r in full if r in set(meta["rows"])]
            assert np.asarray(fig.data[0].z).shape[0] == kh * len(meta["rows"])
        else:
            assert any("dendrogram not drawn" in c for c in meta["capped"])
