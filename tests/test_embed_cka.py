"""Linear CKA (Kornblith et al. 2019) and its minibatch estimate over models (Nguyen et al.
2021).

Oracles: a hand-computed case; CKA(X, X) = 1; invariance to orthogonal transforms and isotropic
scaling (and no invariance to a general linear map); the unbiased HSIC against its U-statistic
definition summed over every 4-tuple of distinct examples; the model matrix against CKA of the
flattened activations computed directly; a sharded run against one process.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from convscope.embed import cka
from convscope.errors import InputError
from convscope.nn import run_split


def test_hand_computed_case():
    """X: four points on the axes (centred, X'X = 2I); Y: their first coordinate only.
    Y'X = [2, 0], ||Y'X||^2 = 4, ||X'X||_F = 2 sqrt 2, ||Y'Y||_F = 2: CKA = 1 / sqrt 2."""
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = x[:, :1]
    assert cka.linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    # more features than examples takes the Gram-space path: zero columns change nothing
    wide = torch.cat([x, torch.zeros(4, 10)], dim=1)
    assert cka.linear_cka(wide, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert cka.linear_cka(x, torch.ones(4, 3)) == 0.0  # a constant representation


@pytest.mark.parametrize("unbiased", [False, True])
def test_identity_and_invariances(unbiased):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64)
    z = torch.randn(40, 7, generator=g, dtype=torch.float64) + x[:, :7]
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    assert cka.linear_cka(x, x, unbiased=unbiased) == pytest.approx(1.0, abs=1e-12)
    assert cka.linear_cka(x, 3.7 * x @ q, unbiased=unbiased) == pytest.approx(1.0, abs=1e-10)
    base = cka.linear_cka(x, z, unbiased=unbiased)
    assert 0.05 < base < 0.95
    assert cka.linear_cka(0.2 * x @ q, z, unbiased=unbiased) == pytest.approx(base, abs=1e-10)
    # not invariant to an invertible but non-orthogonal map: one feature stretched 50 times
    stretch = torch.ones(12, dtype=torch.float64)
    stretch[0] = 50.0
    assert abs(cka.linear_cka(x * stretch, z, unbiased=unbiased) - base) > 0.05


def _hsic_u_statistic(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Song et al. 2012, the U-statistic: the mean over ordered 4-tuples of distinct indices of
    the symmetrised kernel k_tu l_tu + k_tu l_vw - 2 k_tu l_tv."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        h = 0.0
        for t, u, v, w in itertools.permutations((i, j, q, r)):
            h += float(k[t, u] * l[t, u] + k[t, u] * l[v, w] - 2 * k[t, u] * l[t, v])
        total += h / 24
        count += 1
    return total / count


def test_unbiased_hsic_is_the_u_statistic():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 3, generator=g, dtype=torch.float64)
    b = torch.randn(6, 5, generator=g, dtype=torch.float64) + a[:, :1]
    k, l = a @ a.T, b @ b.T  # noqa: E741
    assert float(cka.hsic_unbiased(k, l)) == pytest.approx(_hsic_u_statistic(k, l), rel=1e-9)
    with pytest.raises(InputError, match="at least 4"):
        cka.hsic_unbiased(k[:3, :3], l[:3, :3])


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 5)).eval()


def _features(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's output computed by calling the modules one after another."""
    out, h = {}, x
    for name, m in model.named_children():
        h = m(h)
        out[name] = h.reshape(h.shape[0], -1)
    return out


def test_model_matrix_equals_cka_of_the_activations():
    a, b = _net(0), _net(1)
    x = torch.rand(12, 3, 8, 8)
    res = cka.cka_matrix(a, b, x, batch_size=12, quiet=True)  # one batch: exactly unbiased CKA
    assert res.layers_a == res.layers_b == ["0", "2", "5"]  # Conv2d, Conv2d, Linear
    fa, fb = _features(a, x), _features(b, x)
    with torch.no_grad():
        want = torch.tensor([[cka.linear_cka(fa[i], fb[j], unbiased=True) for j in res.layers_b]
                             for i in res.layers_a], dtype=torch.float64)
    torch.testing.assert_close(res.matrix, want, rtol=1e-9, atol=1e-12)
    assert res.n_images == 12 and not res.same_model


def test_same_model_has_a_unit_diagonal_and_is_symmetric():
    a = _net(2)
    x = torch.rand(20, 3, 8, 8)
    res = cka.cka_matrix(a, None, x, batch_size=8, quiet=True)  # 8 + 8 + a 4-image batch
    assert res.same_model and res.n_images == 20
    torch.testing.assert_close(res.matrix.diagonal(), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(res.matrix, res.matrix.T)
    assert [m[0] for m in res.best_match()] == ["0", "2", "5"]


def test_minibatch_sums_merge_exactly_and_short_batches_are_left_out():
    a, b = _net(3), _net(4)
    x = torch.rand(22, 3, 8, 8)  # batches of 6: 6, 6, 6 and a last batch of 4
    p = cka.CKAPass(a, b, x, batch_size=6, quiet=True)
    one = cka.cka_matrix(a, b, x, batch_size=6, quiet=True)
    split = run_split(p, 3)
    torch.testing.assert_close(split.matrix, one.matrix, rtol=1e-12, atol=1e-12)
    short = cka.cka_matrix(a, b, x[:15], batch_size=6, quiet=True)  # 6, 6 and 3 (left out)
    assert short.n_images == 12
    torch.testing.assert_close(short.matrix,
                               cka.cka_matrix(a, b, x[:12], batch_size=6, quiet=True).matrix)


def test_bad_input():
    a = _net(0)
    with pytest.raises(InputError, match="at least 4"):
        cka.cka_matrix(a, None, torch.rand(8, 3, 8, 8), batch_size=2)
    with pytest.raises(InputError, match="same examples"):
        cka.linear_cka(torch.rand(5, 2), torch.rand(6, 2))
    with pytest.raises(InputError, match="none"):
        cka.cka_matrix(a, None, torch.rand(3, 3, 8, 8), batch_size=8, quiet=True)


def test_default_layers_skip_what_attention_only_holds():
    """A MultiheadAttention's out_proj is never called as a module: the defaults leave it out,
    so a transformer block runs with the default layers (CKA of a model with itself: ones)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.inp(x.flatten(2).transpose(1, 2))  # [B, tokens, 8]
            return self.out(self.attn(h, h, h, need_weights=False)[0].mean(1))

    m = Block().eval()
    assert cka.default_cka_layers(m) == ["inp", "out"]
    res = cka.cka_matrix(m, None, torch.rand(8, 6, 2, 2), batch_size=8, quiet=True)
    torch.testing.assert_close(res.matrix.diagonal(), torch.ones(2, dtype=torch.float64))
