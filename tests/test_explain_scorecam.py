"""Score-CAM against pytorch-grad-cam, and its chunked scoring.

Small settings keep this fast: 32 x 32 inputs and early layers with 64 channels (4 images x 64
channels = 256 masked inputs per model).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from pytorch_grad_cam import ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import convscope as cs
from convscope.errors import InputError

from .test_explain import pearson

TARGETS = [1, 5, 7, 9]




def _peer(model, layer, x, targets):
    module = dict(model.named_modules())[layer]
    with ScoreCAM(model=model, target_layers=[module]) as extractor:
        extractor.batch_size = 64
        return extractor(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.slow
@pytest.mark.parametrize("arch, layer", [("resnet18", "layer1"), ("vgg11", "features.2")])
def test_score_cam_matches_pytorch_grad_cam(arch, layer):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    head = model.fc if arch == "resnet18" else model.classifier[-1]
    with torch.no_grad():
        head.weight.mul_(100.0)  # O(1) score differences between masks: a sharp softmax
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    got = cs.explain.score_cam(model, x, target=TARGETS, layer=layer, batch_size=64, quiet=True)
    ref = _peer(model, layer, x, TARGETS)
    assert got.shape == (4, 32, 32)
    assert (torch.as_tensor(ref).flatten(1).std(1) > 0.05).all()
    assert (pearson(got, ref) >= 0.99).all(), pearson(got, ref)


class DeadChannels(nn.Module):
    """Half of the explained layer's channels are constant (all-zero masks)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU()
        self.fc = nn.Linear(8, 6)
        with torch.no_grad():
            self.c1.weight[4:] = 0
            self.c1.bias[4:] = torch.tensor([0.0, 0.3, -1.0, 2.0])
            self.fc.weight.mul_(20)

    def forward(self, x):
        return self.fc(self.r1(self.c1(x)).mean((2, 3)))


def test_score_cam_constant_channels_and_chunking():
    torch.manual_seed(2)
    model = DeadChannels().eval()
    x = torch.randn(3, 3, 12, 12)
    ref = _peer(model, "r1", x, [0, 2, 5])
    maps = [
        cs.explain.score_cam(model, x, target=[0, 2, 5], layer="r1", batch_size=bs, quiet=True)
        for bs in (1, 5, 64)
    ]
    for m in maps[1:]:
        torch.testing.assert_close(m, maps[0], rtol=1e-5, atol=1e-6)
    assert (pearson(maps[0], ref) >= 0.999).all(), pearson(maps[0], ref)
    raw = cs.explain.score_cam(model, x, target=[0, 2, 5], layer="r1", normalize=False, quiet=True)
    assert raw.shape == (3, 12, 12) and float(raw.min()) > 0  # sum of positive weights * A >= 0


def test_score_cam_weights_are_softmax_of_masked_scores():
    """Brute force: one channel at a time, per image, each image with its own target (the
    constant channels' black-image score must use that image's class)."""
    torch.manual_seed(3)
    model = DeadChannels().eval()
    x = torch.randn(2, 3, 12, 12)
    targets = [3, 1]
    expect = []
    with torch.no_grad():
        for i, t in enumerate(targets):
            a = model.r1(model.c1(x[i : i + 1]))[0]  # [8, 12, 12]: input size, no upsampling
            scores = []
            for k in range(8):
                m = a[k]
                span = m.max() - m.min()
                mask = (m - m.min()) / span if span > 0 else torch.zeros_like(m)
                scores.append(model(x[i : i + 1] * mask)[0, t])
            w = torch.stack(scores).softmax(0)
            expect.append((w[:, None, None] * a).sum(0))
    got = cs.explain.score_cam(model, x, target=targets, layer="r1", normalize=False, quiet=True)
    torch.testing.assert_close(got, torch.stack(expect), rtol=1e-4, atol=1e-6)


def test_score_cam_bad_batch_size():
    model = DeadChannels()
    with pytest.raises(InputError, match="batch_size"):
        cs.explain.score_cam(model, torch.randn(1, 3, 8, 8), layer="r1", batch_size=0)


# --------------------------------------------------------------------------------------------
# work skipped, batching across images, the fast mode (issue 14)
# --------------------------------------------------------------------------------------------
class StridedDead(nn.Module):
    """A stride-2 layer (its masks are upsampled) with 5 of 12 channels constant after the ReLU:
    zero weights and biases 0, -1 (both all-zero) and 0.4, 1.5, 2.0 (constant, not zero)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, 7)
        with torch.no_grad():
            self.c1.weight[7:] = 0
            self.c1.bias[7:] = torch.tensor([0.0, -1.0, 0.4, 1.5, 2.0])
            self.fc.weight.mul_(10)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(self.r1(self.c1(x)))).mean((2, 3)))


def _brute_force(model, x, layer_fn, targets, size):
    """Score-CAM one image and one channel at a time, straight from the paper's recipe with
    torch.nn.functional (no convscope code): the raw map sum_k softmax(s)_k A_k, upsampled."""
    out = []
    with torch.no_grad():
        for i, t in enumerate(targets):
            a = layer_fn(x[i : i + 1])[0]  # [K, h, w]
            scores = []
            for k in range(a.shape[0]):
                up = torch.nn.functional.interpolate(a[k][None, None], size=size,
                                                     mode="bilinear", align_corners=True)[0, 0]
                # a constant map stays constant when upsampled; decided on a[k] because bilinear
                # weights can turn 0.4 into 0.39999998 in places (min-max would blow that up)
                span = up.max() - up.min()
                mask = (up - up.min()) / span if a[k].max() > a[k].min() else 0 * up
                scores.append(model(x[i : i + 1] * mask)[0, t])
            w = torch.stack(scores).softmax(0)
            raw = (w[:, None, None] * a).sum(0)
            out.append(torch.nn.functional.interpolate(raw[None, None], size=size,
                                                       mode="bilinear")[0, 0])
    return torch.stack(out)


class _CountImages:
    """Counts the images the model is run on (a forward pre-hook on the model)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += int(args[0].shape[0])


def test_score_cam_skipping_is_exact_and_skips_the_model():
    torch.manual_seed(4)
    model = StridedDead().eval()
    x = torch.randn(3, 3, 10, 10)
    targets = [2, 0, 6]
    expect = _brute_force(model, x, lambda v: model.r1(model.c1(v)), targets, (10, 10))
    counter = _CountImages(model)
    try:
        got, info = cs.explain.cams.score_cam_info(model, x, target=targets, layer="r1",
                                                   normalize=False, batch_size=4, quiet=True)
    finally:
        counter.handle.remove()
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-6)
    # one forward for the activations, 7 live channels x 3 images, one black image per image:
    # the 5 constant channels of each image never reach the model
    assert info.constant == 5 and info.mode == "exact" and info.scored == 7
    assert counter.n == 3 + 3 * 7 + 3 == 3 + info.forwards


def test_score_cam_batched_across_images_equals_per_image():
    torch.manual_seed(5)
    model = StridedDead().eval()
    x = torch.randn(4, 3, 10, 10)
    targets = [1, 4, 0, 3]
    for channels in (None, 3):
        whole = cs.explain.score_cam(model, x, target=targets, layer="r1", batch_size=5,
                                     channels=channels, quiet=True)
        one = torch.cat([
            cs.explain.score_cam(model, x[i : i + 1], target=targets[i], layer="r1",
                                 batch_size=5, channels=channels, quiet=True)
            for i in range(4)
        ])
        torch.testing.assert_close(whole, one, rtol=1e-5, atol=1e-6)


class Affine(nn.Module):
    """conv -> global mean -> linear: the target score is affine in the input, so the
    first-order estimate of every masked score is exact."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 3, padding=1)
        self.fc = nn.Linear(24, 5)
        with torch.no_grad():
            self.fc.weight.mul_(30)

    def forward(self, x):
        return self.fc(self.c1(x).mean((2, 3)))


def test_score_cam_fast_mode_is_exact_when_the_estimate_is():
    """With exact estimates the top-K channels are the top-K scores and the unscored ones keep
    their (exact) estimates: the fast map equals the exact one, though 3 of 24 channels ran."""
    torch.manual_seed(6)
    model = Affine().eval()
    x = torch.randn(2, 3, 9, 9)
    exact = cs.explain.score_cam(model, x, target=[1, 3], layer="c1", normalize=False,
                                 quiet=True)
    counter = _CountImages(model)
    try:
        fast, info = cs.explain.cams.score_cam_info(model, x, target=[1, 3], layer="c1",
                                                    normalize=False, channels=3, quiet=True)
    finally:
        counter.handle.remove()
    assert info.mode == "fast" and info.scored == 3 and info.forwards == 6
    assert counter.n == 2 + 2 + 6  # activations, the gradient pass, 3 masks per image
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)


def _zoo(scale):
    from convscope.zoo.resnet import resnet

    torch.manual_seed(7)
    model = resnet(num_classes=10, width=32).eval()  # layer4: 256 channels, 2 x 2 at 32²
    with torch.no_grad():
        model.fc.weight.mul_(scale)
    return model, "layer4", torch.randn(2, 3, 32, 32), 64


def _tv(arch, scale, layer, k, n=2):
    torch.manual_seed(8)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():
        if arch.startswith("resnet"):
            model.fc.weight.mul_(scale)
        else:  # mobilenet_v3_small: both head layers scaled for O(1) score differences
            model.classifier[0].weight.mul_(scale)
            model.classifier[-1].weight.mul_(scale)
    return model, layer, torch.randn(2, 3, 64, 64)[:n], k


# at 64²: resnet18 layer3 has 256 channels (4 x 4), layer4 512 (2 x 2); mobilenet_v3_small's
# features 576 (2 x 2); resnet50 layer4 2048 (2 x 2). x1: close scores, a flat channel softmax
# (the map is a sum of hundreds of small weights: the hard case, r = 0.987 for resnet18 layer4
# before the calibrated prediction and the extra rounds); x100: a sharp one.
FIDELITY = [
    pytest.param(lambda: _zoo(1.0), id="zoo-resnet"),
    pytest.param(lambda: _zoo(100.0), id="zoo-resnet-sharp"),
    pytest.param(lambda: _tv("resnet18", 1.0, "layer3", 64), id="resnet18-layer3",
                 marks=pytest.mark.slow),
    pytest.param(lambda: _tv("resnet18", 1.0, "layer4", 128), id="resnet18-layer4-flat",
                 marks=pytest.mark.slow),
    pytest.param(lambda: _tv("resnet18", 100.0, "layer4", 128), id="resnet18-layer4-sharp",
                 marks=pytest.mark.slow),
    pytest.param(lambda: _tv("mobilenet_v3_small", 100.0, "features", 128),
                 id="mobilenet_v3_small", marks=pytest.mark.slow),
    pytest.param(lambda: _tv("mobilenet_v3_small", 1.0, "features", 128),
                 id="mobilenet_v3_small-flat", marks=pytest.mark.slow),
    pytest.param(lambda: _tv("resnet50", 1.0, "layer4", 128, n=1), id="resnet50-layer4-flat",
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("make", FIDELITY)
def test_score_cam_fast_mode_is_faithful(make):
    """Fast mode (K channels first, at most 2K; dead channels are free) against the exact map:
    per-image Pearson r >= 0.99 with random weights, and really fewer channels scored (the
    model counts its images)."""
    model, layer, x, k = make()
    targets = [1, 5][: len(x)]
    exact, ei = cs.explain.cams.score_cam_info(model, x, targets, layer, quiet=True,
                                               batch_size=64)
    counter = _CountImages(model)
    try:
        fast, fi = cs.explain.cams.score_cam_info(model, x, targets, layer, quiet=True,
                                                  channels=k, batch_size=64)
    finally:
        counter.handle.remove()
    assert ei.mode == "exact" and fi.mode == "fast" and fi.first == k
    assert k <= fi.scored <= 2 * k and fi.scored < ei.scored and fi.forwards < ei.forwards
    assert fi.bound <= cs.explain.cams.SCORE_CAM_TOLERANCE or fi.scored == 2 * k
    # not exact mode in disguise: the model saw the activation and gradient passes and only
    # fi.forwards masked images (a sharp softmax can still give the same map: one channel wins)
    assert counter.n == 2 * len(x) + fi.forwards
    assert (exact.flatten(1).std(1) > 0.05).all()  # real maps, not constants
    r = pearson(fast, exact)
    assert (r >= 0.99).all(), r


@pytest.mark.slow
def test_score_cam_fast_mode_scores_more_while_the_map_can_move():
    """Flat scores and a small first round (32 of 512 channels): the estimated error of the map
    is above the tolerance, so more channels are scored, by estimated contribution, in rounds;
    the map ends within r >= 0.99 of the exact one with at most 2K channels scored."""
    model, layer, x, _ = _tv("resnet18", 1.0, "layer4", 32)
    exact = cs.explain.score_cam(model, x, [1, 5], layer, quiet=True, batch_size=64)
    fast, fi = cs.explain.cams.score_cam_info(model, x, [1, 5], layer, quiet=True, channels=32,
                                              batch_size=64)
    assert fi.rounds > 1 and 32 < fi.scored <= 64, fi
    r = pearson(fast, exact)
    assert (r >= 0.99).all(), r


def test_score_cam_channels_option():
    torch.manual_seed(9)
    model = StridedDead().eval()
    x = torch.randn(2, 3, 10, 10)
    exact = cs.explain.score_cam(model, x, target=[1, 2], layer="r1", quiet=True)
    for channels in (12, 100, "auto"):  # >= the layer's channels, or auto on 12 <= 256: exact
        got, info = cs.explain.cams.score_cam_info(model, x, [1, 2], "r1", quiet=True,
                                                   channels=channels)
        assert info.mode == "exact"
        torch.testing.assert_close(got, exact)
    for bad in (0, -3, 2.5, "fast", True):
        with pytest.raises(InputError, match="channels"):
            cs.explain.score_cam(model, x, layer="r1", channels=bad)
    assert cs.explain.registry.get("score_cam").options[-1] == "channels"


def test_score_cam_warns_before_a_long_run(monkeypatch, caplog):
    from convscope.explain import cams

    monkeypatch.setattr(cams, "SCORE_CAM_WARN_SECONDS", 0.0)
    monkeypatch.setattr(cams, "SCORE_CAM_FAST_CHANNELS", 4)
    torch.manual_seed(10)
    model = StridedDead().eval()
    with caplog.at_level("WARNING", logger="convscope.explain"):
        cs.explain.score_cam(model, torch.randn(2, 3, 10, 10), layer="r1", batch_size=2,
                             quiet=True)
    msgs = [r.getMessage() for r in caplog.records if "score_cam (exact)" in r.getMessage()]
    assert len(msgs) == 1 and "channels=4" in msgs[0] and "16 masked forward" in msgs[0], msgs


def test_attribute_all_chooses_fast_score_cam_on_large_layers():
    from convscope.explain.dataset import attribute_all
    from convscope.zoo.resnet import resnet

    torch.manual_seed(11)
    model = resnet(num_classes=10, width=40).eval()  # layer4: 320 channels > 256
    x = torch.randn(2, 3, 32, 32)
    res = attribute_all(model, x, methods=["score_cam"], layer="layer4", quiet=True)
    assert res.modes["score_cam"].startswith("fast: ")
    assert "of 320 channels of 'layer4'" in res.modes["score_cam"]
    d = res.mode_details["score_cam"]
    assert d["mode"] == "fast" and d["first"] == 128 and 128 <= d["scored"] <= 256
    direct = cs.explain.score_cam(model, x, layer="layer4", channels=128, quiet=True)
    torch.testing.assert_close(res.maps["score_cam"], direct, rtol=1e-5, atol=1e-6)
    res = attribute_all(model, x, methods=["score_cam"], layer="layer4", quiet=True,
                        score_cam_channels=None)
    assert res.modes["score_cam"] == "exact: all 320 channels of 'layer4' scored"
    with pytest.raises(InputError, match="channels"):
        attribute_all(model, x, methods=["score_cam"], score_cam_channels="all")


# --------------------------------------------------------------------------------------------
# the automatic batch size, and the mode stored with a run (issue 14)
# --------------------------------------------------------------------------------------------
class OneConv(nn.Module):
    """conv 3 -> 8 (same size) -> mean -> linear: the largest leaf output is the conv's."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.c1(x).mean((2, 3)))


class _BatchSizes:
    def __init__(self, model):
        self.sizes = []
        self.handle = model.register_forward_pre_hook(
            lambda m, args: self.sizes.append(int(args[0].shape[0])))


def test_score_cam_batch_size_follows_the_byte_budget(monkeypatch):
    """By hand: per image 2 x the input (masked input and mask) + 3 x the largest leaf output,
    in bytes; the budget divided by that, clamped to [16, 256]."""
    from convscope.explain import cams

    model = OneConv().eval()
    x = torch.randn(2, 3, 20, 20)
    per_image = 2 * 3 * 20 * 20 * 4 + 3 * 8 * 20 * 20 * 4  # 48,000 bytes
    for budget, want in ((per_image * 40 + 5, 40), (per_image * 3, 16), (2**40, 256)):
        monkeypatch.setattr(cams, "SCORE_CAM_BATCH_BYTES", budget)
        assert cams.score_cam_batch(model, x) == want
    monkeypatch.setattr(cams, "SCORE_CAM_BATCH_BYTES", per_image * 20)
    seen = _BatchSizes(model)
    try:
        _, info = cams.score_cam_info(model, x, [0, 1], "c1", quiet=True)  # 16 masks
        # 16 masks fit the floor: no probe (a 1-image pass), the gather forward and one batch
        assert info.batch_size == 16 and seen.sizes == [2, 16], seen.sizes
        seen.sizes.clear()
        _, info = cams.score_cam_info(model, torch.randn(6, 3, 20, 20), 0, "c1", quiet=True)
    finally:
        seen.handle.remove()
    # 6 x 8 = 48 masks: the probe (1 image) sized the batch to 20, and no pass was larger
    assert info.batch_size == 20 and 1 in seen.sizes and max(seen.sizes) == 20, seen.sizes


def test_score_cam_default_batch_at_224_is_pytorch_grad_cams():
    """resnet18 at 224²: its largest output (conv1, 64 x 112²) is 3.2 MB an image, so the 16 MiB
    budget gives the floor of 16, pytorch-grad-cam's ScoreCAM batch (which also holds all the
    masked inputs of an image at once)."""
    from convscope.explain import cams

    model = torchvision.models.resnet18(weights=None).eval()
    assert cams.score_cam_batch(model, torch.randn(1, 3, 224, 224)) == 16
    small = cams.score_cam_batch(model, torch.randn(1, 3, 32, 32))
    per_image = 2 * 3 * 32 * 32 * 4 + 3 * 64 * 16 * 16 * 4
    assert small == min(256, cams.SCORE_CAM_BATCH_BYTES // per_image)


def test_log_attributions_stores_the_score_cam_mode(tmp_path):
    from convscope.formats import attribution as fa
    from convscope.zoo.resnet import resnet

    torch.manual_seed(12)
    model = resnet(num_classes=10, width=40).eval()  # layer4: 320 channels
    x = torch.randn(2, 3, 32, 32)
    with cs.Run(tmp_path, "r", quiet=True) as run:
        run.log_attributions(model, x, methods=["grad_cam", "score_cam"], layer="layer4",
                             key="fast", score_cam_channels=64)
        run.log_attributions(model, x, methods=["score_cam"], layer="layer4", key="exact",
                             score_cam_channels=None)
        run.log_attributions(model, x, methods=["grad_cam"], layer="layer4", key="none")
    reader = cs.open_run(tmp_path / "r")
    fast, exact = fa.load(reader, "fast"), fa.load(reader, "exact")
    _, info = cs.explain.cams.score_cam_info(model, x, None, "layer4", quiet=True, channels=64)
    assert fast.modes == {"score_cam": info.describe()}
    assert fast.mode_details == {"score_cam": info.to_dict()}
    assert fast.modes["score_cam"].startswith("fast: ") and info.first == 64
    assert exact.modes == {"score_cam": "exact: all 320 channels of 'layer4' scored"}
    assert exact.mode_details["score_cam"]["mode"] == "exact"
    assert fa.load(reader, "none").modes == {}
    # a set recorded before modes were stored: its description has no such fields -> None
    doc = reader.object(fa.SET_KIND, "none")
    doc.pop("modes"), doc.pop("mode_details")
    old = fa.AttributionInfo.from_dict(doc, "old")
    assert old.modes is None and old.mode_details is None


def test_score_cam_mode_merges_over_batches():
    """attribute_all in batches of 1: forwards add up, the rest is the most over batches, and the
    line says so."""
    from convscope.explain.dataset import attribute_all
    from convscope.zoo.resnet import resnet

    torch.manual_seed(13)
    model = resnet(num_classes=10, width=40).eval()
    x = torch.randn(3, 3, 32, 32)
    res = attribute_all(model, x, methods=["score_cam"], layer="layer4", quiet=True,
                        batch_size=1, score_cam_channels=64)
    infos = [cs.explain.cams.score_cam_info(model, x[i : i + 1], None, "layer4", quiet=True,
                                            channels=64)[1] for i in range(3)]
    d = res.mode_details["score_cam"]
    assert d["forwards"] == sum(i.forwards for i in infos)
    assert d["scored"] == max(i.scored for i in infos)
    assert d["bound"] == pytest.approx(max(i.bound for i in infos))
    assert res.modes["score_cam"] == cs.explain.cams.ScoreCamInfo.from_dict(d).describe()
