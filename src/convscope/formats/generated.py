"""Generated image grids over training: what a GAN run stores every few steps.

Contract (written by :func:`write`, and by ``convscope experiment dcgan``):

* ``arrays/samples/generated.step<NNNNNN>.npy``: one grid ``[1, C, rows*h, cols*w]`` float16 in
  [0, 1] (C = 1 or 3; the images of fixed latent vectors tiled row by row, missing tiles black),
  under the key :func:`key` of the training step (six digits at least); its index row's meta
  ``{"step": N, "grid": [rows, cols]}``. The ``samples`` kind is shared with the feature-map
  sample images (:mod:`.feature_maps`), whose key has no ``generated.`` prefix.

Reading: :func:`steps` lists the steps a run holds (from the arrays index: the keys come from
the store's listing, a request only picks among them); :func:`load` returns one grid as a
:class:`GeneratedGrid` after checking the step and the stored shape (at most :data:`MAX_SIDE`
pixels a side); :func:`diversity` measures how different a grid's tiles are.

*Diversity* is the mean over the pairs of tiles ``i < j`` of the root-mean-square difference of
their pixels, ``sqrt(mean((t_i - t_j)²))``, in [0, 1] for images in [0, 1]: 0 when every tile
is the same image (a generator collapsed onto one mode), larger when the samples differ. It
says nothing of quality: noise is very diverse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidValueError, StoreError
from .base import Sink
from .feature_maps import SAMPLES_KIND

__all__ = ["KIND", "PREFIX", "MAX_SIDE", "DTYPE", "SOURCE", "GridInfo", "GeneratedGrid", "key",
           "write", "index", "steps", "has", "nearest", "load", "tiles", "diversity",
           "final_diversity"]

KIND = SAMPLES_KIND
PREFIX = "generated.step"
DTYPE = np.float16
#: a stored grid larger than this many pixels a side is refused (bounds what a page loads)
MAX_SIDE = 4096
SOURCE = "convscope experiment dcgan (or convscope.formats.generated.write)"
_KEY = re.compile(r"^generated\.step(\d{1,12})$")


@dataclass(frozen=True)
class GridInfo:
    """One stored grid, from the arrays index: its step, key, stored shape and tiling."""

    step: int
    key: str
    shape: tuple[int, ...]
    grid: tuple[int, int] | None


@dataclass(frozen=True)
class GeneratedGrid:
    """One grid: ``image [C, H, W]`` float32 in [0, 1] and its tiling ``(rows, cols)`` (None
    when the meta does not give one that divides the image)."""

    step: int
    key: str
    image: np.ndarray
    grid: tuple[int, int] | None


def key(step: int) -> str:
    """The sample-image key of the grid generated at ``step``."""
    return f"{PREFIX}{int(step):06d}"


def write(sink: Sink, step: int, image: Any, grid: Sequence[int] = (4, 4)) -> None:
    """Store the grid ``image`` (``[C, H, W]`` or ``[1, C, H, W]``, values in [0, 1]) generated
    at ``step``, tiled ``grid = (rows, cols)``."""
    x = np.asarray(image, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
        raise InvalidValueError(f"a generated grid must be [C, H, W] or [1, C, H, W] with C = 1 "
                                f"or 3, got {list(np.shape(image))}: tile the images first.")
    if isinstance(step, bool) or int(step) < 0:
        raise InvalidValueError(f"step={step!r}: pass a training step >= 0.")
    rows, cols = (int(v) for v in grid)
    sink.log_array(KIND, key(step), x.clip(0.0, 1.0), step=int(step), dtype=DTYPE,
                   meta={"step": int(step), "grid": [rows, cols]})


def _grid(meta: Any, shape: Sequence[int]) -> tuple[int, int] | None:
    g = meta.get("grid") if isinstance(meta, dict) else None
    if not (isinstance(g, (list, tuple)) and len(g) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in g)):
        return None
    if len(shape) != 4 or shape[2] % g[0] or shape[3] % g[1]:
        return None
    return int(g[0]), int(g[1])


def index(reader: Any) -> list[GridInfo]:
    """The grids a run holds, by step (the index's keys only: nothing else is looked up)."""
    idx = reader.arrays(KIND)
    out: dict[int, GridInfo] = {}
    if not len(idx):
        return []
    for k, shape, meta in zip(idx["key"], idx["shape"], idx["meta"], strict=True):
        m = _KEY.match(str(k))
        if not m:
            continue
        step = int(m.group(1))
        shape = tuple(int(v) for v in shape)
        out[step] = GridInfo(step, str(k), shape, _grid(meta, shape))
    return [out[s] for s in sorted(out)]


def steps(reader: Any) -> list[int]:
    """The steps of the stored grids, ascending."""
    return [g.step for g in index(reader)]


def has(reader: Any) -> bool:
    return bool(index(reader))


def nearest(available: Sequence[int], step: int) -> int:
    """The element of ``available`` nearest to ``step`` (the earlier one on a tie)."""
    if not available:
        raise InvalidValueError("no generated grids to choose from: record some with "
                                f"{SOURCE}.")
    return min(available, key=lambda s: (abs(int(s) - int(step)), int(s)))


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise InvalidValueError(f"step={step!r}: pass a training step (an int) among the "
                                "run's grid steps (convscope.formats.generated.steps).")
    return int(step)


def load(reader: Any, step: int, infos: Sequence[GridInfo] | None = None) -> GeneratedGrid:
    """The grid stored at ``step`` (one of :func:`steps`) as float32 ``[C, H, W]`` in [0, 1].
    ``infos``: :func:`index` when the caller has it."""
    step = _check_step(step)
    infos = index(reader) if infos is None else infos
    info = next((g for g in infos if g.step == step), None)
    if info is None:
        have = [g.step for g in infos]
        span = f"steps {have[0]} .. {have[-1]} ({len(have)} grids)" if have else "no grids"
        raise InvalidValueError(f"run {reader.name!r} holds no generated grid at step {step} "
                                f"({span}): pick one of convscope.formats.generated.steps.")
    s = info.shape
    if len(s) != 4 or s[0] != 1 or s[1] not in (1, 3) or not (0 < s[2] <= MAX_SIDE
                                                              and 0 < s[3] <= MAX_SIDE):
        raise StoreError(f"the generated grid {info.key} of run {reader.name!r} has shape "
                         f"{list(s)}: expected [1, C (1 or 3), H, W] with at most {MAX_SIDE} "
                         f"pixels a side; record it again with {SOURCE}.")
    arr = np.asarray(reader.array(KIND, info.key, mmap=True))
    if tuple(arr.shape) != s:
        raise StoreError(f"the generated grid {info.key} of run {reader.name!r} holds shape "
                         f"{list(arr.shape)} but its index says {list(s)}: record it again.")
    image = np.nan_to_num(arr[0].astype(np.float32), nan=0.0).clip(0.0, 1.0)
    return GeneratedGrid(step, info.key, image, info.grid)


def tiles(image: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``image [C, rows*h, cols*w]`` cut into its ``rows * cols`` tiles ``[n, C, h, w]``, row by
    row."""
    x = np.asarray(image)
    rows, cols = grid
    c, hh, ww = x.shape
    if hh % rows or ww % cols:
        raise InvalidValueError(f"a {hh} x {ww} image does not split into {rows} x {cols} tiles.")
    h, w = hh // rows, ww // cols
    return x.reshape(c, rows, h, cols, w).transpose(1, 3, 0, 2, 4).reshape(rows * cols, c, h, w)


def diversity(image: np.ndarray, grid: tuple[int, int]) -> float:
    """The mean over tile pairs ``i < j`` of ``sqrt(mean((t_i - t_j)²))`` (see the module doc;
    float64, from the Gram matrix: no ``n x n x pixels`` array)."""
    t = tiles(image, grid).reshape(grid[0] * grid[1], -1).astype(np.float64)
    n, d = t.shape
    if n < 2:
        raise InvalidValueError("diversity needs a grid of at least 2 tiles.")
    sq = np.einsum("ij,ij->i", t, t)
    dist2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (t @ t.T), 0.0) / d
    iu = np.triu_indices(n, k=1)
    return float(np.sqrt(dist2[iu]).mean())


def final_diversity(reader: Any, infos: Sequence[GridInfo] | None = None
                    ) -> tuple[int, float] | None:
    """``(step, diversity)`` of the last stored grid, or None when the run has none or the last
    grid's tiling is unknown."""
    infos = index(reader) if infos is None else infos
    last = infos[-1] if infos else None
    if last is None or last.grid is None or last.grid[0] * last.grid[1] < 2:
        return None
    g = load(reader, last.step, infos)
    return g.step, diversity(g.image, last.grid)
