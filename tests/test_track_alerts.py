"""convscope.track.training_alerts against a hand-built stats table (every expected alert
written out by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convscope.errors import ConvscopeError
from convscope.track import ALERT_COLUMNS, ALERT_KINDS, training_alerts
from convscope.track.alerts import ALL_LAYERS


def _stats() -> pd.DataFrame:
    steps = np.arange(10, 210, 10)  # 20 recorded steps
    rows = []
    for s in steps:
        # 'a': healthy, except ratio 0.5 at 50-70 and 1e-6 at 150 (the others move at ~1e-3)
        ra = 0.5 if 50 <= s <= 70 else 1e-6 if s == 150 else 1e-3
        rows.append(("a", s, ra, 2.0))
        # 'b': gradient ~1 (median 1), explodes at 100 (25.0) and is inf at 110, vanishes at
        # 180-200 (0.001 < 1/100); NaN ratio at its first step is never flagged
        gb = 25.0 if s == 100 else np.inf if s == 110 else 1e-3 if s >= 180 else 1.0
        rows.append(("b", s, np.nan if s == 10 else 2e-3, gb))
        # 'c': a frozen layer: ratio 0 and gradient 0 throughout
        rows.append(("c", s, 0.0, 0.0))
        # 'd': healthy throughout (so the layers' median ratio stays ~1e-3)
        rows.append(("d", s, 1e-3, 1.0))
    return pd.DataFrame(rows, columns=["layer", "step", "update_ratio", "g_l2"])


def test_alerts_equal_the_hand_written_list():
    got = training_alerts(_stats())
    assert tuple(got.columns) == ALERT_COLUMNS
    want = [
        ("update_ratio_low", "c", 10, 200, 20, 0.0, 1e-5),
        ("gradient_vanishing", "c", 10, 200, 20, 0.0, 1e-10),
        ("update_ratio_high", "a", 50, 70, 3, 0.5, 1e-1),
        ("gradient_exploding", "b", 100, 110, 2, np.inf, 10.0),
        ("update_ratio_low", "a", 150, 150, 1, 1e-6, 1e-5),
        ("gradient_vanishing", "b", 180, 200, 3, 1e-3, 1e-2),
    ]
    rows = [tuple(r) for r in got.itertuples(index=False)]
    assert len(rows) == len(want)
    # sorted by first step, layer, kind
    key = sorted(want, key=lambda r: (r[2], r[1], r[0]))
    for g, w in zip(rows, key, strict=True):
        assert g[:5] == w[:5]
        np.testing.assert_allclose(g[5:], w[5:], rtol=1e-12)
    assert set(got["kind"]) <= set(ALERT_KINDS)


def test_custom_range_and_factors_and_single_column():
    s = _stats()
    got = training_alerts(s[["layer", "step", "update_ratio"]], ratio_range=(0, 1.0))
    assert got.empty  # nothing above 1, nothing below 0
    got = training_alerts(s[["layer", "step", "g_l2"]], explode_factor=30.0)
    b = got[got["layer"] == "b"]
    # 25 < 30 x median: only the inf step explodes now
    assert b[b["kind"] == "gradient_exploding"][["first_step", "last_step"]].values.tolist() \
        == [[110, 110]]


def test_order_of_rows_does_not_matter():
    s = _stats()
    a = training_alerts(s)
    b = training_alerts(s.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("bad", [
    dict(stats="x"), dict(stats=pd.DataFrame({"step": [1]})),
    dict(ratio_range=(1e-2, 1e-4)), dict(ratio_range="ab"), dict(explode_factor=-1),
    dict(vanish_factor=float("nan")), dict(vanish_floor=-1.0)])
def test_bad_input_says_what_to_do(bad):
    kw = {"stats": _stats(), **bad}
    with pytest.raises(ConvscopeError):
        training_alerts(**kw)


def test_a_decayed_learning_rate_is_one_alert_not_one_per_layer():
    """Every layer's ratio falls below the range over the last steps (a schedule ending near
    zero): one learning_rate_low row for the whole network, no per-layer rows; a layer that
    stalls while the others move is still flagged on its own."""
    rows = []
    for step in range(10, 110, 10):
        for layer in ("x", "y", "z"):
            r = 1e-3 if step <= 70 else 1e-7
            if layer == "z" and 30 <= step <= 40:
                r = 1e-8  # z stalls alone
            rows.append((layer, step, r))
    got = training_alerts(pd.DataFrame(rows, columns=["layer", "step", "update_ratio"]))
    assert [tuple(r) for r in got[["kind", "layer", "first_step", "last_step"]].itertuples(
        index=False)] == [("update_ratio_low", "z", 30, 40),
                          ("learning_rate_low", ALL_LAYERS, 80, 100)]
    # with a stall factor no layer reaches, z's stretch is not flagged
    got = training_alerts(pd.DataFrame(rows, columns=["layer", "step", "update_ratio"]),
                          stall_factor=1e6)
    assert got["kind"].tolist() == ["learning_rate_low"]
