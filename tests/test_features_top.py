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


# -- token and channels-last layers (issue 14: ViT and Swin at 224²) ----------------------------
def _tiny_vit():
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


class ChannelsLast(nn.Module):
    """A convolution whose block hands on ``[B, h, w, C]`` (as Swin's blocks do)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 5, 4, stride=4)
        self.block = nn.Identity()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        y = self.block(self.conv(x).permute(0, 2, 3, 1))  # [B, 8, 8, 5]
        return self.head(y.mean((1, 2)))


def test_top_examples_of_vit_tokens_rank_the_patch_tokens_only():
    model = _tiny_vit()
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    layer = "encoder.layers.encoder_layer_0"
    res = top_examples(model, layer, x, k=4, batch_size=7, quiet=True)
    # brute force: the 17 tokens, the class token dropped, 16 patch tokens on the 4 x 4 grid
    with torch.no_grad():
        tokens = cs.model.capture(model, x, layer)[layer]  # [20, 17, 16]
    patches = tokens[:, 1:].reshape(20, 4, 4, 16)  # row-major patch order
    best = patches.amax((1, 2))  # [20, 16]: each channel's spatial maximum per image
    assert res.values.shape == (16, 4) and res.field.method == "gradient"
    for ch in range(16):
        want = torch.argsort(best[:, ch], descending=True, stable=True)[:4]
        assert res.indices[ch].tolist() == want.tolist()
        assert torch.allclose(res.values[ch], best[want, ch], atol=1e-5)
        y, xx = res.locations[ch, 0].tolist()
        assert patches[want[0], y, xx, ch] == best[want[0], ch]
    # one self-attention layer sees every patch: the receptive field is the whole image
    assert res.field.size == (32, 32)
    # the class token alone would have changed the ranking: the test is not vacuous
    cls = tokens[:, 0]
    assert any(torch.argsort(cls[:, ch], descending=True, stable=True)[:4].tolist()
               != res.indices[ch].tolist() for ch in range(16))


def test_top_examples_of_a_channels_last_block_permute_it():
    model = ChannelsLast().eval()
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    res = top_examples(model, "block", x, k=3, quiet=True)
    with torch.no_grad():
        maps = model.conv(x)  # the same values channels-first: [12, 5, 8, 8]
    bv, bi, _ = brute_force_maps(maps, 3)
    assert res.values.shape == (5, 3) and torch.equal(res.indices, bi)
    assert torch.allclose(res.values, bv, atol=1e-6)
    # the block only permutes: its receptive field is the convolution's 4 x 4 patch
    assert res.field.size == (4, 4) and res.field.stride == (4, 4)
    assert res.crops.shape == (5, 3, 3, 4, 4)


def brute_force_maps(maps, k):
    best = maps.amax((2, 3))  # [N, C]
    order = torch.argsort(best.t(), dim=1, descending=True, stable=True)[:, :k]
    return best.t().gather(1, order), order, None


def test_top_examples_refuse_an_output_that_is_no_map():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 8, stride=8)
            self.out = nn.Identity()

        def forward(self, x):
            # [B, 3, 4]: three "tokens" are no grid of the 32² input, with or without prefix
            return self.out(self.conv(x).flatten(2)[:, :, :3].transpose(1, 2))

    x = torch.rand(4, 3, 32, 32)
    with pytest.raises(InputError, match="no spatial map"):
        top_examples(Seq().eval(), "out", x, quiet=True)
