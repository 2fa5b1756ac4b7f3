"""Weight and gradient statistics of a layer, computed with a few batched ops on its device.

Layer statistics (DeepTracker's layer view): min, max, mean, std, L1, L2 and the share of exact
zeros, of the weights and of the gradients, and the update ratio ||w_t - w_prev|| / ||w_prev||
against the previous recorded snapshot. Per filter (output channel): weight L2, gradient L2,
||g|| / ||w||, and the cosine similarity of the filter's weights to its previous snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["STAT_NAMES", "LAYER_COLUMNS", "FILTER_COLUMNS", "tensor_stats", "layer_stats",
           "filter_stats", "LayerRecorder", "FusedRows", "fused_raw_rows", "finish_stats"]

from . import native
from .columns import FILTER_COLUMNS, LAYER_COLUMNS, STAT_NAMES


@torch.no_grad()
def tensor_stats(t: torch.Tensor) -> torch.Tensor:
    """``[7]`` float32: min, max, mean, std (population), L1, L2, share of exact zeros.

    Five cheap reductions with no full-size temporaries (``aminmax``, ``sum``, the L1 and L2
    norms, ``count_nonzero``); the variance is ``||x||² / n - mean²`` in float64. Where that
    formula loses precision (mean² > 0.9 E[x²], e.g. batch-norm scales near 1) the exact
    two-pass variance is used on the CPU; on a GPU the check would stall the stream, so the
    formula is kept (relative error ~1e-7 · E[x²] / var).
    """
    x = t.detach().reshape(-1)
    if x.dtype != torch.float32 and x.dtype != torch.float64:
        x = x.float()
    n = x.numel()
    if n == 0:
        return torch.full((7,), float("nan"), device=t.device)
    lo, hi = torch.aminmax(x)
    mean = x.sum().double() / n
    l2 = torch.linalg.vector_norm(x)
    sq = l2.double().square() / n
    var = (sq - mean.square()).clamp_min(0)
    if not x.is_cuda and float(mean.square()) > 0.9 * float(sq):
        var = torch.var_mean(x, correction=0)[0].double()
    return torch.stack([
        lo.float(), hi.float(), mean.float(), var.sqrt().float(),
        torch.linalg.vector_norm(x, ord=1).float(), l2.float(),
        ((n - torch.count_nonzero(x)) / n).float(),
    ])


@torch.no_grad()
def layer_stats(w: torch.Tensor, g: torch.Tensor | None, prev: torch.Tensor | None
                ) -> torch.Tensor:
    """``[15]`` float32 in :data:`LAYER_COLUMNS` order (gradient stats NaN without a gradient,
    update ratio NaN without a previous snapshot)."""
    nan7 = torch.full((7,), float("nan"), device=w.device)
    ws = tensor_stats(w)
    gs = tensor_stats(g) if g is not None else nan7
    if prev is not None:
        denom = torch.linalg.vector_norm(prev.float())
        ratio = torch.linalg.vector_norm(w.detach().float() - prev.float()) / denom
        ratio = torch.where(denom > 0, ratio, torch.full_like(ratio, float("nan")))
    else:
        ratio = torch.tensor(float("nan"), device=w.device)
    return torch.cat([ws, gs, ratio.reshape(1)])


@torch.no_grad()
def filter_stats(w: torch.Tensor, g: torch.Tensor | None, prev: torch.Tensor | None
                 ) -> torch.Tensor:
    """``[F, 4]`` float32 per output channel (dim 0 of the weight): weight L2, gradient L2,
    ||g|| / ||w||, cosine similarity to the previous snapshot (NaN when undefined)."""
    wf = w.detach().reshape(w.shape[0], -1).float()
    wn = torch.linalg.vector_norm(wf, dim=1)
    nan = torch.full_like(wn, float("nan"))
    if g is not None:
        gn = torch.linalg.vector_norm(g.detach().reshape(g.shape[0], -1).float(), dim=1)
        ratio = torch.where(wn > 0, gn / wn, nan)
    else:
        gn, ratio = nan, nan
    if prev is not None:
        pf = prev.reshape(prev.shape[0], -1).float()
        pn = torch.linalg.vector_norm(pf, dim=1)
        denom = wn * pn
        cos = torch.where(denom > 0, (wf * pf).sum(dim=1) / denom, nan)
    else:
        cos = nan
    return torch.stack([wn, gn, ratio, cos], dim=1)


# Largest count of 0/1 values a float32 sum adds exactly (partial sums stay below 2**24).
_EXACT_COUNT = 1 << 24
RAW_TENSOR = ("min", "max", "sum", "l1", "nonzero")  # raw reductions of one tensor


def _raw_moments(x: torch.Tensor, scratch: torch.Tensor) -> list[torch.Tensor]:
    """Raw reductions of ``x: [F, K]`` in :data:`RAW_TENSOR` order (0-d tensors);
    ``scratch: [F, K]`` is overwritten.

    L1 and the count of non-zeros come from one ``abs`` pass into the (cache-resident, shared)
    scratch buffer, summed; on the CPU the zeros are counted only when ``min |x|`` is 0 (by
    ``sign_`` and a sum of the 0/1 values, exact up to 2**24 values; ``count_nonzero`` above):
    about half the cost of ``vector_norm(ord=1)`` + ``count_nonzero``.
    The sum of squares comes from the row norms.
    """
    lo, hi = torch.aminmax(x)
    total = x.sum()
    torch.abs(x, out=scratch)
    l1 = scratch.sum()
    if x.is_cuda:
        nonzero = torch.count_nonzero(x)
    elif float(scratch.amin()) > 0:  # no zero at all (the usual case): no count needed
        nonzero = x.new_tensor(float(x.numel()))
    elif x.numel() > _EXACT_COUNT:
        nonzero = torch.count_nonzero(x)
    else:
        nonzero = scratch.sign_().sum()  # wrong with NaN in x: see LayerRecorder
    return [lo, hi, total, l1, nonzero]


@dataclass
class FusedRows:
    """One layer's statistics from the fused pass (:mod:`convscope.track.native`), turned into
    :class:`LayerRecorder`'s ``(raw, rows, exact)`` for many layers at once by
    :func:`fused_raw_rows`."""

    out: np.ndarray  # [F, 13] float64, native.COLUMNS
    prev: np.ndarray | None  # [F, 13] the previous call's ``out`` (None: no snapshot)
    has_grad: bool
    exact: list[float]
    raw_fix: list[list[float] | None]  # per tensor: [5] raw values from torch ops (NaN or inf seen)


def fused_raw_rows(parts: list[FusedRows]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``raw [L, 10]``, ``rows [4, ΣF]`` and ``exact [L, 2]`` (float64) of several layers'
    :class:`FusedRows`, with a few vectorised numpy reductions, as :func:`finish_stats` takes
    them."""
    o = np.concatenate([p.out for p in parts])
    counts = np.array([len(p.out) for p in parts])
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    raw = np.empty((len(parts), 10))
    for half, c in ((0, 0), (5, 6)):
        raw[:, half] = np.minimum.reduceat(o[:, c], starts)
        raw[:, half + 1] = np.maximum.reduceat(o[:, c + 1], starts)
        raw[:, half + 2] = np.add.reduceat(o[:, c + 2], starts)
        raw[:, half + 3] = np.add.reduceat(o[:, c + 4], starts)
        raw[:, half + 4] = np.add.reduceat(o[:, c + 5], starts)
    nan_f = np.full(len(o), np.nan)
    has_grad = np.repeat([p.has_grad for p in parts], counts)
    has_prev = np.repeat([p.prev is not None for p in parts], counts)
    rows = np.stack([np.sqrt(o[:, 3]), np.where(has_grad, np.sqrt(o[:, 9]), nan_f),
                     np.where(has_prev, np.sqrt(o[:, 12]), nan_f),
                     np.sqrt(np.concatenate([p.prev[:, 3] if p.prev is not None
                                             else np.full(len(p.out), np.nan) for p in parts]))])
    for i, p in enumerate(parts):
        if not p.has_grad:
            raw[i, 5:] = np.nan
        for half, fix in zip((0, 5), p.raw_fix, strict=True):
            if fix is not None:
                raw[i, half:half + 5] = fix
    exact = np.array([p.exact for p in parts], dtype=np.float64).reshape(-1, 2)
    return raw, rows, exact


class LayerRecorder:
    """Statistics of one layer at successive recorded steps, with a preallocated snapshot.

    Each call returns the *raw* reductions of the current weight and gradient against the
    snapshot taken at the previous call, then overwrites the snapshot with the current weight
    (``copy_`` into the buffer: no new allocation). :func:`finish_stats` turns the raw values
    of any number of layers into :func:`layer_stats` rows and :func:`filter_stats` matrices
    with a few vectorised numpy operations (float64).

    Fused to few passes over memory: per-filter L2 norms give the layer's L2; the weight
    difference is formed in place in the snapshot buffer (``snap -= w``), whose per-filter
    norms ``‖Δ_f‖`` give the update ratio ``sqrt(Σ‖Δ_f‖²) / sqrt(Σ‖p_f‖²)`` and the cosine
    ``(‖w_f‖² + ‖p_f‖² - ‖Δ_f‖²) / (2 ‖w_f‖ ‖p_f‖)``; ``‖p_f‖`` is kept from the previous
    call. Agrees with :func:`layer_stats` / :func:`filter_stats` to float32 rounding (the
    cosine to ~1e-6 absolute).

    Returns ``(raw [10] or [5], rows [4, F], exact)``: ``raw``: min, max, sum, L1, count of
    non-zeros (:data:`RAW_TENSOR`) of the weight, then of the gradient when there is one;
    ``rows``: per filter ``‖w_f‖``, ``‖g_f‖``, ``‖Δ_f‖``, ``‖p_f‖`` (NaN where undefined);
    ``exact``: the exact population variance of the weight and of the gradient where
    ``E[x²] - mean²`` would cancel (CPU only), else NaN.
    """

    def __init__(self) -> None:
        self.snap: torch.Tensor | None = None
        self.snap_rows: torch.Tensor | None = None
        self.spare: torch.Tensor | None = None  # the replaced snapshot buffer (``own=True``)
        self.fused_snap: torch.Tensor | None = None  # laid out as the weight (fused pass)
        self.fused_rows: np.ndarray | None = None
        self._fused_key: tuple[Any, Any] | None = None
        self._bufs: list[tuple[np.ndarray, np.ndarray]] = []
        self._turn = 0

    def fused(self, w: torch.Tensor, g: torch.Tensor | None) -> FusedRows | None:
        """The same statistics from one fused pass (:mod:`convscope.track.native`), or None
        when it does not apply (not compiled, not a dense CPU float32 weight / gradient): call
        :meth:`__call__` then. Keeps its own snapshot, laid out like ``w``; switching between
        the two paths costs one step without a change (NaN update ratio and cosine).

        Called once per layer and training step, so the common case is a few attribute
        checks against the layout seen last time, and two output buffers used in turn (the
        caller reads a result before the next call: the watcher stacks a step's results at the
        next forward pass)."""
        key = (w.shape, w.stride())
        if key != self._fused_key or w.dtype is not torch.float32 or w.is_cuda:
            if not native.rows_layout_ok(w) or not native.available():
                return None
            self._fused_key = key
            self.fused_snap = torch.empty_like(w, memory_format=torch.preserve_format)
            self.fused_rows = None
            self.snap = self.snap_rows = None  # the other path's snapshot is stale from now on
            f = w.shape[0]
            self._bufs = [(np.empty((f, 13)), np.empty(4)) for _ in range(2)]
        if g is not None and (g.stride() != key[1] or g.shape != key[0]
                              or g.dtype is not torch.float32 or g.is_cuda):
            return None
        out, tot = self._bufs[self._turn]
        self._turn ^= 1
        snap = self.fused_snap
        f = key[0][0]
        native.row_stats(w, g, snap, out, tot)
        if g is None:
            out[:, 6:12] = np.nan  # not written by the pass
        prev, self.fused_rows = self.fused_rows, out  # column 3 (‖w_f‖²): the next prev
        n = w.numel()
        exact: list[float] = [float("nan"), float("nan")]
        raw_fix: list[list[float] | None] = [None, None]
        ws, wq, gs, gq = tot.tolist()
        for i, (t, s, q) in enumerate(((w, ws, wq), (g, gs, gq))):
            if t is None:
                continue
            if not (math.isfinite(s) and math.isfinite(q)):  # min / max may have lost a NaN
                with torch.no_grad():
                    x = t.detach().reshape(f, -1)
                    fix = [float(v) for v in _raw_moments(x, torch.empty_like(x))]
                    fix[4] = float(torch.count_nonzero(x))  # NaN counts as non-zero
                raw_fix[i] = fix
            elif s * s > 0.9 * q * n:  # (s/n)² > 0.9 q/n: E[x²] - mean² cancels, two passes
                with torch.no_grad():
                    exact[i] = float(torch.var(t.detach().reshape(-1).double(), correction=0))
        return FusedRows(out, prev, g is not None, exact, raw_fix)

    @torch.no_grad()
    def __call__(self, w: torch.Tensor, g: torch.Tensor | None,
                 scratch: torch.Tensor | None = None, *, own: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """``w``, ``g``: the weight and its gradient (output channels in dim 0); ``scratch``:
        a flat float32 buffer of at least ``w.numel()`` values on ``w``'s device (shared
        between layers; allocated per call when None). ``own``: ``w`` is a float32 copy the
        recorder may keep as its next snapshot (no copy; the previous snapshot buffer is left
        in :attr:`spare` for the caller's next copy)."""
        self.fused_snap = self.fused_rows = self._fused_key = None  # the fused path is stale
        f = w.shape[0]
        x = w.detach().reshape(f, -1)
        if x.dtype != torch.float32:
            x = x.float()
        if scratch is None:
            scr = torch.empty_like(x)
        else:
            scr = scratch.reshape(-1)[: x.numel()].view(x.shape)
        wn = torch.linalg.vector_norm(x, dim=1)
        parts = _raw_moments(x, scr)
        gn = None
        gx = None
        if g is not None:
            gx = g.detach().reshape(f, -1)
            if gx.dtype != torch.float32:
                gx = gx.float()
            gn = torch.linalg.vector_norm(gx, dim=1)
            parts += _raw_moments(gx, scr)
        snap, pn = self.snap, self.snap_rows
        dn = None
        if snap is not None and pn is not None and snap.shape == x.shape \
                and snap.device == x.device:
            snap.sub_(x)  # prev - w, in place
            dn = torch.linalg.vector_norm(snap, dim=1)
            if own and x.data_ptr() == w.data_ptr():
                self.snap, self.spare = x, snap
            else:
                snap.copy_(x)
        else:
            self.snap = x if own and x.data_ptr() == w.data_ptr() else x.clone()
            pn = None
        self.snap_rows = wn
        raw = torch.stack(parts)
        exact = [float("nan"), float("nan")]
        if not x.is_cuda:
            self._exact_fixes(raw, exact, x, wn, gx, gn, scr)
        nan = torch.full_like(wn, float("nan")) if gn is None or dn is None else None
        rows = torch.stack([wn, gn if gn is not None else nan,
                            dn if dn is not None else nan, pn if pn is not None else nan])
        return raw, rows, exact

    @staticmethod
    def _exact_fixes(raw: torch.Tensor, exact: list[float], x: torch.Tensor, wn: torch.Tensor,
                     gx: torch.Tensor | None, gn: torch.Tensor | None,
                     scr: torch.Tensor) -> None:
        """CPU only (reading values back is free there): exact counts for tensors with NaN,
        and the two-pass variance where ``E[x²] - mean²`` cancels (batch-norm-like scales)."""
        vals = raw.tolist()
        for i, (t, rn) in enumerate(((x, wn), (gx, gn))):
            if t is None or rn is None:
                continue
            n = t.numel()
            if vals[5 * i + 3] != vals[5 * i + 3]:  # a NaN in t (L1 is NaN): count it as
                # count_nonzero does (the 0/1 sum of sign() would not: sign(NaN) is 0)
                raw[5 * i + 4] = float(torch.count_nonzero(t))
            mean = vals[5 * i + 2] / n
            sq = float(torch.dot(rn, rn)) / n
            if mean * mean > 0.9 * sq:
                torch.sub(t, mean, out=scr)
                exact[i] = float(torch.linalg.vector_norm(scr)) ** 2 / n


def finish_stats(raw: np.ndarray, rows: np.ndarray, exact: np.ndarray, filters: np.ndarray,
                 sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Layer rows ``[L, 15]`` (:data:`LAYER_COLUMNS`) and filter rows ``[ΣF, 4]``
    (:data:`FILTER_COLUMNS`), float32, from :class:`LayerRecorder` outputs of L layers.

    ``raw: [L, 10]`` (NaN for the gradient part of a layer without gradient), ``rows: [4, ΣF]``
    (the layers' ``rows`` concatenated along filters), ``exact: [L, 2]``, ``filters: [L]``
    filters per layer, ``sizes: [L]`` values per weight.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, 2, 5)
    exact = np.asarray(exact, dtype=np.float64).reshape(-1, 2)
    rows = np.asarray(rows, dtype=np.float64)
    filters = np.asarray(filters, dtype=np.int64)
    n = np.asarray(sizes, dtype=np.float64)[:, None]
    wn, gn, dn, pn = rows
    starts = np.concatenate([[0], np.cumsum(filters)[:-1]])

    def seg(v: np.ndarray) -> np.ndarray:  # per-layer sum of per-filter values
        return np.add.reduceat(v, starts) if len(v) else np.zeros(0)

    sq = np.stack([seg(wn * wn), seg(gn * gn)], axis=1)  # [L, 2]
    mean = raw[:, :, 2] / n
    var = np.where(np.isnan(exact), np.maximum(sq / n - mean * mean, 0.0), exact)
    stats = np.stack([raw[:, :, 0], raw[:, :, 1], mean, np.sqrt(var), raw[:, :, 3],
                      np.sqrt(sq), (n - raw[:, :, 4]) / n], axis=2)  # [L, 2, 7]
    with np.errstate(invalid="ignore", divide="ignore"):
        prev_l2 = np.sqrt(seg(pn * pn))
        update = np.where(prev_l2 > 0, np.sqrt(seg(dn * dn)) / prev_l2, np.nan)
        ratio = np.where(wn > 0, gn / wn, np.nan)
        denom = 2 * wn * pn
        cos = np.where(denom > 0, np.clip((wn * wn + pn * pn - dn * dn) / denom, -1.0, 1.0),
                       np.nan)
    layer = np.concatenate([stats.reshape(len(raw), 14), update[:, None]], axis=1)
    return layer.astype(np.float32), np.stack([wn, gn, ratio, cos], axis=1).astype(np.float32)
