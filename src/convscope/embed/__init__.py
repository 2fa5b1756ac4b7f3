"""Embeddings of learned features: PCA via SVD of the covariance (Li et al.), and optional
t-SNE / UMAP. Features come from :func:`convscope.model.collect_features`."""

from __future__ import annotations

from .manifold import MissingDependencyError, tsne, umap
from .pca import PCAResult, pca

__all__ = ["MissingDependencyError", "PCAResult", "pca", "tsne", "umap"]
