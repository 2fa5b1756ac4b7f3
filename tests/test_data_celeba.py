"""CelebAFolder (Wang & Li 2020's preprocessing of img_align_celeba) on JPEGs the test writes, and
the procedural Faces stand-in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope as cs
from convscope.errors import InputError


def _celeb_like(path, top_rows: int = 60, colour=(255, 255, 255)):
    """A 218 x 178 JPEG: the top ``top_rows`` rows black, the rest ``colour``."""
    a = np.zeros((218, 178, 3), np.uint8)
    a[top_rows:] = colour
    Image.fromarray(a).save(path, quality=100)


def test_crop_box_by_hand():
    # 178 -> 160 scales by 160/178, 218 * 160 / 178 = 195.96 -> 196 rows; (196 - 160) / 2 = 18
    assert cs.data.celeba_crop_box(218, 178, 160) == ((160, 196), (0, 18, 160, 178))
    assert cs.data.celeba_crop_box(100, 200, 50) == ((100, 50), (25, 0, 75, 50))


def test_reads_scales_crops_and_maps_to_minus_one_one(tmp_path):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    _celeb_like(folder / "000001.jpg")
    _celeb_like(folder / "000002.jpg", top_rows=0, colour=(255, 0, 0))
    (folder / "list.txt").write_text("not an image, not read")
    ds = cs.data.CelebAFolder(tmp_path)  # the parent of img_align_celeba
    assert len(ds) == 2 and ds.root == folder
    x = ds[0]
    assert x.shape == (3, 160, 160) and x.dtype == torch.float32
    # the black/white edge: row 60 of 218 -> 60 * 196/218 = 53.9 in the scaled image -> 35.9
    # after dropping 18 rows; so rows <= 33 are black (-1) and rows >= 38 white (+1)
    assert float(x[:, :34].max()) < -0.97 and float(x[:, 38:].min()) > 0.97
    col = x[0, :, 80]
    edge = int((col > 0).float().argmax())
    assert edge in (35, 36, 37)
    red = ds.batch([1])
    assert red.shape == (1, 3, 160, 160)
    np.testing.assert_allclose(red[0, :, 80, 80].numpy(), [1.0, -1.0, -1.0], atol=0.04)
    # an independent mapping check: 0 -> -1, 255 -> 1, 127.5 -> 0 (a grey PNG, lossless)
    Image.fromarray(np.full((218, 178, 3), 51, np.uint8)).save(folder / "000003.png")
    grey = cs.data.CelebAFolder(folder)[2]
    assert torch.allclose(grey, torch.full_like(grey, 51 / 127.5 - 1), atol=1e-6)
    assert len(cs.data.CelebAFolder(folder, limit=1)) == 1


def test_clear_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder"):
        cs.data.CelebAFolder(tmp_path / "missing")
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(InputError, match="no .jpg images"):
        cs.data.CelebAFolder(tmp_path)
    (tmp_path / "img_align_celeba" / "000001.jpg").write_bytes(b"not a jpeg at all")
    ds = cs.data.CelebAFolder(tmp_path)
    with pytest.raises(InputError, match="000001.jpg"):
        ds[0]
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(InputError, match="limit"):
        cs.data.CelebAFolder(tmp_path, limit=0)


def test_faces_are_reproducible_varied_and_in_range():
    f = cs.data.Faces(n=32, size=160)
    x = f.batch(range(8))
    assert x.shape == (8, 3, 160, 160)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(f[3], x[3])  # item i is the same however it is drawn
    torch.testing.assert_close(cs.data.Faces(n=32).batch([5]), f.batch([5]))
    assert not torch.equal(cs.data.Faces(n=32, split="val").batch([0]), x[:1])
    # varied: no two images alike; a face in the middle differs from the corners (background)
    flat = x.flatten(1)
    d = torch.cdist(flat, flat) + torch.eye(8) * 1e9
    assert float(d.min()) > 1.0
    centre = x[:, :, 70:90, 70:90].mean((2, 3))
    corner = x[:, :, :10, :10].mean((2, 3))
    assert float((centre - corner).abs().sum(1).min()) > 0.05
    with pytest.raises(InputError, match="split"):
        cs.data.Faces(split="nope")
