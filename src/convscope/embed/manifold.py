"""Optional non-linear embeddings: t-SNE (scikit-learn) and UMAP (umap-learn)."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import MissingDependencyError
from .pca import check_features

__all__ = ["MissingDependencyError", "tsne", "umap"]


def _numpy(features: Any, k: int) -> tuple[Any, torch.device]:
    x = check_features(features, k)
    return x.detach().cpu().double().numpy(), x.device


def tsne(features: torch.Tensor, k: int = 2, *, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """t-SNE embedding ``[N, k]`` of ``features [N, D]`` with ``sklearn.manifold.TSNE``
    (extra keyword arguments go to it, e.g. ``perplexity=30``). Returned on the features'
    device. Needs scikit-learn (``pip install scikit-learn`` or ``convscope[embed]``)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise MissingDependencyError(
            "cs.embed.tsne needs scikit-learn: install it with `pip install scikit-learn` "
            "(or `pip install convscope[embed]`)."
        ) from None
    x, device = _numpy(features, k)
    kwargs.setdefault("perplexity", min(30.0, max(1.0, (len(x) - 1) / 3)))
    kwargs.setdefault("init", "pca")
    out = TSNE(n_components=k, random_state=seed, **kwargs).fit_transform(x)
    return torch.as_tensor(out, dtype=torch.float32, device=device)


def umap(features: torch.Tensor, k: int = 2, *, seed: int = 0, **kwargs: Any) -> torch.Tensor:
    """UMAP embedding ``[N, k]`` of ``features [N, D]`` with ``umap-learn``; returned on the
    features' device. Needs umap-learn (``pip install umap-learn``)."""
    try:
        import umap as umap_lib
    except ImportError:
        raise MissingDependencyError(
            "cs.embed.umap needs the umap-learn package: install it with `pip install umap-learn`, "
            "or use cs.embed.pca / cs.embed.tsne instead."
        ) from None
    x, device = _numpy(features, k)
    out = umap_lib.UMAP(n_components=k, random_state=seed, **kwargs).fit_transform(x)
    return torch.as_tensor(out, dtype=torch.float32, device=device)
