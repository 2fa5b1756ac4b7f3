"""Procedural face-like images: the no-download stand-in for CelebA in Wang & Li (2020)'s DCGAN
experiment.

Each image is a smooth background (random colour with a vertical gradient), a skin-coloured
elliptical face at a jittered position and size, hair (a darker cap over the top of the face),
two eyes (white sclera, dark iris at a random gaze), eyebrows, a nose shadow and a red mouth whose
width and curve vary. Edges are soft (a logistic of the signed distance), so the images look like
blurred portraits rather than pixel art. Item ``i`` of split ``s`` is the same on every machine
(its own seeded generator), so runs are reproducible; images are rendered on demand (4096 images
of 3 x 160 x 160 floats would take 1.3 GB).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = ["Faces"]

_SKIN = torch.tensor([[0.96, 0.80, 0.69], [0.89, 0.67, 0.53], [0.76, 0.55, 0.42],
                      [0.55, 0.38, 0.26], [0.98, 0.87, 0.77], [0.68, 0.47, 0.33]])
_HAIR = torch.tensor([[0.10, 0.07, 0.05], [0.35, 0.22, 0.12], [0.62, 0.45, 0.25],
                      [0.85, 0.75, 0.50], [0.45, 0.12, 0.05], [0.55, 0.55, 0.55]])
_SPLITS = {"train": 0, "val": 1, "test": 2}


def _ellipse(u, v, cx, cy, rx, ry, soft):
    """Soft mask of the ellipse ((u-cx)/rx)^2 + ((v-cy)/ry)^2 <= 1 (all broadcast to [B,1,S,S])."""
    d = torch.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
    return torch.sigmoid((1.0 - d) * (torch.minimum(rx, ry) / soft))


class Faces(Dataset):
    """Procedural face-like RGB images in [-1, 1] at ``size`` x ``size`` (160 by default).

    Args:
        n: number of images.
        size: side in pixels (any size >= 16; 160 is Wang & Li's).
        split: ``"train"``, ``"val"`` or ``"test"`` (different, disjoint random streams).
        seed: base seed.

    Items: ``image [3, size, size]`` float32 in [-1, 1]; :meth:`batch` renders several at once.
    """

    def __init__(self, n: int = 4096, size: int = 160, split: str = "train", seed: int = 0) -> None:
        if int(n) != n or n < 1:
            raise InputError(f"Faces(n={n!r}): pass a positive number of images.")
        if int(size) != size or size < 16:
            raise InputError(f"Faces(size={size!r}): pass an integer side of at least 16, e.g. 160.")
        if split not in _SPLITS:
            raise InputError(f"Faces(split={split!r}): choose one of {sorted(_SPLITS)}.")
        self.n, self.size, self.split, self.seed = int(n), int(size), split, int(seed)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Faces(n={self.n}, size={self.size}, split={self.split!r}, seed={self.seed})"

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.n <= int(index) < self.n:
            raise IndexError(f"Faces index {index} out of range for {self.n} images.")
        return self.batch([int(index) % self.n])[0]

    def _params(self, indices: Sequence[int]) -> torch.Tensor:
        rows = []
        for i in indices:
            g = torch.Generator().manual_seed(
                (self.seed * 1_000_003 + _SPLITS[self.split] * 7_919 + int(i)) * 2 + 1)
            rows.append(torch.rand(24, generator=g))
        return torch.stack(rows)  # [B, 24] uniforms

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``images [len(indices), 3, size, size]`` in [-1, 1]."""
        idx = [int(i) for i in indices]
        if any(not 0 <= i < self.n for i in idx):
            raise IndexError(f"Faces indices must be in [0, {self.n}).")
        if not idx:
            return torch.empty(0, 3, self.size, self.size)
        r = self._params(idx)
        b, s = len(idx), self.size

        def col(k):  # one parameter per image, shaped to broadcast over [B, C, S, S]
            return r[:, k].view(b, 1, 1, 1)

        t = (torch.arange(s, dtype=torch.float32) + 0.5) / s
        v, u = t.view(1, 1, s, 1), t.view(1, 1, 1, s)
        soft = torch.tensor(1.5 / s)
        # background: a random colour darkening (or lightening) towards the bottom
        bg_top = r[:, 0:3].view(b, 3, 1, 1) * 0.8 + 0.1
        img = bg_top * (1.0 + (col(3) - 0.5) * 0.6 * (v - 0.5))
        # face
        cx, cy = 0.5 + (col(4) - 0.5) * 0.16, 0.53 + (col(5) - 0.5) * 0.12
        rx, ry = 0.25 + col(6) * 0.07, 0.33 + col(7) * 0.07
        skin = _SKIN[(r[:, 8] * len(_SKIN)).long().clamp_max(len(_SKIN) - 1)].view(b, 3, 1, 1)
        skin = skin * (0.9 + 0.2 * col(9))
        hair = _HAIR[(r[:, 10] * len(_HAIR)).long().clamp_max(len(_HAIR) - 1)].view(b, 3, 1, 1)
        head = _ellipse(u, v, cx, cy - 0.04, rx * 1.12, ry * 1.08, soft)
        img = img + (hair - img) * head  # hair behind and around the face
        face = _ellipse(u, v, cx, cy + 0.03, rx, ry * 0.95, soft)
        shade = 1.0 - 0.12 * ((u - cx) / rx) ** 2  # rounder look
        img = img + (skin * shade - img) * face
        # fringe: hair over the top of the face, its line jittered
        fringe = torch.sigmoid((cy - ry * (0.35 + 0.3 * col(11)) - v) / soft) * face
        img = img + (hair - img) * fringe
        # eyes, eyebrows
        ey, dx = cy - ry * 0.12, rx * (0.38 + 0.1 * col(12))
        erx, ery = rx * 0.17, ry * (0.06 + 0.04 * col(13))
        gaze = (col(14) - 0.5) * erx * 0.8
        for sgn in (-1.0, 1.0):
            ex = cx + sgn * dx
            sclera = _ellipse(u, v, ex, ey, erx, ery, soft)
            img = img + (0.95 - img) * sclera
            iris = _ellipse(u, v, ex + gaze, ey, ery * 0.9, ery * 0.9, soft) * sclera
            iris_col = torch.stack([col(15) * 0.4, col(16) * 0.3 + 0.1, col(17) * 0.3], 1)
            img = img + (iris_col.view(b, 3, 1, 1) - img) * iris
            brow = _ellipse(u, v, ex, ey - ery * 2.6 - 0.01 * col(18), erx * 1.2, ery * 0.45, soft)
            img = img + (hair * 0.8 - img) * brow * face
        # nose shadow, mouth
        nose = _ellipse(u, v, cx, cy + ry * 0.2, rx * 0.08, ry * 0.14, soft) * face
        img = img * (1.0 - 0.18 * nose)
        my, mw = cy + ry * 0.5, rx * (0.3 + 0.25 * col(19))
        curve = (col(20) - 0.3) * 0.06  # smile (> 0) or frown
        mouth_v = v - curve * (1.0 - ((u - cx) / mw) ** 2).clamp_min(0.0)  # bent rows
        mouth = _ellipse(u, mouth_v, cx, my, mw, ry * (0.035 + 0.05 * col(21)), soft) * face
        lips = torch.stack([0.65 + 0.25 * col(22), 0.15 + 0.15 * col(23), 0.2 + 0.1 * col(23)], 1)
        img = img + (lips.view(b, 3, 1, 1) - img) * mouth
        return img.clamp(0.0, 1.0).mul_(2.0).sub_(1.0)
