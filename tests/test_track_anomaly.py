"""convscope.track.anomaly and convscope.track.correlate against hand-worked cases and brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convscope.errors import InputError
from convscope.track import anomaly as anomaly_mod
from convscope.track.anomaly import anomalies, default_d, stable_flips
from convscope.track.correlate import CORRELATE_COLUMNS, correlate


def count_rule(*args, **kwargs):
    """DeepTracker's raw count rule (``method="count"``), whose results these hand cases fix."""
    return anomalies(*args, method="count", **kwargs)

# --------------------------------------------------------------------------------------------
# a tiny hand-worked case: 8 images x 12 checkpoints, classes 0 (images 0-3) and 1 (images 4-7)
# --------------------------------------------------------------------------------------------
SEQS = [
    "000111000111",  # img0 c0: stable flips at 3 (->right), 6 (->wrong), 9 (->right) for d<=2
    "000111000111",  # img1 c0: same, so class 0 has exactly 2 flips at 3, 6, 9
    "001100111111",  # img2 c0: flips at 2, 4, 6 after runs of length 2: count only when d < 2
    "011111111110",  # img3 c0: flip at 1 after one checkpoint (d >= 1: no); at 11 after 10 (yes)
    "111100000000",  # img4 c1: flip at 4 (->wrong) after 4 checkpoints
    "111101111111",  # img5 c1: flip at 4 (->wrong) after 4; back at 5 after 1 (not stable)
    "101010101010",  # img6 c1: flips at every checkpoint, never stable (unless d = 0)
    "000000011111",  # img7 c1: flip at 7 (->right) after 7 checkpoints
]
CORRECT = np.array([[ch == "1" for ch in s] for s in SEQS]).T  # [T=12, N=8]
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
STEPS = 100 * np.arange(12) + 100


def _rows(res):
    f = res.to_frame()
    return [
        (int(r.step), int(r.checkpoint), int(r["class"]), int(r.n_flips), int(r.n_to_wrong),
         int(r.n_to_right), list(r.images))
        for _, r in f.iterrows()
    ]


def test_hand_case_d2_counts_matrix():
    res = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=2)
    expected = np.zeros((12, 2), dtype=int)
    expected[[3, 6, 9, 11], 0] = [2, 2, 2, 1]
    expected[[4, 7], 1] = [2, 1]
    np.testing.assert_array_equal(res.counts, expected)
    tw = np.zeros((12, 2), dtype=int)
    tw[[6, 11], 0] = [2, 1]
    tw[4, 1] = 2
    np.testing.assert_array_equal(res.to_wrong, tw)
    np.testing.assert_array_equal(res.to_right, expected - tw)
    np.testing.assert_array_equal(res.classes, [0, 1])


def test_hand_case_d2_flags_and_min_flags_drop():
    res = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=2)
    # class 0 meets threshold 2 exactly at 3, 6, 9; class 1 only once (at 4) -> dropped
    assert _rows(res) == [
        (400, 3, 0, 2, 0, 2, [0, 1]),
        (700, 6, 0, 2, 2, 0, [0, 1]),
        (1000, 9, 0, 2, 0, 2, [0, 1]),
    ]
    np.testing.assert_array_equal(res.dropped_classes, [1])
    assert res.params == {"method": "count", "d": 2, "threshold": 2, "min_flags": 2,
                          "direction": "both", "confirm": 0}
    np.testing.assert_array_equal(res.anomaly_steps, [400, 700, 1000])
    assert res.classes_at(700) == [0] and res.classes_at(500) == []
    assert res.flagged.sum() == 3 and res.flagged[[3, 6, 9], 0].all()

    kept = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1)
    assert _rows(kept) == [
        (400, 3, 0, 2, 0, 2, [0, 1]),
        (500, 4, 1, 2, 2, 0, [4, 5]),
        (700, 6, 0, 2, 2, 0, [0, 1]),
        (1000, 9, 0, 2, 0, 2, [0, 1]),
    ]
    assert len(kept.dropped_classes) == 0
    # one more than the exact count: nothing left
    assert len(count_rule(CORRECT, LABELS, d=2, threshold=3, min_flags=1)) == 0


def test_hand_case_directions():
    wrong = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1,
                      direction="to_wrong")
    assert _rows(wrong) == [(500, 4, 1, 2, 2, 0, [4, 5]), (700, 6, 0, 2, 2, 0, [0, 1])]
    # each class is flagged only once in this direction -> both dropped at min_flags=2
    assert len(count_rule(CORRECT, LABELS, d=2, threshold=2, direction="to_wrong")) == 0
    right = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1,
                      direction="to_right")
    assert _rows(right) == [(400, 3, 0, 2, 0, 2, [0, 1]), (1000, 9, 0, 2, 0, 2, [0, 1])]
    assert right.counts[7, 1] == 1 and right.counts[6, 0] == 0


def test_hand_case_run_length_boundary_d1_and_d0():
    # d=1: runs of length 2 are now "more than d", so img2's flips at 2, 4, 6 count
    res = count_rule(CORRECT, LABELS, d=1, threshold=3, min_flags=1)
    expected = np.zeros((12, 2), dtype=int)
    expected[[2, 3, 4, 6, 9, 11], 0] = [1, 2, 1, 3, 2, 1]
    expected[[4, 7], 1] = [2, 1]
    np.testing.assert_array_equal(res.counts, expected)
    assert _rows(res) == [(6, 6, 0, 3, 2, 1, [0, 1, 2])]
    # d=0: every flip counts, including the flip at checkpoint 1 after a single checkpoint
    every = count_rule(CORRECT, LABELS, d=0, threshold=1, min_flags=1)
    flips = (CORRECT[1:] != CORRECT[:-1]).astype(int)
    np.testing.assert_array_equal(every.counts[1:, 0], flips[:, :4].sum(1))
    np.testing.assert_array_equal(every.counts[1:, 1], flips[:, 4:].sum(1))
    # checkpoint 0 has no previous state: it can never flip, whatever d
    for d in (0, 1, 2):
        assert count_rule(CORRECT, LABELS, d=d, threshold=1, min_flags=0).counts[0].sum() == 0


def test_first_checkpoint_flip_cannot_count():
    # every image changes at checkpoint 1 after a single checkpoint, then stays: with d=1 nothing
    # counts (held 1 checkpoint, not more than 1)
    c = np.zeros((6, 10), dtype=bool)
    c[1:] = True
    res = count_rule(c, np.zeros(10, dtype=int), d=1, threshold=1, min_flags=0)
    assert res.counts.sum() == 0 and len(res) == 0


def test_repeated_stable_flips_all_count():
    # one image alternating every 3 checkpoints: with d=2 each flip (after 3) counts
    seq = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    c = np.repeat(seq[:, None], 5, axis=1)  # 5 identical images of one class
    res = count_rule(c, np.full(5, 7), d=2, threshold=5, min_flags=2)
    assert res.frame["checkpoint"].tolist() == [3, 6, 9, 12]
    assert res.frame["class"].tolist() == [7, 7, 7, 7]
    assert res.frame["n_to_right"].tolist() == [5, 0, 5, 0]
    # with d=3 none of them is stable
    assert count_rule(c, np.full(5, 7), d=3, threshold=1, min_flags=0).counts.sum() == 0


# --------------------------------------------------------------------------------------------
# brute force: a per-image Python loop
# --------------------------------------------------------------------------------------------
def brute_force(correct, labels, steps, d, threshold, min_flags, direction, confirm=0):
    t, n = correct.shape
    classes = sorted(set(labels.tolist()))
    col = {c: j for j, c in enumerate(classes)}
    tw = np.zeros((t, len(classes)), dtype=int)
    tr = np.zeros((t, len(classes)), dtype=int)
    imgs = {}
    for img in range(n):
        seq = correct[:, img]
        for i in range(1, t):
            if seq[i] == seq[i - 1]:
                continue
            held, j = 0, i - 1
            while j >= 0 and seq[j] == seq[i - 1]:
                held += 1
                j -= 1
            if held <= d:
                continue
            # confirmed: the new state is still there at i + 1 .. i + confirm (all recorded)
            if i + confirm > t - 1 or any(seq[j] != seq[i] for j in range(i, i + confirm + 1)):
                continue
            to_right = bool(seq[i])
            (tr if to_right else tw)[i, col[labels[img]]] += 1
            if direction == "both" or (direction == "to_right") == to_right:
                imgs.setdefault((i, labels[img]), []).append(img)
    counts = {"both": tw + tr, "to_wrong": tw, "to_right": tr}[direction]
    flags = [(i, c) for i in range(t) for c in classes if counts[i, col[c]] >= threshold]
    per_class = {c: sum(1 for _, cc in flags if cc == c) for c in classes}
    rows = [
        (int(steps[i]), i, int(c), int(counts[i, col[c]]), int(tw[i, col[c]]),
         int(tr[i, col[c]]), sorted(imgs[(i, c)]))
        for i, c in flags
        if per_class[c] >= min_flags
    ]
    return rows, tw, tr


def _markov(rng, t, n, p):
    """Random 0/1 sequences that switch with probability p per checkpoint."""
    start = rng.random(n) < 0.5
    switches = rng.random((t, n)) < p
    switches[0] = False
    return start[None, :] ^ (np.cumsum(switches, axis=0) % 2 == 1)


@pytest.mark.parametrize(
    ("d", "threshold", "min_flags", "direction", "p"),
    [
        (3, 3, 2, "both", 0.08),
        (1, 4, 2, "both", 0.2),
        (5, 2, 3, "to_wrong", 0.05),
        (2, 3, 1, "to_right", 0.1),
        (0, 8, 2, "both", 0.3),
    ],
)
def test_vectorised_equals_brute_force(d, threshold, min_flags, direction, p):
    rng = np.random.default_rng(1000 + d + threshold)
    t, n = 60, 200
    correct = _markov(rng, t, n, p)
    labels = rng.choice([2, 5, 11, 13], size=n)
    steps = np.cumsum(rng.integers(1, 50, size=t))
    rows, tw, tr = brute_force(correct, labels, steps, d, threshold, min_flags, direction)
    res = count_rule(correct, labels, steps=steps, d=d, threshold=threshold,
                    min_flags=min_flags, direction=direction)
    assert len(rows) > 0  # the case is not vacuous
    assert _rows(res) == rows
    np.testing.assert_array_equal(res.to_wrong, tw)
    np.testing.assert_array_equal(res.to_right, tr)


@pytest.mark.parametrize(("d", "confirm", "direction", "p"),
                         [(2, 1, "both", 0.1), (1, 2, "to_wrong", 0.15), (3, 4, "to_right", 0.05),
                          (0, 1, "both", 0.3), (1, 6, "both", 0.04)])
def test_confirmed_flips_equal_brute_force(d, confirm, direction, p):
    """``confirm``: a stable flip counts only when the image keeps its new state at the next
    ``confirm`` checkpoints, checked image by image in plain Python."""
    rng = np.random.default_rng(77 + confirm)
    t, n = 50, 200
    correct = _markov(rng, t, n, p)
    labels = rng.choice([0, 3, 4], size=n)
    steps = np.arange(t) * 10
    rows, tw, tr = brute_force(correct, labels, steps, d, 3, 1, direction, confirm=confirm)
    res = count_rule(correct, labels, steps=steps, d=d, threshold=3, min_flags=1,
                     direction=direction, confirm=confirm)
    assert len(rows) > 0 and res.params["confirm"] == confirm
    assert _rows(res) == rows
    np.testing.assert_array_equal(res.to_wrong, tw)
    np.testing.assert_array_equal(res.to_right, tr)
    # fewer flips than without confirmation, and none in the last `confirm` checkpoints
    plain = count_rule(correct, labels, d=d, threshold=3, min_flags=1, direction=direction)
    assert (res.counts <= plain.counts).all() and res.counts.sum() < plain.counts.sum()
    assert res.counts[t - confirm:].sum() == 0 and res.at_risk[t - confirm:].sum() == 0
    # blocked processing agrees
    whole = stable_flips(correct, d, confirm=confirm)
    assert len(whole[0]) == (tw + tr).sum()


def test_blocked_processing_equals_unblocked(monkeypatch):
    rng = np.random.default_rng(5)
    correct = _markov(rng, 60, 200, 0.1)
    whole = stable_flips(correct, 2)
    whole_c = stable_flips(correct, 2, confirm=2)
    labels = np.random.default_rng(6).choice([3, 0, 8], size=200)
    res_whole = anomalies(correct, labels, d=2)
    monkeypatch.setattr(anomaly_mod, "_BLOCK_CELLS", 60 * 7)  # 7 images per block
    blocked = stable_flips(correct, 2)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(whole_c, stable_flips(correct, 2, confirm=2), strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(whole[0]) > 0
    # blocks cut through the classes' column ranges: the at-risk counts are unchanged
    res_blocked = anomalies(correct, labels, d=2)
    np.testing.assert_array_equal(res_whole.at_risk, res_blocked.at_risk)
    np.testing.assert_array_equal(res_whole.pvalues, res_blocked.pvalues)
    assert res_whole.at_risk.sum() > 0


def test_stable_flips_coordinates_hand_case():
    t, n, right = stable_flips(CORRECT, 2)
    got = list(zip(t.tolist(), n.tolist(), right.tolist(), strict=True))
    assert got == [(3, 0, True), (3, 1, True), (4, 4, False), (4, 5, False), (6, 0, False),
                   (6, 1, False), (7, 7, True), (9, 0, True), (9, 1, True), (11, 3, False)]
    # confirm=1: img5 goes back at 5 (not confirmed); img3's flip at 11, the last checkpoint,
    # cannot be confirmed yet. confirm=2 keeps the same (every other new state lasts 3+)
    want = [(3, 0, True), (3, 1, True), (4, 4, False), (6, 0, False), (6, 1, False),
            (7, 7, True), (9, 0, True), (9, 1, True)]
    for confirm in (1, 2):
        t, n, right = stable_flips(CORRECT, 2, confirm=confirm)
        assert list(zip(t.tolist(), n.tolist(), right.tolist(), strict=True)) == want
    # confirm=3: img0/img1 flip again 3 checkpoints after each flip, and their flip at 9 would
    # need checkpoint 12; only img4 (wrong from 4 on) and img7 (right from 7 on) remain
    t, n, right = stable_flips(CORRECT, 2, confirm=3)
    assert list(zip(t.tolist(), n.tolist(), right.tolist(), strict=True)) == [
        (4, 4, False), (7, 7, True)]


# --------------------------------------------------------------------------------------------
# defaults, inputs, errors
# --------------------------------------------------------------------------------------------
def test_default_d_scales_with_t():
    assert [default_d(t) for t in (2, 12, 49, 50, 100, 1000, 1025, 100_000)] == [
        1, 1, 1, 2, 4, 40, 40, 40
    ]
    rng = np.random.default_rng(0)
    c = _markov(rng, 100, 30, 0.1)
    assert count_rule(c, np.zeros(30, dtype=int)).d == 4
    assert count_rule(c, np.zeros(30, dtype=int), d=7).d == 7


def test_accepts_01_ints_and_default_steps():
    res = count_rule(CORRECT.astype(np.int8), LABELS, d=2, threshold=2, min_flags=2)
    assert res.frame["step"].tolist() == [3, 6, 9]
    np.testing.assert_array_equal(res.steps, np.arange(12))


@pytest.mark.parametrize("method", ["count", "calibrated"])
def test_empty_result_has_columns(method):
    res = anomalies(np.ones((10, 4), dtype=bool), [0, 0, 1, 1], method=method)
    assert len(res) == 0
    # DeepTracker's columns first (other views read them), then the calibrated test's
    assert list(res.to_frame().columns) == [
        "step", "checkpoint", "class", "n_flips", "n_to_wrong", "n_to_right", "images",
        "expected", "p_value", "q_value",
    ]
    assert res.counts.shape == (10, 2)
    # d = 1: from checkpoint 2 on, every image has held "correct" long enough to be at risk;
    # none flips, so every tested cell has p = 1; checkpoints 0 and 1 cannot be tested, nor
    # (calibrated: confirm = min(d, 2) = 1) the last, whose flips could not be confirmed yet
    last = 10 - res.confirm
    assert res.confirm == (0 if method == "count" else 1)
    np.testing.assert_array_equal(res.at_risk[:, 0], [0, 0] + [2] * (last - 2) + [0] * res.confirm)
    assert np.isnan(res.pvalues[:2]).all() and (res.pvalues[2:last] == 1.0).all()
    assert np.isnan(res.pvalues[last:]).all()


def test_input_errors():
    with pytest.raises(InputError, match="2-D"):
        count_rule(np.ones(5, dtype=bool), [0] * 5)
    with pytest.raises(InputError, match="True/False"):
        count_rule(np.full((3, 2), 2), [0, 1])
    with pytest.raises(InputError, match="one class per image"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1, 2])
    with pytest.raises(InputError, match="strictly increasing"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1], steps=[0, 2, 2])
    with pytest.raises(InputError, match="one step number per checkpoint"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1], steps=[0, 2])
    with pytest.raises(InputError, match="Did you mean 'to_wrong'"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1], direction="to_wron")
    with pytest.raises(InputError, match="d must be"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1], d=-1)
    with pytest.raises(InputError, match="threshold"):
        count_rule(np.ones((3, 2), dtype=bool), [0, 1], threshold=0)
    with pytest.raises(InputError, match="integer class"):
        count_rule(np.ones((3, 2), dtype=bool), ["a", "b"])


def test_warns_when_d_too_long_for_run():
    with pytest.warns(UserWarning, match="no anomaly can be found"):
        res = count_rule(CORRECT, LABELS, d=11, threshold=1, min_flags=0)
    assert res.counts.sum() == 0


# --------------------------------------------------------------------------------------------
# correlate
# --------------------------------------------------------------------------------------------
def _filter_changes():
    # filter snapshots recorded at steps 10, 20, 30; two layers in model order "conv1", "fc"
    rows = []
    cos = {
        10: {"conv1": [np.nan, np.nan, np.nan], "fc": [np.nan, np.nan]},  # first snapshot
        20: {"conv1": [0.90, 0.20, 0.50], "fc": [0.30, 0.95]},
        30: {"conv1": [0.40, 0.80, 0.10], "fc": [0.10, 0.60]},
    }
    for step, layers in cos.items():
        for layer, vals in layers.items():
            for f, v in enumerate(vals):
                rows.append({"step": step, "layer": layer, "filter": f, "cos_prev": v})
    return pd.DataFrame(rows)


def _tuples(df):
    return [
        (int(r.step), list(r.classes), r.scope, r.layer, int(r["filter"]), float(r.cos_prev),
         int(r["rank"]), int(r.filter_step))
        for _, r in df.iterrows()
    ]


def test_correlate_hand_case():
    fc = _filter_changes()
    # anomaly at 15 -> recorded step 20 (nearest at or after); at 30 -> 30 itself
    out = correlate({15: [4, 2], 30: [1]}, fc, top=2)
    assert list(out.columns) == list(CORRELATE_COLUMNS)
    assert _tuples(out) == [
        (15, [2, 4], "overall", "conv1", 1, 0.20, 1, 20),
        (15, [2, 4], "overall", "fc", 0, 0.30, 2, 20),
        (15, [2, 4], "layer", "conv1", 1, 0.20, 1, 20),
        (15, [2, 4], "layer", "conv1", 2, 0.50, 2, 20),
        (15, [2, 4], "layer", "fc", 0, 0.30, 1, 20),
        (15, [2, 4], "layer", "fc", 1, 0.95, 2, 20),
        # tie at 0.10 between conv1/2 and fc/0: layer order of appearance breaks it
        (30, [1], "overall", "conv1", 2, 0.10, 1, 30),
        (30, [1], "overall", "fc", 0, 0.10, 2, 30),
        (30, [1], "layer", "conv1", 2, 0.10, 1, 30),
        (30, [1], "layer", "conv1", 0, 0.40, 2, 30),
        (30, [1], "layer", "fc", 0, 0.10, 1, 30),
        (30, [1], "layer", "fc", 1, 0.60, 2, 30),
    ]


def test_correlate_scopes_top_and_nan_first_snapshot():
    fc = _filter_changes()
    # anomaly at 5 -> step 10, whose cos_prev are all NaN: nothing to report for it
    out = correlate([5, 21], fc, top=1, scope="overall")
    assert _tuples(out) == [(21, [], "overall", "conv1", 2, 0.10, 1, 30)]
    out = correlate([21], fc, top=10, scope="layer")
    assert out["filter"].tolist() == [2, 0, 1, 0, 1]
    assert out["rank"].tolist() == [1, 2, 3, 1, 2]
    assert set(out["scope"]) == {"layer"}


def test_correlate_takes_anomaly_result_and_warns_when_late():
    res = count_rule(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1)
    # anomalies at steps 400 (class 0), 500 (class 1), 700 (class 0), 1000 (class 0)
    fc = pd.DataFrame({
        "step": [450, 450, 700, 700],
        "layer": ["a", "b", "a", "b"],
        "filter": [0, 0, 0, 0],
        "cos_prev": [0.5, 0.2, 0.9, 0.3],
    })
    with pytest.warns(UserWarning, match=r"\[1000\]"):
        out = correlate(res, fc, top=1, scope="overall")
    assert _tuples(out) == [
        (400, [0], "overall", "b", 0, 0.2, 1, 450),
        (500, [1], "overall", "b", 0, 0.3, 1, 700),
        (700, [0], "overall", "b", 0, 0.3, 1, 700),
    ]
    # the frame form gives the same answer; several classes at one step are merged
    frame = pd.DataFrame({"step": [400, 400], "class": [3, 1]})
    out2 = correlate(frame, fc, top=1, scope="overall")
    assert _tuples(out2) == [(400, [1, 3], "overall", "b", 0, 0.2, 1, 450)]


def test_correlate_errors_and_empty():
    fc = _filter_changes()
    with pytest.raises(InputError, match="cos_prev"):
        correlate([20], fc.rename(columns={"cos_prev": "cos_prv"}))
    with pytest.raises(InputError, match="top"):
        correlate([20], fc, top=0)
    with pytest.raises(InputError, match="Did you mean 'layer'"):
        correlate([20], fc, scope="layers")
    out = correlate([], fc)
    assert out.empty and list(out.columns) == list(CORRELATE_COLUMNS)


# --------------------------------------------------------------------------------------------
# the calibrated rule (method="calibrated", the default)
# --------------------------------------------------------------------------------------------
def test_negbin_sf_equals_scipy_and_exact_sums():
    from math import exp, lgamma, log

    from scipy import stats

    from convscope.track.anomaly import negbin_sf

    def nb_pmf(j, mu, s2):  # by hand: Gamma-Poisson mixture of mean mu, variance mu + s2 mu^2
        if s2 == 0:
            return exp(j * log(mu) - mu - lgamma(j + 1))
        r = 1 / s2
        return exp(lgamma(j + r) - lgamma(r) - lgamma(j + 1) + r * log(r / (r + mu))
                   + j * log(mu / (r + mu)))

    cases = [(0, 2.0, 0.0), (1, 2.0, 0.0), (5, 0.5, 0.0), (12, 3.0, 0.0), (40, 3.0, 0.0),
             (1, 2.0, 0.5), (5, 0.5, 0.3), (12, 3.0, 1.0), (40, 3.0, 0.2), (30, 10.0, 2.5)]
    k, mu, s2 = (np.array(col, dtype=float) for col in zip(*cases, strict=True))
    got = negbin_sf(k, mu, s2)
    for (kk, m, v), g in zip(cases, got, strict=True):
        exact = 1.0 - sum(nb_pmf(j, m, v) for j in range(int(kk)))
        assert g == pytest.approx(exact, rel=1e-8, abs=1e-15)
        if v == 0:
            assert g == pytest.approx(stats.poisson.sf(kk - 1, m), rel=1e-10, abs=1e-300)
        else:
            r = 1 / v
            assert g == pytest.approx(stats.nbinom.sf(kk - 1, r, r / (r + m)), rel=1e-10,
                                      abs=1e-300)
    # far tails are not lost to 1 - (sum of the rest)
    assert negbin_sf(60, 1.0) == pytest.approx(stats.poisson.sf(59, 1.0), rel=1e-8)
    assert 0 < negbin_sf(60, 1.0) < 1e-80
    # more over-dispersion, heavier tail; no expected flips, no chance of one
    assert negbin_sf(12, 3.0, 0.5) > negbin_sf(12, 3.0, 0.1) > negbin_sf(12, 3.0)
    assert negbin_sf(1, 0.0) == 0.0 and negbin_sf(0, 0.0) == 1.0


def test_stage_dispersion_is_the_median_solution():
    """The stage dispersion is the sigma2 at which the median squared Pearson residual of the
    cells above their mean is that of chi-square(1); checked by evaluating the residuals at the
    returned value, and on simulated Gamma-Poisson (negative binomial) and Poisson counts."""
    rng = np.random.default_rng(4)
    mu = rng.uniform(5, 40, size=(60, 8))
    k = rng.negative_binomial(1 / 0.4, (1 / 0.4) / (1 / 0.4 + mu)).astype(float)
    usable, base = np.ones_like(mu, dtype=bool), np.zeros_like(mu)
    s2 = anomaly_mod._stage_dispersion(k, mu, base, usable, window=100)  # one stage: the run
    assert np.allclose(s2, s2[0]) and 0.25 < s2[0] < 0.6  # about the 0.4 simulated
    up = k > mu
    resid = (k[up] - mu[up]) ** 2 / (mu[up] + s2[0] * mu[up] ** 2)
    assert np.median(resid) == pytest.approx(0.454936, abs=0.01)
    # the baseline's own variance is part of the total: it is taken off the stage's
    s2b = anomaly_mod._stage_dispersion(k, mu, base + 0.1, usable, window=100)
    assert s2b[0] == pytest.approx(s2[0] - 0.1, abs=1e-9)
    # Poisson counts: no over-dispersion
    kp = rng.poisson(mu).astype(float)
    assert anomaly_mod._stage_dispersion(kp, mu, base, usable, window=100)[0] < 0.02
    # a stage of its own: the second half of the run is over-dispersed, the first is not
    mixed = np.where(np.arange(60)[:, None] < 30, kp, k)
    s2m = anomaly_mod._stage_dispersion(mixed, mu, base, usable, window=3)
    assert s2m[:20].max() < 0.05 and s2m[40:].min() > 0.15


def test_stage_dispersion_needs_enough_cells_of_both_halves():
    """The median of the cells above their mean stands for the stage only when enough cells are
    usable: a stage (and the run) needs 10 usable cells, 5 above their mean, and half of its
    tested cells; otherwise 0 (Poisson plus the baseline's own uncertainty). A sparse run where
    5 of 7 usable cells are bursts (the anomaly among them) must not inflate its own
    dispersion."""
    t, c = 40, 5
    mu = np.full((t, c), 3.0)
    base = np.zeros_like(mu)
    k = np.full((t, c), 2.0)  # below the mean: usable, not above
    usable = np.zeros((t, c), dtype=bool)
    bursts = [(5, 0, 8.0), (9, 1, 14.0), (20, 2, 7.0), (26, 3, 9.0), (32, 4, 30.0)]
    for i, j, v in bursts:
        usable[i, j], k[i, j] = True, v
    usable[[12, 30], [0, 1]] = True  # two usable cells below their mean: 7 in all
    s2 = anomaly_mod._stage_dispersion(k, mu, base, usable, window=100)
    assert (s2 == 0).all()
    # three more usable cells (10 in all, 5 above): the median of the bursts' needed values,
    # ((k - mu)^2 / 0.455 - mu) / mu^2 at k = 8, 7, 9, 14, 30: the middle one is k = 9's
    usable[[14, 16, 18], [2, 3, 4]] = True
    s2 = anomaly_mod._stage_dispersion(k, mu, base, usable, window=100)
    want = ((9.0 - 3.0) ** 2 / 0.454936423119572 - 3.0) / 9.0
    assert s2 == pytest.approx(np.full(t, want))
    # ... but only where they are most of the stage's tested cells: 10 usable among 200 tested
    # (the rest with mu < 2) are a selection, not the stage
    tested = np.ones((t, c), dtype=bool)
    assert (anomaly_mod._stage_dispersion(k, mu, base, usable, 100, tested) == 0).all()
    tested[:, :] = False
    tested[usable] = True
    tested[[1, 2, 3, 4, 6, 7, 8, 10, 11, 13], 0] = True  # 20 tested: half usable
    assert anomaly_mod._stage_dispersion(k, mu, base, usable, 100, tested) == pytest.approx(
        np.full(t, want))


def _bh_brute(p, alpha):
    """Benjamini-Hochberg rejections, straight from the definition: reject the r smallest
    p-values, r the largest rank with p_(r) <= r * alpha / m."""
    m = len(p)
    order = np.argsort(p)
    r = 0
    for rank in range(1, m + 1):
        if p[order[rank - 1]] <= rank * alpha / m:
            r = rank
    out = np.zeros(m, dtype=bool)
    out[order[:r]] = True
    return out


def test_bh_qvalues_equal_brute_force_rejections():
    from convscope.track.anomaly import bh_qvalues

    rng = np.random.default_rng(3)
    for trial in range(30):
        m = int(rng.integers(1, 60))
        p = np.where(rng.random(m) < 0.3, rng.random(m) * 1e-3, rng.random(m))
        if trial % 5 == 0:
            p[: m // 2] = p[0]  # ties
        q = bh_qvalues(p)
        for alpha in (0.001, 0.01, 0.05, 0.1, 0.3):
            np.testing.assert_array_equal(q <= alpha, _bh_brute(p, alpha))
    # NaN entries are not tests: they stay NaN and do not count in m
    q = bh_qvalues([0.01, np.nan, 0.04, np.nan])
    assert np.isnan(q[[1, 3]]).all()
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04])
    # hand case: p = .01 .02 .03 .5 -> q = .04 .04 .04 .5
    np.testing.assert_allclose(bh_qvalues([0.03, 0.5, 0.01, 0.02]), [0.04, 0.5, 0.04, 0.04])
    try:  # a peer implementation, where installed (not a dependency)
        from statsmodels.stats.multitest import multipletests
    except ImportError:
        return
    p = rng.random(50) ** 3
    np.testing.assert_allclose(bh_qvalues(p), multipletests(p, method="fdr_bh")[1])


def _brute_at_risk(correct, labels, d, confirm=0):
    """[T, C] images of each class that held their state for more than d checkpoints ending at
    i - 1, split by that state: (was wrong -> may flip to right, was right -> may flip to wrong).
    A checkpoint whose flips could not be confirmed yet (i + confirm > T - 1) has none."""
    t, n = correct.shape
    classes = sorted(set(labels.tolist()))
    rr = np.zeros((t, len(classes)), dtype=int)
    rw = np.zeros((t, len(classes)), dtype=int)
    for img in range(n):
        seq = correct[:, img]
        for i in range(1, t - confirm):
            held, j = 0, i - 1
            while j >= 0 and seq[j] == seq[i - 1]:
                held += 1
                j -= 1
            if held > d:
                (rw if seq[i - 1] else rr)[i, classes.index(labels[img])] += 1
    return rr, rw


@pytest.mark.parametrize("direction", ["both", "to_wrong", "to_right"])
def test_at_risk_and_pvalues_equal_brute_force_and_scipy(direction):
    from scipy import stats

    rng = np.random.default_rng(11)
    t, n, d, w = 40, 150, 2, 4
    correct = _markov(rng, t, n, 0.1)
    labels = rng.choice([1, 4, 9], size=n)
    res = anomalies(correct, labels, d=d, window=w, direction=direction)
    assert res.confirm == 2  # min(d, 2)
    rr, rw = _brute_at_risk(correct, labels, d, confirm=2)
    want = {"both": rr + rw, "to_wrong": rw, "to_right": rr}[direction]
    np.testing.assert_array_equal(res.at_risk, want)
    _, tw, tr = brute_force(correct, labels, np.arange(t), d, 1, 0, direction, confirm=2)
    np.testing.assert_array_equal(res.counts, {"both": tw + tr, "to_wrong": tw,
                                               "to_right": tr}[direction])
    # each cell's p-value, spelled out cell by cell with scipy. Baseline: the other checkpoints
    # within w that have images at risk, less the one with the most and the one with the fewest
    # flips (their images at risk taken as the neighbours' mean), plus half a flip
    k, r = res.counts, res.at_risk
    assert res.dispersion.shape == (t,) and (res.dispersion >= 0).all()
    for i in range(t):
        for c in range(3):
            nb = [j for j in range(max(0, i - w), min(t, i + w + 1)) if j != i and r[j, c] > 0]
            m = len(nb)
            k_nb = k[nb, c].sum() - max(k[nb, c]) - min(k[nb, c]) if m else 0
            n_nb = r[nb, c].sum() * (m - 2) / m if m > 2 else 0
            if i == 0 or r[i, c] == 0 or n_nb == 0:
                assert np.isnan(res.pvalues[i, c])
                continue
            mu = r[i, c] * (k_nb + 0.5) / n_nb
            assert res.expected[i, c] == pytest.approx(mu)
            s2 = res.dispersion[i] + 1 / (k_nb + 0.5)  # stage + the baseline's own variance
            if s2 == 0:
                want_p = stats.poisson.sf(k[i, c] - 1, mu)
            else:
                want_p = stats.nbinom.sf(k[i, c] - 1, 1 / s2, (1 / s2) / (1 / s2 + mu))
            assert res.pvalues[i, c] == pytest.approx(want_p, rel=1e-9, abs=1e-300)
    # q-values: BH over every tested cell of the run
    from convscope.track.anomaly import bh_qvalues

    np.testing.assert_allclose(res.qvalues, bh_qvalues(res.pvalues.ravel()).reshape(t, 3))


def _with_burst(rng, t, n, p, labels, cls, at, size):
    """A stationary flip process, plus ``size`` images of class ``cls`` that had been right
    since checkpoint 0 all turning wrong at checkpoint ``at`` for good (what corrupting the
    class's labels does: the calibrated default counts forgetting)."""
    correct = _markov(rng, t, n, p)
    members = np.flatnonzero(labels == cls)[:size]
    correct[:at, members] = True  # stable from the start ...
    correct[at:, members] = False  # ... and all forgotten at `at`
    return correct, members


def test_planted_burst_is_found_and_count_rule_floods():
    # (seed 0 of this simulation holds, by chance, 15 flips where 4 are usual: rightly flagged)
    rng = np.random.default_rng(1)
    t, n = 80, 1000
    labels = np.arange(n) % 10
    correct, members = _with_burst(rng, t, n, 0.04, labels, cls=6, at=50, size=15)
    res = anomalies(correct, labels)
    assert res.method == "calibrated" and res.params["fdr"] == 0.05
    assert res.frame[["checkpoint", "class"]].values.tolist() == [[50, 6]]
    row = res.frame.iloc[0]
    assert set(members) <= set(row.images) and row.q_value <= 0.05 and row.p_value < row.q_value
    assert row.expected < row.n_flips / 2
    # DeepTracker's rule at its default threshold flags the stationary background everywhere:
    # 100 images per class flipping with probability 0.04 give about 4 flips per checkpoint
    old = anomalies(correct, labels, method="count")
    old_cells = set(zip(old.frame.checkpoint, old.frame["class"], strict=True))
    assert len(old) > 50 and (50, 6) in old_cells


def test_stationary_process_false_discoveries_within_fdr():
    """Many simulated runs: a stationary flip process with one planted burst in half of them.
    The false discovery proportion averages at most the nominal rate, and the planted bursts
    are found."""
    fdr, found, fdps = 0.05, 0, []
    for seed in range(120):
        rng = np.random.default_rng(seed)
        t, n = 60, 400
        labels = rng.integers(0, 5, size=n)
        p = rng.uniform(0.02, 0.15)
        planted = seed % 2 == 0
        if planted:
            cls, at = int(rng.integers(0, 5)), int(rng.integers(10, 55))
            correct, _ = _with_burst(rng, t, n, p, labels, cls, at, size=25)
        else:
            correct = _markov(rng, t, n, p)
        res = anomalies(correct, labels, threshold=1, fdr=fdr)
        cells = set(zip(res.frame.checkpoint.tolist(), res.frame["class"].tolist(), strict=True))
        if planted:
            found += (at, cls) in cells
            false = len(cells - {(at, cls)})
        else:
            false = len(cells)
        fdps.append(false / len(cells) if cells else 0.0)
    assert found >= 57  # 25 of about 80 images of a class flipping together
    assert np.mean(fdps) <= fdr, np.mean(fdps)


def test_swings_and_learning_are_not_damage_but_lasting_forgetting_is():
    """Planted events, the truth known: class 3 swings (20 of its stable images go wrong at one
    checkpoint and come back at the next, five times), then 20 of them go wrong for good at 48;
    class 5 is wrong until 29 and learned for good at 30. The default (confirmed forgetting)
    flags exactly (48, 3). Unconfirmed flips flag every swing too; both directions flag the
    learning burst too."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        t, n = 60, 800
        labels = np.arange(n) % 10
        correct = _markov(rng, t, n, 0.03)
        cls3, cls5 = np.flatnonzero(labels == 3), np.flatnonzero(labels == 5)
        correct[:, cls3] = True
        swings = [8, 16, 24, 32, 40]
        for at in swings:
            correct[at, rng.choice(cls3, 20, replace=False)] = False
        correct[48:, rng.choice(cls3, 20, replace=False)] = False
        correct[:30, cls5], correct[30:, cls5] = False, True

        def cells(res):
            return set(zip(res.frame.checkpoint.tolist(), res.frame["class"].tolist(),
                           strict=True))

        res = anomalies(correct, labels)
        assert (res.direction, res.confirm) == ("to_wrong", 2)
        assert cells(res) == {(48, 3)}
        assert res.frame.iloc[0].n_to_wrong == 20
        assert {(at, 3) for at in swings} <= cells(anomalies(correct, labels, confirm=0))
        assert {(48, 3), (30, 5)} <= cells(anomalies(correct, labels, direction="both"))


def test_rising_flip_rate_is_not_an_anomaly():
    """A class whose flip rate climbs smoothly (training speeding up) is judged against its own
    neighbouring rate: nothing is flagged, where the count rule flags the whole second half."""
    rng = np.random.default_rng(2)
    t, n = 100, 600
    p = np.linspace(0.01, 0.12, t)[:, None]
    start = rng.random(n) < 0.5
    switches = rng.random((t, n)) < p
    switches[0] = False
    correct = start[None, :] ^ (np.cumsum(switches, axis=0) % 2 == 1)
    labels = np.arange(n) % 6
    assert len(anomalies(correct, labels)) == 0
    assert len(anomalies(correct, labels, method="count")) > 100


def test_calibrated_parameters_and_errors():
    res = anomalies(CORRECT, LABELS, steps=STEPS, d=2)
    assert res.params == {"method": "calibrated", "d": 2, "threshold": 5, "min_flags": 1,
                          "direction": "to_wrong", "confirm": 2, "fdr": 0.05, "window": 3}
    # the defaults follow d (confirm = min(d, 2)) and the method (count: DeepTracker's both
    # directions, unconfirmed)
    assert anomalies(CORRECT, LABELS, d=1).confirm == 1
    assert anomalies(CORRECT, LABELS, d=0).confirm == 0
    assert anomalies(CORRECT, LABELS, d=5, confirm=0).confirm == 0
    old = anomalies(CORRECT, LABELS, d=2, method="count")
    assert (old.direction, old.confirm) == ("both", 0)
    with pytest.raises(InputError, match="confirm"):
        anomalies(CORRECT, LABELS, confirm=-1)
    with pytest.raises(InputError, match="confirm"):
        stable_flips(CORRECT, 2, confirm=1.5)
    assert anomaly_mod.default_window(12) == 3 and anomaly_mod.default_window(1000) == 50
    assert anomalies(CORRECT, LABELS, window=2, fdr=0.2).params["window"] == 2
    with pytest.raises(InputError, match="Did you mean 'count'"):
        anomalies(CORRECT, LABELS, method="cuont")
    for bad in (0, 1, 1.5, -0.1, True, "0.05"):
        with pytest.raises(InputError, match="fdr"):
            anomalies(CORRECT, LABELS, fdr=bad)
    with pytest.raises(InputError, match="window"):
        anomalies(CORRECT, LABELS, window=0)
    with pytest.raises(InputError, match="min_flags"):
        anomalies(CORRECT, LABELS, min_flags=-1)
