"""run.watch / log_validation and the training-dynamics queries, against brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import convscope as cs
from convscope.errors import InputError, InvalidValueError, LayerNotFoundError
from convscope.track import stats as stats_mod
from convscope.track.stats import (
    LayerRecorder,
    filter_stats,
    finish_stats,
    layer_stats,
    tensor_stats,
)


def _np_stats(a: np.ndarray) -> list[float]:
    a = a.astype(np.float64).ravel()
    return [a.min(), a.max(), a.mean(), a.std(), np.abs(a).sum(), np.sqrt((a * a).sum()),
            (a == 0).mean()]


def test_tensor_and_layer_stats_match_numpy():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, 3, 3, generator=g)
    w[0, 0] = 0.0  # some exact zeros
    grad = torch.randn(6, 3, 3, 3, generator=g) * 1e-3
    prev = w + 0.01 * torch.randn(6, 3, 3, 3, generator=g)
    np.testing.assert_allclose(tensor_stats(w).numpy(), _np_stats(w.numpy()), rtol=1e-5)
    ls = layer_stats(w, grad, prev).numpy()
    np.testing.assert_allclose(ls[:7], _np_stats(w.numpy()), rtol=1e-5)
    np.testing.assert_allclose(ls[7:14], _np_stats(grad.numpy()), rtol=1e-5)
    ratio = np.linalg.norm(w.numpy() - prev.numpy()) / np.linalg.norm(prev.numpy())
    np.testing.assert_allclose(ls[14], ratio, rtol=1e-5)
    assert np.isnan(layer_stats(w, None, None).numpy()[7:]).all()


def test_std_stays_exact_when_the_mean_dominates():
    """Batch-norm scales sit near 1 with a tiny spread: E[x²] - mean² would cancel."""
    g = torch.Generator().manual_seed(2)
    w = 1.0 + 1e-3 * torch.randn(4096, generator=g)
    np.testing.assert_allclose(tensor_stats(w).numpy()[3], w.numpy().astype(np.float64).std(),
                               rtol=1e-4)


def test_filter_stats_match_a_manual_computation():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 2, 3, 3, generator=g)
    grad = torch.randn(4, 2, 3, 3, generator=g)
    prev = torch.randn(4, 2, 3, 3, generator=g)
    prev[2] = 0.0  # cosine undefined for filter 2
    fs = filter_stats(w, grad, prev).numpy()
    for f in range(4):
        a, b, c = w[f].numpy().ravel(), grad[f].numpy().ravel(), prev[f].numpy().ravel()
        np.testing.assert_allclose(fs[f, 0], np.linalg.norm(a), rtol=1e-5)
        np.testing.assert_allclose(fs[f, 1], np.linalg.norm(b), rtol=1e-5)
        np.testing.assert_allclose(fs[f, 2], np.linalg.norm(b) / np.linalg.norm(a), rtol=1e-5)
        if f == 2:
            assert np.isnan(fs[f, 3])
        else:
            cos = a @ c / (np.linalg.norm(a) * np.linalg.norm(c))
            np.testing.assert_allclose(fs[f, 3], cos, rtol=1e-5, atol=1e-7)


def _brute_layer(w, g, p):
    """numpy float64 reference: the 15 layer columns and the [F, 4] filter columns."""
    w64 = w.astype(np.float64)
    row = _np_stats(w64) + (_np_stats(g) if g is not None else [np.nan] * 7)
    wf = w64.reshape(len(w64), -1)
    wn = np.linalg.norm(wf, axis=1)
    gn = (np.linalg.norm(g.astype(np.float64).reshape(len(g), -1), axis=1) if g is not None
          else np.full(len(wf), np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(wn > 0, gn / wn, np.nan)
        if p is None:
            row.append(np.nan)
            cos = np.full(len(wf), np.nan)
        else:
            pf = p.astype(np.float64).reshape(len(p), -1)
            pn = np.linalg.norm(pf, axis=1)
            row.append(np.linalg.norm(wf - pf) / np.linalg.norm(pf))
            cos = np.where(wn * pn > 0, (wf * pf).sum(1) / (wn * pn), np.nan)
    return np.array(row), np.stack([wn, gn, ratio, cos], axis=1)


def _fused(recorders, tensors, scratch=None):
    outs = [recorders[i](w, g, scratch) for i, (w, g) in enumerate(tensors)]
    raw = torch.stack([o[0] if len(o[0]) == 10 else torch.cat([o[0], torch.full((5,), np.nan)])
                       for o in outs])
    return finish_stats(raw.numpy(), torch.cat([o[1] for o in outs], dim=1).numpy(),
                        np.array([o[2] for o in outs]),
                        np.array([w.shape[0] for w, _ in tensors]),
                        np.array([w.numel() for w, _ in tensors]))


@pytest.mark.parametrize("small_exact_count", [False, True])
def test_fused_recorder_matches_brute_force_over_steps(monkeypatch, small_exact_count):
    """LayerRecorder + finish_stats (the watcher's fused path) against numpy float64 over
    several snapshots: a conv weight, a linear weight, a depthwise and a grouped conv weight,
    exact zeros (a whole zero filter: cosine and ratio undefined), a layer without gradient,
    a batch-norm-like weight (mean >> spread: exact variance) and a shared scratch buffer."""
    if small_exact_count:  # exercise the count_nonzero branch for "large" tensors
        monkeypatch.setattr(stats_mod, "_EXACT_COUNT", 8)
    g = torch.Generator().manual_seed(5)
    shapes = [(6, 3, 3, 3), (5, 12), (8, 1, 3, 3), (6, 2, 1, 1), (4, 7), (3, 40)]
    weights = [torch.randn(s, generator=g) for s in shapes]
    weights[0][1] = 0.0  # a dead filter
    weights[0][2, 0, 0, :2] = 0.0
    weights[5] = 1.0 + 1e-3 * torch.randn(shapes[5], generator=g)  # mean dominates
    recorders = [LayerRecorder() for _ in shapes]
    scratch = torch.empty(max(w.numel() for w in weights))
    prev = [None] * len(shapes)
    for t in range(4):
        grads = [1e-2 * torch.randn(s, generator=g) for s in shapes]
        grads[1][0] = 0.0
        grads[4] = None  # no gradient for this layer
        tensors = list(zip(weights, grads, strict=True))
        rows, filt = _fused(recorders, tensors, scratch if t % 2 else None)
        start = 0
        for i, (w, gr) in enumerate(tensors):
            exp_row, exp_f = _brute_layer(w.numpy(), None if gr is None else gr.numpy(),
                                          prev[i])
            np.testing.assert_allclose(rows[i], exp_row, rtol=2e-5, atol=1e-7,
                                       err_msg=f"layer {i} step {t}")
            got_f = filt[start:start + len(w)]
            np.testing.assert_allclose(got_f[:, :3], exp_f[:, :3], rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(got_f[:, 3], exp_f[:, 3], rtol=0, atol=2e-6)
            start += len(w)
        prev = [w.numpy().copy() for w in weights]
        for i, w in enumerate(weights):  # an optimiser-like update (filter 1 stays zero)
            weights[i] = w + 0.05 * torch.randn(w.shape, generator=g) * (w != 0)
    assert np.isnan(filt[1, 3]) and np.isnan(filt[1, 2])  # the zero filter


def test_fused_cosine_is_accurate_for_tiny_updates():
    """cos from ‖w‖² + ‖p‖² - ‖Δ‖² (Δ formed directly) against float64, with updates of 1e-4
    relative size (the every=1 regime) and the update ratio to float32 rounding."""
    g = torch.Generator().manual_seed(7)
    p = torch.randn(64, 576, generator=g)
    w = p + 1e-4 * torch.randn(64, 576, generator=g)
    rec = LayerRecorder()
    rec(p, None)
    raw, rows, exact = rec(w, None)
    _, filt = finish_stats(torch.cat([raw, torch.full((5,), np.nan)]).numpy()[None],
                           rows.numpy(), np.array([exact]), np.array([64]), np.array([w.numel()]))
    exp_row, exp_f = _brute_layer(w.numpy(), None, p.numpy())
    np.testing.assert_allclose(filt[:, 3], exp_f[:, 3], atol=1e-6, rtol=0)
    lay, _ = finish_stats(torch.cat([raw, torch.full((5,), np.nan)]).numpy()[None],
                          rows.numpy(), np.array([exact]), np.array([64]),
                          np.array([w.numel()]))
    np.testing.assert_allclose(lay[0, 14], exp_row[14], rtol=1e-3)  # ratio ~1e-4
    assert (rec.snap.numpy() == w.numpy()).all()  # the snapshot buffer now holds w


def test_fused_recorder_counts_nan_values_as_nonzero():
    w = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 0.0, 2.0]])
    raw, _, _ = LayerRecorder()(w, None)
    assert raw[4].item() == 3.0  # non-zeros: NaN, 1, 2 (as count_nonzero)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("background", [False, True])
def test_watch_records_every_kth_step_with_exact_values(tmp_path, background):
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    snapshots: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    with cs.Run(tmp_path, "w") as run:
        watcher = run.watch(model, every=3, background=background)
        assert watcher.background is background
        for step in range(1, 10):
            x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            snapshots[step] = {n: (m.weight.detach().clone().numpy(),
                                   m.weight.grad.clone().numpy())
                               for n, m in (("conv", model.conv), ("fc", model.fc))}
            opt.step()
        with torch.no_grad():  # eval passes are not training steps
            model.eval()
            model(torch.randn(2, 3, 6, 6))
            model.train()
    reader = cs.open_run(tmp_path / "w")
    layers = reader.table("watch_layers").sort_values(["layer", "step"])
    assert sorted(layers["step"].unique().tolist()) == [3, 6, 9]
    assert set(layers["layer"]) == {"conv", "fc"}
    for _, row in layers.iterrows():
        w, g = snapshots[row["step"]][row["layer"]]
        np.testing.assert_allclose(row[["w_min", "w_max", "w_mean", "w_std", "w_l1", "w_l2",
                                        "w_zeros"]].to_numpy(float), _np_stats(w), rtol=1e-4)
        # atol: float32 rounding of a mean that is 0 in exact arithmetic (softmax gradients of
        # an fc layer sum to 0), relative to the values' scale
        np.testing.assert_allclose(row[["g_min", "g_max", "g_mean", "g_std", "g_l1", "g_l2",
                                        "g_zeros"]].to_numpy(float), _np_stats(g), rtol=1e-4,
                                   atol=1e-6 * float(np.abs(g).mean()))
        if row["step"] > 3:
            pw = snapshots[row["step"] - 3][row["layer"]][0]
            np.testing.assert_allclose(row["update_ratio"],
                                       np.linalg.norm(w - pw) / np.linalg.norm(pw), rtol=1e-4)
        else:
            assert np.isnan(row["update_ratio"])
    filt = reader.table("watch_filters")
    conv6 = filt[(filt.layer == "conv") & (filt.step == 6)].sort_values("filter")
    w6, w3 = snapshots[6]["conv"][0].reshape(4, -1), snapshots[3]["conv"][0].reshape(4, -1)
    cos = (w6 * w3).sum(1) / (np.linalg.norm(w6, axis=1) * np.linalg.norm(w3, axis=1))
    np.testing.assert_allclose(conv6["cos_prev"].to_numpy(), cos, rtol=1e-5)
    assert len(filt[(filt.layer == "fc")]) == 3 * 3  # 3 output features x 3 recorded steps
    # hooks are gone after close
    assert not model._forward_pre_hooks
    assert not model.conv.weight._post_accumulate_grad_hooks


class Grouped(nn.Module):
    """A conv with bias, a depthwise and a grouped conv, a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.grp = nn.Conv2d(8, 6, 1, groups=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.grp(torch.relu(self.dw(torch.relu(self.conv(x))))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("background", [False, True])
def test_watch_every_step_with_in_place_zero_grad(tmp_path, background):
    """every=1 with gradients zeroed in place (set_to_none=False) and momentum: the worker
    must see each step's weight before the update and its gradient before the zeroing."""
    torch.manual_seed(1)
    model = Grouped()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = ["conv", "dw", "grp", "fc"]
    snaps: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    with cs.Run(tmp_path, "g") as run:
        run.watch(model, every=1, background=background)
        for step in range(1, 6):
            opt.zero_grad(set_to_none=False)
            loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 5, 5)),
                                               torch.randint(0, 3, (4,)))
            loss.backward()
            snaps[step] = {n: (getattr(model, n).weight.detach().numpy().copy(),
                               getattr(model, n).weight.grad.numpy().copy()) for n in names}
            opt.step()
    reader = cs.open_run(tmp_path / "g")
    lay = reader.table("watch_layers")
    filt = reader.table("watch_filters")
    assert len(lay) == 5 * 4
    for _, row in lay.iterrows():
        s, n = int(row["step"]), row["layer"]
        w, g = snaps[s][n]
        exp_row, exp_f = _brute_layer(w, g, snaps[s - 1][n][0] if s > 1 else None)
        np.testing.assert_allclose(row[list(cs.track.columns.LAYER_COLUMNS)].to_numpy(float),
                                   exp_row, rtol=2e-5, atol=1e-8, err_msg=f"{n} step {s}")
        got = filt[(filt.layer == n) & (filt.step == s)].sort_values("filter")
        np.testing.assert_allclose(got[["w_l2", "g_l2", "ratio"]].to_numpy(float),
                                   exp_f[:, :3], rtol=2e-5, atol=1e-8)
        np.testing.assert_allclose(got["cos_prev"].to_numpy(float), exp_f[:, 3], atol=2e-6,
                                   rtol=0)


def test_background_gradients_changed_in_place_are_never_reported_wrong(tmp_path):
    """Gradients replaced each step (set_to_none) but clipped in place right after backward,
    while the worker may be reading them by reference: a record's gradient statistics are
    the pre-clip values or NaN, never a mix; after the first in-place change is caught they
    are copied (exact) for good."""
    torch.manual_seed(2)
    model = Grouped()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pre: dict[int, dict[str, np.ndarray]] = {}
    with cs.Run(tmp_path, "clip") as run:
        watcher = run.watch(model, every=1, background=True)
        for step in range(1, 9):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(4, 3, 5, 5)),
                                        torch.randint(0, 3, (4,))).backward()
            pre[step] = {n: getattr(model, n).weight.grad.numpy().copy()
                         for n in ("conv", "dw", "grp", "fc")}
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # in place, every step
            opt.step()
        watcher.flush()
        voided = watcher._grad_ref_voided
    lay = cs.open_run(tmp_path / "clip").table("watch_layers")
    nan_steps = set()
    for _, row in lay.iterrows():
        got = row[[f"g_{s}" for s in ("min", "max", "mean", "std", "l1", "l2", "zeros")]]
        if got.isna().all():
            nan_steps.add(int(row["step"]))
            continue
        np.testing.assert_allclose(got.to_numpy(float), _np_stats(pre[row["step"]][row["layer"]]),
                                   rtol=2e-5, atol=1e-9)
    assert voided == bool(nan_steps)
    # Whether and when the worker catches a clip depends on timing (a read before the clip is
    # the pre-clip gradient, exact). Once it catches one at step s, every later submission
    # copies: only step s and the layers of step s + 1 already handed over can be void.
    assert not nan_steps or max(nan_steps) - min(nan_steps) <= 1


def test_watch_bad_input(tmp_path):
    with cs.Run(tmp_path, "bad") as run:
        with pytest.raises(LayerNotFoundError, match="Did you mean 'conv'"):
            run.watch(Tiny(), layers=["conv1"])
        with pytest.raises(InputError, match="positive int"):
            run.watch(Tiny(), every=0)
        with pytest.raises(InputError, match="no conv or linear"):
            run.watch(nn.Sequential(nn.ReLU()))


def _log_synthetic_validation(run, rng, steps, n=50, classes=5, cover_all=True):
    labels = np.arange(n) % classes
    truth = {}
    for s in steps:
        pred = np.where(rng.random(n) < 0.7, labels, (labels + 1) % classes)
        ids = np.arange(n) + 1000
        if not cover_all and s % 2:
            keep = rng.permutation(n)[: n // 2]
            run.log_validation(s, ids[keep], labels[keep], pred[keep])
            truth[s] = (keep, pred[keep] == labels[keep])
        else:
            run.log_validation(s, ids, labels, pred)
            truth[s] = (np.arange(n), pred == labels)
    return labels, truth


def test_validation_round_trip_and_class_error_match_pandas(tmp_path):
    rng = np.random.default_rng(0)
    steps = [10, 20, 30, 40, 50, 60]
    with cs.Run(tmp_path, "v") as run:
        labels, truth = _log_synthetic_validation(run, rng, steps, cover_all=False)
        # logits are accepted too
        logits = np.eye(5)[labels]
        run.log_validation(70, np.arange(50) + 1000, labels, logits)
        truth[70] = (np.arange(50), np.ones(50, bool))
        with pytest.raises(InputError, match="one entry per image"):
            run.log_validation(80, [1, 2], [0], [0, 1])
    reader = cs.open_run(tmp_path / "v")
    vm = reader.validation_matrix()
    assert vm.steps.tolist() == steps + [70]
    assert vm.ids.tolist() == list(range(1000, 1050))
    for t, s in enumerate(vm.steps):
        pos, corr = truth[int(s)]
        assert vm.known[t].sum() == len(pos)
        np.testing.assert_array_equal(vm.correct[t, pos], corr)
    # brute force with pandas over (step, image) rows
    rows = [{"step": s, "cls": labels[p], "wrong": not c}
            for s, (pos, corr) in truth.items() for p, c in zip(pos, corr, strict=True)]
    expect = pd.DataFrame(rows).groupby(["step", "cls"])["wrong"].mean().unstack()
    got = reader.class_error()
    np.testing.assert_allclose(got.to_numpy(), expect.to_numpy(), rtol=1e-12)
    hist = reader.class_images(2)
    assert hist["id"].tolist() == [1000 + i for i in range(50) if i % 5 == 2]


def test_layer_series_and_filter_queries_match_brute_force(tmp_path):
    rng = np.random.default_rng(3)
    layers = ["a.conv", "b.conv"]
    n_steps, filters = 300, 6
    rows, frows = [], []
    with cs.Run(tmp_path, "q") as run:
        for s in range(1, n_steps + 1):
            lc = {"step": np.full(2, s), "layer": np.array(layers, dtype=object),
                  "rank": np.zeros(2, np.int16)}
            for col in cs.track.columns.LAYER_COLUMNS:
                lc[col] = rng.random(2).astype(np.float32)
            run.log_rows("watch_layers", lc)
            rows.append(pd.DataFrame(lc))
            fc = {"step": np.full(2 * filters, s), "layer": np.repeat(layers, filters),
                  "filter": np.tile(np.arange(filters, dtype=np.int32), 2),
                  "w_l2": rng.random(2 * filters).astype(np.float32),
                  "g_l2": rng.random(2 * filters).astype(np.float32),
                  "ratio": rng.random(2 * filters).astype(np.float32),
                  "cos_prev": rng.random(2 * filters).astype(np.float32),
                  "rank": np.zeros(2 * filters, np.int16)}
            run.log_rows("watch_filters", fc)
            frows.append(pd.DataFrame(fc))
    reader = cs.open_run(tmp_path / "q")
    lay, fil = pd.concat(rows), pd.concat(frows)
    got = reader.layer_series("g_l2", max_points=30)
    lay["b"] = np.floor((lay["step"] - 1) * 30 / (n_steps - 1 + 1)).astype(int)
    exp = lay.groupby(["layer", "b"]).agg(step=("step", "min"), value=("g_l2", "mean"),
                                           vmin=("g_l2", "min"), vmax=("g_l2", "max"))
    exp = exp.reset_index().sort_values(["layer", "step"])
    assert len(got) == 60
    np.testing.assert_allclose(got["value"].to_numpy(), exp["value"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(got["vmax"].to_numpy(), exp["vmax"].to_numpy(), rtol=1e-6)
    assert got["step"].tolist() == exp["step"].tolist()
    # filter matrix of one layer
    st, fl, mat = reader.filter_matrix("b.conv", "w_l2", max_steps=25)
    fb = fil[fil.layer == "b.conv"].copy()
    k = next(k for k in range(20) if (n_steps >> k) - (1 >> k) + 1 <= 25)  # aligned buckets
    fb["b"] = fb["step"].to_numpy() >> k
    exp_m = fb.pivot_table(index="filter", columns="b", values="w_l2", aggfunc="mean")
    np.testing.assert_allclose(mat, exp_m.to_numpy(), rtol=1e-6)
    assert fl.tolist() == list(range(filters))
    # top changed filters in a window, per layer
    top = reader.top_changed_filters(window=(100, 120), k=3)
    win = fil[(fil.step >= 100) & (fil.step <= 120)]
    for layer in layers:
        m = win[win.layer == layer].groupby("filter")["cos_prev"].min().sort_values()
        got_l = top[top.layer == layer]
        assert got_l["filter"].tolist() == m.index[:3].tolist()
        np.testing.assert_allclose(got_l["cos_prev"].to_numpy(), m.to_numpy()[:3], rtol=1e-6)
    # top filters over all layers at given steps
    top_at = reader.top_filters_at([50, 51], k=4)
    for s in (50, 51):
        exp = fil[fil.step == s].sort_values(["cos_prev", "layer", "filter"]).head(4)
        got_s = top_at[top_at.step == s]
        assert list(zip(got_s.layer, got_s["filter"], strict=True)) == list(
            zip(exp.layer, exp["filter"], strict=True))
    with pytest.raises(InvalidValueError, match="Did you mean 'w_l2'"):
        reader.layer_series("w_l3")


@pytest.mark.slow
def test_anomalies_flag_a_class_whose_labels_are_corrupted(tmp_path):
    """Train on (plain-background) Shapes; after checkpoint 30, relabel class 2 as class 0 in the
    training data. Validation images of class 2 that were stably right flip to wrong together:
    the detector flags class 2 within a few checkpoints."""
    from convscope.data import Shapes
    from convscope.training import fit

    torch.manual_seed(0)
    kw = {"seed": 1, "num_classes": 4, "noise": 0.0, "texture": 0.0}
    x, y, _ = Shapes(n=1600, split="train", **kw).tensors()
    xv, yv, _ = Shapes(n=200, split="test", **kw).tensors()
    model = cs.zoo.resnet(width=8, num_classes=4)
    corrupt_after = 30  # checkpoints (one every 5 steps)
    evals = []
    with cs.Run(tmp_path, "anom") as run:
        def on_eval(step, m):
            run.log_validation(step, np.arange(len(yv)), yv.numpy(), m["predictions"])
            evals.append(step)
            if len(evals) == corrupt_after:
                y[y == 2] = 0  # in place: fit reads the same tensor every epoch
        fit(model, (x, y), (xv, yv), epochs=10, batch_size=64, lr=3e-3, quiet=True,
            on_eval=on_eval, eval_every=5, num_threads=1)
    reader = cs.open_run(tmp_path / "anom")
    res = reader.anomalies(d=5, threshold=5, direction="to_wrong")
    corrupt_step = evals[corrupt_after - 1]
    after = res.frame[res.frame["step"] > corrupt_step]
    assert 2 in set(after["class"]), f"class 2 not flagged after step {corrupt_step}: {after}"
    first = int(after[after["class"] == 2]["step"].min())
    delay = (first - corrupt_step) // 5
    print(f"labels corrupted after step {corrupt_step}; class 2 flagged at step {first}: "
          f"{delay} checkpoints later")
    assert 1 <= delay <= 5
    err = reader.class_error()
    assert err.loc[evals[-1], 2] == 1.0  # by the end every class-2 image is 'wrong'
    clusters = reader.class_clusters(k=2)
    # the corrupted class ends up in a cluster of its own
    assert list(clusters.labels).count(clusters.labels[list(clusters.classes).index(2)]) == 1
