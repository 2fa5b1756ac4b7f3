"""PCA the way Li et al. describe it: centre, covariance, SVD of the covariance, keep the largest
components, project. Runs in torch on the features' device."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError

__all__ = ["PCAResult", "pca"]


@dataclass
class PCAResult:
    """Result of :func:`pca` (all tensors on the features' device).

    Attributes:
        projections: ``[N, k]`` the centred features projected on the components.
        components: ``[k, D]`` unit-norm principal directions, largest variance first; the sign
            of each is fixed so that its largest-magnitude entry is positive.
        explained_variance: ``[k]`` variance along each component (eigenvalues of the
            covariance, ``N - 1`` normalisation).
        explained_variance_ratio: ``[k]`` share of the total variance.
        mean: ``[D]`` the feature mean subtracted before projecting.
        method: ``"covariance"``, ``"eigh"``, ``"gram"`` or ``"lowrank"``.
    """

    projections: torch.Tensor
    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor
    mean: torch.Tensor
    method: str

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        """Project new features ``[M, D]`` -> ``[M, k]`` with the same mean and components."""
        if features.dim() != 2 or features.shape[1] != self.components.shape[1]:
            raise InputError(
                f"features must be [M, {self.components.shape[1]}], got {list(features.shape)}."
            )
        f = features.to(self.components.dtype)
        return (f - self.mean) @ self.components.T


def check_features(features: torch.Tensor, k: int) -> torch.Tensor:
    """``features`` as a float ``[N, D]`` tensor with at least ``k`` rows and columns (an array
    is converted); raises :class:`InputError` otherwise."""
    if not isinstance(features, torch.Tensor):
        try:
            import numpy as np

            if isinstance(features, np.ndarray):
                features = torch.from_numpy(features)
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(features, torch.Tensor):
        raise InputError(
            f"features must be a tensor [N, D] (or a NumPy array), got {type(features).__name__}; "
            "convert with torch.as_tensor(features)."
        )
    if features.is_meta:
        raise InputError(
            "features are on the meta device (no values); pass real features, e.g. from "
            "cs.model.collect_features(model, loader)."
        )
    if features.is_complex() or features.dtype == torch.bool:
        raise InputError(
            f"features must be real numbers, got dtype {features.dtype}; convert with "
            "features.float()."
        )
    if features.dim() != 2:
        raise InputError(
            f"features must be 2-D [N, D], got shape {list(features.shape)}; flatten them with "
            "features.reshape(len(features), -1)."
        )
    n, d = features.shape
    if n < 2:
        raise InputError(f"PCA needs at least 2 samples, got {n}; pass more rows.")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(n, d):
        raise InputError(
            f"k must be an int in 1..{min(n, d)} (min of N={n}, D={d}), got {k!r}; pass k in "
            "that range."
        )
    if not torch.isfinite(features).all():
        raise InputError("features contain NaN or infinite values; drop or fix those rows first.")
    if not features.is_floating_point():
        features = features.float()
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    return features


def _fix_signs(components: torch.Tensor) -> torch.Tensor:
    idx = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(len(components)), idx])
    signs[signs == 0] = 1
    return components * signs[:, None]


def pca(features: torch.Tensor, k: int = 3, *, method: str = "auto") -> PCAResult:
    """Principal component analysis of ``features [N, D]``, keeping ``k`` components.

    ``method="covariance"`` is Li et al.'s recipe: ``X_c = X - mean``,
    ``C = X_cᵀ X_c / (N - 1)`` ``[D, D]``, ``U, S, Vᵀ = svd(C)``, components ``= U[:, :k]ᵀ``,
    projections ``= X_c U[:, :k]``, explained variance ``= S[:k]`` (ratio ``S[:k] / trace C``).
    ``"eigh"`` replaces that SVD with the symmetric eigendecomposition of ``C`` (the same
    factorisation for a covariance matrix, about 3x faster on the CPU). ``"gram"`` takes the SVD
    of the ``[N, N]`` Gram matrix instead (same result, cheaper when
    ``D > N``). ``"lowrank"`` uses ``torch.svd_lowrank`` on ``X_c`` (randomised, fastest for small
    ``k``, approximate directions); its explained variances are measured on its own
    projections (the variance of each projected column), so they are exact for the directions
    it returns. ``"auto"`` picks ``"gram"`` when ``D > N`` and ``D > 4096``, else
    ``"covariance"``.

    Returns:
        :class:`PCAResult` with ``projections [N, k]``, ``components [k, D]``,
        ``explained_variance_ratio [k]``, ``mean [D]`` on the features' device.
    """
    x = check_features(features, k)
    n, d = x.shape
    if method == "auto":
        method = "gram" if d > n and d > 4096 else "covariance"
    mean = x.mean(dim=0)
    xc = x - mean
    total = (xc * xc).sum() / (n - 1)  # trace of the covariance
    if method == "covariance":
        cov = xc.T @ xc / (n - 1)
        u, s, _ = torch.linalg.svd(cov)
        components = u[:, :k].T
        variance = s[:k]
    elif method == "eigh":
        cov = xc.T @ xc / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        components = evecs[:, -k:].flip(1).T
        variance = evals[-k:].flip(0).clamp_min(0)
    elif method == "gram":
        gram = xc @ xc.T / (n - 1)
        u, s, _ = torch.linalg.svd(gram)
        variance = s[:k]
        # right singular vectors of X_c: v_i = X_cᵀ u_i / sqrt((N - 1) s_i)
        components = (xc.T @ u[:, :k] / torch.sqrt(variance.clamp_min(1e-30) * (n - 1))).T
    elif method == "lowrank":
        q = min(max(2 * k, k + 10), n, d)
        _, _, v = torch.svd_lowrank(xc, q=q, niter=6)
        components = v[:, :k].T
        # The randomised singular values are those of the sketch Q^T X_c, which underestimate
        # the variance along the returned directions. Report the variance of the projections
        # themselves (what a user can check), and order the components by it.
        proj = xc @ components.T
        variance = (proj * proj).sum(dim=0) / (n - 1)
        order = torch.argsort(variance, descending=True)
        components, variance = components[order], variance[order]
    else:
        raise InputError(
            f"method must be 'auto', 'covariance', 'eigh', 'gram' or 'lowrank', got {method!r}; "
            "pass one of those."
        )
    components = _fix_signs(components)
    projections = xc @ components.T
    ratio = variance / total if total > 0 else torch.zeros_like(variance)
    return PCAResult(
        projections=projections,
        components=components,
        explained_variance=variance,
        explained_variance_ratio=ratio,
        mean=mean,
        method=method,
    )
