"""Transformers and modern CNNs (issue 14, item 3): torchvision ViT, Swin-T and ConvNeXt-T.

Oracles: the token-to-grid reshape against hand-built token sequences (known positions); the
automatic layer against pytorch-grad-cam's documented choices; Grad-CAM and Grad-CAM++ maps
against pytorch-grad-cam with its documented manual ``reshape_transform``
(``pytorch_grad_cam.utils.reshape_transforms``); CAM against Grad-CAM on Swin (equal on a
global-average-pooling + linear model, Zhou et al. 2016); the class token's exclusion against a
reshape that keeps it; graph, capture, diagnosis and watch against brute force (the head's
captured output is the model output; the MLP activation's channel count is the hidden width).
Random weights only; small inputs (a 2-block ViT at 32², Swin at 96², ConvNeXt at 64², all three
at 32² for graph/capture/diagnose/watch) keep the tests fast.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.reshape_transforms import (
    swinT_reshape_transform,
    vit_reshape_transform,
)
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import convscope as cs
from convscope.errors import InputError, NotApplicableError
from convscope.nn import GridLayout, grid_layout, to_grid

from .test_explain import pearson

TARGETS = [1, 5, 7]
VIT_LAYER = "encoder.layers.encoder_layer_1.ln_1"




# --------------------------------------------------------------------------- models (built once)
@functools.cache
def _vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                              hidden_dim=32, mlp_dim=64, num_classes=10).eval()
    with torch.no_grad():  # torchvision starts the head at zero: every gradient would be zero
        model.heads.head.weight.normal_(0.0, 10.0)
    return model


@functools.cache
def _tv(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=10).eval()
    head = model.head if arch.startswith("swin") else model.classifier[-1]
    with torch.no_grad():  # O(1) gradients: pytorch-grad-cam's 1e-6 in Grad-CAM++ stays small
        head.weight.mul_(100.0)
    return model


# (model factory, input size, our layer=None choice, pytorch-grad-cam's layer, reshape_transform;
# torchvision's Swin norm is [B, h, w, C], flattened to the [B, N, C] tokens the transform reads)
CASES = {
    "vit": (_vit, 32, VIT_LAYER, VIT_LAYER,
            lambda t: vit_reshape_transform(t, height=4, width=4)),
    "swin_t": (lambda: _tv("swin_t"), 96, "norm", "norm",
               lambda t: swinT_reshape_transform(t.flatten(1, 2), height=3, width=3)),
    "convnext_tiny": (lambda: _tv("convnext_tiny"), 64, "features", "features.7", None),
}


def _inputs(size: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(len(TARGETS), 3, size, size)


def _peer(cls, model, layer, x, reshape):
    module = dict(model.named_modules())[layer]
    with cls(model=model, target_layers=[module], reshape_transform=reshape) as extractor:
        return torch.as_tensor(
            extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in TARGETS]))


# --------------------------------------------------------------------------- the reshape
def test_tokens_with_class_token_reshape_to_grid_row_major():
    b, h, w, d = 2, 3, 5, 4
    grid = torch.randn(b, d, h, w)
    tokens = grid.flatten(2).transpose(1, 2)  # [B, h*w, D], row-major patches
    with_cls = torch.cat([torch.full((b, 1, d), 1e6), tokens], dim=1)
    layout = grid_layout(with_cls, (24, 40))  # stride 8
    assert layout == GridLayout("tokens", (3, 5), 1)
    assert torch.equal(layout.apply(with_cls), grid)  # the class token (1e6) is gone
    assert torch.equal(to_grid(tokens, (24, 40)), grid)  # no class token: N = h*w
    assert "class token" in layout.describe()


def test_channels_last_and_channels_first_maps():
    x = torch.randn(2, 7, 7, 96)  # Swin's [B, h, w, C] at 224
    layout = grid_layout(x, (224, 224))
    assert layout.kind == "channels_last"
    assert torch.equal(layout.apply(x), x.permute(0, 3, 1, 2))
    y = torch.randn(2, 512, 7, 7)
    assert grid_layout(y, (224, 224)) == GridLayout("channels_first", (7, 7))
    assert to_grid(y, (224, 224)) is y


def test_patch_size_and_non_square_inputs():
    # 32 x 64 input, patch 8: 4 x 8 patches + class token = 33 tokens
    t = torch.randn(1, 33, 16)
    assert grid_layout(t, (32, 64)) == GridLayout("tokens", (4, 8), 1)
    # 2 extra tokens (class + distillation, DeiT): 2 + 4 x 4
    assert grid_layout(torch.randn(1, 18, 8), (32, 32), patch=8) == GridLayout("tokens", (4, 4), 2)
    # not a spatial map: a vector, a 1 x 1 map, a token count no grid explains
    assert grid_layout(torch.randn(2, 10), (32, 32)) is None
    assert grid_layout(torch.randn(2, 8, 1, 1), (32, 32)) is None
    assert grid_layout(torch.randn(2, 3, 8), (32, 32), patch=8) is None
    assert grid_layout(torch.randn(2, 3, 8), (32, 32)) is None  # 1 x 3 is no grid of a square


# --------------------------------------------------------------------------- the automatic layer
@pytest.mark.parametrize("case", list(CASES))
def test_auto_layer_picks_documented_layer(case, caplog):
    make, size, ours, _, _ = CASES[case]
    model = make()
    with caplog.at_level(logging.INFO, logger="convscope.explain"):
        assert cs.explain.auto_layer(model, _inputs(size)) == ours
        cs.explain.grad_cam(model, _inputs(size), target=TARGETS)
    assert repr(ours) in caplog.text
    if case == "vit":
        assert "4 x 4 grid" in caplog.text and "class token" in caplog.text
    if case == "swin_t":
        assert "channels-last" in caplog.text


def test_auto_layer_vit_b_16_last_block_ln_1():
    """The full torchvision vit_b_16 at 224²: pytorch-grad-cam's documented layer."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()  # head starts at zero
    x = torch.randn(1, 3, 224, 224)
    assert cs.explain.auto_layer(model, x) == "encoder.layers.encoder_layer_11.ln_1"
    assert all(p.requires_grad for p in model.parameters()) and not model.training


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


def test_class_token_is_dropped():
    """Keeping the class token (the first ``h*w`` tokens as the grid, or the class token's
    gradient in the Grad-CAM average) gives a different map; ours matches the peer that drops
    it."""
    model, x = _vit(), _inputs(32)
    got = cs.explain.grad_cam(model, x, target=TARGETS, layer=VIT_LAYER)

    def keep_cls(t):  # the first 16 tokens, class token included
        return t[:, :16].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    wrong = _peer(GradCAM, model, VIT_LAYER, x, keep_cls)
    right = _peer(GradCAM, model, VIT_LAYER, x, lambda t: vit_reshape_transform(t, 4, 4))
    assert (pearson(got, right) >= 0.99).all()
    assert (pearson(got, wrong) < 0.9).all(), pearson(got, wrong)


def test_auto_layer_under_inference_mode_and_model_restored():
    model, x = _vit(), _inputs(32)
    cs.explain.base._AUTO_CACHE.pop(model, None)
    model.train()
    before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    try:
        with torch.inference_mode():
            assert cs.explain.auto_layer(model, x) == VIT_LAYER
        assert model.training and all(p.requires_grad for p in model.parameters())
        for p, g in zip(model.parameters(), before, strict=True):  # no parameter gradient
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    finally:
        model.eval()


def test_explicit_token_layer_and_score_cam():
    model, x = _vit(), _inputs(32)
    a = cs.explain.grad_cam(model, x, target=TARGETS)
    b = cs.explain.grad_cam(model, x, target=TARGETS, layer=VIT_LAYER)
    torch.testing.assert_close(a, b)
    got = cs.explain.score_cam(model, x, target=TARGETS, quiet=True)
    ref = _peer(ScoreCAM, model, VIT_LAYER, x, lambda t: vit_reshape_transform(t, 4, 4))
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)


def test_cam_on_swin_equals_grad_cam_and_is_refused_on_vit():
    """Swin ends in norm -> permute -> global average pool -> linear: CAM applies and equals
    Grad-CAM (Zhou et al. 2016; Selvaraju et al. 2017). A ViT classifies its class token: CAM
    does not apply and says so."""
    model, x = _tv("swin_t"), _inputs(96)
    c = cs.explain.cam(model, x, target=TARGETS)
    g = cs.explain.grad_cam(model, x, target=TARGETS)
    torch.testing.assert_close(c, g, atol=1e-4, rtol=1e-4)
    with pytest.raises(NotApplicableError):
        cs.explain.cam(_vit(), _inputs(32), target=TARGETS)


def test_a_token_layer_whose_count_fits_no_grid_is_refused():
    class Seq(nn.Module):  # 3 tokens at 32²: no grid of > 1 cell (a square needs h == w)
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 8)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            t = self.proj(x.flatten(2)[:, :, :3].transpose(1, 2))
            return self.head(t.mean(1))

    with pytest.raises(InputError, match="patch tokens"):
        cs.explain.grad_cam(Seq().eval(), torch.randn(1, 3, 32, 32), layer="proj")


# --------------------------------------------------------------------------- graph, capture, ...
SMALL = {"vit": (_vit, 32), "swin_t": (lambda: _tv("swin_t"), 32),
         "convnext_tiny": (lambda: _tv("convnext_tiny"), 32)}


@pytest.mark.parametrize("case", list(SMALL))
def test_graph_capture_diagnose_watch_run(case, tmp_path):
    make, size = SMALL[case]
    model = make()
    torch.manual_seed(2)
    x = torch.randn(2, 3, size, size)
    g = cs.model.graph(model, x[:1])
    assert len(g.nodes) > 10 and len(g.edges) >= len(g.nodes) - 1
    with torch.no_grad():
        expected = model(x)
    # capture: the logits layer's output equals the model's output (brute force)
    head = "heads.head" if case == "vit" else ("head" if case == "swin_t" else "classifier.2")
    got = cs.model.capture(model, x, [head])
    torch.testing.assert_close(got[head], expected)

    report = cs.diagnose.diagnose(model, x, quiet=True)
    by_type = {}
    for st in report.layers:
        by_type.setdefault(st.type, st)
    gelu = by_type["GELU"]  # token / channels-last MLP activations: channels = hidden width
    hidden = {"vit": 64, "swin_t": 4 * 96, "convnext_tiny": 4 * 96}[case]
    assert gelu.channels == hidden, (gelu.name, gelu.shape, gelu.channels)
    assert any("read as" in n for n in gelu.notes)

    assert_watch_records_two_steps(model, x, head, tmp_path)


def assert_watch_records_two_steps(model, x, head, tmp_path) -> None:
    """run.watch over two SGD steps records both steps and the classifier ``head``; the model's
    weights, mode and gradients are restored afterwards."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with cs.Run(tmp_path, "w") as run:
            run.watch(model, every=1, background=False)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)
            for _ in range(2):
                opt.zero_grad()
                model(x).logsumexp(1).mean().backward()
                opt.step()
            run.unwatch()
        layers = cs.open_run(tmp_path / "w").table("watch_layers")
        assert sorted(layers["step"].unique().tolist()) == [1, 2]
        assert head in set(layers["layer"])
    finally:
        model.eval()
        model.load_state_dict(state)
        for p in model.parameters():
            p.grad = None
