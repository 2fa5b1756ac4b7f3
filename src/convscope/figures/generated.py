"""Generated image grids as PNG data URIs: values in [0, 1] mapped to 0-255 as they are (no
min-max stretch: a dark, washed-out or collapsed generator must look like one)."""

from __future__ import annotations

import numpy as np

from .images import png_data_uri

__all__ = ["grid_rgb", "grid_data_uri"]


def grid_rgb(image: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """``image [C, H, W]`` (C = 1 or 3) in [0, 1] -> uint8 ``[H, W, 3]`` (``round(255 v)``).
    ``max_side``: area-average by the smallest integer factor that brings both sides to at most
    this many pixels (small images come back unchanged)."""
    x = np.asarray(image, dtype=np.float32)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    h, w = x.shape[-2:]
    f = -(-max(h, w) // int(max_side)) if max_side else 1
    if f > 1:
        h2, w2 = h // f, w // f
        x = x[:, :h2 * f, :w2 * f].reshape(x.shape[0], h2, f, w2, f).mean(axis=(2, 4))
    x = np.nan_to_num(x, nan=0.0).clip(0.0, 1.0)
    return (x.transpose(1, 2, 0) * 255.0).round().astype(np.uint8)


def grid_data_uri(image: np.ndarray, max_side: int | None = None, scale: int = 1) -> str:
    """:func:`grid_rgb` as a PNG data URI, nearest-neighbour upscaled by ``scale``."""
    return png_data_uri(grid_rgb(image, max_side), scale=scale)
