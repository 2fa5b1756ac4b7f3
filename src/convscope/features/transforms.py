"""Random image transforms for activation maximisation (lucid's "transformation robustness"):
pad, jitter, random scale and random rotation, batched with per-item random parameters.

A transform is called as ``t(x, u, fill)`` with ``x: [N, C, H, W]`` (raw pixel values),
``u: [N, t.draws]`` uniform numbers in [0, 1) (each batch item its own, drawn from that item's
generator, so a unit's images do not depend on which other units share the batch) and
``fill: [C]`` the colour used for new border pixels (the mean image's colour). A plain callable
``f(x) -> x`` works too (no random numbers, no fill).

Scale and rotation keep the image size (zoom / turn about the centre, one ``grid_sample`` for
the whole batch); pad grows it and jitter crops it, like lucid. :class:`FitSize` ends the chain at
exactly the size a fixed-size model (a vision transformer) accepts.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..nn import positive_int

__all__ = ["Transform", "Pad", "Jitter", "RandomScale", "RandomRotate", "FitSize",
           "standard_transforms"]


class Transform(ABC):
    """Base class: ``draws`` uniform numbers per batch item per step."""

    draws: ClassVar[int] = 0

    @abstractmethod
    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        """Apply to ``x``; every subclass defines it."""


def _count(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InputError(f"{name} must be an int >= 0 (pixels), got {value!r}.")


def _choices(values: Any, name: str, positive: bool) -> None:
    try:
        vals = [float(v) for v in values if not isinstance(v, (bool, str, bytes))]
        ok = len(vals) == len(values) and len(vals) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or not all(math.isfinite(v) and (v > 0 or not positive) for v in vals):
        what = "positive numbers" if positive else "numbers"
        raise InputError(f"{name} must be a non-empty tuple of finite {what}, got {values!r}; "
                         f"pass e.g. {'(0.9, 1.0, 1.1)' if positive else '(-10, 0, 10)'}.")


def _pick(values: Sequence[float], u: Tensor) -> Tensor:
    """Map uniforms ``u [N]`` to elements of ``values`` (each equally likely)."""
    v = torch.as_tensor(list(values), dtype=torch.float32, device=u.device)
    i = (u * len(values)).long().clamp_(0, len(values) - 1)
    return v[i]


@dataclass(frozen=True)
class Pad(Transform):
    """Pad every side by ``width`` pixels: ``mode="constant"`` (with the mean colour) or
    ``"reflect"`` / ``"replicate"``."""

    width: int
    mode: str = "constant"

    def __post_init__(self) -> None:
        _count(self.width, "Pad: width")
        if self.mode not in ("constant", "reflect", "replicate"):
            raise InputError(f"Pad: mode must be 'constant', 'reflect' or 'replicate', got {self.mode!r}.")

    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        p = int(self.width)
        if p <= 0:
            return x
        if self.mode == "constant":
            f = fill.view(1, -1, 1, 1).to(x.dtype)
            return F.pad(x - f, (p, p, p, p)) + f
        return F.pad(x, (p, p, p, p), mode=self.mode)


@dataclass(frozen=True)
class Jitter(Transform):
    """Crop a ``(H - d) x (W - d)`` window at a random offset in ``0..d`` along each axis (one
    offset per batch item), as lucid's ``jitter(d)``."""

    d: int
    draws: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _count(self.d, "Jitter: d")

    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        d = int(self.d)
        if d <= 0:
            return x
        n, c, h, w = x.shape
        if d >= min(h, w):
            raise InputError(f"Jitter({d}) is too large for a {h} x {w} image; use d < {min(h, w)}.")
        assert u is not None
        oy = (u[:, 0] * (d + 1)).long().clamp_(0, d)
        ox = (u[:, 1] * (d + 1)).long().clamp_(0, d)
        rows = oy[:, None] + torch.arange(h - d, device=x.device)  # [N, h-d]
        cols = ox[:, None] + torch.arange(w - d, device=x.device)  # [N, w-d]
        x = x.gather(2, rows[:, None, :, None].expand(n, c, h - d, w))
        return x.gather(3, cols[:, None, None, :].expand(n, c, h - d, w - d))


def _affine(x: Tensor, theta: Tensor, fill: Tensor) -> Tensor:
    f = fill.view(1, -1, 1, 1).to(x.dtype)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - f, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + f


@dataclass(frozen=True)
class RandomScale(Transform):
    """Zoom about the centre by a factor drawn from ``scales`` (size kept; new border pixels get
    the mean colour)."""

    scales: tuple[float, ...]
    draws: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _choices(self.scales, "RandomScale: scales", positive=True)

    def matrix(self, u: Tensor) -> Tensor:
        """``[N, 3, 3]`` map from output to input coordinates (normalised, centre = 0)."""
        s = _pick(self.scales, u[:, 0])
        m = torch.zeros(u.shape[0], 3, 3, device=u.device)
        m[:, 0, 0] = 1.0 / s
        m[:, 1, 1] = 1.0 / s
        m[:, 2, 2] = 1.0
        return m

    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        assert u is not None
        return _affine(x, self.matrix(u)[:, :2], fill)


@dataclass(frozen=True)
class RandomRotate(Transform):
    """Turn about the centre by an angle in degrees drawn from ``degrees`` (size kept)."""

    degrees: tuple[float, ...]
    draws: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _choices(self.degrees, "RandomRotate: degrees", positive=False)

    def matrix(self, u: Tensor) -> Tensor:
        """``[N, 3, 3]`` map from output to input coordinates (normalised, centre = 0)."""
        a = _pick(self.degrees, u[:, 0]) * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        m = torch.zeros(u.shape[0], 3, 3, device=u.device)
        m[:, 0, 0], m[:, 0, 1] = cos, -sin
        m[:, 1, 0], m[:, 1, 1] = sin, cos
        m[:, 2, 2] = 1.0
        return m

    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        assert u is not None
        return _affine(x, self.matrix(u)[:, :2], fill)


@dataclass(frozen=True)
class FitSize(Transform):
    """Bring every image to exactly ``size`` ``(H, W)``, for a model that accepts no other size
    (torchvision's and timm's vision transformers): resize by ``scale`` ``(sy, sx)`` (bilinear,
    antialiased when shrinking; :func:`~convscope.features.maximize` passes the model's size over
    the canvas's, so an untransformed canvas fills the input exactly), then cut the centre
    ``H x W`` window, or pad to it with the fill colour. Pad and jitter thus keep moving the
    image by whole pixels of the canvas, and the model only ever sees ``H x W``."""

    size: tuple[int, int]
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        try:
            h, w = (int(v) for v in self.size)
            sy, sx = (float(v) for v in self.scale)
        except (TypeError, ValueError):
            raise InputError(f"FitSize: size must be (H, W) and scale (sy, sx), got "
                             f"{self.size!r} and {self.scale!r}.") from None
        if h < 1 or w < 1 or not (sy > 0 and sx > 0 and math.isfinite(sy * sx)):
            raise InputError(f"FitSize: size must be positive and scale positive and finite, got "
                             f"{self.size!r} and {self.scale!r}.")
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "scale", (sy, sx))

    def __call__(self, x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
        (big_h, big_w), (sy, sx) = self.size, self.scale
        h, w = int(x.shape[-2]), int(x.shape[-1])
        nh, nw = max(1, round(h * sy)), max(1, round(w * sx))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=nh < h or nw < w)
        if (nh, nw) == (big_h, big_w):
            return x
        top, left = (nh - big_h) // 2, (nw - big_w) // 2  # negative: pad
        x = x[..., max(0, top):max(0, top) + big_h, max(0, left):max(0, left) + big_w]
        pads = (max(0, -left), big_w - x.shape[-1] - max(0, -left),
                max(0, -top), big_h - x.shape[-2] - max(0, -top))
        if any(pads):
            f = fill.view(1, -1, 1, 1).to(x.dtype)
            x = F.pad(x - f, pads) + f
        return x


def standard_transforms(size: int) -> list[Transform]:
    """lucid's standard set, with pixel amounts scaled from 224-pixel images to ``size``:
    pad 12, jitter 8, scale 0.9-1.1 (11 steps), rotate -10..10 degrees, jitter 4 at 224; at 32
    pixels: pad 2, jitter 1, ..., jitter 1; at 64: pad 3, jitter 2, ..., jitter 1."""
    f = positive_int(size, "size") / 224.0
    return [
        Pad(max(1, round(12 * f))),
        Jitter(max(1, round(8 * f))),
        RandomScale(tuple(1 + (i - 5) / 50 for i in range(11))),
        RandomRotate(tuple(float(a) for a in range(-10, 11))),
        Jitter(max(1, round(4 * f))),
    ]


def draws_of(t: Any) -> int:
    return int(getattr(t, "draws", 0)) if isinstance(t, Transform) else 0


def apply_transforms(transforms: Sequence[Any], x: Tensor, u: Tensor | None, fill: Tensor) -> Tensor:
    """Apply ``transforms`` in order; ``u [N, total draws]`` is split among them."""
    k = 0
    pending: Tensor | None = None  # composed matrix of consecutive scale / rotate transforms
    for t in transforms:
        if isinstance(t, (RandomScale, RandomRotate)):
            assert u is not None
            m = t.matrix(u[:, k : k + t.draws].to(torch.float32))
            k += t.draws
            # sampling composes backwards: output -> (last transform) -> ... -> input
            pending = m if pending is None else torch.bmm(pending, m)
            continue
        if pending is not None:
            x = _affine(x, pending[:, :2], fill)
            pending = None
        if isinstance(t, Transform):
            d = t.draws
            x = t(x, u[:, k : k + d] if d else None, fill)
            k += d
        else:
            x = t(x)
    if pending is not None:
        x = _affine(x, pending[:, :2], fill)
    return x
