"""cs.model.graph: nodes, skip edges, fx/hooks recorders, collapsing, serialisation, errors."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError, InputError, LayerNotFoundError, ModelError
from convscope.model import Graph

tv = torchvision.models


# -- small local models ------------------------------------------------------------------------


class Block(nn.Module):
    """CIFAR-style basic block that uses F.relu (functional, not a module)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class CifarResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8), Block(8, 8))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16))
        self.linear = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.flatten(1))


class InplaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv(x))
        z = self.conv2(y)
        z += y  # in-place residual
        return F.relu(z, inplace=True)


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head_a = nn.Linear(4, 2)
        self.head_b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.conv(x).mean((2, 3))
        return self.head_a(f), self.head_b(f)


class DictNet(TupleNet):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        a, b = super().forward(x)
        return {"logits": a, "aux": torch.cat([a, b], dim=1)}


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.sum() > 0:
            y = F.relu(y)
        else:
            y = y * 2
        return self.fc(y.mean((2, 3)))


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(y)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), Exploding())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks
        and not m._forward_pre_hooks
        and not m._backward_hooks
        and not getattr(m, "_backward_pre_hooks", {})
        for m in model.modules()
    )


def edge_set(g: Graph) -> list[tuple[str, str]]:
    return sorted((e.src, e.dst) for e in g.edges)


def check_common(model: nn.Module, g: Graph, x: torch.Tensor) -> None:
    assert len(g) > 0
    # every leaf module with parameters that runs appears, by its module path
    names = {n.name for n in g}
    for path, mod in model.named_modules():
        if next(mod.children(), None) is None and any(True for _ in mod.parameters(recurse=False)):
            assert path in names, f"leaf {path} missing from the graph"
    # input reaches output
    nxg = g.to_networkx()
    assert nx.is_directed_acyclic_graph(nxg)
    assert all(nx.has_path(nxg, i, g.output) for i in g.inputs)
    # shapes agree with an eager run seen through independent forward hooks
    seen: dict[str, list[int]] = {}

    def remember(path: str):  # noqa: ANN202
        def hook(mod: nn.Module, a: object, o: torch.Tensor) -> None:
            seen.setdefault(path, list(o.shape))

        return hook

    handles = [
        m.register_forward_hook(remember(p))
        for p, m in model.named_modules()
        if next(m.children(), None) is None
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    for n in g.leaves():
        if n.call == 1:
            assert n.output_shapes[0] == seen[n.name], n.name
    # parameter counts come from the modules
    named = dict(model.named_modules())
    for n in g.leaves():
        assert n.params == sum(p.numel() for p in named[n.module].parameters())
    assert no_hooks(model)


def check_residual_adds(g: Graph, model: nn.Module, relu_calls: int) -> None:
    """Every block's add takes the block's main path and its shortcut: the previous block's
    output (a real skip edge) or the downsample branch."""
    prev_out = "maxpool"
    n_add = 0
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(model, stage)):
            path = f"{stage}.{i}"
            add = f"{path}.add"
            assert add in g, add
            preds = g.predecessors(add)
            assert len(preds) == 2
            last_bn = f"{path}.bn{3 if relu_calls == 3 else 2}"
            assert last_bn in preds
            if block.downsample is not None:
                assert f"{path}.downsample.1" in preds
            else:
                assert prev_out in preds  # the skip edge from the block input
                # and that producer also feeds the block's first conv
                assert f"{path}.conv1" in g.successors(prev_out)
            prev_out = f"{path}.relu:{relu_calls}"
            assert g.predecessors(prev_out) == [add]
            n_add += 1
    assert n_add == sum(len(getattr(model, s)) for s in ("layer1", "layer2", "layer3", "layer4"))


# -- torchvision models ------------------------------------------------------------------------


def test_resnet18_graph_structure() -> None:
    model = tv.resnet18(weights=None)
    g = cs.model.graph(model, X64)
    assert g.method == "fx" and g.fallback_reason is None
    check_common(model, g, X64)
    check_residual_adds(g, model, relu_calls=2)
    # the stem is four separately addressable nodes in order
    assert g.successors("input") == ["conv1"]
    assert g.successors("conv1") == ["bn1"]
    assert g.successors("bn1") == ["relu"]
    assert g.successors("relu") == ["maxpool"]
    assert g["layer1.0.add"].type == "add" and g["layer1.0.add"].parent == "layer1.0"
    assert g["layer1.0.relu:2"].module == "layer1.0.relu" and g["layer1.0.relu:2"].call == 2
    assert g["flatten"].op == "function" and g["flatten"].parent == ""
    assert g["conv1"].params == 64 * 3 * 7 * 7
    assert g["conv1"].output_shapes == [[1, 64, 32, 32]]
    assert g.predecessors("output") == ["fc"]


def test_resnet50_graph() -> None:
    model = tv.resnet50(weights=None)
    g = cs.model.graph(model, X64)
    check_common(model, g, X64)
    check_residual_adds(g, model, relu_calls=3)


@pytest.mark.slow
def test_resnet152_graph() -> None:
    model = tv.resnet152(weights=None)
    g = cs.model.graph(model, X64)
    check_common(model, g, X64)
    check_residual_adds(g, model, relu_calls=3)
    assert len(g.block_names(depth=2)) == 3 + 8 + 36 + 3


@pytest.mark.parametrize(
    "name",
    [
        "vgg16",
        pytest.param("densenet121", marks=pytest.mark.slow),
        "mobilenet_v3_small",
        "efficientnet_b0",
        "googlenet",
    ],
)
def test_torchvision_zoo_graphs(name: str) -> None:
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    model = getattr(tv, name)(**kwargs)
    g = cs.model.graph(model, X64)
    check_common(model, g, X64)
    ops = {n.type for n in g if n.op == "function"}
    expected = {
        "vgg16": {"flatten"},
        "densenet121": {"cat", "relu", "adaptive_avg_pool2d", "flatten"},
        "mobilenet_v3_small": {"mul", "add", "flatten"},
        "efficientnet_b0": {"mul", "add", "flatten"},
        "googlenet": {"cat", "relu", "flatten"},
    }[name]
    assert expected <= ops
    if name == "googlenet":
        # an inception block concatenates its four branches
        assert len(g.predecessors("inception3a.cat")) == 4


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "googlenet", "mobilenet_v3_small"])
def test_fx_and_hooks_recorders_agree(name: str) -> None:
    kwargs = {"weights": None}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=False)
    model = getattr(tv, name)(**kwargs)
    gf = cs.model.graph(model, X64, method="fx")
    gh = cs.model.graph(model, X64, method="hooks")
    assert gf.method == "fx" and gh.method == "hooks"
    assert list(gf.nodes) == list(gh.nodes)
    assert edge_set(gf) == edge_set(gh)
    for a, b in zip(gf, gh, strict=True):
        assert a.output_shapes == b.output_shapes and a.parent == b.parent
    assert no_hooks(model)


# -- functional / in-place / tuple / dict / control flow ---------------------------------------


def test_cifar_resnet_with_functional_relu() -> None:
    model = CifarResNet()
    g = cs.model.graph(model, X32)
    check_common(model, g, X32)
    relus = [n for n in g if n.type == "relu"]
    assert relus and all(n.op == "function" for n in relus)
    assert "layer1.0.relu" in g and g["layer1.0.relu"].parent == "layer1.0"
    # layer1.1's add: main path bn2 + the skip from layer1.0's final relu
    assert sorted(g.predecessors("layer1.1.add")) == ["layer1.1.bn2", "layer1.1.short"]
    assert g.predecessors("layer1.1.short") == ["layer1.0.relu_1"]
    # layer2.0's add takes the projection shortcut
    assert sorted(g.predecessors("layer2.0.add")) == ["layer2.0.bn2", "layer2.0.short.1"]
    # an empty nn.Sequential shortcut is a leaf that passes its input through
    assert g.predecessors("layer1.0.short") == ["relu"]
    assert "layer1.0.short" in g.predecessors("layer1.0.add")
    gh = cs.model.graph(model, X32, method="hooks")
    assert edge_set(g) == edge_set(gh)


def test_inplace_ops_keep_the_data_flow() -> None:
    model = InplaceNet()
    for method in ("fx", "hooks"):
        g = cs.model.graph(model, X32, method=method)
        assert g.predecessors("relu") == ["conv"]
        assert sorted(g.predecessors("add")) == ["conv2", "relu"]  # z += y
        assert g.predecessors("relu_1") == ["add"]  # F.relu after the module named relu
        assert g.predecessors("output") == ["relu_1"]


def test_tuple_and_dict_outputs() -> None:
    for model, n_out in ((TupleNet(), 2), (DictNet(), 2)):
        g = cs.model.graph(model, X32)
        check_common(model, g, X32)
        out = g[g.output]
        assert len(out.input_shapes) == n_out
    g = cs.model.graph(TupleNet(), X32)
    assert sorted(g.predecessors("output")) == ["head_a", "head_b"]
    g = cs.model.graph(DictNet(), X32)
    assert sorted(g.predecessors("output")) == ["cat", "head_a"]
    assert g["output"].input_shapes == [[2, 2], [2, 5]]


def test_data_dependent_control_flow_falls_back_to_hooks() -> None:
    model = Branchy()
    pos = X32.abs()
    g = cs.model.graph(model, pos)
    assert g.method == "hooks"
    assert "control flow" in g.fallback_reason
    check_common(model, g, pos)
    # the branch that ran is the one recorded
    assert g.predecessors("relu") == ["conv"] and "mul" not in g
    g_neg = cs.model.graph(model, -pos)
    assert g_neg.predecessors("mul") == ["conv"] and "relu" not in g_neg
    with pytest.raises(ModelError, match="fx"):
        cs.model.graph(model, pos, method="fx")
    assert no_hooks(model)


def test_two_inputs() -> None:
    g = cs.model.graph(TwoInputs(), (X32, X32 + 1))
    assert g.inputs == ["input_0", "input_1"]
    assert g.successors("input_0") == ["a"] and g.successors("input_1") == ["b"]
    assert sorted(g.predecessors("mul")) == ["a", "b"]


# -- collapsing, hierarchy, serialisation ------------------------------------------------------


def test_collapse_resnet18() -> None:
    model = tv.resnet18(weights=None)
    g = cs.model.graph(model, X64)
    c1 = g.collapse(1)
    assert list(c1.nodes) == [
        "input", "conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
        "avgpool", "flatten", "fc", "output",
    ]
    assert c1.successors("layer1") == ["layer2"] and c1.predecessors("layer1") == ["maxpool"]
    assert c1["layer3"].op == "block" and c1["layer3"].type == "Sequential"
    assert c1["layer3"].params == sum(p.numel() for p in model.layer3.parameters())
    assert c1["layer2"].input_shapes == [[1, 64, 16, 16]]
    assert c1["layer2"].output_shapes == [[1, 128, 8, 8]]
    assert set(c1["layer1"].members) == {n.name for n in g if n.name.startswith("layer1.")}

    c2 = g.collapse(2)
    assert "layer2.0" in c2 and c2["layer2.0"].type == "BasicBlock"
    assert c2.predecessors("layer2.1") == ["layer2.0"]

    opened = g.collapse(1, expand={"layer2"})
    assert "layer1" in opened and "layer2" not in opened
    assert opened.predecessors("layer2.0") == ["layer1"]
    assert opened.successors("layer2.1") == ["layer3"]

    one = g.collapse({"layer1.0"})
    assert one["layer1.0"].op == "block"
    assert "layer1.1.conv1" in one and "layer2.0.conv1" in one
    assert one.successors("layer1.0") == ["layer1.1.conv1", "layer1.1.add"]

    assert g.block_names(depth=1) == ["layer1", "layer2", "layer3", "layer4"]
    assert g.children("layer1.0")[:2] == ["layer1.0.conv1", "layer1.0.bn1"]
    assert "layer1.0.add" in g.children("layer1.0")
    assert g.blocks["layer1.0"].parent == "layer1" and g.blocks["layer1.0"].depth == 2
    with pytest.raises(LayerNotFoundError, match="layer1"):
        g.collapse({"layer1.9"})


def test_to_dict_round_trip_and_networkx() -> None:
    g = cs.model.graph(CifarResNet(), X32)
    data = json.loads(json.dumps(g.to_dict()))
    back = Graph.from_dict(data)
    assert back.to_dict() == g.to_dict()
    assert back.collapse(1).to_dict() == g.collapse(1).to_dict()
    nxg = g.to_networkx()
    assert nxg.number_of_nodes() == len(g) and nxg.number_of_edges() == len(g.edges)
    assert nxg.nodes["layer1.0.conv1"]["parent"] == "layer1.0"
    with pytest.raises(ConvscopeError):
        Graph.from_dict({"nodes": []})


# -- errors -----------------------------------------------------------------------------------


def test_errors_name_the_problem_and_leave_no_hooks() -> None:
    with pytest.raises(ModelError, match="nn.Module"):
        cs.model.graph({"weight": torch.zeros(1)}, X32)
    model = CifarResNet()
    with pytest.raises(InputError, match="inputs"):
        cs.model.graph(model, "an image")
    for method in ("auto", "hooks"):
        with pytest.raises(InputError, match=r"'conv1'.*\[B, 3, H, W\]"):
            cs.model.graph(model, torch.randn(1, 5, 32, 32), method=method)
        assert no_hooks(model)
    broken = Broken()
    for method in ("auto", "hooks"):
        with pytest.raises(ModelError, match=r"'body.1'.*boom"):
            cs.model.graph(broken, X32, method=method)
        assert no_hooks(broken)
    g = cs.model.graph(model, X32)
    with pytest.raises(LayerNotFoundError, match="layer1.0.conv1"):
        g["layer1.0.conv"]
    # modes are restored
    model.train()
    model.layer1.eval()
    cs.model.graph(model, X32)
    assert model.training and not model.layer1.training and model.layer2.training


def test_a_bare_leaf_module_is_one_node() -> None:
    conv = nn.Conv2d(3, 4, 3)
    g = cs.model.graph(conv, X32)
    assert g.method == "hooks" and "single leaf" in g.fallback_reason
    assert list(g.nodes) == ["input", "Conv2d", "output"]
    assert g["Conv2d"].module == "" and g["Conv2d"].params == 4 * 3 * 9 + 4
    assert g["Conv2d"].output_shapes == [[2, 4, 30, 30]]
    assert edge_set(g) == [("Conv2d", "output"), ("input", "Conv2d")]
