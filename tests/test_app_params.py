"""The Model page's "Parameters" section (app/pages/model_params.py), called as the layer panel
calls it: a drawn conv / linear view with its tree, a notice naming the call that records a
missing one, nothing for a layer without weights or a request that names no layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import dendrogram, linkage
from scipy.spatial.distance import pdist
from torch import nn

import convscope as cs
from convscope.app.pages import model as model_page
from convscope.app.pages.model_params import is_param_type, params_section
from convscope.store.reader import open_run


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 7)

    def forward(self, x):
        h = self.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.manual_seed(0)
    logdir = tmp_path_factory.mktemp("params")
    model = Net().eval()
    x = torch.rand(3, 3, 12, 12)
    with cs.Run(logdir, "full", quiet=True) as run:
        run.log_model(model, x, profile=False)
        run.log_diagnosis(model, x)
    with cs.Run(logdir, "some", quiet=True) as run:
        run.log_model(model, x, profile=False)
        run.log_diagnosis(model, x, params=["conv1"])
    with cs.Run(logdir, "bare", quiet=True) as run:
        run.log_model(model, x, profile=False)
    return {n: open_run(logdir / n) for n in ("full", "some", "bare")}, model


def _find(tree, pred):
    """Every node of a Dash component's JSON tree for which ``pred(props)`` holds."""
    out = []
    if isinstance(tree, dict):
        props = tree.get("props") if "props" in tree else None
        if isinstance(props, dict) and pred(props):
            out.append(props)
        for v in (props or tree).values():
            out += _find(v, pred)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            out += _find(v, pred)
    return out


def _json(component):
    return json.loads(json.dumps(component.to_plotly_json(), cls=_Enc))


class _Enc(json.JSONEncoder):
    def default(self, o):
        if hasattr(o, "to_plotly_json"):
            return o.to_plotly_json()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        return super().default(o)


def _text(tree) -> str:
    return json.dumps(tree)


def test_the_section_is_one_of_the_panels_sections():
    assert params_section in model_page.PANEL_SECTIONS


@pytest.mark.parametrize("layer,weight", [("conv1", "conv1.weight"), ("fc", "fc.weight")])
def test_a_conv_or_linear_layer_shows_its_weights_in_leaf_order(runs, layer, weight):
    readers, model = runs
    section = _json(params_section(readers["full"], layer))
    assert _find(section, lambda p: p.get("id") == "params-section")[0]["data-state"] == "drawn"
    fig = _find(section, lambda p: p.get("id") == "params-fig")[0]["figure"]
    meta = fig["layout"]["meta"]
    w = dict(model.named_parameters())[weight].detach().numpy()
    z = linkage(pdist(w.reshape(len(w), -1).astype(np.float64), "cosine"), "single")
    assert meta["rows"] == dendrogram(z, no_plot=True)["leaves"]
    assert meta["tree"] and meta["links"] == len(w) - 1
    tree = [t for t in fig["data"] if t.get("name") == "dendrogram"][0]
    assert sum(v is None for v in tree["x"]) == len(w) - 1
    assert "Wang & Li (2020)" in _text(section)


def test_a_layer_without_a_view_names_the_call_that_records_it(runs):
    readers, _ = runs
    bare = _text(_json(params_section(readers["bare"], "conv2")))
    assert "no parameter view of this layer" in bare and "run.log_diagnosis(model, images)" in bare
    some = _text(_json(params_section(readers["some"], "fc")))
    assert 'run.log_diagnosis(model, images, params=[\\"fc\\"])' in some
    drawn = _json(params_section(readers["some"], "conv1"))
    assert _find(drawn, lambda p: p.get("id") == "params-fig")


@pytest.mark.parametrize("layer", ["relu", "", None, 3, ["conv1"], "x" * 10_000, "../conv1",
                                   "nope"])
def test_no_section_without_weights_or_for_a_layer_that_is_not_there(runs, layer):
    readers, _ = runs
    assert params_section(readers["full"], layer) is None
    assert params_section(readers["bare"], layer) is None


def test_the_whole_panel_carries_the_section(runs):
    readers, _ = runs
    panel = _text(_json(model_page.layer_panel(readers["full"], "conv2")))
    assert "params-fig" in panel and "Parameters" in panel


def test_param_types():
    assert all(is_param_type(t) for t in ("Conv2d", "Conv1d", "ConvTranspose2d", "Linear",
                                          "LazyConv2d", "LazyLinear"))
    assert not any(is_param_type(t) for t in ("ReLU", "BatchNorm2d", "Conv2dNormActivation",
                                              None, 3, "Sequential"))
