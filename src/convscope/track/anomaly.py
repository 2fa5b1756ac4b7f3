"""Anomaly iterations: classes whose images flip en masse after having been stable (DeepTracker).

DeepTracker (Liu et al. 2018) records, for every dumped checkpoint, whether each validation image is
classified correctly. Each image is then a 0/1 sequence over checkpoints. Most images settle down
during training; when *many images of one class* that had been stable for a long time all change
state at the *same* checkpoint, something happened to that class at that iteration (a bad batch, a
learning-rate step, a filter that changed abruptly). Such a (checkpoint, class) is an *anomaly*.

Definitions used here (``correct: [T, N]``, checkpoint index ``i`` in ``0 .. T-1``):

* A **flip** of image ``n`` at checkpoint ``i >= 1`` is ``correct[i, n] != correct[i-1, n]``.
  Checkpoint 0 has no predecessor, so nothing flips there.
* The **run length before the flip** is the number of consecutive checkpoints, ending at ``i-1``,
  over which the image held ``correct[i-1, n]``. Runs that start at checkpoint 0 count only the
  observed checkpoints (what happened before the first checkpoint is unknown).
* A flip is **stable** (it counts) when that run length is *more than* ``d``: the image had held
  the old state for at least ``d + 1`` checkpoints.
* A stable flip is **confirmed** after ``confirm`` checkpoints when the image also keeps its new
  state at ``i + 1 .. i + confirm``. With ``confirm > 0`` only confirmed flips count, and the
  last ``confirm`` checkpoints have none yet (a flip there is judged once the later checkpoints
  are recorded). DeepTracker's rule uses ``confirm = 0``.
* Direction: a stable flip from correct to wrong is **forgotten** (``to_wrong``); from wrong to
  correct it is **learned** (``to_right``).
* An image is **at risk** at checkpoint ``i`` when it held its state at ``i - 1`` for more than
  ``d`` checkpoints (a change at ``i`` would count) and ``i <= T - 1 - confirm``;
  ``at_risk[i, c]`` counts the class's images at risk in the selected direction (held correct
  for ``to_wrong``, wrong for ``to_right``).

Which cells are anomalies (``method``):

* ``"count"``, DeepTracker's rule (Liu et al. 2018): a (checkpoint, class) is **flagged** when at
  least ``threshold`` of the class's images make a stable flip there in the selected
  ``direction``; a class flagged fewer than ``min_flags`` (2) times over the whole run is dropped
  (one isolated burst is treated as noise). Early in training, and for classes that are still
  being learned, many images flip at every checkpoint, so this rule floods: on a healthy run of
  the demo it flags most checkpoints of the first half of training in every class.
* ``"calibrated"`` (default): a cell is compared with *the same class's* flip rate at *that
  stage of training*. What it counts by default: **forgetting** (``direction="to_wrong"``) that
  is **confirmed** for ``confirm = min(d, 2)`` checkpoints, i.e. a change from one stable state
  to another (held more than ``d`` checkpoints before the flip, kept ``d`` more after it, capped
  at 2 so that a report waits at most 2 checkpoints). Both choices come from what separates a
  damaged class from a class that has not settled, measured on real training
  (``benchmarks/bench_anomaly.py``, ``docs/tracking.md``). (1) A class that has not settled
  swings: tens of its images go wrong together and come back one or two checkpoints later, again
  and again. Its swings are as large as the damage of corrupting its labels (in one Shapes run
  the corruption turns 17 stable images wrong; the same class had turned 19 wrong two checkpoints
  earlier), so a count cannot tell them apart; whether the images *stay* wrong can (the
  corruption's all do, the swing's do not), and so does the class's baseline, now made of the
  rare swings that last. (2) Learning is the direction training moves in: every image starts
  wrong and is learned once, and a class that swung for a while is often learned for good in one
  burst. Such a burst has the same signature as damage in reverse (more extreme, even: 19
  images learned for good where 0.2 were expected), so no test that treats both directions
  alike can flag the damage and leave a healthy run quiet. Forgetting what had been learned
  stably is what healthy training rarely does (Toneva et al. 2019's forgetting events), and
  what corrupted labels, a bad batch or a learning-rate spike do. ``direction="both"`` (or
  ``"to_right"``) tests the other flips the same way, and ``confirm=0`` gives DeepTracker's
  unconfirmed flips. Baseline: the class's stable flips ``K_nb`` and images at risk ``N_nb``
  over the ``window`` checkpoints on each side, the cell itself left out and so are the
  neighbours with the most and the fewest flips (a burst spread over two checkpoints does not
  hide in its own baseline). Expected count ``mu = n_i (K_nb + 1/2) / N_nb``. The observed count
  ``k`` is then judged as a negative binomial of mean ``mu`` and variance ``mu + s mu^2``, a
  Poisson count whose rate is uncertain by a Gamma factor of relative variance
  ``s = sigma2_stage + 1 / (K_nb + 1/2)``: the second term is the baseline's own uncertainty (the
  posterior of a Poisson rate after ``K_nb`` events, Jeffreys' prior), the first how much the
  classes' rates wander from checkpoint to checkpoint at that stage of training (training is
  bursty: large counts vary in proportion, not only by Poisson noise). ``sigma2_stage`` is the
  value at which the *median* squared Pearson residual of all classes' cells above their baseline
  within ``4 window`` checkpoints equals 0.455, the median of chi-square(1): a few anomalies
  among many cells do not inflate it, nor do a burst's neighbours, whose baselines it inflates
  (it needs 10 cells with ``mu >= 2``, 5 of them above, and half of the stage's tested cells:
  where such cells are few they are the neighbours of bursts, not the stage; sparse stages take
  the run's value, and sparse runs, as confirmed forgetting usually is, 0: the count is then
  judged by the posterior predictive of the neighbours' rate alone).
  The p-values ``P(X >= k)`` of all tested cells of all classes go through
  Benjamini-Hochberg; a cell is flagged when its q-value is at most ``fdr`` (0.05) and it has at
  least ``threshold`` flips. On a stationary simulated flip process the flagged cells are false
  on average at well under ``fdr``; see ``docs/tracking.md`` for the benchmark on real training.

Everything is vectorised: run lengths come from a running maximum of change indices along the
checkpoint axis, confirmation from the change mask shifted by 1 .. ``confirm`` checkpoints (a
running count of changes for long confirmations), flip counts from one ``bincount`` over the
(sparse) stable flips, images at risk from per-class column sums (the columns sorted by
class). The images are processed in column blocks so that memory stays bounded for
``1,000 x 10,000``-sized inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InputError, suggest

__all__ = [
    "AnomalyResult",
    "anomalies",
    "bh_qvalues",
    "negbin_sf",
    "default_confirm",
    "default_d",
    "default_window",
    "stable_flips",
]

Direction = Literal["both", "to_wrong", "to_right"]
_DIRECTIONS = ("both", "to_wrong", "to_right")
Method = Literal["calibrated", "count"]
_METHODS = ("calibrated", "count")
#: Frame columns of :attr:`AnomalyResult.frame`, in order (DeepTracker's), then EXTRA_COLUMNS.
ANOMALY_COLUMNS = ("step", "checkpoint", "class", "n_flips", "n_to_wrong", "n_to_right", "images")
#: The calibrated test's columns, after ANOMALY_COLUMNS.
EXTRA_COLUMNS = ("expected", "p_value", "q_value")
#: Cells (checkpoints x images) handled per block; bounds the temporaries to a few tens of MB.
_BLOCK_CELLS = 4_000_000


def default_d(n_checkpoints: int) -> int:
    """Default stability length ``d`` for a run of ``n_checkpoints`` checkpoints.

    ``d = max(1, min(40, n_checkpoints // 25))``.

    Reasoning: DeepTracker used ``d`` of about 40 on runs with on the order of a thousand dumped
    checkpoints, i.e. an image must have held its state for roughly 4 % of the recorded run before
    a change of state is surprising. ``n_checkpoints // 25`` keeps that 4 % proportion for shorter
    runs, so a 100-checkpoint run uses ``d = 4`` rather than a ``d`` no flip could ever exceed.
    The cap of 40 keeps very long runs at DeepTracker's setting (a longer ``d`` would only hide
    anomalies late in training), and the floor of 1 means that a one-checkpoint blip never counts
    as "stable". Pass ``d=`` to :func:`anomalies` to override.
    """
    t = int(n_checkpoints)
    return max(1, min(40, t // 25))


def default_confirm(d: int) -> int:
    """Default confirmation length of the calibrated rule: ``min(d, 2)`` checkpoints.

    A flip then goes from a stable state to a stable state: the image held the old state for
    more than ``d`` checkpoints and keeps the new one at the next ``d`` checkpoints (``d + 1``
    checkpoints in all, counting the flip's own), DeepTracker's stability (Liu et al. 2018) on
    both sides of the flip. It is capped at 2 so that an anomaly is reported at most 2 checkpoints
    after it happens, whatever ``d``: on a 1,000-checkpoint run ``d = 40`` would otherwise hold a
    report back by 40 checkpoints."""
    return min(int(d), 2)


def as_correct(correct: Any) -> np.ndarray:
    arr = np.asarray(correct)
    if arr.ndim != 2:
        raise InputError(
            f"correct must be a 2-D array [T checkpoints, N images], got shape {arr.shape}; "
            "stack one boolean row per checkpoint (e.g. np.stack(rows))."
        )
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise InputError(
            f"correct must be boolean (True = classified correctly), got dtype {arr.dtype}; "
            "pass (predictions == labels)."
        )
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise InputError(
            f"correct must hold only True/False (or 0/1), found value {arr[bad][0]!r}; "
            "pass (predictions == labels), not the predictions themselves."
        )
    return arr.astype(bool)


def as_labels(labels: Any, n: int) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise InputError(
            f"labels must be a 1-D array with one class per image ({n} images), got shape "
            f"{lab.shape}; pass the validation labels in the column order of `correct`."
        )
    if lab.dtype.kind not in "iub":
        if lab.dtype.kind == "f" and n and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise InputError(
                f"labels must be integer class indices, got dtype {lab.dtype}; "
                "map class names to integers first (e.g. pd.factorize)."
            )
    return lab


def _as_steps(steps: Any, t: int) -> np.ndarray:
    if steps is None:
        return np.arange(t, dtype=np.int64)
    st = np.asarray(steps)
    if st.ndim != 1 or st.shape[0] != t:
        raise InputError(
            f"steps must be a 1-D array with one step number per checkpoint ({t} checkpoints), "
            f"got shape {st.shape}; pass the training step of each row of `correct`."
        )
    if t > 1 and not np.all(np.diff(st) > 0):
        raise InputError(
            "steps must be strictly increasing (one row of `correct` per checkpoint, in training "
            "order); sort the checkpoints by step and drop duplicates."
        )
    return st


def stable_flips(correct: Any, d: int, confirm: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All stable flips of a ``[T, N]`` correctness matrix, as sparse coordinates.

    A flip of image ``n`` at checkpoint ``i`` is stable when the image held the state it leaves for
    more than ``d`` consecutive checkpoints ending at ``i - 1`` (see the module docstring).

    Args:
        correct: ``[T, N]`` boolean (True = classified correctly at that checkpoint).
        d: an image must have held its previous state for more than ``d`` checkpoints; ``d >= 0``
            (``d = 0`` counts every flip).
        confirm: the image must also keep its new state at the next ``confirm`` checkpoints
            (default 0: DeepTracker's flips); flips in the last ``confirm`` checkpoints are not
            confirmed yet and are left out.

    Returns:
        ``(checkpoint, image, to_right)``: three 1-D arrays of equal length, one entry per stable
        flip, sorted by checkpoint then image. ``to_right`` is True for wrong -> correct.
    """
    c = as_correct(correct)
    d = int(d)
    if d < 0:
        raise InputError(f"d must be >= 0 (got {d}); use 0 to count every flip.")
    confirm = _int_param("confirm", confirm, 0, " 0 counts every flip.")
    ti, ni, right, _, _ = _scan(c, d, None, 0, confirm)
    return ti, ni, right


def _scan(
    c: np.ndarray, d: int, bounds: np.ndarray | None, n_cls: int, confirm: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stable flips of ``c`` (as :func:`stable_flips`) and, with ``bounds``, the images *at risk*
    of one: ``[T, C]`` counts of the images of each class that, at checkpoint ``i``, had held a
    wrong (``risk_right``) or correct (``risk_wrong``) state for more than ``d`` checkpoints ending
    at ``i - 1``, so that a change at ``i`` would be a stable flip. Row 0 is zero. With
    ``bounds`` the columns of ``c`` must be sorted by class, class ``j`` holding columns
    ``bounds[j] .. bounds[j + 1] - 1`` (``bounds`` has ``n_cls + 1`` entries). With ``confirm > 0`` a flip at ``i`` counts only
    when the image keeps its new state at ``i + 1 .. i + confirm``; at checkpoints
    ``i > T - 1 - confirm`` no flip can be confirmed yet, so nothing counts and nothing is at risk
    there."""
    t, n = c.shape
    risk_right = np.zeros((t, n_cls), dtype=np.int64)
    risk_wrong = np.zeros((t, n_cls), dtype=np.int64)
    if t < 2 or n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=bool), risk_right, risk_wrong
    block = max(1, _BLOCK_CELLS // t)
    rows = np.arange(t, dtype=np.int32)[:, None]
    ts: list[np.ndarray] = []
    ns: list[np.ndarray] = []
    for lo in range(0, n, block):
        cb = c[:, lo : lo + block]
        change = np.empty(cb.shape, dtype=bool)
        change[0] = True  # a run starts at the first checkpoint
        np.not_equal(cb[1:], cb[:-1], out=change[1:])
        # index of the checkpoint where the current run started: running max of change indices
        start = np.where(change, rows, np.int32(0))
        np.maximum.accumulate(start, axis=0, out=start)
        # run length ending at checkpoint i is i - start + 1; a flip at i counts if the run ending
        # at i - 1 is longer than d, i.e. (i - 1) - start[i - 1] + 1 > d
        eligible = start[:-1] < rows[:-1] - (d - 1)  # held = i - 1 - start + 1 > d
        if confirm:
            eligible &= rows[1:] <= t - 1 - confirm  # flips there cannot be confirmed yet
        counted = change[1:] & eligible  # row r: a flip at checkpoint i = r + 1
        if confirm and t - 1 - confirm > 0:
            # confirmed: no change at i + 1 .. i + confirm (rows past t - 1 - confirm are out)
            m = t - 1 - confirm
            if confirm <= 4:
                for k in range(1, confirm + 1):
                    counted[:m] &= ~change[1 + k : 1 + k + m]
            else:  # changes in (i, i + confirm] from a running count of changes
                cs = np.cumsum(change, axis=0, dtype=np.int32)
                counted[:m] &= cs[1 + confirm : t] == cs[1 : 1 + m]
        ti, ni = np.nonzero(counted)
        ts.append(ti.astype(np.int64) + 1)
        ns.append(ni.astype(np.int64) + lo)
        if bounds is not None:
            held_ok = eligible & cb[:-1]
            hi = lo + cb.shape[1]
            for j in range(n_cls):  # the classes whose columns meet this block
                a, b = max(bounds[j], lo) - lo, min(bounds[j + 1], hi) - lo
                if a < b:
                    n_ok = np.add.reduce(held_ok[:, a:b].view(np.uint8), axis=1, dtype=np.int64)
                    n_all = np.add.reduce(eligible[:, a:b].view(np.uint8), axis=1, dtype=np.int64)
                    risk_wrong[1:, j] += n_ok
                    risk_right[1:, j] += n_all - n_ok
    ti = np.concatenate(ts)
    ni = np.concatenate(ns)
    order = np.lexsort((ni, ti))
    ti, ni = ti[order], ni[order]
    return ti, ni, c[ti, ni], risk_right, risk_wrong


def negbin_sf(k: Any, mu: Any, sigma2: Any = 0.0) -> np.ndarray:
    """``P(X >= k)`` for a negative binomial ``X`` of mean ``mu`` and variance
    ``mu + sigma2 * mu**2`` (a Poisson count whose rate is scaled by a Gamma factor of mean 1 and
    variance ``sigma2``), elementwise. ``sigma2 = 0`` is the Poisson distribution.

    Computed with regularised incomplete functions: Poisson ``P(X >= k) = P(k, mu)`` (lower
    incomplete gamma); negative binomial of size ``r = 1 / sigma2`` and success probability
    ``q = r / (r + mu)``: ``P(X >= k) = I_{1-q}(k, r)`` (incomplete beta), which equal
    ``scipy.stats.poisson.sf(k - 1, mu)`` and ``scipy.stats.nbinom.sf(k - 1, r, q)``.
    ``k <= 0`` gives 1; ``mu = 0`` gives 0 for ``k >= 1``.
    """
    from scipy.special import betainc, gammainc

    k, mu, s2 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (k, mu, sigma2)))
    out = np.ones(k.shape, dtype=np.float64)
    pos = k > 0
    out[pos & (mu <= 0)] = 0.0
    live = pos & (mu > 0)
    pois = live & (s2 <= 0)
    out[pois] = gammainc(k[pois], mu[pois])
    nb = live & (s2 > 0)
    r = 1.0 / s2[nb]
    out[nb] = betainc(k[nb], r, mu[nb] / (r + mu[nb]))
    return out


def bh_qvalues(pvalues: Any) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of a 1-D array; NaN entries are not tests
    (they stay NaN and do not count in ``m``). Rejecting ``q <= alpha`` controls the false
    discovery rate at ``alpha`` (Benjamini & Hochberg 1995)."""
    p = np.asarray(pvalues, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


def default_window(n_checkpoints: int) -> int:
    """Default half-width of the baseline window of the calibrated test:
    ``max(3, ceil(n_checkpoints / 20))`` checkpoints on each side (the neighbouring 10 % of the
    run, at least 6 checkpoints)."""
    return max(3, -(-int(n_checkpoints) // 20))


def _window_sums(x: np.ndarray, w: int) -> np.ndarray:
    """``[T, C]``: sum of ``x`` over rows ``i - w .. i + w`` (clipped), minus row ``i``."""
    t = x.shape[0]
    cs = np.zeros((t + 1,) + x.shape[1:], dtype=np.float64)
    np.cumsum(x, axis=0, out=cs[1:])
    idx = np.arange(t)
    lo, hi = np.clip(idx - w, 0, t), np.clip(idx + w + 1, 0, t)
    return cs[hi] - cs[lo] - x


def _neighbour_extreme(x: np.ndarray, w: int, kind: str) -> np.ndarray:
    """``[T, C]``: max (or min) of ``x`` over rows ``i - w .. i + w`` (clipped), row ``i`` left
    out; ``nan`` entries of ``x`` are skipped (0 where nothing is left)."""
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    big = np.inf if kind == "min" else -np.inf
    f = minimum_filter1d if kind == "min" else maximum_filter1d
    x = np.where(np.isnan(x), big, x)
    kw = {"size": w, "axis": 0, "mode": "constant", "cval": big}
    trailing = f(x, origin=(w - 1) // 2, **kw)  # rows i - w + 1 .. i
    leading = f(x, origin=-(w // 2), **kw)  # rows i .. i + w - 1
    pick = np.minimum if kind == "min" else np.maximum
    out = np.full_like(x, big)
    out[1:] = trailing[:-1]
    out[:-1] = pick(out[:-1], leading[1:])
    return np.where(np.isinf(out), 0.0, out)


#: Cells with at least this expected count inform the dispersion estimate ...
_MIN_EXPECTED = 2.0
#: ... and a stage needs this many of them above their baseline, twice as many in all, and half
#: of its tested cells, for an estimate of its own (else: the run's; a run without them: 0).
_MIN_CELLS = 5
#: A stage of training, for the dispersion: this many baseline windows on each side.
_STAGE_SPAN = 4
#: Pseudo-count of flips added to a baseline, so that an empty neighbourhood still has a rate.
_PRIOR_FLIPS = 0.5
#: Median of the chi-square distribution with one degree of freedom.
_CHI2_1_MEDIAN = 0.454936423119572


def _dispersion_needed(k: np.ndarray, mu: np.ndarray, base_cv2: np.ndarray) -> np.ndarray:
    """Per cell, the least stage variance ``sigma2`` at which its squared Pearson residual
    ``(k - mu)**2 / (mu + (sigma2 + base_cv2) * mu**2)`` is at most 0.455, the median of
    chi-square(1) (negative where Poisson noise and the baseline's uncertainty already cover
    it). Each residual falls as ``sigma2`` grows, so the ``sigma2`` at which *the median*
    residual of a set of cells is 0.455 is the median of their values."""
    return ((k - mu) ** 2 / _CHI2_1_MEDIAN - mu) / mu**2 - base_cv2


def _stage_dispersion(k: np.ndarray, mu: np.ndarray, base_cv2: np.ndarray, usable: np.ndarray,
                      window: int, tested: np.ndarray | None = None) -> np.ndarray:
    """``[T]`` Gamma variance ``sigma2`` of the flip rate at each stage of training: the value at
    which the median squared Pearson residual of the usable cells *above their baseline*
    (``k > mu``) of all classes at checkpoints ``i - 4w .. i + 4w`` equals 0.455, the median of
    chi-square(1), i.e. the median of :func:`_dispersion_needed` over them (at least 0); computed
    every ``w // 2`` checkpoints, each checkpoint taking the nearest. Only the upper half is used:
    a burst inflates its neighbours' baselines, so their counts fall short of ``mu``, which must
    not read as over-dispersion; by symmetry the squared residuals of the upper half follow the
    same law as all of them. The bursts themselves, a few cells among many, move a median little.
    That stands for the stage only when the usable cells are the stage, not a selection of it:
    a stage needs at least 10 usable cells, 5 of them above their baseline, and at least half of
    its tested cells usable (``tested``, default ``usable``); else it takes the whole run's
    value, and a run that fails the same test gets 0 (the baseline's own uncertainty remains:
    the count is then the posterior predictive of the neighbours' rate, Jeffreys' prior). Sparse
    counts, such as confirmed forgetting, reach ``mu >= 2`` only next to bursts, whose flips
    inflate the baselines there: such cells are a biased few, and their median is the bursts'
    own size (on Shapes runs, 5 of 7 usable cells among 380 tested gave 9.5, and 5 of 11 gave 32,
    each hiding the corrupted class)."""
    t = k.shape[0]
    up = usable & (k > mu)
    need = np.where(up, _dispersion_needed(k, np.where(up, mu, 1.0), base_cv2), np.nan)
    n_usable = usable.sum(axis=1)
    n_tested = (usable if tested is None else tested).sum(axis=1)

    def enough(n_up: int, n_all: int, n_tests: int) -> bool:
        return n_up >= _MIN_CELLS and n_all >= 2 * _MIN_CELLS and 2 * n_all >= n_tests

    everywhere = need[up]
    overall = (max(0.0, float(np.median(everywhere)))
               if enough(len(everywhere), int(n_usable.sum()), int(n_tested.sum())) else 0.0)
    half = _STAGE_SPAN * window
    stride = max(1, window // 2)
    centres = np.arange(0, t, stride)
    vals = np.empty(len(centres))
    for j, i in enumerate(centres):
        rows = slice(max(0, i - half), i + half + 1)
        cells = need[rows]
        cells = cells[~np.isnan(cells)]
        vals[j] = (max(0.0, float(np.median(cells)))
                   if enough(len(cells), int(n_usable[rows].sum()), int(n_tested[rows].sum()))
                   else overall)
    nearest = np.minimum((np.arange(t) + stride // 2) // stride, len(centres) - 1)
    return vals[nearest]


def _calibrate(counts: np.ndarray, at_risk: np.ndarray, window: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (checkpoint, class): p-value of the observed stable flips against the class's own
    rate over the neighbouring checkpoints, the expected count, and the stage dispersion of each
    checkpoint.

    Baseline of cell ``(i, c)``: the class's flips ``K_nb`` and images at risk ``N_nb`` at
    checkpoints ``i - w .. i + w`` with images at risk, ``i`` left out, and so are the neighbours
    with the most and the fewest flips (a trimmed sum: a burst spread over two checkpoints must
    not hide itself in its own baseline; the images at risk of the two left out are taken as the
    neighbours' mean). Expected count ``mu = n_i * (K_nb + 0.5) / N_nb`` (half a flip of prior, so
    that a burst after a quiet stretch is compared with a small rate, not with zero). Cells with
    no image at risk, or fewer than 3 neighbours with images at risk, are not tested (p = NaN).

    The count is a negative binomial of mean ``mu`` and variance ``mu + s * mu**2``: the flip
    rate is uncertain by a Gamma factor of relative variance ``s = sigma2 + 1 / (K_nb + 1/2)``.
    The second term is the baseline's own uncertainty (the posterior of a Poisson rate after
    ``K_nb`` events under Jeffreys' prior), the first how much the rates of classes wander from
    checkpoint to checkpoint at that stage of training (training is bursty: large counts vary in
    proportion, not only by Poisson noise), estimated by :func:`_stage_dispersion` over the cells
    with ``mu >= 2`` (smaller expected counts are too discrete for a residual to mean much).
    """
    k = counts.astype(np.float64)
    n = at_risk.astype(np.float64)
    m = _window_sums((n > 0).astype(np.float64), window)  # neighbours with images at risk
    k_at = np.where(n > 0, k, np.nan)
    trim = _neighbour_extreme(k_at, window, "max") + _neighbour_extreme(k_at, window, "min")
    k_nb = _window_sums(k, window) - trim
    with np.errstate(invalid="ignore", divide="ignore"):
        n_nb = np.where(m > 2, _window_sums(n, window) * (m - 2) / m, 0.0)
    tested = (n > 0) & (n_nb > 0)
    tested[0] = False
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(tested, n * (k_nb + _PRIOR_FLIPS) / n_nb, np.nan)
    # the baseline rate is itself uncertain: with a Jeffreys prior its posterior is Gamma with
    # shape K_nb + 1/2, a relative variance 1 / (K_nb + 1/2) that adds to the stage's
    base_cv2 = 1.0 / (k_nb + _PRIOR_FLIPS)
    usable = tested & (mu >= _MIN_EXPECTED)
    sigma2 = _stage_dispersion(k, mu, base_cv2, usable, window, tested)
    p = np.full(counts.shape, np.nan)
    p[tested] = negbin_sf(k[tested], mu[tested], (sigma2[:, None] + base_cv2)[tested])
    return p, mu, sigma2


@dataclass
class AnomalyResult:
    """Anomaly iterations found by :func:`anomalies`.

    Attributes:
        frame: one row per kept anomalous (checkpoint, class), sorted by checkpoint then class,
            with columns ``step`` (training step of the checkpoint), ``checkpoint`` (row index into
            ``correct``), ``class`` (label value), ``n_flips`` (stable flips in the selected
            ``direction``), ``n_to_wrong`` / ``n_to_right`` (stable flips correct -> wrong /
            wrong -> correct, whatever the direction), ``images`` (sorted list of the image
            indices counted in ``n_flips``), then ``expected`` (flips expected from the class's
            rate over the neighbouring checkpoints), ``p_value`` and ``q_value`` (the calibrated
            test's p-value and Benjamini-Hochberg q-value; NaN where the cell is not testable).
        counts: ``[T, C]`` int, stable (and, with ``confirm``, confirmed) flips per
            (checkpoint, class) in the selected direction.
        to_wrong: ``[T, C]`` int, counted correct -> wrong ("forgotten") flips.
        to_right: ``[T, C]`` int, counted wrong -> correct ("learned") flips.
        flagged: ``[T, C]`` bool, the kept anomalies.
        classes: ``[C]`` the class labels of the columns (sorted unique ``labels``).
        steps: ``[T]`` the step of each checkpoint.
        d, threshold, min_flags, direction, method, fdr, window, confirm: the parameters used
            (after defaulting).
        dropped_classes: classes that passed the test somewhere but were flagged fewer than
            ``min_flags`` times, and so were dropped.
        at_risk: ``[T, C]`` int, images of the class that could make a stable flip in the
            selected direction at that checkpoint (held their state for more than ``d``, and the
            checkpoint is at most ``T - 1 - confirm``).
        expected, pvalues, qvalues: ``[T, C]`` float, the calibrated test of every cell (NaN
            where not testable), computed whatever the ``method``.
        dispersion: ``[T]`` the stage's Gamma variance ``sigma2`` of the flip rate at each
            checkpoint (0 = Poisson; see the module docstring).
    """

    frame: pd.DataFrame
    counts: np.ndarray
    to_wrong: np.ndarray
    to_right: np.ndarray
    flagged: np.ndarray
    classes: np.ndarray
    steps: np.ndarray
    d: int
    threshold: int
    min_flags: int
    direction: str
    dropped_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    method: str = "calibrated"
    fdr: float = 0.05
    window: int = 3
    at_risk: np.ndarray | None = None
    expected: np.ndarray | None = None
    pvalues: np.ndarray | None = None
    qvalues: np.ndarray | None = None
    dispersion: np.ndarray | None = None
    confirm: int = 0

    @property
    def anomaly_steps(self) -> np.ndarray:
        """Sorted unique steps with at least one kept anomaly."""
        return np.unique(self.frame["step"].to_numpy())

    @property
    def params(self) -> dict[str, Any]:
        """The parameters used: ``method``, ``d``, ``threshold``, ``min_flags``, ``direction``,
        ``confirm``, and for the calibrated method ``fdr`` and ``window``."""
        out: dict[str, Any] = {
            "method": self.method,
            "d": self.d,
            "threshold": self.threshold,
            "min_flags": self.min_flags,
            "direction": self.direction,
            "confirm": self.confirm,
        }
        if self.method != "count":
            out.update(fdr=self.fdr, window=self.window)
        return out

    def classes_at(self, step: Any) -> list:
        """Classes flagged at training step ``step`` (empty list if none)."""
        sel = self.frame["step"].to_numpy() == step
        return self.frame["class"].to_numpy()[sel].tolist()

    def to_frame(self) -> pd.DataFrame:
        """The anomalies as a new DataFrame (a copy of :attr:`frame`)."""
        return self.frame.copy()

    def __len__(self) -> int:
        return len(self.frame)


def _int_param(name: str, value: Any, lo: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise InputError(f"{name} must be an integer >= {lo} (got {value!r}).{hint}")
    return int(value)


def anomalies(
    correct: Any,
    labels: Any,
    *,
    steps: Any = None,
    d: int | None = None,
    threshold: int = 5,
    min_flags: int | None = None,
    direction: Direction | None = None,
    method: Method = "calibrated",
    fdr: float = 0.05,
    window: int | None = None,
    confirm: int | None = None,
) -> AnomalyResult:
    """Find anomaly iterations: many images of one class flipping after having been stable.

    Two rules decide which (checkpoint, class) cells are anomalies (the module docstring has the
    details):

    * ``method="calibrated"`` (default): a cell is flagged when its stable flips (by default:
      forgetting, confirmed for ``min(d, 2)`` checkpoints) stand out against the class's own
      rate of such flips over the neighbouring ``window`` checkpoints on each side
      (a negative-binomial tail probability that allows for the baseline's uncertainty and for
      how bursty all classes are at that stage of training), at a false discovery rate ``fdr``
      (Benjamini-Hochberg over every tested cell), and it has at least ``threshold`` flips.
    * ``method="count"``: DeepTracker's rule (Liu et al. 2018): flagged when at least
      ``threshold`` of the class's images flip stably there, whatever the class's usual rate.

    Args:
        correct: ``[T, N]`` boolean (or 0/1): ``correct[i, n]`` is True when image ``n`` is
            classified correctly at checkpoint ``i``. Rows are checkpoints in training order.
        labels: ``[N]`` integer class of each image.
        steps: ``[T]`` strictly increasing training step of each checkpoint; default
            ``arange(T)``.
        d: stability length. A flip at checkpoint ``i`` counts only when the image held its
            previous state for *more than* ``d`` consecutive checkpoints ending at ``i - 1``.
            Default :func:`default_d` ``(T) = max(1, min(40, T // 25))`` (DeepTracker used about 40
            on long runs). Runs that began at checkpoint 0 count observed checkpoints only, and a
            flip at checkpoint 0 is impossible (no previous state).
        threshold: the fewest stable flips an anomaly has (DeepTracker's rule: the whole test;
            calibrated rule: a floor under the test, so that 2 flips where 0 are usual is not
            reported). Default 5.
        min_flags: classes flagged fewer than this many times in total are dropped. Default: 2
            for ``"count"`` (DeepTracker: one isolated burst is noise), 1 for ``"calibrated"``
            (the test already weighs one burst against the class's own rate; a class corrupted
            once is flagged once).
        direction: which stable flips count: ``"to_wrong"`` (correct -> wrong, "forgotten"),
            ``"to_right"`` (wrong -> correct, "learned") or ``"both"``. Default: ``"to_wrong"``
            for ``"calibrated"`` (learning bursts are how training proceeds; forgetting is the
            sign of damage, see the module docstring), ``"both"`` for ``"count"``
            (DeepTracker). Both directions are always reported in ``n_to_wrong`` /
            ``n_to_right`` (of the counted, i.e. stable and confirmed, flips).
        method: ``"calibrated"`` (default) or ``"count"``, see above.
        fdr: the false discovery rate of the calibrated rule, in (0, 1); default 0.05 (on
            average at most 5 % of its flagged cells are chance fluctuations of the class's
            usual rate). Ignored by ``"count"``.
        window: checkpoints on each side of a cell that give the class's baseline rate; default
            :func:`default_window` ``(T) = max(3, ceil(T / 20))``. Ignored by ``"count"``.
        confirm: a flip counts only when the image keeps its new state at the next ``confirm``
            checkpoints; the last ``confirm`` checkpoints are then not judged yet. Default:
            :func:`default_confirm` ``(d) = min(d, 2)`` for ``"calibrated"``, 0 for ``"count"``
            (DeepTracker's flips).

    Returns:
        :class:`AnomalyResult` with the anomalies frame, ``[T, C]`` count, expected, p-value and
        q-value matrices and the parameters used.

    Example:
        >>> res = anomalies(preds == y, y, steps=ckpt_steps)      # doctest: +SKIP
        >>> res.to_frame()[["step", "class", "n_flips", "expected", "q_value"]]  # doctest: +SKIP
    """
    c = as_correct(correct)
    t, n = c.shape
    lab = as_labels(labels, n)
    st = _as_steps(steps, t)
    if method not in _METHODS:
        raise InputError(
            f"method must be one of {', '.join(map(repr, _METHODS))}, got {method!r}."
            + suggest(str(method), _METHODS)
        )
    if direction is None:
        direction = "both" if method == "count" else "to_wrong"
    if direction not in _DIRECTIONS:
        raise InputError(
            f"direction must be one of {', '.join(map(repr, _DIRECTIONS))}, got {direction!r}."
            + suggest(str(direction), _DIRECTIONS)
        )
    if d is None:
        d = default_d(t)
    elif isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0:
        raise InputError(f"d must be a non-negative integer (got {d!r}); 0 counts every flip.")
    d = int(d)
    threshold = _int_param("threshold", threshold, 1)
    if min_flags is None:
        min_flags = 2 if method == "count" else 1
    min_flags = _int_param("min_flags", min_flags, 0)
    if confirm is None:
        confirm = 0 if method == "count" else default_confirm(d)
    confirm = _int_param("confirm", confirm, 0, " It is the number of checkpoints after a flip "
                         "over which the image must keep its new state; 0 counts every flip.")
    window = default_window(t) if window is None else _int_param(
        "window", window, 1, " It is the number of checkpoints on each side of a cell.")
    if isinstance(fdr, bool) or not isinstance(fdr, int | float | np.floating) or not (
        0.0 < float(fdr) < 1.0
    ):
        raise InputError(f"fdr must be a number in (0, 1) (got {fdr!r}); 0.05 is usual.")
    fdr = float(fdr)
    if t >= 2 and d + confirm >= t - 1:
        warnings.warn(
            f"d={d} and confirm={confirm} with only {t} checkpoints: no image can hold a state "
            f"for more than {d} checkpoints before a flip and keep the new one for {confirm} "
            "after it, so no anomaly can be found; pass a smaller d (or confirm).",
            stacklevel=2,
        )

    classes, cls_idx = np.unique(lab, return_inverse=True)
    n_cls = len(classes)
    cls_idx = cls_idx.reshape(-1)
    # columns sorted by class, so that each class's images at risk are one slice's sum
    order = np.argsort(cls_idx, kind="stable")
    bounds = np.searchsorted(cls_idx[order], np.arange(n_cls + 1))
    ti, ni, right, risk_right, risk_wrong = _scan(np.take(c, order, axis=1), d, bounds, n_cls,
                                                  confirm)
    ni = order[ni]
    back = np.lexsort((ni, ti))
    ti, ni, right = ti[back], ni[back], right[back]
    ci = cls_idx[ni]
    key = ti * n_cls + ci
    size = t * n_cls
    to_right = np.bincount(key[right], minlength=size).reshape(t, n_cls)
    to_wrong = np.bincount(key[~right], minlength=size).reshape(t, n_cls)
    if direction == "both":
        counts, at_risk = to_right + to_wrong, risk_right + risk_wrong
        use = np.ones(len(ti), dtype=bool)
    elif direction == "to_wrong":
        counts, at_risk = to_wrong, risk_wrong
        use = ~right
    else:
        counts, at_risk = to_right, risk_right
        use = right

    pvalues, expected, sigma2 = _calibrate(counts, at_risk, window)
    qvalues = bh_qvalues(pvalues.reshape(-1)).reshape(t, n_cls)
    raw = counts >= threshold
    if method == "calibrated":
        raw &= qvalues <= fdr  # NaN (untested) compares False
    n_flags = raw.sum(axis=0)
    keep_cls = n_flags >= min_flags
    flagged = raw & keep_cls[None, :]
    dropped = classes[(n_flags > 0) & ~keep_cls]

    frame = _frame(flagged, counts, to_wrong, to_right, st, classes, key[use], ni[use], n_cls,
                   expected, pvalues, qvalues)
    return AnomalyResult(
        frame=frame,
        counts=counts,
        to_wrong=to_wrong,
        to_right=to_right,
        flagged=flagged,
        classes=classes,
        steps=st,
        d=d,
        threshold=threshold,
        min_flags=min_flags,
        direction=direction,
        confirm=confirm,
        dropped_classes=dropped,
        method=method,
        fdr=fdr,
        window=window,
        at_risk=at_risk,
        expected=expected,
        pvalues=pvalues,
        qvalues=qvalues,
        dispersion=sigma2,
    )


def _frame(
    flagged: np.ndarray,
    counts: np.ndarray,
    to_wrong: np.ndarray,
    to_right: np.ndarray,
    steps: np.ndarray,
    classes: np.ndarray,
    key: np.ndarray,
    img: np.ndarray,
    n_cls: int,
    expected: np.ndarray,
    pvalues: np.ndarray,
    qvalues: np.ndarray,
) -> pd.DataFrame:
    ft, fc = np.nonzero(flagged)  # row-major: sorted by checkpoint, then class
    fkey = ft * n_cls + fc
    sel = np.isin(key, fkey)
    k, im = key[sel], img[sel]
    order = np.lexsort((im, k))
    k, im = k[order], im[order]
    # fkey is sorted, and every flagged cell has >= threshold >= 1 images, so the groups of k line
    # up one to one with fkey
    cuts = np.searchsorted(k, fkey[1:]) if len(fkey) else np.zeros(0, dtype=np.int64)
    images = [g.tolist() for g in np.split(im, cuts)] if len(fkey) else []
    return pd.DataFrame(
        {
            "step": steps[ft],
            "checkpoint": ft.astype(np.int64),
            "class": classes[fc],
            "n_flips": counts[ft, fc].astype(np.int64),
            "n_to_wrong": to_wrong[ft, fc].astype(np.int64),
            "n_to_right": to_right[ft, fc].astype(np.int64),
            "images": pd.Series(images, dtype=object),
            "expected": expected[ft, fc].astype(np.float64),
            "p_value": pvalues[ft, fc].astype(np.float64),
            "q_value": qvalues[ft, fc].astype(np.float64),
        },
        columns=list(ANOMALY_COLUMNS + EXTRA_COLUMNS),
    )
