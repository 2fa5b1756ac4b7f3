"""DeconvNet projections of single units (Zeiler & Fergus 2014): convscope.explain.projection.

Oracles: captum's ``Deconvolution`` with the unit as the target (a wrapper whose output is the
unit's summed activation); a deconvnet built by hand on a two-layer model (transposed convolutions
and ``max_unpool2d`` with the forward pass's switches); the receptive field (a projection of one
position is zero outside it); positive homogeneity of the deconvnet rule; brute-force ranking for
the top-k images.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import Deconvolution
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from convscope.errors import ConvscopeError, InputError
from convscope.explain.projection import project_unit, top_projections
from convscope.features import receptive_field
from convscope.zoo import resnet


def small_net(inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    ).eval()


class FunctionalNet(nn.Module):
    """The twin of ``small_net`` written with ``F.relu`` / ``F.max_pool2d``."""

    def __init__(self, twin: nn.Sequential) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = twin[0], twin[3], twin[6]

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.c3(x).relu_()


class UnitOutput(nn.Module):
    """For captum: the model truncated at ``layer``; output = the unit's summed activation."""

    def __init__(self, model: nn.Sequential, upto: int, channel: int, pos=None) -> None:
        super().__init__()
        self.body = model[: upto + 1]
        self.channel, self.pos = channel, pos

    def forward(self, x):
        a = self.body(x)[:, self.channel]
        if self.pos is not None:
            return a[:, self.pos[0], self.pos[1]]
        return a.flatten(1).sum(1)


def pearson(a, b):
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


@pytest.mark.parametrize("upto, channel, pos", [(3, 4, None), (6, 2, None), (7, 5, (1, 2)),
                                                 (6, 11, (2, 0))])
def test_matches_captum_deconvolution_with_the_unit_as_target(upto, channel, pos):
    model = small_net()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 16, 16)
    got = project_unit(model, x, str(upto), channel, pos, seed="ones")
    ref = Deconvolution(UnitOutput(model, upto, channel, pos)).attribute(
        x.clone().requires_grad_(True)).detach()
    assert got.shape == x.shape
    assert float(ref.abs().max()) > 0  # an informative oracle
    assert (pearson(got, ref) >= 0.999).all(), pearson(got, ref)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_the_rule_is_not_the_plain_gradient():
    """The captum match above is a deconvnet, not plain backpropagation matching itself."""
    model = small_net()
    x = torch.randn(4, 3, 16, 16)
    got = project_unit(model, x, "6", 3, seed="ones")
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model[:7](xg)[:, 3].sum(), xg)
    assert (pearson(got, g) < 0.95).all()


def hand_deconvnet(conv1, conv2, x, channel):
    """Zeiler & Fergus by hand: conv1 -> relu -> maxpool(2) -> conv2; seed = the unit's map."""
    with torch.no_grad():
        r1 = F.relu(conv1(x))
        p1, switches = F.max_pool2d(r1, 2, return_indices=True)
        a2 = conv2(p1)
        seed = torch.zeros_like(a2)
        seed[:, channel] = a2[:, channel]  # every other activation of the layer set to zero
        back = F.conv_transpose2d(seed, conv2.weight, padding=1)  # transposed filters, no bias
        back = F.max_unpool2d(back, switches, 2, output_size=r1.shape[-2:])  # switch unpooling
        back = F.relu(back)  # rectification
        return F.conv_transpose2d(back, conv1.weight, padding=1)


def test_matches_a_hand_built_deconvnet():
    torch.manual_seed(3)
    conv1, conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1)
    model = nn.Sequential(conv1, nn.ReLU(), nn.MaxPool2d(2), conv2).eval()
    x = torch.randn(3, 3, 12, 12)
    for channel in range(5):
        got = project_unit(model, x, "3", channel)
        ref = hand_deconvnet(conv1, conv2, x, channel)
        assert float(ref.abs().max()) > 0
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_functional_and_in_place_relus_match_the_module_twin():
    model = small_net()
    x = torch.randn(3, 3, 16, 16)
    ref = project_unit(model, x, "7", 9, "max")
    fun = project_unit(FunctionalNet(model), x, "c3", 9, "max")  # the conv, before relu_
    inpl = small_net(inplace=True)
    got = project_unit(inpl, x, "7", 9, "max")
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(fun, project_unit(model, x, "6", 9, "max"), rtol=1e-4, atol=1e-6)
    assert float(fun.abs().max()) > 0


@pytest.mark.parametrize("layer, channel", [("layer2.0.conv1", 3), ("layer3.0", 7),
                                            ("layer1.0.conv2", 0)])
def test_projection_of_a_position_is_zero_outside_its_receptive_field(layer, channel):
    torch.manual_seed(4)
    model = resnet(width=8).eval()
    x = torch.randn(2, 3, 48, 48)
    fld = receptive_field(model, layer, x[:1])
    for (y, xx) in [(0, 0), (2, 3), (1, 1)]:
        proj = project_unit(model, x, layer, channel, (y, xx), seed="ones")
        y0, x0, y1, x1 = fld.box(y, xx, (48, 48))
        inside = torch.zeros(48, 48, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        support = proj.abs().sum((0, 1)) > 0
        assert support.any(), (layer, y, xx)  # something reaches the pixels
        assert not (support & ~inside).any(), (layer, y, xx, fld)
        assert inside.sum() < 48 * 48  # the check is not vacuous


def test_seed_activation_is_the_impulse_scaled_by_the_activation():
    """relu(s g) = s relu(g) for s >= 0: at one position of a post-ReLU map, the paper's seed
    (the activation) gives the unit impulse's projection times the activation."""
    model = small_net()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        a = model[:5](x)[:, 6]  # post-ReLU, [5, 8, 8]
    pos = torch.tensor([[1, 2], [3, 3], [0, 7], [5, 1], [2, 2]])
    act = project_unit(model, x, "4", 6, pos)
    one = project_unit(model, x, "4", 6, pos, seed="ones")
    scale = a[torch.arange(5), pos[:, 0], pos[:, 1]]
    torch.testing.assert_close(act, one * scale[:, None, None, None], rtol=1e-4, atol=1e-6)


def test_batched_equals_one_image_at_a_time_and_max_is_the_argmax():
    model = small_net()
    x = torch.randn(4, 3, 16, 16)
    whole = project_unit(model, x, "3", 5, "max")
    each = torch.cat([project_unit(model, x[i:i + 1], "3", 5, "max") for i in range(4)])
    torch.testing.assert_close(whole, each, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        a = model[:4](x)[:, 5]
    flat = a.flatten(1).argmax(1)
    pos = torch.stack([flat // 8, flat % 8], 1)
    torch.testing.assert_close(whole, project_unit(model, x, "3", 5, pos))


def test_the_model_is_restored_and_dtype_device_kept():
    model = small_net().train()
    model[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    model.double()
    out = project_unit(model, x, "6", 1)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert model.training and not model[0].weight.requires_grad and model[3].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_bad_arguments_raise_convscope_errors_that_say_what_to_do():
    model = small_net()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(InputError, match="out of range.*16 channels"):
        project_unit(model, x, "6", 16)
    with pytest.raises(InputError, match="outside layer"):
        project_unit(model, x, "6", 0, (4, 0))
    with pytest.raises(InputError, match="seed must be one of"):
        project_unit(model, x, "6", 0, seed="zeros")
    with pytest.raises(InputError, match="position must be"):
        project_unit(model, x, "6", 0, "centre")
    with pytest.raises(InputError, match=r"\[B, 2\]"):
        project_unit(model, x, "6", 0, torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(InputError, match="channel must be an int"):
        project_unit(model, x, "6", -1)
    with pytest.raises(ConvscopeError):
        project_unit(model, x, "nope", 0)
    with pytest.raises(InputError, match="4 dimensions"):
        project_unit(model, x[0], "6", 0)


# ------------------------------------------------------------------------------ top projections
def brute_top(model, upto, images, channel, k):
    with torch.no_grad():
        a = model[: upto + 1](images)[:, channel]
    v, arg = a.flatten(1).max(1)
    order = sorted(range(len(v)), key=lambda i: (-float(v[i]), i))[:k]
    w = a.shape[-1]
    return order, v[order], torch.stack([arg[order] // w, arg[order] % w], 1)


def test_top_projections_rank_crop_and_project_like_the_brute_force():
    model = small_net()
    torch.manual_seed(5)
    data = torch.randn(40, 3, 16, 16)
    got = top_projections(model, data, "3", 7, k=9, batch_size=16, quiet=True)
    order, values, locs = brute_top(model, 3, data, 7, 9)
    assert got.indices.tolist() == order and got.k == 9
    torch.testing.assert_close(got.values, values)
    assert torch.equal(got.locations, locs)
    torch.testing.assert_close(got.images, data[order])
    torch.testing.assert_close(got.projections, project_unit(model, data[order], "3", 7, locs))
    # receptive field of conv "3": 8 x 8, stride 2, offset -3; crops cut by hand
    assert got.field.size == (8, 8) and got.field.stride == (2, 2)
    padded = F.pad(data, (8, 8, 8, 8))
    ppad = F.pad(got.projections, (8, 8, 8, 8))
    for j, i in enumerate(order):
        y0 = -3 + 2 * int(locs[j, 0]) + 8
        x0 = -3 + 2 * int(locs[j, 1]) + 8
        torch.testing.assert_close(got.crops[j], padded[i, :, y0:y0 + 8, x0:x0 + 8])
        torch.testing.assert_close(got.projection_crops[j], ppad[j, :, y0:y0 + 8, x0:x0 + 8])
        # the projection lies inside the crop's window
        assert float(got.projection_crops[j].abs().sum()) == pytest.approx(
            float(got.projections[j].abs().sum()), rel=1e-5)


def test_top_projections_same_for_dataset_loader_and_small_data():
    model = small_net()
    torch.manual_seed(6)
    data = torch.randn(20, 3, 16, 16)
    ref = top_projections(model, data, "6", 2, k=4, quiet=True)
    ds = top_projections(model, TensorDataset(data, torch.zeros(20)), "6", 2, k=4, quiet=True)
    dl = top_projections(model, DataLoader(TensorDataset(data), batch_size=6), "6", 2, k=4,
                         quiet=True)
    for other in (ds, dl):
        assert torch.equal(other.indices, ref.indices)
        torch.testing.assert_close(other.projections, ref.projections)
    few = top_projections(model, data[:3], "6", 2, k=9, quiet=True)
    assert few.k == 3 and few.crops.shape[0] == 3
    with pytest.raises(InputError, match="out of range"):
        top_projections(model, data, "6", 99, quiet=True)
