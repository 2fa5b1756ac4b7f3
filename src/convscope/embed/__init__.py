"""Embeddings of learned features: PCA via SVD of the covariance (Li et al.), and optional
t-SNE / UMAP. Features come from :func:`convscope.model.collect_features`. Representation
similarity between layers of two models: linear CKA (:mod:`.cka`; Kornblith et al. 2019)."""

from __future__ import annotations

from .cka import CKAResult, cka_matrix, linear_cka
from .manifold import MissingDependencyError, tsne, umap
from .pca import PCAResult, pca

__all__ = ["CKAResult", "MissingDependencyError", "PCAResult", "cka_matrix", "linear_cka", "pca",
           "tsne", "umap"]
