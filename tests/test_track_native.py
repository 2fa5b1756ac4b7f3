"""The watcher's fused CPU pass (convscope.track.native) against float64 numpy and against the
torch-ops path it replaces."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.track import native
from convscope.track.stats import FusedRows, LayerRecorder, finish_stats, fused_raw_rows


def _np_stats(a: np.ndarray) -> list[float]:
    a = a.astype(np.float64).ravel()
    return [a.min(), a.max(), a.mean(), a.std(), np.abs(a).sum(), np.sqrt((a * a).sum()),
            (a == 0).mean()]


def _brute_rows(w: np.ndarray, g: np.ndarray | None, s: np.ndarray) -> np.ndarray:
    """The 13 per-filter columns in float64, filters along dim 0 of the logical shape."""
    f = w.shape[0]
    x = w.reshape(f, -1).astype(np.float64)
    p = s.reshape(f, -1).astype(np.float64)
    cols = [x.min(1), x.max(1), x.sum(1), (x * x).sum(1), np.abs(x).sum(1), (x != 0).sum(1)]
    if g is not None:
        y = g.reshape(f, -1).astype(np.float64)
        cols += [y.min(1), y.max(1), y.sum(1), (y * y).sum(1), np.abs(y).sum(1), (y != 0).sum(1)]
    else:
        cols += [np.full(f, np.nan)] * 6
    cols.append(((p - x) ** 2).sum(1))
    return np.stack(cols, axis=1)


def test_compiled_where_a_compiler_is():
    # the fused pass is on exactly when the machine has a C compiler (CI and this machine do)
    has_cc = shutil.which("cc") is not None or shutil.which("gcc") is not None
    assert native.available() is has_cc


needs_native = pytest.mark.skipif(not native.available(), reason="no C compiler")


@needs_native
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "linear"])
@pytest.mark.parametrize("with_grad", [True, False])
def test_row_stats_match_float64(layout, with_grad):
    gen = torch.Generator().manual_seed(3)
    shape = (7, 5) if layout == "linear" else (6, 4, 3, 3)
    w = torch.randn(*shape, generator=gen)
    w[1] = 0.0  # a dead filter: zeros counted, min = max = 0
    w.view(-1)[:5] = 0.0
    g = torch.randn(*shape, generator=gen) * 1e-3 if with_grad else None
    s = w + 1e-2 * torch.randn(*shape, generator=gen)
    if layout == "channels_last":
        w, s = (t.contiguous(memory_format=torch.channels_last) for t in (w, s))
        g = g.contiguous(memory_format=torch.channels_last) if g is not None else None
    want = _brute_rows(w.numpy(), None if g is None else g.numpy(), s.numpy())
    assert native.rows_layout_ok(w)
    out, tot = np.empty((shape[0], 13)), np.empty(4)
    snap = s.clone(memory_format=torch.preserve_format)
    native.row_stats(w, g, snap, out, tot)
    cols = slice(None) if with_grad else [0, 1, 2, 3, 4, 5, 12]
    np.testing.assert_allclose(out[:, cols], want[:, cols], rtol=1e-5, atol=1e-7)
    assert torch.equal(snap, w)  # the snapshot now holds w
    np.testing.assert_allclose(tot[:2], [want[:, 2].sum(), want[:, 3].sum()], rtol=1e-5,
                               atol=1e-7)


def test_layout_refusals():
    assert not native.rows_layout_ok(torch.zeros(4, 3, dtype=torch.float64))
    assert not native.rows_layout_ok(torch.zeros(4, 3, dtype=torch.float16))
    assert not native.rows_layout_ok(torch.zeros(6, 4).t())  # filters not in memory blocks
    assert not native.rows_layout_ok(torch.zeros(0, 3))
    assert native.rows_layout_ok(torch.zeros(4, 3))


@needs_native
def test_loading_does_not_flush_denormals():
    # a -ffast-math shared library may set flush-to-zero for the whole process at load time
    native.available()
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.0).item() != 0.0
    assert np.float32(1e-40) * np.float32(1.0) != 0.0


@needs_native
def test_fused_recorder_equals_torch_recorder_over_steps():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 3, 3, 3, generator=gen)
    fused, plain = LayerRecorder(), LayerRecorder()
    prev = None
    for step in range(3):
        g = torch.randn(8, 3, 3, 3, generator=gen) * 1e-3
        if step == 1:
            g[2] = 0.0  # a filter without gradient: zeros counted
        r = fused.fused(w, g)
        assert isinstance(r, FusedRows)
        raw_f, rows_f, exact_f = fused_raw_rows([r])
        raw_p, rows_p, exact_p = plain(w, g)
        n = np.array([8]), np.array([w.numel()])
        lay_f, fil_f = finish_stats(raw_f, rows_f, exact_f, *n)
        lay_p, fil_p = finish_stats(raw_p.numpy()[None], rows_p.numpy(), np.array([exact_p]), *n)
        np.testing.assert_allclose(lay_f, lay_p, rtol=2e-5, atol=1e-7, equal_nan=True)
        np.testing.assert_allclose(fil_f, fil_p, rtol=2e-5, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(lay_f[0, :7], _np_stats(w.numpy()), rtol=1e-5, atol=1e-8)
        if prev is not None:  # update ratio and cosine against the brute-force values
            d = np.linalg.norm(w.numpy() - prev) / np.linalg.norm(prev)
            np.testing.assert_allclose(lay_f[0, 14], d, rtol=1e-3)
            a, b = w.numpy().reshape(8, -1), prev.reshape(8, -1)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            np.testing.assert_allclose(fil_f[:, 3], cos, atol=1e-6)
        else:
            assert np.isnan(lay_f[0, 14]) and np.isnan(fil_f[:, 3]).all()
        prev = w.numpy().copy()
        w = w - 0.05 * g * 100  # an update


@needs_native
def test_nan_weights_fall_back_to_torch_min_max():
    w = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 2.0]])
    r = LayerRecorder().fused(w, None)
    raw, _, _ = fused_raw_rows([r])
    assert r.raw_fix[0] is not None
    assert np.isnan(raw[0, 0]) and np.isnan(raw[0, 1])  # min / max NaN, as torch.aminmax
    assert raw[0, 4] == 3.0  # non-zeros: NaN, 1, 2 (as count_nonzero)


@needs_native
def test_offset_weights_use_the_two_pass_variance():
    # a scale near 1 with a tiny spread: E[x²] - mean² would cancel in float32
    gen = torch.Generator().manual_seed(1)
    w = 1.0 + 1e-4 * torch.randn(16, 64, generator=gen)
    r = LayerRecorder().fused(w, None)
    raw, rows, exact = fused_raw_rows([r])
    lay, _ = finish_stats(raw, rows, exact, np.array([16]), np.array([w.numel()]))
    np.testing.assert_allclose(lay[0, 3], w.double().std(unbiased=False).item(), rtol=1e-3)


class Mixed(nn.Module):
    """A conv (fused) and a linear layer whose weight is stored transposed (torch path)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)
        self.fc.weight = nn.Parameter(self.fc.weight.detach().t().contiguous().t())

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("fused", [True, False])
def test_watch_every_step_matches_brute_force(tmp_path, fused):
    if fused and not native.available():
        pytest.skip("no C compiler")
    torch.manual_seed(0)
    model = Mixed()
    assert not native.rows_layout_ok(model.fc.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    seen: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    with cs.Run(tmp_path, "m") as run:
        watcher = run.watch(model, every=1, fused=fused, background=False)
        assert watcher.fused is fused
        for step in range(1, 6):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(6, 3, 5, 5)),
                                        torch.randint(0, 4, (6,))).backward()
            for n in ("conv", "fc"):
                m = getattr(model, n)
                seen[step, n] = (m.weight.detach().numpy().copy(), m.weight.grad.numpy().copy())
            opt.step()
    r = cs.open_run(tmp_path / "m")
    lay = r.table("watch_layers")
    fil = r.table("watch_filters")
    assert len(lay) == 10
    for _, row in lay.iterrows():
        step, name = int(row["step"]), row["layer"]
        w, g = seen[step, name]
        np.testing.assert_allclose(row[["w_min", "w_max", "w_mean", "w_std", "w_l1", "w_l2",
                                        "w_zeros"]].to_numpy(float), _np_stats(w), rtol=1e-4,
                                   atol=1e-6 * float(np.abs(w).mean()))
        np.testing.assert_allclose(row[["g_min", "g_max", "g_mean", "g_std", "g_l1", "g_l2",
                                        "g_zeros"]].to_numpy(float), _np_stats(g), rtol=1e-4,
                                   atol=1e-6 * float(np.abs(g).mean()))
        if step > 1:
            pw = seen[step - 1, name][0]
            np.testing.assert_allclose(row["update_ratio"],
                                       np.linalg.norm(w - pw) / np.linalg.norm(pw), rtol=1e-3)
            f = fil[(fil["step"] == step) & (fil["layer"] == name)].sort_values("filter")
            a, b = w.reshape(len(w), -1), pw.reshape(len(w), -1)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            np.testing.assert_allclose(f["cos_prev"].to_numpy(), cos, atol=1e-5)
            np.testing.assert_allclose(f["g_l2"].to_numpy(),
                                       np.linalg.norm(g.reshape(len(g), -1), axis=1), rtol=1e-4)
        else:
            assert np.isnan(row["update_ratio"])


def test_fused_argument_is_checked(tmp_path, monkeypatch):
    with cs.Run(tmp_path, "a") as run:
        with pytest.raises(cs.errors.InputError, match="fused must be"):
            run.watch(Mixed(), fused="yes")
    monkeypatch.setitem(native._state, "fn", None)  # as on a machine without a compiler
    with cs.Run(tmp_path, "b") as run:
        with pytest.raises(cs.errors.InputError, match="C compiler"):
            run.watch(Mixed(), fused=True)
        assert run.watch(Mixed()).fused is False  # the default falls back to torch ops
