"""timm models (issue 14, item 3): ResNet-50, ViT-S/16, ConvNeXt-T, Swin-T, EfficientNet-B0 and
RegNetY-800MF, built with ``timm.create_model(name, pretrained=False)`` (random weights: nothing
downloads).

Oracles: the automatic layer against the layers pytorch-grad-cam's documentation names (the last
block's ``norm1`` of a ViT, the final ``norm`` of Swin, the last stage of a CNN); Grad-CAM and
Grad-CAM++ maps against pytorch-grad-cam at that layer with its documented manual
``reshape_transform`` (``vit_reshape_transform`` drops the one class token; timm's Swin is
``[B, h, w, C]``, flattened to the ``[B, N, C]`` tokens ``swinT_reshape_transform`` reads); a
register-token ViT against the same transform written for its 4 leading tokens, and a reshape
that keeps them; graph, capture, diagnosis and watch against brute force (the classifier's
captured output is the model output; an MLP activation's channel count is its hidden width).
Small inputs (64², Swin at 96² with 3 x 3 windows) keep the tests fast.
"""

from __future__ import annotations

import functools
import logging

import pytest
import timm
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    swinT_reshape_transform,
    vit_reshape_transform,
)
from torch import nn

import convscope as cs
from convscope.nn import GridLayout, grid_layout

from .test_explain import pearson
from .test_transformers import assert_watch_records_two_steps

TARGETS = [1, 5, 7]


@functools.cache
def _timm(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()
    with torch.no_grad():  # O(1) gradients: pytorch-grad-cam's 1e-6 in Grad-CAM++ stays small
        model.get_classifier().weight.mul_(100.0)
    return model


def _head(model: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is model.get_classifier())


# name: (factory, input size, our layer=None choice, pytorch-grad-cam's layer, reshape_transform)
CASES = {
    "resnet50": (lambda: _timm("resnet50"), 64, "layer4", "layer4", None),
    "vit_small_patch16_224": (
        lambda: _timm("vit_small_patch16_224", img_size=64), 64, "blocks.11.norm1",
        "blocks.11.norm1", lambda t: vit_reshape_transform(t, height=4, width=4)),
    # `stages` returns the tensor `stages.3` does (timm's `norm_pre` after it is an nn.Identity)
    "convnext_tiny": (lambda: _timm("convnext_tiny"), 64, "stages", "stages.3", None),
    "swin_tiny_patch4_window7_224": (
        lambda: _timm("swin_tiny_patch4_window7_224", img_size=96, window_size=3), 96, "norm",
        "norm", lambda t: swinT_reshape_transform(t.flatten(1, 2), height=3, width=3)),
    "efficientnet_b0": (lambda: _timm("efficientnet_b0"), 64, "bn2", "bn2", None),
    # `s4`: timm's `final_conv` after it is an nn.Identity
    "regnety_008": (lambda: _timm("regnety_008"), 64, "s4", "s4", None),
}


def _inputs(size: int, n: int = len(TARGETS)) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, size, size)


def _peer(cls, model, layer, x, reshape):
    module = dict(model.named_modules())[layer]
    with cls(model=model, target_layers=[module], reshape_transform=reshape) as extractor:
        return torch.as_tensor(
            extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS]))


# --------------------------------------------------------------------------- the automatic layer
@pytest.mark.parametrize("case", list(CASES))
def test_auto_layer_picks_documented_layer(case, caplog):
    make, size, ours, _, _ = CASES[case]
    model = make()
    with caplog.at_level(logging.INFO, logger="convscope.explain"):
        assert cs.explain.auto_layer(model, _inputs(size)) == ours
        cs.explain.grad_cam(model, _inputs(size), target=TARGETS)
    assert repr(ours) in caplog.text
    if case.startswith("vit"):
        assert "4 x 4 grid" in caplog.text and "class token" in caplog.text
    if case.startswith("swin"):  # timm's Swin is [B, h, w, C] throughout
        assert "channels-last" in caplog.text


# --------------------------------------------------------------------------- maps vs the peer
@pytest.mark.parametrize("ours, peer", [(cs.explain.grad_cam, GradCAM),
                                        (cs.explain.grad_cam_pp, GradCAMPlusPlus)])
@pytest.mark.parametrize("case", list(CASES))
def test_cams_match_pytorch_grad_cam_with_reshape(case, ours, peer):
    make, size, _, peer_layer, reshape = CASES[case]
    model, x = make(), _inputs(size)
    got = ours(model, x, target=TARGETS)  # layer=None: automatic layer and reshape
    ref = _peer(peer, model, peer_layer, x, reshape)
    assert got.shape == (len(TARGETS), size, size)
    assert (ref.flatten(1).std(1) > 0.05).all(), case  # informative oracle maps
    r = pearson(got, ref)
    assert (r >= 0.99).all(), (case, r)


def test_register_tokens_are_dropped():
    """A ViT with 4 register tokens and no class token (average pooling): timm declares
    ``num_prefix_tokens = 4``; the automatic layer is the last block's output (``norm`` is an
    nn.Identity with average pooling) and its 4 leading tokens are dropped. Keeping them (the
    first 16 tokens as the grid) gives another map."""
    model = _timm("vit_betwixt_patch16_reg4_gap_256", img_size=64, depth=2)
    assert model.num_prefix_tokens == 4
    x = _inputs(64)
    assert cs.explain.auto_layer(model, x) == "blocks"
    got = cs.explain.grad_cam(model, x, target=TARGETS)

    def drop(k):
        return lambda t: t[:, k:k + 16].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    right = _peer(GradCAM, model, "blocks", x, drop(4))
    wrong = _peer(GradCAM, model, "blocks", x, drop(0))
    assert (pearson(got, right) >= 0.99).all(), pearson(got, right)
    assert (pearson(got, wrong) < 0.9).all(), pearson(got, wrong)


def test_declared_prefix_tokens_decide_an_ambiguous_count():
    # 26 tokens of an 80 x 80 input: 1 + 5 x 5 (stride 16) or 10 + 4 x 4 (stride 20)
    t = torch.randn(1, 26, 8)
    assert grid_layout(t, (80, 80)) == GridLayout("tokens", (5, 5), 1)  # fewest dropped
    assert grid_layout(t, (80, 80), prefix=10) == GridLayout("tokens", (4, 4), 10)
    # a declared count that fits no grid (tokens already pooled) does not stop the search
    assert grid_layout(t, (80, 80), prefix=3) == GridLayout("tokens", (5, 5), 1)


def test_non_square_vit_input():
    model = _timm("vit_small_patch16_224", img_size=(48, 80), depth=2)
    x = torch.randn(2, 3, 48, 80)
    assert cs.explain.auto_layer(model, x) == "blocks.1.norm1"
    got = cs.explain.grad_cam(model, x, target=[1, 5])
    module = dict(model.named_modules())["blocks.1.norm1"]
    with GradCAM(model=model, target_layers=[module],
                 reshape_transform=lambda t: vit_reshape_transform(t, 3, 5)) as peer:
        ref = torch.as_tensor(peer(input_tensor=x, targets=[ClassifierOutputTarget(t)
                                                            for t in (1, 5)]))
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)


def test_one_by_one_channels_last_map_is_not_read_as_one_channel():
    # timm ConvNeXt's MLP on a 1 x 1 stage at 32²: [B, 1, 1, 3072] is no 1 x 3072 map
    assert grid_layout(torch.randn(2, 1, 1, 3072), (32, 32)) is None
    assert grid_layout(torch.randn(2, 2, 2, 3072), (32, 32)).kind == "channels_last"


def test_strict_layout_refuses_attention_shaped_outputs():
    # per-head queries [B, heads, N, d] and an attention matrix [B, heads, N, N]: 4-D, but no
    # grid of a 64 x 64 input; the automatic layer never reads them as maps
    q, attn = torch.randn(1, 6, 17, 64), torch.randn(1, 6, 17, 17)
    assert grid_layout(q, (64, 64)).kind == "channels_first"  # an explicit layer: as it is
    assert grid_layout(q, (64, 64), strict=True) is None
    assert grid_layout(attn, (64, 64), strict=True) is None
    assert grid_layout(torch.randn(1, 8, 4, 4), (64, 64), strict=True) == \
        GridLayout("channels_first", (4, 4))


# --------------------------------------------------------------------------- graph, capture, ...
@pytest.mark.parametrize("case", list(CASES))
def test_graph_capture_diagnose_watch_run(case, tmp_path):
    make, size, _, _, _ = CASES[case]
    model = make()
    torch.manual_seed(2)
    size = size if case.startswith(("swin", "vit")) else 32  # (built for their input size)
    x = torch.randn(2, 3, size, size)
    g = cs.model.graph(model, x[:1])
    assert len(g.nodes) > 10 and len(g.edges) >= len(g.nodes) - 1
    with torch.no_grad():
        expected = model(x)
    head = _head(model)  # capture: the classifier's output is the model's output (brute force)
    got = cs.model.capture(model, x, [head])
    torch.testing.assert_close(got[head], expected)

    report = cs.diagnose.diagnose(model, x, quiet=True)
    assert report.layers
    hidden = {"vit_small_patch16_224": 4 * 384, "swin_tiny_patch4_window7_224": 4 * 96,
              "convnext_tiny": 4 * 96}
    if case in hidden:  # token / channels-last MLP outputs: channels = hidden width; timm's
        # own activation classes (ConvNeXt's GELU) are activations too
        mlp = next(st for st in report.layers if st.name.endswith("mlp.act"))
        assert mlp.channels == hidden[case], (mlp.name, mlp.shape, mlp.channels)

    assert_watch_records_two_steps(model, x, head, tmp_path)
