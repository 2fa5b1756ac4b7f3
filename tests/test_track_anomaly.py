"""convscope.track.anomaly and convscope.track.correlate against hand-worked cases and brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convscope.errors import InputError
from convscope.track import anomaly as anomaly_mod
from convscope.track.anomaly import anomalies, default_d, stable_flips
from convscope.track.correlate import CORRELATE_COLUMNS, correlate

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
    res = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=2)
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
    res = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=2)
    # class 0 meets threshold 2 exactly at 3, 6, 9; class 1 only once (at 4) -> dropped
    assert _rows(res) == [
        (400, 3, 0, 2, 0, 2, [0, 1]),
        (700, 6, 0, 2, 2, 0, [0, 1]),
        (1000, 9, 0, 2, 0, 2, [0, 1]),
    ]
    np.testing.assert_array_equal(res.dropped_classes, [1])
    assert res.params == {"d": 2, "threshold": 2, "min_flags": 2, "direction": "both"}
    np.testing.assert_array_equal(res.anomaly_steps, [400, 700, 1000])
    assert res.classes_at(700) == [0] and res.classes_at(500) == []
    assert res.flagged.sum() == 3 and res.flagged[[3, 6, 9], 0].all()

    kept = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1)
    assert _rows(kept) == [
        (400, 3, 0, 2, 0, 2, [0, 1]),
        (500, 4, 1, 2, 2, 0, [4, 5]),
        (700, 6, 0, 2, 2, 0, [0, 1]),
        (1000, 9, 0, 2, 0, 2, [0, 1]),
    ]
    assert len(kept.dropped_classes) == 0
    # one more than the exact count: nothing left
    assert len(anomalies(CORRECT, LABELS, d=2, threshold=3, min_flags=1)) == 0


def test_hand_case_directions():
    wrong = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1,
                      direction="to_wrong")
    assert _rows(wrong) == [(500, 4, 1, 2, 2, 0, [4, 5]), (700, 6, 0, 2, 2, 0, [0, 1])]
    # each class is flagged only once in this direction -> both dropped at min_flags=2
    assert len(anomalies(CORRECT, LABELS, d=2, threshold=2, direction="to_wrong")) == 0
    right = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1,
                      direction="to_right")
    assert _rows(right) == [(400, 3, 0, 2, 0, 2, [0, 1]), (1000, 9, 0, 2, 0, 2, [0, 1])]
    assert right.counts[7, 1] == 1 and right.counts[6, 0] == 0


def test_hand_case_run_length_boundary_d1_and_d0():
    # d=1: runs of length 2 are now "more than d", so img2's flips at 2, 4, 6 count
    res = anomalies(CORRECT, LABELS, d=1, threshold=3, min_flags=1)
    expected = np.zeros((12, 2), dtype=int)
    expected[[2, 3, 4, 6, 9, 11], 0] = [1, 2, 1, 3, 2, 1]
    expected[[4, 7], 1] = [2, 1]
    np.testing.assert_array_equal(res.counts, expected)
    assert _rows(res) == [(6, 6, 0, 3, 2, 1, [0, 1, 2])]
    # d=0: every flip counts, including the flip at checkpoint 1 after a single checkpoint
    every = anomalies(CORRECT, LABELS, d=0, threshold=1, min_flags=1)
    flips = (CORRECT[1:] != CORRECT[:-1]).astype(int)
    np.testing.assert_array_equal(every.counts[1:, 0], flips[:, :4].sum(1))
    np.testing.assert_array_equal(every.counts[1:, 1], flips[:, 4:].sum(1))
    # checkpoint 0 has no previous state: it can never flip, whatever d
    for d in (0, 1, 2):
        assert anomalies(CORRECT, LABELS, d=d, threshold=1, min_flags=0).counts[0].sum() == 0


def test_first_checkpoint_flip_cannot_count():
    # every image changes at checkpoint 1 after a single checkpoint, then stays: with d=1 nothing
    # counts (held 1 checkpoint, not more than 1)
    c = np.zeros((6, 10), dtype=bool)
    c[1:] = True
    res = anomalies(c, np.zeros(10, dtype=int), d=1, threshold=1, min_flags=0)
    assert res.counts.sum() == 0 and len(res) == 0


def test_repeated_stable_flips_all_count():
    # one image alternating every 3 checkpoints: with d=2 each flip (after 3) counts
    seq = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    c = np.repeat(seq[:, None], 5, axis=1)  # 5 identical images of one class
    res = anomalies(c, np.full(5, 7), d=2, threshold=5, min_flags=2)
    assert res.frame["checkpoint"].tolist() == [3, 6, 9, 12]
    assert res.frame["class"].tolist() == [7, 7, 7, 7]
    assert res.frame["n_to_right"].tolist() == [5, 0, 5, 0]
    # with d=3 none of them is stable
    assert anomalies(c, np.full(5, 7), d=3, threshold=1, min_flags=0).counts.sum() == 0


# --------------------------------------------------------------------------------------------
# brute force: a per-image Python loop
# --------------------------------------------------------------------------------------------
def brute_force(correct, labels, steps, d, threshold, min_flags, direction):
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
    res = anomalies(correct, labels, steps=steps, d=d, threshold=threshold,
                    min_flags=min_flags, direction=direction)
    assert len(rows) > 0  # the case is not vacuous
    assert _rows(res) == rows
    np.testing.assert_array_equal(res.to_wrong, tw)
    np.testing.assert_array_equal(res.to_right, tr)


def test_blocked_processing_equals_unblocked(monkeypatch):
    rng = np.random.default_rng(5)
    correct = _markov(rng, 60, 200, 0.1)
    whole = stable_flips(correct, 2)
    monkeypatch.setattr(anomaly_mod, "_BLOCK_CELLS", 60 * 7)  # 7 images per block
    blocked = stable_flips(correct, 2)
    for a, b in zip(whole, blocked, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(whole[0]) > 0


def test_stable_flips_coordinates_hand_case():
    t, n, right = stable_flips(CORRECT, 2)
    got = list(zip(t.tolist(), n.tolist(), right.tolist(), strict=True))
    assert got == [(3, 0, True), (3, 1, True), (4, 4, False), (4, 5, False), (6, 0, False),
                   (6, 1, False), (7, 7, True), (9, 0, True), (9, 1, True), (11, 3, False)]


# --------------------------------------------------------------------------------------------
# defaults, inputs, errors
# --------------------------------------------------------------------------------------------
def test_default_d_scales_with_t():
    assert [default_d(t) for t in (2, 12, 49, 50, 100, 1000, 1025, 100_000)] == [
        1, 1, 1, 2, 4, 40, 40, 40
    ]
    rng = np.random.default_rng(0)
    c = _markov(rng, 100, 30, 0.1)
    assert anomalies(c, np.zeros(30, dtype=int)).d == 4
    assert anomalies(c, np.zeros(30, dtype=int), d=7).d == 7


def test_accepts_01_ints_and_default_steps():
    res = anomalies(CORRECT.astype(np.int8), LABELS, d=2, threshold=2, min_flags=2)
    assert res.frame["step"].tolist() == [3, 6, 9]
    np.testing.assert_array_equal(res.steps, np.arange(12))


def test_empty_result_has_columns():
    res = anomalies(np.ones((10, 4), dtype=bool), [0, 0, 1, 1])
    assert len(res) == 0
    assert list(res.to_frame().columns) == [
        "step", "checkpoint", "class", "n_flips", "n_to_wrong", "n_to_right", "images"
    ]
    assert res.counts.shape == (10, 2)


def test_input_errors():
    with pytest.raises(InputError, match="2-D"):
        anomalies(np.ones(5, dtype=bool), [0] * 5)
    with pytest.raises(InputError, match="True/False"):
        anomalies(np.full((3, 2), 2), [0, 1])
    with pytest.raises(InputError, match="one class per image"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1, 2])
    with pytest.raises(InputError, match="strictly increasing"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1], steps=[0, 2, 2])
    with pytest.raises(InputError, match="one step number per checkpoint"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1], steps=[0, 2])
    with pytest.raises(InputError, match="Did you mean 'to_wrong'"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1], direction="to_wron")
    with pytest.raises(InputError, match="d must be"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1], d=-1)
    with pytest.raises(InputError, match="threshold"):
        anomalies(np.ones((3, 2), dtype=bool), [0, 1], threshold=0)
    with pytest.raises(InputError, match="integer class"):
        anomalies(np.ones((3, 2), dtype=bool), ["a", "b"])


def test_warns_when_d_too_long_for_run():
    with pytest.warns(UserWarning, match="no anomaly can be found"):
        res = anomalies(CORRECT, LABELS, d=11, threshold=1, min_flags=0)
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
    res = anomalies(CORRECT, LABELS, steps=STEPS, d=2, threshold=2, min_flags=1)
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
