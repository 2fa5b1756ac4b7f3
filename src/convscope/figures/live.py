"""The Live page's per-frame pictures (Yosinski et al. 2015's live view): a layer's channel grid,
one channel zoomed, an fc layer's activations as bars, each one small PNG.

A video or webcam frame is drawn many times a second, so these are images, not plotly figures:
one vectorised normalisation, one colour lookup and one fast PNG encoding per frame (a plotly
heatmap of the same grid is ~50 times larger and takes longer to build than the model's
forward pass).
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from .images import colormap_lut

__all__ = ["COLORMAP", "GAP_RGB", "grid_layout", "channel_levels", "grid_image", "bars_image",
           "png_uri"]

#: Colour scale of the maps: low = dark purple, high = yellow (perceptually uniform).
COLORMAP = "Viridis"
#: Colour of the lines between tiles (not on the colour scale).
GAP_RGB = (255, 255, 255)


def grid_layout(c: int, h: int, w: int, gap: int = 1) -> dict[str, int]:
    """Where tile ``i`` of ``c`` tiles of ``h x w`` sits: ``cols`` (about square, wider for
    wide maps), ``rows``, tile size ``th``/``tw`` and ``gap`` pixels between tiles. Tile ``i``
    starts at row ``(i // cols) * (th + gap)``, column ``(i % cols) * (tw + gap)``."""
    cols = max(1, math.ceil(math.sqrt(c * h / max(w, 1))))
    cols = min(cols, max(c, 1))
    rows = max(1, math.ceil(c / cols))
    return {"cols": cols, "rows": rows, "th": int(h), "tw": int(w), "gap": int(gap)}


def channel_levels(acts: np.ndarray) -> np.ndarray:
    """``[C, h, w]`` -> uint8 levels, each channel scaled on its own to 0..255 (a constant
    channel is 0; NaN counts as its channel's minimum)."""
    a = np.nan_to_num(np.asarray(acts, dtype=np.float32), nan=np.inf)
    a = np.where(np.isfinite(a), a, np.nan)
    lo = np.nanmin(a, axis=(1, 2), keepdims=True)
    hi = np.nanmax(a, axis=(1, 2), keepdims=True)
    lo = np.nan_to_num(lo)
    span = np.nan_to_num(hi - lo)
    scaled = np.where(span > 0, (np.nan_to_num(a - lo) / np.where(span > 0, span, 1.0)), 0.0)
    return (scaled * 255.0).round().clip(0, 255).astype(np.uint8)


def grid_image(acts: np.ndarray, gap: int = 1) -> tuple[np.ndarray, dict[str, int]]:
    """A layer's channels ``[C, h, w]`` as one RGB image ``[H, W, 3]`` uint8: each channel scaled
    on its own and coloured by :data:`COLORMAP`, tiles separated by ``gap`` white pixels;
    returns the image and its :func:`grid_layout`."""
    c, h, w = acts.shape
    lay = grid_layout(c, h, w, gap)
    cols, rows = lay["cols"], lay["rows"]
    levels = channel_levels(acts)
    full = np.zeros((rows * cols, h, w), dtype=np.uint8)
    full[:c] = levels
    lut = colormap_lut(COLORMAP)
    rgb = lut[full]  # [rows * cols, h, w, 3]
    if c < rows * cols:
        rgb[c:] = GAP_RGB
    out = np.empty((rows, h + gap, cols, w + gap, 3), dtype=np.uint8)
    out[...] = GAP_RGB
    out[:, :h, :, :w] = rgb.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4)
    img = out.reshape(rows * (h + gap), cols * (w + gap), 3)
    return img[: rows * (h + gap) - gap, : cols * (w + gap) - gap], lay


def bars_image(values: np.ndarray, height: int = 64, width: int = 512) -> np.ndarray:
    """A vector's values ``[N]`` as a bar strip ``[height, W, 3]`` uint8 (``W`` = ``N`` x the
    bar width, at most ``width``): one bar per value (bars of more values than ``width`` pixels
    are the means of adjacent groups), positive up and negative down from the zero line, on one
    scale (the largest magnitude), coloured by value on :data:`COLORMAP`."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32).reshape(-1))
    n = max(len(v), 1)
    if len(v) > width:  # group means
        edges = np.linspace(0, len(v), width + 1).round().astype(np.int64)
        v = np.add.reduceat(v, edges[:-1]) / np.diff(edges)
        n = width
    bw = max(1, min(16, width // n))
    top = float(np.abs(v).max()) if len(v) else 0.0
    scale = top if top > 0 else 1.0
    has_neg = bool((v < 0).any())
    zero = height // 2 if has_neg else height - 1
    span = min(zero, height - 1 - zero) if has_neg else height - 1
    lengths = np.round(np.abs(v) / scale * span).astype(np.int64)
    lut = colormap_lut(COLORMAP)
    colors = lut[((v / scale + 1) / 2 * 255).round().clip(0, 255).astype(np.int64)] if has_neg \
        else lut[(v / scale * 255).round().clip(0, 255).astype(np.int64)]
    base = np.full((height, n, 3), 255, dtype=np.uint8)
    base[zero] = (180, 180, 180)  # the zero line
    ys = np.arange(height)[:, None]
    up = (v[None] >= 0) & (ys >= zero - lengths[None]) & (ys <= zero)
    down = (v[None] < 0) & (ys <= zero + lengths[None]) & (ys >= zero)
    mask = (up | down) & (lengths[None] > 0)  # [height, n]
    cells = np.where(mask[..., None], colors[None], base)
    img = np.repeat(cells, bw, axis=1)
    if bw > 2:  # a white line between bars
        img[:, bw - 1::bw] = 255
    return img


def png_uri(image: np.ndarray) -> str:
    """An RGB ``[H, W, 3]`` (or grey ``[H, W]``) uint8 image as a PNG data URI, encoded fast
    (zlib level 1: these images are small and drawn once)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
