"""cs.features.top_examples against a brute-force full ranking; merging shards; receptive fields
checked by hand and against input-gradient support."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

import convscope as cs
from convscope.errors import InputError
from convscope.features import ReceptiveField, merge, receptive_field, top_examples

from .conftest import auto_threads_fixture

_threads = pytest.fixture(autouse=True, scope="module")(auto_threads_fixture)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(1)
    return cs.zoo.resnet(width=8).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x, _, _ = cs.data.Shapes(n=120, split="test").tensors()
    return x


def brute_force(model, layer, x, k):
    """Full ranking: every image's spatial max per channel, sorted by (value desc, index asc)."""
    acts = cs.model.capture(model, x, layer)[layer]  # one forward over everything
    n, c, h, w = acts.shape
    flat = acts.reshape(n, c, -1)
    vals, arg = flat.max(2)
    out_v, out_i, out_l = [], [], []
    for ch in range(c):
        order = sorted(range(n), key=lambda i: (-float(vals[i, ch]), i))[:k]
        out_v.append([float(vals[i, ch]) for i in order])
        out_i.append(order)
        out_l.append([(int(arg[i, ch]) // w, int(arg[i, ch]) % w) for i in order])
    return torch.tensor(out_v), torch.tensor(out_i), torch.tensor(out_l)


def hand_crop(img, y, x, size, stride, offset):
    """Receptive-field window cut by explicit slicing of a zero-padded image."""
    pad = size
    p = torch.nn.functional.pad(img, (pad, pad, pad, pad))
    y0, x0 = offset + y * stride + pad, offset + x * stride + pad
    return p[:, y0 : y0 + size, x0 : x0 + size]


def test_receptive_field_of_zoo_resnet_by_hand(net):
    # conv1 3x3/1 p1: 3, jump 1, start -1; maxpool 3/2 p1: 5, jump 2, start -2;
    # layer1.0.conv1 / conv2 (3x3/1 p1 at jump 2): 9 then 13, start -4 then -6; the skip path
    # (maxpool, 5 wide from -2) lies inside, so layer1: 13 pixels, stride 2, offset -6
    rf = receptive_field(net, "layer1", torch.rand(1, 3, 32, 32))
    assert rf == ReceptiveField((13, 13), (2, 2), (-6, -6), "graph")
    assert receptive_field(net, "maxpool", torch.rand(1, 3, 32, 32)).size == (5, 5)
    assert receptive_field(net, "fc", torch.rand(1, 3, 32, 32)).size is None


def test_graph_field_equals_gradient_support_on_linear_net():
    # no ReLU and no max: every weight contributes, so the input-gradient support of an interior
    # position is exactly its receptive field
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 3, 5, stride=2, padding=2),
        nn.Conv2d(3, 3, 3, padding=2, dilation=2),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3, stride=1, padding=1),
    ).eval()
    x = torch.rand(1, 2, 64, 64)
    rf = receptive_field(m, "3", x)
    assert rf.method == "graph" and rf.stride == (4, 4)
    xg = x.clone().requires_grad_(True)
    out = m(xg)
    y = 7
    (g,) = torch.autograd.grad(out[0, :, y, y].sum(), xg)
    rows = torch.nonzero(g.abs().sum((0, 1)).sum(1) > 0).reshape(-1)
    assert rf.size[0] == int(rows.max() - rows.min() + 1)
    assert rf.offset[0] + y * rf.stride[0] == int(rows.min())


def test_top_examples_equals_brute_force(net, images):
    k = 5
    res = top_examples(net, "layer1", images, k=k, batch_size=32, quiet=True)
    bv, bi, bl = brute_force(net, "layer1", images, k)
    assert torch.equal(res.indices, bi)
    assert torch.allclose(res.values, bv, atol=1e-5)
    assert torch.equal(res.locations, bl)
    assert res.n_seen == 120 and res.values.shape == (8, k)
    # crops: the 13 x 13 window of the stored image at the stored location, cut by hand
    rf = res.field
    assert res.crops.shape == (8, k, 3, 13, 13)
    for ch in (0, 5):
        for j in range(k):
            y, x = res.locations[ch, j].tolist()
            want = hand_crop(images[res.indices[ch, j]], y, x, 13, 2, -6)
            assert torch.equal(res.crops[ch, j], want)
            y0, x0, y1, x1 = res.boxes[ch, j].tolist()
            assert (y0, x0) == (max(0, -6 + 2 * y), max(0, -6 + 2 * x))
            assert (y1, x1) == (min(32, 7 + 2 * y), min(32, 7 + 2 * x))
    assert rf.method == "graph"
    # the crops helper cuts the same windows afterwards
    assert torch.equal(res.cut(images), res.crops)


def test_merge_of_shards_equals_one_pass(net, images):
    whole = top_examples(net, "layer2", images, k=4, batch_size=25, quiet=True)
    a = top_examples(net, "layer2", images[:50], k=4, batch_size=16, quiet=True)
    b = top_examples(net, "layer2", images[50:], k=4, batch_size=40, offset=50, quiet=True)
    for merged in (merge(a, b), b.merge(a)):
        assert torch.equal(merged.indices, whole.indices)
        assert torch.allclose(merged.values, whole.values, atol=1e-5)
        assert torch.equal(merged.locations, whole.locations)
        assert torch.equal(merged.boxes, whole.boxes)
        assert torch.equal(merged.crops, whole.crops)
        assert merged.n_seen == whole.n_seen == 120


def test_ties_go_to_the_smaller_index_and_short_data_sets():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False)).eval()
    with torch.no_grad():
        m[0].weight.fill_(1.0)
    x = torch.zeros(6, 1, 4, 4)
    x[3, 0, 1, 2] = 5.0
    res = top_examples(m, "0", x, k=3, batch_size=4, quiet=True)
    assert res.indices[0].tolist() == [3, 0, 1]  # then the all-zero images in index order
    assert res.locations[0, 0].tolist() == [1, 2]
    few = top_examples(m, "0", x[:2], k=4, quiet=True)
    assert few.indices[0].tolist() == [0, 1, -1, -1]
    assert torch.isinf(few.values[0, 2:]).all()


def test_datasets_subsets_and_loaders(net, images):
    ds = TensorDataset(images, torch.zeros(len(images)))
    ref = top_examples(net, "layer1", images, k=3, quiet=True, crops=False)
    assert ref.crops is None
    assert torch.equal(top_examples(net, "layer1", ds, k=3, quiet=True, crops=False).indices,
                       ref.indices)
    loader = torch.utils.data.DataLoader(ds, batch_size=17)
    assert torch.equal(top_examples(net, "layer1", loader, k=3, quiet=True, crops=False).indices,
                       ref.indices)
    sub = Subset(ds, list(range(60, 120)))
    res = top_examples(net, "layer1", sub, k=3, quiet=True, crops=False)
    assert int(res.indices.min()) >= 60
    ref2 = top_examples(net, "layer1", images[60:], k=3, offset=60, quiet=True, crops=False)
    assert torch.equal(res.indices, ref2.indices)


def test_bad_input(net, images):
    with pytest.raises(InputError):
        top_examples(net, "layer1", images[:0], quiet=True)
    with pytest.raises(InputError):
        top_examples(net, "layer1", images, k=0, quiet=True)
    with pytest.raises(cs.ConvscopeError):
        top_examples(net, "layer9", images, quiet=True)
    with pytest.raises(InputError):
        top_examples(net, "layer1", "not data", quiet=True)
