"""cs.model.capture and friends: outputs equal a hand-composed forward, hooks and modes restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import convscope as cs
from convscope.errors import InputError, LayerNotFoundError, ModelError

tv = torchvision.models
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    m = tv.resnet18(weights=None).eval()
    # non-trivial batch-norm statistics, so a BN that is skipped or run in train mode shows
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def test_stem_layers_equal_manual_composition(resnet: nn.Module) -> None:
    got = cs.model.capture(resnet, X, ["conv1", "bn1", "relu", "maxpool"])
    assert list(got) == ["conv1", "bn1", "relu", "maxpool"]
    with torch.no_grad():
        c = resnet.conv1(X)
        b = resnet.bn1(c)
        r = torch.relu(b)
        p = F.max_pool2d(r, 3, 2, 1)
    torch.testing.assert_close(got["conv1"], c)
    # bn1's output is overwritten by the in-place ReLU in the model; the capture is a copy
    torch.testing.assert_close(got["bn1"], b)
    assert (got["bn1"] < 0).any()
    torch.testing.assert_close(got["relu"], r)
    torch.testing.assert_close(got["maxpool"], p)
    assert not got["conv1"].requires_grad
    assert no_hooks(resnet)


def test_block_internals_and_second_calls(resnet: nn.Module) -> None:
    with torch.no_grad():
        stem = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(X))))
        blk = resnet.layer1[0]
        main = blk.bn2(blk.conv2(torch.relu(blk.bn1(blk.conv1(stem)))))
        out = torch.relu(main + stem)
    got = cs.model.capture(resnet, X, ["layer1.0.bn2", "layer1.0.relu", "layer1.0"])
    # BasicBlock calls its relu twice: both calls are kept, under path and path:2
    assert set(got) == {"layer1.0.bn2", "layer1.0.relu", "layer1.0.relu:2", "layer1.0"}
    torch.testing.assert_close(got["layer1.0.bn2"], main)  # before `out += identity`
    torch.testing.assert_close(got["layer1.0.relu:2"], out)
    torch.testing.assert_close(got["layer1.0"], out)
    only_second = cs.model.capture(resnet, X, "layer1.0.relu:2")
    assert list(only_second) == ["layer1.0.relu:2"]
    torch.testing.assert_close(only_second["layer1.0.relu:2"], out)


def test_layer_selection_by_none_type_and_predicate(resnet: nn.Module) -> None:
    leaves = [n for n, m in resnet.named_modules() if next(m.children(), None) is None]
    all_out = cs.model.capture(resnet, X)
    seconds = {f"layer{i}.{j}.relu:2" for i in range(1, 5) for j in range(2)}
    assert set(all_out) == set(leaves) | seconds
    convs = cs.model.capture(resnet, X, nn.Conv2d)
    assert set(convs) == {n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)}
    picked = cs.model.capture(resnet, X, lambda name, m: name.startswith("layer4") and name.endswith("conv2"))
    assert set(picked) == {"layer4.0.conv2", "layer4.1.conv2"}
    mixed = cs.model.capture(resnet, X, ["fc", nn.BatchNorm2d])
    assert "fc" in mixed and "layer3.1.bn2" in mixed and "layer3.1.conv2" not in mixed
    torch.testing.assert_close(all_out["fc"], resnet(X))


def test_inputs_of_the_classifier(resnet: nn.Module) -> None:
    assert cs.model.default_feature_layer(resnet) == "fc"
    with torch.no_grad():
        expected = torch.flatten(resnet.avgpool(resnet.layer4(resnet.layer3(resnet.layer2(
            resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(X)))))
        )))), 1)
    got = cs.model.capture(resnet, X, inputs_of="fc")
    assert list(got) == ["fc:input"]
    torch.testing.assert_close(got["fc:input"], expected)
    both = cs.model.capture(resnet, X, "fc", inputs_of=["fc"])
    assert set(both) == {"fc", "fc:input"}
    torch.testing.assert_close(cs.model.capture_inputs(resnet, X, "fc")["fc"], expected)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("vgg11", "classifier.6"),
        ("mobilenet_v3_small", "classifier.3"),
        ("squeezenet1_0", None),
    ],
)
def test_default_feature_layer(name: str, layer: str | None) -> None:
    model = getattr(tv, name)(weights=None)
    if layer is None:  # squeezenet classifies with a 1x1 conv: no Linear
        with pytest.raises(LayerNotFoundError, match="layer="):
            cs.model.default_feature_layer(model)
    else:
        assert cs.model.default_feature_layer(model) == layer
        assert cs.model.default_feature_layer(model, torch.randn(1, 3, 64, 64)) == layer


class Odd(nn.Module):
    """Registers the head before the body: registration order != execution order."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 2)
        self.body = nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_default_feature_layer_uses_execution_order_with_inputs() -> None:
    m = Odd()
    assert cs.model.default_feature_layer(m) == "body"
    assert cs.model.default_feature_layer(m, torch.randn(3, 4)) == "head"


def test_mode_grad_and_hooks_are_restored(resnet: nn.Module) -> None:
    m = tv.resnet18(weights=None)
    m.train()
    m.layer2.eval()
    before = m.bn1.running_mean.clone()
    got = cs.model.capture(m, X, "bn1")
    assert m.training and not m.layer2.training and m.layer3.training
    torch.testing.assert_close(m.bn1.running_mean, before)  # eval mode: statistics untouched
    torch.testing.assert_close(got["bn1"], m.eval().bn1(m.conv1(X)).detach())
    m.train()
    kept = cs.model.capture(m, X, "layer4", no_grad=False, clone=False)
    assert kept["layer4"].requires_grad
    train_mode = cs.model.capture(m, X, "bn1", eval=False)
    # batch statistics are used in the pass, and the running ones are restored afterwards
    torch.testing.assert_close(m.bn1.running_mean, before)
    assert train_mode["bn1"].mean(dim=(0, 2, 3)).abs().max() < 1e-4  # batch statistics used
    assert no_hooks(m)


def test_bad_layers_and_failing_forward_leave_no_hooks(resnet: nn.Module) -> None:
    with pytest.raises(LayerNotFoundError, match="Did you mean .*'layer1.0.conv1'"):
        cs.model.capture(resnet, X, "layer1.0.conv")
    with pytest.raises(LayerNotFoundError, match="no Conv3d"):
        cs.model.capture(resnet, X, nn.Conv3d)
    with pytest.raises(ModelError, match="nn.Module"):
        cs.model.capture("resnet", X)
    resnet.train()
    with pytest.raises(InputError, match=r"'conv1'.*\[B, 3, H, W\]"):
        cs.model.capture(resnet, torch.randn(2, 1, 64, 64), ["conv1", "fc"])
    assert resnet.training  # restored after the error
    resnet.eval()
    with pytest.raises(InputError, match="'fc'.*512"):
        # 3 channels fine; the flattened features no longer fit fc: replace avgpool to break it
        broken = tv.resnet18(weights=None).eval()
        broken.avgpool = nn.Identity()
        cs.model.capture(broken, X, "fc")
    assert no_hooks(broken)
    assert no_hooks(resnet)


def test_collect_features_over_a_loader(resnet: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(10, 3, 32, 32, generator=g)
    ys = torch.arange(10) % 3
    loader = DataLoader(TensorDataset(xs, ys), batch_size=4)
    feats, labels = cs.model.collect_features(resnet, loader, quiet=True)
    assert feats.shape == (10, 512)
    torch.testing.assert_close(labels, ys)
    torch.testing.assert_close(feats, cs.model.capture_inputs(resnet, xs, "fc")["fc"], rtol=1e-4, atol=1e-5)
    few, few_labels = cs.model.collect_features(resnet, loader, max_items=6, quiet=True)
    assert few.shape == (6, 512)
    torch.testing.assert_close(few_labels, ys[:6])
    torch.testing.assert_close(few, feats[:6])
    pooled, _ = cs.model.collect_features(resnet, loader, layer="layer3", pool="avg", quiet=True)
    l3 = cs.model.capture(resnet, xs, "layer3")["layer3"]
    torch.testing.assert_close(pooled, l3.mean((2, 3)), rtol=1e-4, atol=1e-5)
    flat, none = cs.model.collect_features(resnet, [xs[:3]], layer="layer4", quiet=True)
    assert none is None and flat.shape == (3, 512 * 1 * 1)
    with pytest.raises(LayerNotFoundError):
        cs.model.collect_features(resnet, loader, layer="layer9", quiet=True)
    assert no_hooks(resnet)


def test_capture_first_stops_the_forward_pass_at_the_layer(resnet):
    from convscope.model.capture import capture_first

    ran = []
    handle = resnet.layer4.register_forward_hook(lambda *a: ran.append("layer4"))
    try:
        out = capture_first(resnet, X, "layer2")
        assert ran == []  # nothing after layer2 ran
        ref = cs.model.capture(resnet, X, "layer2")["layer2"]
        assert ran == ["layer4"]  # a full capture does run it
    finally:
        handle.remove()
    assert torch.equal(out, ref)
    assert no_hooks(resnet) and not resnet.training

    # the k-th call of a module used twice
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.conv(x)))

    torch.manual_seed(0)
    twice = Twice()
    x = torch.randn(2, 3, 8, 8)
    second = capture_first(twice, x, "conv:2")
    with torch.no_grad():
        torch.testing.assert_close(second, twice(x))
    with pytest.raises(InputError, match="ran 2 time"):
        capture_first(twice, x, "conv:3")
    with pytest.raises(LayerNotFoundError):
        capture_first(twice, x, "convv")
    assert no_hooks(twice)
