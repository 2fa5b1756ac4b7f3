"""Token sequences and channels-last grids as ``[B, D, h, w]`` feature maps: the one place that
knows how a vision transformer's or a channels-last block's layer output lies on the image.

A layer output is read as a spatial map in one of three layouts (:func:`grid_layout`):

* ``"channels_first"`` -- ``[B, C, h, w]`` (convolutions): kept as it is;
* ``"channels_last"`` -- ``[B, h, w, D]`` (torchvision and timm Swin blocks and their final
  ``norm``, the ``LayerNorm`` inside ConvNeXt blocks): permuted to ``[B, D, h, w]``;
* ``"tokens"`` -- ``[B, N, D]`` with ``N = p + h * w``: the first ``p`` tokens (ViT's class token,
  DeiT's distillation token, register tokens) are dropped and the other ``h * w`` patch tokens,
  in row-major order, are reshaped to ``[B, D, h, w]`` (Dosovitskiy et al. 2021).

The grid ``h x w`` is inferred from the token count and the input's size: it must be what some
patch size (stride) ``s`` makes of the ``H x W`` input (``h, w`` are ``H / s, W / s`` both rounded
down or both rounded up), and the fewest dropped tokens win. A model's patch size (torchvision
``VisionTransformer.patch_size``, timm ``patch_embed.patch_size``) fixes ``s``, and timm's
``num_prefix_tokens`` (class token plus register or distillation tokens) is tried first as the
count of dropped tokens. The same :class:`GridLayout` reshapes a layer's gradient, so
Grad-CAM weights average over the patch tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

__all__ = ["GridLayout", "grid_layout", "to_grid"]

#: at most this many leading non-patch tokens are considered (class, distillation, registers)
MAX_PREFIX = 8


@dataclass(frozen=True)
class GridLayout:
    """How a layer output becomes ``[B, D, h, w]``.

    Attributes:
        kind: ``"channels_first"``, ``"channels_last"`` or ``"tokens"``.
        grid: ``(h, w)``.
        prefix: leading tokens dropped (``"tokens"`` only; ViT: 1, the class token).
    """

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def apply(self, t: Tensor) -> Tensor:
        """``t`` (the layer output, or its gradient) as ``[B, D, h, w]``."""
        h, w = self.grid
        if self.kind == "channels_first":
            return t
        if self.kind == "channels_last":
            return t.permute(0, 3, 1, 2)
        b, _, d = t.shape
        return t[:, self.prefix:].reshape(b, h, w, d).permute(0, 3, 1, 2)

    def describe(self) -> str:
        """One line for the log: what the reshape does."""
        h, w = self.grid
        if self.kind == "channels_first":
            return f"a [B, C, {h}, {w}] feature map"
        if self.kind == "channels_last":
            return f"channels-last [B, {h}, {w}, D] permuted to [B, D, {h}, {w}]"
        dropped = (
            "" if not self.prefix
            else f", the first {self.prefix} token{'s' if self.prefix > 1 else ''} "
            f"({'the class token' if self.prefix == 1 else 'class/extra tokens'}) dropped"
        )
        return f"{self.prefix + h * w} tokens reshaped to a {h} x {w} grid{dropped}"


def _fits(h: int, w: int, size: tuple[int, int], stride: int) -> bool:
    big_h, big_w = size
    return (h, w) in ((big_h // stride, big_w // stride), (-(-big_h // stride), -(-big_w // stride)))


def _grid_of(h: int, w: int, size: tuple[int, int], patch: int | None) -> bool:
    """Whether an ``h x w`` grid is what some stride (``patch`` if given) makes of ``size``,
    both sides rounded alike (down, or up as padding does)."""
    big_h, big_w = size
    if h < 1 or w < 1 or h > big_h or w > big_w:
        return False
    if patch is not None:
        return _fits(h, w, size, patch)
    # candidate strides from h alone; check w against each
    lo, hi = max(1, big_h // (h + 1)), big_h // max(1, h - 1) if h > 1 else big_h
    return any(_fits(h, w, size, s) for s in range(lo, hi + 1))


def _token_grid(
    n: int, size: tuple[int, int], patch: int | None, prefix: int | None = None
) -> tuple[int, int, int] | None:
    """``(prefix, h, w)`` for ``n`` tokens: the declared ``prefix`` first, then the fewest prefix
    tokens; None if none fits."""
    counts = list(range(0, min(MAX_PREFIX, n - 1) + 1))
    if prefix is not None and 0 <= prefix < n - 1:
        counts = [prefix] + [p for p in counts if p != prefix]
    for p in counts:
        m = n - p
        for h in range(1, math.isqrt(m) + 1):
            if m % h:
                continue
            for hh, ww in ((h, m // h), (m // h, h)):
                if hh * ww > 1 and _grid_of(hh, ww, size, patch):
                    return p, hh, ww
    return None


def grid_layout(
    t: object, size: tuple[int, int], patch: int | None = None, *, prefix: int | None = None,
    strict: bool = False,
) -> GridLayout | None:
    """The :class:`GridLayout` that reads ``t`` as a spatial map of an ``H x W`` input.

    A 4-D tensor is channels-first ``[B, C, h, w]`` when ``h * w > 1`` and ``h x w`` is a grid of
    the input (see the module notes), channels-last ``[B, h, w, D]`` when only its dimensions 1
    and 2 are; a 3-D tensor ``[B, N, D]`` is a token sequence when ``N`` minus at most
    :data:`MAX_PREFIX` leading tokens is such a grid with more than one cell.

    Args:
        t: a layer output.
        size: the input's ``(H, W)``.
        patch: the model's patch size, if known (fixes the stride).
        prefix: the model's count of leading non-patch tokens, if known (timm's
            ``num_prefix_tokens``: class, distillation and register tokens); tried first, and
            any other count still fits when it does not (a layer after the tokens were pooled).
        strict: refuse a 4-D output whose last two dimensions are no grid of the input (an
            attention matrix ``[B, heads, N, N]``, queries ``[B, heads, N, d]``) instead of
            reading it as a channels-first map as it is.

    Returns:
        The layout, or None when ``t`` is not a spatial map (a vector, a tuple, a 1 x 1 map).
    """
    if not isinstance(t, Tensor) or t.is_sparse:
        return None
    if t.ndim == 4:
        h, w = int(t.shape[2]), int(t.shape[3])
        if h * w > 1 and _grid_of(h, w, size, None):
            return GridLayout("channels_first", (h, w))
        h2, w2 = int(t.shape[1]), int(t.shape[2])
        if h2 * w2 > 1 and _grid_of(h2, w2, size, None) and t.shape[3] > 1:
            return GridLayout("channels_last", (h2, w2))
        if h2 == w2 == 1:  # [B, 1, 1, C]: a 1 x 1 channels-last map, not a 1 x C one
            return None
        if h * w > 1 and not strict:  # no grid of the input (e.g. resized inside): as it is
            return GridLayout("channels_first", (h, w))
        return None
    if t.ndim == 3 and t.shape[1] > 1:
        found = _token_grid(int(t.shape[1]), size, patch, prefix)
        if found is not None:
            p, h, w = found
            return GridLayout("tokens", (h, w), p)
    return None


def to_grid(
    t: Tensor, size: tuple[int, int], patch: int | None = None, *, prefix: int | None = None
) -> Tensor | None:
    """``t`` as ``[B, D, h, w]`` (see :func:`grid_layout`), or None if it is no spatial map."""
    layout = grid_layout(t, size, patch, prefix=prefix)
    return None if layout is None else layout.apply(t)
