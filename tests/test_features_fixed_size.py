"""Activation maximisation on fixed-input-size models (vision transformers) and token layers.

Oracles: the input sizes a forward pre-hook sees (a hand-built ViT-like model raises unless its
input is exactly 32 x 32), hand computations on the captured token outputs (mean of feature ``d``
over the patch tokens, the class token dropped; one patch token for a neuron), slicing and
``F.interpolate`` for :class:`FitSize`, and values recorded with convscope before this change
for a model that accepts any size (its results must not move).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope as cs
from convscope.errors import ConvscopeError, InputError
from convscope.features.maximize import fixed_input_size, size_hints
from convscope.features.preferred import input_shape, layer_channels
from convscope.features.transforms import FitSize

D = 24  # token features: more than the 17 tokens, so feature d and token d cannot be confused


class TinyViT(nn.Module):
    """A ViT-like model that, like torchvision's, raises unless the input is exactly 32 x 32:
    8 x 8 patches (a 4 x 4 grid), a class token, one token-wise block, a head on the class
    token. It declares no size unless ``declare`` is given (as ``input_size``)."""

    def __init__(self, declare: int | None = 32) -> None:
        super().__init__()
        if declare is not None:
            self.input_size = declare
        self.proj = nn.Conv2d(3, D, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, D) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, 17, D) * 0.1)
        self.blocks = nn.Sequential(nn.Sequential(nn.Linear(D, D), nn.GELU()))
        self.head = nn.Linear(D, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (32, 32):
            raise ValueError(f"TinyViT takes 32 x 32 images, got {tuple(x.shape[-2:])}")
        t = self.proj(x).flatten(2).transpose(1, 2)  # [B, 16, D]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        t = self.blocks(t)
        return self.head(t[:, 0])


class ChannelsLast(nn.Module):
    """Any size; ``last`` outputs a channels-last map ``[B, h, w, D]`` (as Swin's blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_size = 32
        self.conv = nn.Conv2d(3, D, 4, stride=4)
        self.last = nn.Sequential(nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.last(self.conv(x).permute(0, 2, 3, 1))
        return y.mean((1, 2))


def any_size_cnn() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    m.input_size = 32
    return m.eval()


def seen_sizes(module: nn.Module) -> tuple[list[tuple[int, int]], object]:
    sizes: list[tuple[int, int]] = []
    handle = module.register_forward_pre_hook(
        lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    return sizes, handle


def captured(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda _m, _a, o: out.append(o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return out[0]


# ---------------------------------------------------------------------------------------------
# fixed-size models get images of exactly their size


def test_fixed_size_model_gets_32px_preferred_inputs_and_only_ever_sees_32px():
    torch.manual_seed(1)
    m = TinyViT().eval()
    sizes, h = seen_sizes(m.proj)
    imgs, vals = cs.features.maximize(m, "blocks.0", [0, 5, 20], steps=6, quiet=True,
                                      return_values=True)
    h.remove()
    assert imgs.shape == (3, 3, 32, 32)
    assert torch.isfinite(vals).all()
    assert set(sizes) == {(32, 32)} and len(sizes) >= 6  # pad + jitter made 34 px: fitted back


def test_canvas_smaller_than_the_model_size_is_resized_up_and_returned_at_canvas_size():
    torch.manual_seed(1)
    m = TinyViT().eval()
    sizes, h = seen_sizes(m.proj)
    imgs = cs.features.maximize(m, "blocks.0", [2, 3], steps=3, size=16, quiet=True)
    h.remove()
    assert imgs.shape == (2, 3, 16, 16)
    assert set(sizes) == {(32, 32)}


def test_undeclared_fixed_size_is_found_from_the_canvas_size():
    torch.manual_seed(1)
    m = TinyViT(declare=None).eval()
    assert size_hints(m) == [] and fixed_input_size(m) is None
    sizes, h = seen_sizes(m.proj)
    imgs = cs.features.maximize(m, "blocks.0", [1], steps=3, size=32, quiet=True)
    h.remove()
    assert imgs.shape == (1, 3, 32, 32) and set(sizes) == {(32, 32)}


def test_torchvision_vit_declares_its_size_and_maximize_fits_to_it():
    torch.manual_seed(0)
    vit = __import__("torchvision").models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    assert fixed_input_size(vit) == (32, 32)
    assert input_shape(vit) == (3, 32, 32)  # not 224 from its stride-8 convolution
    assert layer_channels(vit, "encoder.layers.encoder_layer_0", size=16) == 16  # D, not 17
    sizes, h = seen_sizes(vit.conv_proj)
    imgs, vals = cs.features.maximize(vit, "encoder.layers.encoder_layer_0", [0, 15], steps=4,
                                      quiet=True, return_values=True, **cs.features.IMAGENET)
    h.remove()
    assert imgs.shape == (2, 3, 32, 32) and set(sizes) == {(32, 32)}
    # the value is the mean of feature d over the 16 patch tokens of the fitted final image
    x = (imgs - torch.tensor(cs.features.IMAGENET["mean"]).view(1, 3, 1, 1)) / torch.tensor(
        cs.features.IMAGENET["std"]).view(1, 3, 1, 1)
    out = captured(vit, vit.encoder.layers.encoder_layer_0, x)
    assert out.shape == (2, 17, 16)
    want = torch.stack([out[0, 1:, 0].mean(), out[1, 1:, 15].mean()])
    torch.testing.assert_close(vals, want, rtol=1e-4, atol=1e-5)


def test_timm_strict_img_size_is_declared():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                            depth=1, num_heads=2, embed_dim=16, num_classes=3).eval()
    assert fixed_input_size(vit) == (32, 32)
    sizes, h = seen_sizes(vit.patch_embed.proj)
    imgs = cs.features.maximize(vit, "blocks.0", [3], steps=3, quiet=True)
    h.remove()
    assert imgs.shape == (1, 3, 32, 32) and set(sizes) == {(32, 32)}
    assert layer_channels(vit, "blocks.0") == 16


def test_a_model_that_rejects_every_size_raises_the_first_error():
    class Never(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            raise ValueError(f"Never accepts {tuple(x.shape[-2:])}")

    with pytest.raises(ConvscopeError, match=r"Never accepts \(32, 32\)"):
        cs.features.maximize(Never(), None, [0], objective="logit", size=32, steps=1,
                             quiet=True)


# ---------------------------------------------------------------------------------------------
# token and channels-last layers: the objectives read [B, D, h, w] maps


def test_channel_objective_on_tokens_is_the_mean_over_patch_tokens_of_feature_d():
    torch.manual_seed(2)
    m = TinyViT().eval()
    units = [3, 20]  # 20 > 16 patch tokens: only a feature index
    imgs, vals = cs.features.maximize(m, "blocks.0", units, steps=2, quiet=True,
                                      return_values=True)
    out = captured(m, m.blocks[0], imgs)  # canvas 32 = the model size: the final image as is
    assert out.shape == (2, 17, D)
    want = torch.stack([out[i, 1:, u].mean() for i, u in enumerate(units)])
    torch.testing.assert_close(vals, want, rtol=1e-5, atol=1e-6)
    old = torch.stack([out[0, 3].mean(), out[1, 16].mean()])  # token u (index clamped)
    assert not torch.allclose(vals, old, atol=1e-3)
    with pytest.raises(InputError, match=f"{D} channels"):
        cs.features.maximize(m, "blocks.0", [D], steps=1, quiet=True)


def test_neuron_objective_on_tokens_reads_one_patch_token():
    torch.manual_seed(3)
    m = TinyViT().eval()
    imgs, vals = cs.features.maximize(m, "blocks.0", [(5, 1, 2), (7, 3, 0)], objective="neuron",
                                      steps=2, quiet=True, return_values=True)
    out = captured(m, m.blocks[0], imgs)
    want = torch.stack([out[0, 1 + 1 * 4 + 2, 5], out[1, 1 + 3 * 4 + 0, 7]])  # row-major grid
    torch.testing.assert_close(vals, want, rtol=1e-5, atol=1e-6)


def test_channels_last_output_channel_is_its_last_dimension():
    torch.manual_seed(4)
    m = ChannelsLast().eval()
    assert layer_channels(m, "last") == D
    imgs, vals = cs.features.maximize(m, "last", [2, 17], steps=2, quiet=True,
                                      return_values=True)
    out = captured(m, m.last, imgs)  # [2, 8, 8, D]
    want = torch.stack([out[0, ..., 2].mean(), out[1, ..., 17].mean()])
    torch.testing.assert_close(vals, want, rtol=1e-5, atol=1e-6)


def test_log_preferred_inputs_on_a_token_layer_picks_feature_units(tmp_path):
    torch.manual_seed(5)
    m = TinyViT().eval()
    with cs.Run(tmp_path, "vit", quiet=True) as run:
        out = run.log_preferred_inputs(m, "blocks.0", max_units=20, steps=2)
    assert out["blocks.0"].shape == (20, 3, 32, 32)  # 20 of the 24 features, not 17 tokens


# ---------------------------------------------------------------------------------------------
# models that accept any size: results as before


# recorded with convscope before fixed-size support (seed 0, 4 steps, units [1, 6]); the
# images' sums and corner pixels, and the objective values
BEFORE = {
    "sum": [1490.5638427734375, 1581.165283203125],
    "corner": [[0.36179983615875244, 0.34662166237831116, 0.2482454776763916],
               [0.4319188594818115, 0.27695420384407043, 0.35486429929733276]],
    "values": [-0.02828495018184185, 0.15581156313419342],
}


def test_any_size_model_results_are_unchanged_and_see_the_transformed_size():
    m = any_size_cnn()
    sizes, h = seen_sizes(m[0])
    imgs, vals = cs.features.maximize(m, "2", [1, 6], steps=4, quiet=True, return_values=True)
    h.remove()
    # the probe at the canvas, 4 steps at 34 (pad 2, jitter 1, jitter 1: no fitting), the final
    # values: no extra forward pass
    assert sizes == [(32, 32)] + [(34, 34)] * 4 + [(32, 32)]
    torch.testing.assert_close(imgs.sum((1, 2, 3)), torch.tensor(BEFORE["sum"]),
                               rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(imgs[:, :, 0, 0], torch.tensor(BEFORE["corner"]),
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vals, torch.tensor(BEFORE["values"]), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# FitSize


def test_fit_size_crops_the_centre_pads_with_fill_and_resizes():
    x = torch.arange(2 * 3 * 36 * 36, dtype=torch.float32).reshape(2, 3, 36, 36)
    fill = torch.tensor([0.5, -1.0, 2.0])
    torch.testing.assert_close(FitSize((32, 32))(x, None, fill), x[..., 2:34, 2:34])
    torch.testing.assert_close(FitSize((32, 30))(x, None, fill), x[..., 2:34, 3:33])
    small = x[..., :30, :31]
    y = FitSize((32, 32))(small, None, fill)
    assert y.shape == (2, 3, 32, 32)
    torch.testing.assert_close(y[..., 1:31, 1:32], small)  # 1 row above and below, 1 column left
    assert (y[:, 1, 0] == -1.0).all() and (y[:, 1, 31] == -1.0).all()
    assert (y[:, 2, :, 0] == 2.0).all() and (y[:, 0, 5, 1] == small[:, 0, 4, 0]).all()
    up = FitSize((32, 32), (2.0, 2.0))(x[..., :16, :16], None, fill)
    torch.testing.assert_close(
        up, F.interpolate(x[..., :16, :16], size=(32, 32), mode="bilinear", align_corners=False))
    same = x[..., :32, :32]
    assert FitSize((32, 32))(same, None, fill) is same
    with pytest.raises(InputError):
        FitSize((0, 32))
