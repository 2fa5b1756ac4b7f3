"""CelebA's aligned faces read from a local ``img_align_celeba`` folder (never downloads).

Wang & Li (2020) train their DCGAN on CelebA's ``img_align_celeba`` images (218 x 178 RGB JPEGs),
"scaled and cropped to 160 x 160, and mapped from 0..255 to -1..1 as floats". :class:`CelebAFolder`
does exactly that: the image is scaled (bilinear, PIL) so that its shorter side becomes ``size``
(178 -> 160, so 218 x 178 -> 196 x 160), then the central ``size`` x ``size`` square is kept (rows
18 .. 177 of the scaled 196 x 160 image), and each value v in 0..255 becomes ``v / 127.5 - 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = ["CelebAFolder", "celeba_crop_box", "CELEBA_FOLDER"]

#: the folder name inside the CelebA download that holds the aligned, cropped JPEGs
CELEBA_FOLDER = "img_align_celeba"
_SUFFIXES = (".jpg", ".jpeg", ".png")


def celeba_crop_box(height: int, width: int, size: int = 160) -> tuple[tuple[int, int],
                                                                     tuple[int, int, int, int]]:
    """``((scaled_w, scaled_h), (left, top, right, bottom))``: the scaled size that makes the
    shorter side ``size``, and the central ``size`` x ``size`` box in it (PIL's crop order).
    For CelebA's 218 x 178 and size 160: ``((160, 196), (0, 18, 160, 178))``."""
    if height < 1 or width < 1:
        raise InputError(f"an image of {height} x {width} pixels has nothing to crop.")
    scale = size / min(height, width)
    sw, sh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (sw - size) // 2, (sh - size) // 2
    return (sw, sh), (left, top, left + size, top + size)


class CelebAFolder(Dataset):
    """CelebA's aligned face images from a local folder, preprocessed as Wang & Li (2020).

    Args:
        root: a folder holding ``img_align_celeba/`` (e.g. where ``img_align_celeba.zip`` was
            extracted), or that folder itself.
        size: side of the square images (160 in the paper).
        limit: read only the first ``limit`` files (sorted by name); None for all 202,599.

    Items: ``image [3, size, size]`` float32 in [-1, 1] (no label: it is a GAN's data).
    :meth:`batch` reads several at once. Files are read lazily, so opening the folder is quick.
    Raises :class:`~convscope.errors.InputError` for a missing or empty folder, and for a file
    that is not a readable image (naming it). Nothing is downloaded.
    """

    def __init__(self, root: str | Path, size: int = 160, limit: int | None = None) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise InputError(
                f"CelebA root {root} is not a folder. Pass the folder that holds "
                f"'{CELEBA_FOLDER}/' (extracted from img_align_celeba.zip, e.g. from the CelebA "
                "site or Kaggle); convscope never downloads.")
        folder = root / CELEBA_FOLDER if (root / CELEBA_FOLDER).is_dir() else root
        if int(size) != size or size < 1:
            raise InputError(f"CelebAFolder(size={size!r}): pass a positive integer, e.g. 160.")
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in _SUFFIXES)
        if limit is not None:
            if int(limit) != limit or limit < 1:
                raise InputError(f"CelebAFolder(limit={limit!r}): pass a positive integer or None.")
            files = files[: int(limit)]
        if not files:
            raise InputError(
                f"no .jpg images in {folder}. Pass the folder that holds '{CELEBA_FOLDER}/' "
                "with CelebA's 000001.jpg ... 202599.jpg (extract img_align_celeba.zip there).")
        self.root = folder
        self.size = int(size)
        self.files: list[Path] = files

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return f"CelebAFolder(root={str(self.root)!r}, size={self.size}, n={len(self)})"

    def _read(self, path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                (sw, sh), box = celeba_crop_box(im.height, im.width, self.size)
                im = im.resize((sw, sh), Image.BILINEAR).crop(box)
                return np.asarray(im, dtype=np.uint8)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InputError(
                f"cannot read {path} as an image ({type(exc).__name__}: {exc}). Remove or "
                "replace the file (re-extract img_align_celeba.zip).") from None

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= int(index) < len(self):
            raise IndexError(f"CelebAFolder index {index} out of range for {len(self)} images.")
        arr = self._read(self.files[int(index)])
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``images [len(indices), 3, size, size]`` in [-1, 1]."""
        if len(indices) == 0:
            return torch.empty(0, 3, self.size, self.size)
        return torch.stack([self[int(i)] for i in indices])
