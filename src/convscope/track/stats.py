"""Weight and gradient statistics of a layer, computed with a few batched ops on its device.

Layer statistics (DeepTracker's layer view): min, max, mean, std, L1, L2 and the share of exact
zeros, of the weights and of the gradients, and the update ratio ||w_t - w_prev|| / ||w_prev||
against the previous recorded snapshot. Per filter (output channel): weight L2, gradient L2,
||g|| / ||w||, and the cosine similarity of the filter's weights to its previous snapshot.
"""

from __future__ import annotations

import torch

__all__ = ["STAT_NAMES", "LAYER_COLUMNS", "FILTER_COLUMNS", "tensor_stats", "layer_stats",
           "filter_stats"]

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
