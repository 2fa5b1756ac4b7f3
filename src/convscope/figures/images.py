"""Small images as PNG data URIs (thumbnails in hovers and panels)."""

from __future__ import annotations

import base64
import io

import numpy as np

__all__ = ["png_data_uri"]


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
