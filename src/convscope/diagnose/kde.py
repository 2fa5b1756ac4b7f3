"""Gaussian kernel density estimates of many channels at once, on the values' device.

Each row of ``values [C, N]`` gets its own bandwidth (Scott's or Silverman's rule on that row's
standard deviation, exactly as ``scipy.stats.gaussian_kde`` chooses it in one dimension) and all
rows are evaluated on one shared grid, so the curves can be drawn in one plot as Wang & Li (2020) do
(one curve per channel). The sum over samples is chunked, so memory stays ``C x G x chunk``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..nn import chunks

__all__ = ["KDE", "kde"]

_FAR = 1e30


@dataclass
class KDE:
    """Densities of several rows on a shared grid.

    Attributes:
        grid: ``[G]`` evaluation points.
        density: ``[C, G]`` one density curve per row (each integrates to ~1 over a wide grid).
        bandwidth: ``[C]`` kernel standard deviation used for each row.
        degenerate: ``[C]`` rows whose values were all equal (or had fewer than two finite
            values): their bandwidth is a fallback (1 % of the grid's span) so that the curve
            shows a narrow peak instead of failing; scipy raises on such rows.
        labels: ``[C]`` row names (channel indices in the layer).
        note: what was sampled, or ``""``.
    """

    grid: np.ndarray
    density: np.ndarray
    bandwidth: np.ndarray
    degenerate: np.ndarray
    labels: np.ndarray
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with numpy arrays."""
        return {
            "grid": np.asarray(self.grid),
            "density": np.asarray(self.density),
            "bandwidth": np.asarray(self.bandwidth),
            "degenerate": np.asarray(self.degenerate),
            "labels": np.asarray(self.labels),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KDE:
        """Inverse of :meth:`to_dict` (array fields may be lists)."""
        return cls(
            grid=np.asarray(d["grid"], dtype=np.float64),
            density=np.asarray(d["density"], dtype=np.float64).reshape(len(d["labels"]), -1),
            bandwidth=np.asarray(d["bandwidth"], dtype=np.float64),
            degenerate=np.asarray(d["degenerate"], dtype=bool),
            labels=np.asarray(d["labels"], dtype=np.int64),
            note=str(d.get("note", "")),
        )


def kde(
    values: torch.Tensor,
    *,
    points: int = 200,
    grid: Any = None,
    bandwidth: str | float = "scott",
    labels: Any = None,
    chunk: int = 256,
) -> KDE:
    """Gaussian KDE of each row of ``values``.

    Args:
        values: ``[C, N]`` (one row per channel) or ``[N]`` (one row). Non-finite values are
            ignored.
        points: grid size ``G`` when ``grid`` is not given.
        grid: ``[G]`` evaluation points; default: ``points`` evenly spaced from the smallest
            value minus 3 bandwidths to the largest plus 3 bandwidths (over all rows).
        bandwidth: ``"scott"`` (``n ** -0.2``, scipy's default), ``"silverman"``
            (``(3n / 4) ** -0.2``) — both multiply the row's sample standard deviation
            (``ddof=1``) — or a number: the kernel standard deviation for every row.
        labels: row names (default ``0..C-1``).
        chunk: samples summed per step.

    Returns:
        :class:`KDE` (numpy arrays).
    """
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(np.asarray(values))
    if values.dim() == 1:
        values = values.unsqueeze(0)
    if values.dim() != 2:
        raise InputError(f"kde expects values [C, N] or [N], got shape {list(values.shape)}.")
    v = values.double() if values.dtype == torch.float64 else values.float()
    c = int(v.shape[0])
    finite = torch.isfinite(v)
    n = finite.sum(1)  # [C]
    vz = torch.where(finite, v, torch.zeros_like(v))
    nf = n.clamp_min(1).to(v.dtype)
    mean = vz.sum(1) / nf
    var = (torch.where(finite, v - mean.unsqueeze(1), torch.zeros_like(v)) ** 2).sum(1)
    std = (var / (n - 1).clamp_min(1).to(v.dtype)).sqrt()
    if isinstance(bandwidth, str):
        if bandwidth == "scott":
            factor = nf ** (-0.2)
        elif bandwidth == "silverman":
            factor = (nf * 0.75) ** (-0.2)
        else:
            raise InputError(
                f"kde(bandwidth={bandwidth!r}): use 'scott', 'silverman' or a positive number."
            )
        h = std * factor
    else:
        if not float(bandwidth) > 0:
            raise InputError(f"kde(bandwidth={bandwidth!r}): a numeric bandwidth must be > 0.")
        h = torch.full((c,), float(bandwidth), dtype=v.dtype, device=v.device)
    degenerate = ~(h > 0) | (n < 2)
    big = torch.finfo(v.dtype).max
    lo = torch.where(finite, v, torch.full_like(v, big)).min()
    hi = torch.where(finite, v, torch.full_like(v, -big)).max()
    if not bool(torch.isfinite(lo)) or not bool(n.sum() > 0):
        lo = hi = torch.zeros((), dtype=v.dtype, device=v.device)
    span = float(hi - lo)
    fallback = 0.01 * span if span > 0 else 0.1
    h = torch.where(degenerate, torch.full_like(h, fallback), h)
    if grid is None:
        pad = 3.0 * float(h.max()) if c else 1.0
        g = torch.linspace(float(lo) - pad, float(hi) + pad, int(points), dtype=v.dtype,
                           device=v.device)
    else:
        g = torch.as_tensor(np.asarray(grid, dtype=np.float64), dtype=v.dtype, device=v.device)
    dens = torch.zeros(c, g.shape[0], dtype=v.dtype, device=v.device)
    inv_h = (1.0 / h).unsqueeze(1).unsqueeze(2)  # [C, 1, 1]
    gg = g.view(1, -1, 1)
    # non-finite values are moved far away, where every kernel is exactly 0
    vv = v if bool(finite.all()) else torch.where(finite, v, torch.full_like(v, _FAR))
    for sl in chunks(int(v.shape[1]), chunk):
        z = (gg - vv[:, sl].unsqueeze(1)) * inv_h  # [C, G, k]
        dens += torch.exp(z.square_().mul_(-0.5)).sum(2)
    dens = dens / (nf.clamp_min(1) * h * math.sqrt(2 * math.pi)).unsqueeze(1)
    dens = torch.where((n > 0).unsqueeze(1), dens, torch.zeros_like(dens))
    lab = np.arange(c, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    return KDE(
        grid=g.cpu().numpy().astype(np.float64),
        density=dens.cpu().numpy().astype(np.float64),
        bandwidth=h.cpu().numpy().astype(np.float64),
        degenerate=degenerate.cpu().numpy(),
        labels=lab,
    )
