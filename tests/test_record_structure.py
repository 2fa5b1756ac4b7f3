"""run.log_model / log_feature_maps / log_embedding: what lands in the run directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError
from convscope.formats import feature_maps as fm_format


def _stored_maps(path, layer):
    """The maps of ``layer`` as the pages read them (decoded from uint8)."""
    return fm_format.maps(cs.open_run(path), layer).astype(np.float32)


def _assert_per_channel_quantized(got, want):
    """Equal up to uint8 storage over each channel's range: half a level of it, plus
    float16 decoding."""
    span = want.max(axis=(0, 2, 3), keepdims=True) - want.min(axis=(0, 2, 3), keepdims=True)
    assert np.all(np.abs(got - want) <= span / 510 + 2e-3 * np.abs(want).max() + 1e-6)


class Wide(nn.Module):
    """One conv with 64 channels at 64×64, so the feature-map cap applies."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1))


def test_feature_maps_keep_the_most_active_channels_and_downsample(tmp_path):
    torch.manual_seed(0)
    model = Wide().eval()
    x = torch.rand(3, 3, 64, 64)
    with cs.Run(tmp_path, "fm") as run:
        kept = run.log_feature_maps(model, x, layers=["conv"])
    info = kept["conv"]
    assert info["capped_channels"] and info["downsampled"]
    assert info["original_shape"] == [3, 64, 64, 64] and info["stored_shape"] == [3, 32, 32, 32]
    with torch.no_grad():
        full = model.conv(x).numpy()
    # brute force: rank channels by mean |activation|, keep the top 32 in channel order
    score = np.abs(full).mean(axis=(0, 2, 3))
    top = sorted(np.argsort(-score)[:32].tolist())
    assert info["channels"] == top
    # 2×2 area averaging by hand
    expect = full[:, top].reshape(3, 32, 32, 2, 32, 2).mean(axis=(3, 5))
    stored = cs.open_run(tmp_path / "fm").array("feature_maps", "conv")
    assert stored.dtype == np.uint8 and stored.shape == (3, 32, 32, 32)
    _assert_per_channel_quantized(_stored_maps(tmp_path / "fm", "conv"), expect)
    np.testing.assert_allclose(info["channel_mean"], full[:, top].mean(axis=(0, 2, 3)),
                               rtol=1e-5, atol=1e-6)
    index = cs.open_run(tmp_path / "fm").object("feature_maps", "index")
    assert index["layers"] == ["conv"] and index["bytes"] == stored.nbytes


def test_default_feature_map_layers_cover_stem_stages_and_blocks(tmp_path):
    model = cs.zoo.resnet(width=4).eval()
    with cs.Run(tmp_path, "r") as run:
        kept = run.log_feature_maps(model, torch.rand(2, 3, 32, 32))
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer1.0", "layer1.0.conv1",
                 "layer4.0.relu2"):
        assert name in kept, name
    assert "fc" not in kept and "avgpool" in kept  # fc is 2-D; avgpool's output is [B, C, 1, 1]


def test_embedding_matches_scikit_learn_pca(tmp_path):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
    labels = rng.integers(0, 4, size=300)
    with cs.Run(tmp_path, "e") as run:
        run.log_embedding(torch.tensor(feats, dtype=torch.float32), labels, name="f",
                          images=torch.rand(300, 1, 12, 12))
    reader = cs.open_run(tmp_path / "e")
    df = reader.query("SELECT * FROM embedding ORDER BY idx")
    ref = PCA(n_components=3).fit(feats)
    proj = ref.transform(feats)
    for j in range(3):
        corr = np.corrcoef(df[f"pc{j + 1}"], proj[:, j])[0, 1]
        assert abs(corr) > 0.999
    meta = reader.object("embedding", "f")
    np.testing.assert_allclose(meta["explained_variance_ratio"], ref.explained_variance_ratio_,
                               atol=1e-4)
    assert df["label"].tolist() == labels.tolist()
    thumbs = reader.array("embedding_images", "f")
    assert thumbs.shape == (300, 12, 12, 3) and thumbs.dtype == np.uint8


def test_log_model_stores_graph_and_profile(tmp_path):
    model = cs.zoo.resnet(width=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with cs.Run(tmp_path, "m", quiet=True) as run:
        g, df = run.log_model(model, x, repeat=2)
    reader = cs.open_run(tmp_path / "m")
    g2 = cs.model.Graph.from_dict(reader.object("graph", "model"))
    assert list(g2.nodes) == list(g.nodes)
    assert [(e.src, e.dst) for e in g2.edges] == [(e.src, e.dst) for e in g.edges]
    prof = reader.table("profile")
    assert prof["name"].tolist() == df["name"].tolist()
    leaf = prof[prof["level"] == "leaf"]
    # parameter bytes are exact: numel * 4 for float32
    by_name = dict(model.named_modules())
    for _, row in leaf.iterrows():
        n = sum(p.numel() for p in by_name[row["name"]].parameters())
        assert row["param_bytes"] == 4 * n
    assert reader.object("profile", "model")["repeat"] == 2


def test_bad_input_is_named(tmp_path):
    with cs.Run(tmp_path, "bad") as run:
        with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
            run.log_feature_maps(Wide(), torch.rand(3, 64, 64))
        with pytest.raises(InputError, match=r"\[N, D\]"):
            run.log_embedding(torch.rand(4, 2, 3))
        with pytest.raises(InputError, match="one label per row"):
            run.log_embedding(torch.rand(4, 3), [0, 1])


def test_feature_maps_of_token_and_channels_last_outputs_are_stored_channels_first(tmp_path):
    """A ViT's tokens (class token dropped) and a channels-last block output are stored as
    [N, C, h, w] maps of the input's grid, equal to the hand-made permutation."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 6, 4, stride=4)  # 16x16 input -> 4x4 patches
            self.cls = nn.Parameter(torch.randn(1, 1, 6))
            self.mix = nn.Linear(6, 6)  # on [B, 1 + 16, 6]: tokens
            self.last = nn.Linear(6, 5)  # on [B, 4, 4, 6]: channels last

        def forward(self, x):
            p = self.patch(x)
            t = torch.cat([self.cls.expand(len(x), -1, -1), p.flatten(2).transpose(1, 2)], 1)
            t = self.mix(t)
            nhwc = t[:, 1:].reshape(len(x), 4, 4, 6)
            return self.last(nhwc).mean(dim=(1, 2))

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.rand(2, 3, 16, 16)
    with cs.Run(tmp_path, "tok") as run:
        kept = run.log_feature_maps(model, x, layers=["mix", "last"])
    assert kept["mix"]["original_shape"] == [2, 17, 6]
    assert kept["mix"]["stored_shape"] == [2, 6, 4, 4]
    assert kept["last"]["original_shape"] == [2, 4, 4, 5]
    assert kept["last"]["stored_shape"] == [2, 5, 4, 4]
    out = cs.model.capture(model, x, ["mix", "last"])
    mix = out["mix"][:, 1:].reshape(2, 4, 4, 6).permute(0, 3, 1, 2).numpy()
    last = out["last"].permute(0, 3, 1, 2).numpy()
    _assert_per_channel_quantized(_stored_maps(tmp_path / "tok", "mix"),
                                  mix[:, kept["mix"]["channels"]])
    _assert_per_channel_quantized(_stored_maps(tmp_path / "tok", "last"),
                                  last[:, kept["last"]["channels"]])
    # by default both are found: the spatial outputs, not the pooled vector
    with cs.Run(tmp_path, "tok2") as run:
        found = run.log_feature_maps(model, x)
    assert {"patch", "mix", "last"} <= set(found)
