"""Tensor operations shared by the analyses: reduced precision promoted to float32, min-max
scaling and upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["f32", "minmax", "upsample"]


def f32(t: Tensor) -> Tensor:
    """``t`` in float32 when it is a reduced-precision float (float16, bfloat16): every
    reduction (channel weights, sums, min-max, metrics) is computed in float32 and only the
    result is cast back."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def minmax(x: Tensor, dims: int | Sequence[int] | None = None, *, fill: float = 0.0) -> Tensor:
    """Min-max scale ``x`` to [0, 1] over ``dims`` (default: every dimension but the first, i.e.
    per item of a batch; ``()`` for the whole tensor at once). A constant slice becomes
    ``fill``. Computed in float32 for reduced-precision input and returned in ``x``'s dtype.
    NaN / inf are not checked here (callers that take user maps check them first)."""
    if dims is None:
        dims = tuple(range(1, x.ndim))
    elif isinstance(dims, int):
        dims = (dims,)
    dims = tuple(dims) if len(tuple(dims)) else tuple(range(x.ndim))
    v = f32(x)
    if not dims:  # a 0-d tensor
        return torch.full_like(x, fill)
    lo = v.amin(dim=dims, keepdim=True)
    span = v.amax(dim=dims, keepdim=True) - lo
    out = torch.where(span > 0, (v - lo) / torch.where(span > 0, span, 1.0), fill)
    return out.to(x.dtype)


def upsample(maps: Tensor, size: Sequence[int], *, align_corners: bool = False) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` (or ``[B, h, w]``) maps to ``size = (H, W)``."""
    if maps.ndim == 3:
        return upsample(maps[:, None], size, align_corners=align_corners)[:, 0]
    return F.interpolate(maps, size=tuple(int(s) for s in size), mode="bilinear",
                         align_corners=align_corners)
