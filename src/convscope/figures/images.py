"""Small images as PNG data URIs (thumbnails in hovers and panels)."""

from __future__ import annotations

import base64
import functools
import io

import numpy as np

__all__ = ["png_data_uri", "colormap_lut", "to_rgb", "overlay"]


def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    """``image``: uint8 ``[H, W, 3]`` or ``[H, W]``; nearest-neighbour upscaled by ``scale``."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        arr = ((arr - lo) / (hi - lo if hi > lo else 1.0) * 255).clip(0, 255).astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@functools.lru_cache(maxsize=32)
def colormap_lut(name: str = "Jet", n: int = 256) -> np.ndarray:
    """A ``[n, 3]`` uint8 lookup table sampled from a plotly colour scale (read-only; cached:
    sampling the scale costs ~8 ms, more than colouring a gallery page)."""
    from plotly.colors import get_colorscale, sample_colorscale, unlabel_rgb

    colors = sample_colorscale(get_colorscale(name), np.linspace(0, 1, n).tolist(),
                               colortype="rgb")
    lut = np.array([unlabel_rgb(c) for c in colors]).round().clip(0, 255).astype(np.uint8)
    lut.setflags(write=False)
    return lut


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` (any range, 1 or 3+ channels) -> uint8 ``[H, W, 3]``, min-max scaled."""
    x = np.asarray(image, dtype=np.float32)
    x = np.repeat(x, 3, axis=0) if x.shape[0] == 1 else x[:3]
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo if hi > lo else 1.0)
    return (x.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, opacity: float, lut: np.ndarray) -> np.ndarray:
    """Blend a map ``[H, W]`` in [0, 1] (colour-mapped) over an RGB image ``[H, W, 3]``."""
    idx = (np.nan_to_num(np.asarray(heat, dtype=np.float32)).clip(0, 1) * (len(lut) - 1))
    colored = lut[idx.round().astype(np.int64)].astype(np.float32)
    out = (1.0 - opacity) * image.astype(np.float32) + opacity * colored
    return out.round().clip(0, 255).astype(np.uint8)
