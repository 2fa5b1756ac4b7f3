"""cs.embed: PCA against scikit-learn and by its algebraic properties; t-SNE / UMAP wrappers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

import convscope as cs
from convscope.embed import MissingDependencyError
from convscope.errors import ConvscopeError, InputError


def correlated(n: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = 3.0 * 0.85 ** torch.arange(d, dtype=torch.float64)  # decaying, distinct variances
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * scales
    return (x @ basis.T + 5.0).to(dtype)


@pytest.mark.parametrize("method", ["covariance", "eigh", "gram", "lowrank"])
@pytest.mark.parametrize("shape", [(400, 30), (60, 200)])
def test_pca_matches_scikit_learn(method: str, shape: tuple[int, int]) -> None:
    x = correlated(*shape)
    res = cs.embed.pca(x, k=3, method=method)
    ref = PCA(n_components=3, svd_solver="full").fit(x.double().numpy())
    proj_ref = ref.transform(x.double().numpy())
    assert res.projections.shape == (shape[0], 3)
    assert res.components.shape == (3, shape[1])
    assert res.mean.shape == (shape[1],)
    for i in range(3):
        corr = np.corrcoef(res.projections[:, i].double().numpy(), proj_ref[:, i])[0, 1]
        assert abs(corr) >= 0.999, (i, corr)
        comp = abs(float(res.components[i].double() @ torch.from_numpy(ref.components_[i])))
        assert comp >= 0.999
    np.testing.assert_allclose(
        res.explained_variance_ratio.double().numpy(), ref.explained_variance_ratio_, atol=1e-4
    )
    np.testing.assert_allclose(
        res.explained_variance.double().numpy(), ref.explained_variance_, rtol=1e-3
    )
    np.testing.assert_allclose(res.mean.double().numpy(), ref.mean_, atol=1e-4)


def test_pca_algebra() -> None:
    x = correlated(300, 20, seed=3, dtype=torch.float64)
    res = cs.embed.pca(x, k=5)
    assert res.method == "covariance"
    # orthonormal components, projections are the centred data on them
    torch.testing.assert_close(res.components @ res.components.T, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(res.projections, (x - x.mean(0)) @ res.components.T)
    # variance of each projection is its eigenvalue; projections are uncorrelated
    cov = torch.cov(res.projections.T)
    torch.testing.assert_close(torch.diag(cov), res.explained_variance)
    torch.testing.assert_close(cov - torch.diag(torch.diag(cov)), torch.zeros(5, 5, dtype=torch.float64))
    assert (res.explained_variance[:-1] >= res.explained_variance[1:]).all()
    # sign convention: the largest-magnitude entry of each component is positive
    idx = res.components.abs().argmax(1)
    assert (res.components[torch.arange(5), idx] > 0).all()
    # all components: the ratios sum to 1
    full = cs.embed.pca(x, k=20)
    assert abs(float(full.explained_variance_ratio.sum()) - 1.0) < 1e-9
    # transform of the training data reproduces the projections
    torch.testing.assert_close(res.transform(x), res.projections)
    # a rank-1 cloud: one component explains everything
    line = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None] * torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64)
    r1 = cs.embed.pca(line, k=1)
    assert abs(float(r1.explained_variance_ratio[0]) - 1.0) < 1e-9
    torch.testing.assert_close(r1.components[0], torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3)


def test_pca_accepts_numpy_and_keeps_dtype() -> None:
    x = correlated(100, 8).numpy()
    res = cs.embed.pca(x, k=2)
    assert isinstance(res.projections, torch.Tensor) and res.projections.dtype == torch.float32
    assert cs.embed.pca(torch.from_numpy(x).double(), k=2).projections.dtype == torch.float64


def test_pca_bad_input() -> None:
    with pytest.raises(InputError, match="2-D"):
        cs.embed.pca(torch.randn(10), k=1)
    with pytest.raises(InputError, match="k must be"):
        cs.embed.pca(torch.randn(10, 4), k=5)
    with pytest.raises(InputError, match="NaN"):
        cs.embed.pca(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), k=1)
    with pytest.raises(InputError, match="at least 2"):
        cs.embed.pca(torch.randn(1, 4), k=1)
    with pytest.raises(InputError, match="method"):
        cs.embed.pca(torch.randn(10, 4), k=1, method="magic")
    with pytest.raises(InputError, match="tensor"):
        cs.embed.pca([[1, 2], [3, 4]], k=1)


def test_tsne_separates_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 10, generator=g)
    b = torch.randn(30, 10, generator=g) + 12.0
    x = torch.cat([a, b])
    emb = cs.embed.tsne(x, k=2, seed=0)
    assert emb.shape == (60, 2) and emb.dtype == torch.float32
    # every point's nearest neighbour in the embedding comes from its own cluster
    dist = torch.cdist(emb, emb) + torch.eye(60) * 1e9
    nn_idx = dist.argmin(1)
    labels = torch.arange(60) >= 30
    assert (labels[nn_idx] == labels).all()
    torch.testing.assert_close(cs.embed.tsne(x, k=2, seed=0), emb)  # seeded: reproducible


def test_missing_packages_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` fail
    with pytest.raises(MissingDependencyError, match="pip install umap-learn"):
        cs.embed.umap(torch.randn(20, 4))
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(ConvscopeError, match="scikit-learn"):
        cs.embed.tsne(torch.randn(20, 4))
