"""Zero-initialised layers (torchvision's ViT head): ``zero-weights`` instead of ``dead-maps``.

Oracle: the model is built by hand, so which layer's weights are zero (and which ReLU is dead)
is known; the rule must name exactly those layers."""

from __future__ import annotations

from unittest import mock

import torch
from torch import nn

from convscope.diagnose import core, diagnose
from convscope.diagnose.rules import ADVICE, CODES, explain_zero_weights, zero_weights


class Net(nn.Module):
    def __init__(self, zero_head: bool = False, zero_mid: bool = False,
                 dead_relu: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.mid = nn.Linear(8, 16)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, 10)
        with torch.no_grad():
            if zero_head:
                self.head.weight.zero_()
                self.head.bias.zero_()
            if zero_mid:
                self.mid.weight.zero_()
                self.mid.bias.zero_()
            if dead_relu:  # every pre-activation negative: a dead ReLU, weights not zero
                self.mid.weight.fill_(-0.05)
                self.mid.bias.fill_(-10.0)

    def forward(self, x):
        h = self.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(self.relu2(self.mid(h)))


def _raw(model, x, **kw):
    """The report with the raw rules only (the zero-weights step switched off)."""
    with mock.patch.object(core, "explain_zero_weights", lambda findings, params: findings):
        return diagnose(model, x, quiet=True, **kw)


def _report(model):
    """(raw report, the findings diagnose() gives): diagnose() applies explain_zero_weights to
    the raw findings, and exactly that."""
    x = torch.rand(6, 3, 12, 12)
    rep = _raw(model, x, layers=["mid", "relu2", "head"])
    found = diagnose(model, x, layers=["mid", "relu2", "head"], quiet=True).findings
    assert found == explain_zero_weights(rep.findings, rep.params)
    return rep, found


def _codes(findings, layer):
    return [f.code for f in findings if f.layer.split(":")[0] == layer]


def test_zero_head_is_zero_weights_info_not_dead_maps():
    model = Net(zero_head=True)
    rep, found = _report(model)
    # the raw rule sees 10/10 dead outputs (the symptom of the issue)
    assert "dead-maps" in _codes(rep.findings, "head")
    zw = [f for f in found if f.code == "zero-weights"]
    assert [f.layer for f in zw] == ["head"]
    assert zw[0].severity == "info" and zw[0].evidence["head"] is True
    assert zw[0].evidence["weights"] == 160 and zw[0].evidence["channels"] == 10
    assert "zero-initialised" in zw[0].advice and "ReLU)" not in zw[0].advice
    assert "dead-maps" not in _codes(found, "head")
    # the finding keeps the place (stage) of the dead-maps finding it explains
    dead = next(f for f in rep.findings if f.code == "dead-maps" and f.layer == "head")
    assert zw[0].stage == dead.stage
    assert found.index(zw[0]) == rep.findings.index(dead)


def test_zero_middle_layer_is_a_warning():
    rep, found = _report(Net(zero_mid=True))
    zw = [f for f in found if f.code == "zero-weights"]
    assert [f.layer for f in zw] == ["mid"]
    assert zw[0].severity == "warning" == CODES["zero-weights"]
    assert "dead-maps" not in _codes(found, "mid")
    # relu2 is dead because mid outputs zero; it keeps its dead-maps finding (not zero weights)
    assert "dead-maps" in _codes(found, "relu2")


def test_dead_relu_keeps_dead_maps():
    rep, found = _report(Net(dead_relu=True))
    assert not any(zero_weights(p) for p in rep.params)
    assert "dead-maps" in _codes(found, "relu2")
    assert not any(f.code == "zero-weights" for f in found)
    assert found == rep.findings
    assert next(f for f in found if f.code == "dead-maps").advice == ADVICE["dead-maps"]


def test_zero_weights_predicate_needs_bias_zero_too():
    rep, _ = _report(Net(zero_head=True))
    head = next(p for p in rep.params if p.name == "head")
    assert zero_weights(head)
    model = Net(zero_head=True)
    with torch.no_grad():
        model.head.bias.fill_(0.5)  # outputs 0.5: not zero, and not zero weights
    rep2, found2 = _report(model)
    assert not zero_weights(next(p for p in rep2.params if p.name == "head"))
    assert not any(f.code == "zero-weights" for f in found2)


def test_zero_layer_without_output_stats_gets_a_parameter_finding():
    rep, _ = _report(Net(zero_head=True))
    kept = [f for f in rep.findings if f.layer != "head"]
    found = explain_zero_weights(kept, rep.params)
    zw = [f for f in found if f.code == "zero-weights"]
    assert len(zw) == 1 and zw[0].stage == "dense parameters" and zw[0].severity == "info"


def test_torchvision_vit_head_is_a_zero_initialised_head():
    """torchvision's VisionTransformer zero-initialises ``heads.head`` (its _init_weights):
    the raw rules report 1000/1000-style dead-maps there; the explained report does not."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=12).eval()
    assert not vit.heads.head.weight.any() and not vit.heads.head.bias.any()  # the premise
    x = torch.rand(4, 3, 32, 32)
    rep = _raw(vit, x)
    assert any(f.code == "dead-maps" and f.layer == "heads.head" for f in rep.findings)
    found = diagnose(vit, x, quiet=True).findings
    zw = [f for f in found if f.code == "zero-weights"]
    assert [(f.layer, f.severity) for f in zw] == [("heads.head", "info")]
    assert zw[0].evidence["channels"] == 12
    assert not any(f.code == "dead-maps" and f.layer == "heads.head" for f in found)
    # nothing else in the report changes
    assert [f for f in found if f.layer != "heads.head"] == \
        [f for f in rep.findings if f.layer != "heads.head"]
