"""Tests of convscope.data: procedural Shapes (determinism, splits, masks, geometry) and the
local CIFAR-10 reader."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

import convscope as cs
from convscope.data import CIFAR10, SHAPE_NAMES, Shapes, render_masks, shape_mask
from convscope.errors import ConvscopeError, InputError

# ------------------------------------------------------------------------------------------------
# Shapes: determinism and splits


def test_same_seed_gives_identical_tensors_and_other_seed_differs():
    a = Shapes(n=40, seed=3).tensors()
    b = Shapes(n=40, seed=3).tensors()
    c = Shapes(n=40, seed=4).tensors()
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    # a different seed changes every image (not just some)
    diff = (a[0] - c[0]).abs().flatten(1).amax(1)
    assert bool((diff > 0.1).all())
    # labels are balanced by construction, so they agree; masks differ
    assert torch.equal(a[1], c[1])
    assert not torch.equal(a[2], c[2])


def test_item_depends_only_on_seed_split_and_index():
    small = Shapes(n=10, seed=1)
    large = Shapes(n=5000, seed=1)
    for i in (0, 3, 9):
        xs, ys, ms = small[i]
        xl, yl, ml = large[i]
        assert torch.equal(xs, xl) and ys == yl and torch.equal(ms, ml)
    # negative indices count from the end
    assert torch.equal(small[-1][0], small[9][0])
    with pytest.raises(IndexError):
        small[10]


def test_vectorised_path_equals_per_item_path():
    ds = Shapes(n=23, seed=5, size=24)
    images, labels, masks = ds.tensors(chunk=7)  # chunks of unequal size on purpose
    for i in range(len(ds)):
        x, y, m = ds[i]
        assert torch.equal(x, images[i]), i
        assert y == int(labels[i])
        assert torch.equal(m, masks[i]), i
    # an arbitrary index list renders the same items
    xi, yi, mi = ds.render([17, 2, 17])
    assert torch.equal(xi[0], images[17]) and torch.equal(xi[1], images[2])
    assert torch.equal(xi[2], xi[0]) and torch.equal(mi[1], masks[2])
    assert yi.tolist() == [int(labels[17]), int(labels[2]), int(labels[17])]


def test_train_and_test_splits_share_no_items():
    tr = Shapes(n=300, split="train", seed=0).tensors()[0].flatten(1)
    te = Shapes(n=300, split="test", seed=0).tensors()[0].flatten(1)
    d = torch.cdist(tr, te)
    # nearest cross-split pair is still far apart (independent draws, pixel noise alone ~ 0.05 * 55)
    assert float(d.min()) > 1.0
    ptr = Shapes(n=300, split="train").params(range(300))
    pte = Shapes(n=300, split="test").params(range(300))
    assert not torch.isclose(ptr["cx"], pte["cx"]).all()


def test_values_dtypes_and_shapes():
    ds = Shapes(n=30, size=20, num_classes=6, seed=2)
    x, y, m = ds[4]
    assert x.shape == (3, 20, 20) and x.dtype == torch.float32
    assert m.shape == (20, 20) and m.dtype == torch.bool
    assert isinstance(y, int) and y == 4 % 6
    images, labels, masks = ds.tensors()
    assert images.shape == (30, 3, 20, 20) and labels.dtype == torch.int64
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert set(labels.tolist()) == set(range(6))
    assert torch.bincount(labels).tolist() == [5] * 6
    assert ds.class_names == SHAPE_NAMES[:6]
    assert cs.data.class_names == SHAPE_NAMES and len(set(SHAPE_NAMES)) == 10
    # return_mask=False gives (image, label)
    item = Shapes(n=5, return_mask=False)[1]
    assert len(item) == 2


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(InputError, match="split"):
        Shapes(n=5, split="validation")
    with pytest.raises(InputError, match="num_classes"):
        Shapes(n=5, num_classes=11)
    with pytest.raises(InputError, match="scale"):
        Shapes(n=5, scale=(0.3, 0.7))
    with pytest.raises(InputError, match="heptagon"):
        shape_mask("heptagon", torch.zeros(1), torch.zeros(1))


# ------------------------------------------------------------------------------------------------
# Shapes: the mask matches the object


def test_mask_lies_inside_the_bounding_disc_and_the_image():
    ds = Shapes(n=200, size=32, seed=7)
    _, labels, masks = ds.tensors()
    p = ds.params(range(200))
    areas = masks.flatten(1).sum(1)
    assert bool((areas > 0).all())
    pix = torch.arange(32, dtype=torch.float32) + 0.5
    dx = pix.view(1, 1, 32) - p["cx"].view(-1, 1, 1)
    dy = pix.view(1, 32, 1) - p["cy"].view(-1, 1, 1)
    dist = torch.sqrt(dx * dx + dy * dy)
    # every mask pixel centre is within the shape's bounding circle (radius in pixels)
    assert bool((dist[masks] <= (p["radius"].view(-1, 1, 1).expand_as(dist)[masks] + 1e-3)).all())
    # the bounding circle fits in the image, so no mask touches the border row/column
    assert not bool(masks[:, 0, :].any() or masks[:, -1, :].any())
    assert not bool(masks[:, :, 0].any() or masks[:, :, -1].any())
    # area in pixels is consistent with the radius: between 0.2 r^2 and pi r^2 (+ rasterisation)
    r2 = p["radius"] ** 2
    assert bool((areas >= 0.2 * r2).all()) and bool((areas <= math.pi * r2 + 4 * p["radius"]).all())


def test_mask_pixels_look_like_the_object_not_the_background():
    ds = Shapes(n=100, size=32, seed=11)
    images, _, masks = ds.tensors()
    color = ds.params(range(100))["color"]  # [N, 3]
    dist = (images - color.view(-1, 3, 1, 1)).norm(dim=1)  # [N, H, W] distance to object colour
    inside = (dist * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
    outside = (dist * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
    # inside the mask the pixels are close to the object's colour, outside they are not
    assert float((inside < outside).float().mean()) >= 0.95
    assert float(inside.median()) < 0.5 * float(outside.median())


# closed-form areas of the documented geometry, in units of r^2
_CLOSED_FORM = {
    "circle": math.pi,
    "square": (2 / math.sqrt(2)) ** 2,
    "triangle": 3 * math.sqrt(3) / 4,
    # pentagram: 10 triangles between outer radius 1 and inner radius ri, 36 degrees apart
    "star": 10 * 0.5 * 1.0 * (math.cos(math.radians(72)) / math.cos(math.radians(36)))
    * math.sin(math.radians(36)),
    "cross": 2 * (1.9 * 0.6) - 0.6 * 0.6,
    "ring": math.pi * (1 - 0.55**2),
    "diamond": 2 * 0.55 * 1.0,
    "hexagon": 3 * math.sqrt(3) / 2,
    "ellipse": math.pi * 1.0 * 0.5,
}


@pytest.mark.parametrize("name", sorted(_CLOSED_FORM))
def test_mask_area_matches_closed_form(name):
    k = SHAPE_NAMES.index(name)
    size, r = 256, 110.0
    angles = torch.tensor([0.0, 0.3, 1.1, 2.5])
    masks = render_masks(
        torch.full((4,), k), torch.full((4,), 128.0), torch.full((4,), 128.0),
        torch.full((4,), r), angles, size,
    )
    areas = masks.flatten(1).sum(1).double() / r**2
    # rasterisation error ~ perimeter / r^2 is well under 1.5 % at r = 110
    assert torch.allclose(areas, torch.full_like(areas, _CLOSED_FORM[name]), rtol=0.015), (
        name, areas.tolist(), _CLOSED_FORM[name])


def test_area_ratio_circle_to_square_at_same_scale():
    masks = render_masks(torch.tensor([0, 1]), torch.tensor([64.0, 64.0]),
                         torch.tensor([64.0, 64.0]), torch.tensor([50.0, 50.0]),
                         torch.tensor([0.7, 0.7]), 128)
    a = masks.flatten(1).sum(1).double()
    assert float(a[0] / a[1]) == pytest.approx(math.pi / 2, rel=0.02)


def test_each_class_renders_a_distinct_shape():
    n = len(SHAPE_NAMES)
    masks = render_masks(torch.arange(n), torch.full((n,), 48.0), torch.full((n,), 48.0),
                         torch.full((n,), 40.0), torch.zeros(n), 96).flatten(1).float()
    inter = masks @ masks.T
    area = masks.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter)
    off_diag = iou[~torch.eye(n, dtype=torch.bool)]
    # hexagon vs circle is the closest pair: 2.598 / pi = 0.83
    assert float(off_diag.max()) < 0.9


def test_shape_mask_hand_checked_points():
    def inside(name, u, v):
        return bool(shape_mask(name, torch.tensor([u]), torch.tensor([v]))[0])

    assert inside("circle", 0.6, 0.7) and not inside("circle", 0.75, 0.7)
    assert inside("square", 0.7, -0.7) and not inside("square", 0.72, 0.0)
    assert inside("ring", 0.8, 0.0) and not inside("ring", 0.0, 0.0)
    assert inside("cross", 0.9, 0.0) and not inside("cross", 0.5, 0.5)
    assert inside("diamond", 0.0, 0.95) and not inside("diamond", 0.5, 0.5)
    assert inside("ellipse", 0.95, 0.0) and not inside("ellipse", 0.0, 0.6)
    assert inside("star", 0.0, -0.95) and inside("star", 0.0, 0.0)
    # between two tips (36 degrees off a tip, at radius 0.6) is outside the pentagram
    a = math.radians(-90 + 36)
    assert not inside("star", 0.6 * math.cos(a), 0.6 * math.sin(a))
    assert inside("triangle", 0.0, -0.95) and not inside("triangle", 0.0, 0.6)
    assert inside("hexagon", 0.0, 0.99) and not inside("hexagon", 0.95, 0.0)
    # heart (y up = -v): the lobes are at the top, the point at the bottom, the notch at the top
    assert inside("heart", 0.4, -0.5) and inside("heart", 0.0, 0.5)
    assert not inside("heart", 0.0, -0.85) and not inside("heart", 0.6, 0.6)


def test_twenty_thousand_images_render_without_per_item_python_rendering():
    # functional check of the bulk path at demo scale (timing lives in benchmarks/)
    ds = Shapes(n=2000, seed=0)
    images, labels, masks = ds.tensors(chunk=512)
    assert images.shape == (2000, 3, 32, 32) and bool(masks.flatten(1).any(1).all())
    assert torch.equal(images[1999], ds[1999][0])


# ------------------------------------------------------------------------------------------------
# CIFAR-10 from local files


def _write_batch(path, data: np.ndarray, labels: list[int]) -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"fake"}, fh)


@pytest.fixture()
def fake_cifar(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(1, 6):
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        _write_batch(folder / f"data_batch_{k}", data, [k, k + 1, k + 2, k + 3])
    test = np.zeros((3, 3072), dtype=np.uint8)
    # image 1: red channel pixel (row 2, col 5) = 255, blue channel pixel (row 31, col 0) = 51
    test[1, 0 * 1024 + 2 * 32 + 5] = 255
    test[1, 2 * 1024 + 31 * 32 + 0] = 51
    _write_batch(folder / "test_batch", test, [7, 8, 9])
    names = [f"c{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": names}, fh)
    return tmp_path


def test_cifar_reads_pickled_batches(fake_cifar):
    train = CIFAR10(fake_cifar, train=True)
    assert len(train) == 20
    x, y = train[5]  # second image of data_batch_2
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 3
    assert train.class_names == tuple(f"c{i}" for i in range(10))
    test = CIFAR10(fake_cifar / "cifar-10-batches-py", train=False)  # the folder itself works too
    x, y = test[1]
    assert y == 8
    assert float(x[0, 2, 5]) == 1.0 and float(x[2, 31, 0]) == pytest.approx(0.2)
    assert float(x.sum()) == pytest.approx(1.2)
    images, labels = test.tensors()
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [7, 8, 9]


def test_cifar_missing_files_say_what_to_do(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    _write_batch(tmp_path / "cifar-10-batches-py" / "test_batch",
                 np.zeros((1, 3072), dtype=np.uint8), [0])
    with pytest.raises(ConvscopeError, match="data_batch_1.*never downloads"):
        CIFAR10(tmp_path, train=True)
    with pytest.raises(ConvscopeError, match="not a folder"):
        CIFAR10(tmp_path / "nope")
    CIFAR10(tmp_path, train=False)  # the test split alone is present and loads


def test_cifar_rejects_malformed_batch(tmp_path):
    _write_batch(tmp_path / "test_batch", np.zeros((2, 100), dtype=np.uint8), [0, 1])
    with pytest.raises(ConvscopeError, match="3072"):
        CIFAR10(tmp_path, train=False)


def test_public_render_masks_reproduces_the_data_sets_masks():
    ds = Shapes(n=40, size=32, seed=9)
    _, labels, masks = ds.tensors()
    p = ds.params(range(40))
    again = render_masks(p["label"], p["cx"], p["cy"], p["radius"], p["angle"], 32)
    assert torch.equal(p["label"], labels) and torch.equal(again, masks)


class _Evil:
    """Unpickling this calls ``pathlib.Path.touch`` on a marker file: code run on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_cifar_never_runs_code_from_a_batch(tmp_path):
    """A pickled batch naming any global but numpy's array reconstruction is refused, and the
    code it names never runs (the marker file is never created)."""
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                     b"x": _Evil(marker)}, fh)
    with pytest.raises(ConvscopeError, match="not allowed in a CIFAR-10 batch"):
        CIFAR10(tmp_path, train=False)
    assert not marker.exists()
    # the same payload as the whole file, and in batches.meta
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump(_Evil(marker), fh)
    with pytest.raises(ConvscopeError):
        CIFAR10(tmp_path, train=False)
    _write_batch(folder / "test_batch", np.zeros((1, 3072), np.uint8), [0])
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": _Evil(marker)}, fh)
    with pytest.raises(ConvscopeError):
        CIFAR10(tmp_path, train=False)
    assert not marker.exists()


def test_cifar_reads_the_binary_version(tmp_path):
    """Rows of a label byte and 3072 pixels (R, G, B planes), hand-made."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rows = np.zeros((2, 3073), np.uint8)
    rows[:, 0] = [4, 9]
    rows[1, 1 + 1 * 1024 + 3 * 32 + 7] = 255  # image 1: green pixel at row 3, col 7
    rows.tofile(folder / "test_batch.bin")
    (folder / "batches.meta.txt").write_text("\n".join(f"k{i}" for i in range(10)) + "\n\n")
    ds = CIFAR10(tmp_path, train=False)
    x, y = ds[1]
    assert len(ds) == 2 and y == 9 and ds[0][1] == 4
    assert float(x[1, 3, 7]) == 1.0 and float(x.sum()) == 1.0
    assert ds.class_names == tuple(f"k{i}" for i in range(10))
    rows[:, :-5].tofile(folder / "test_batch.bin")  # truncated rows
    with pytest.raises(ConvscopeError, match="whole number"):
        CIFAR10(tmp_path, train=False)
