"""Anomaly iterations: classes whose images flip en masse after having been stable (DeepTracker).

DeepTracker (Liu et al.) records, for every dumped checkpoint, whether each validation image is
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
* Direction: a stable flip from correct to wrong is **forgotten** (``to_wrong``); from wrong to
  correct it is **learned** (``to_right``).
* A (checkpoint, class) is **flagged** when at least ``threshold`` of the class's images make a
  stable flip there in the selected ``direction``. A class flagged fewer than ``min_flags`` times
  over the whole run is dropped (one isolated burst is treated as noise), as in DeepTracker.

Everything is vectorised: run lengths come from a running maximum of change indices along the
checkpoint axis, and counts from one ``bincount`` over the (sparse) stable flips. The images are
processed in column blocks so that memory stays bounded for ``1,000 x 10,000``-sized inputs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import InputError, suggest

__all__ = ["AnomalyResult", "anomalies", "default_d", "stable_flips"]

Direction = Literal["both", "to_wrong", "to_right"]
_DIRECTIONS = ("both", "to_wrong", "to_right")
#: Frame columns of :attr:`AnomalyResult.frame`, in order.
ANOMALY_COLUMNS = ("step", "checkpoint", "class", "n_flips", "n_to_wrong", "n_to_right", "images")
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


def stable_flips(correct: Any, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All stable flips of a ``[T, N]`` correctness matrix, as sparse coordinates.

    A flip of image ``n`` at checkpoint ``i`` is stable when the image held the state it leaves for
    more than ``d`` consecutive checkpoints ending at ``i - 1`` (see the module docstring).

    Args:
        correct: ``[T, N]`` boolean (True = classified correctly at that checkpoint).
        d: an image must have held its previous state for more than ``d`` checkpoints; ``d >= 0``
            (``d = 0`` counts every flip).

    Returns:
        ``(checkpoint, image, to_right)``: three 1-D arrays of equal length, one entry per stable
        flip, sorted by checkpoint then image. ``to_right`` is True for wrong -> correct.
    """
    c = as_correct(correct)
    d = int(d)
    if d < 0:
        raise InputError(f"d must be >= 0 (got {d}); use 0 to count every flip.")
    t, n = c.shape
    if t < 2 or n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=bool)
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
        held = rows[:-1] - start[:-1] + 1
        counted = change[1:] & (held > d)
        ti, ni = np.nonzero(counted)
        ts.append(ti.astype(np.int64) + 1)
        ns.append(ni.astype(np.int64) + lo)
    ti = np.concatenate(ts)
    ni = np.concatenate(ns)
    order = np.lexsort((ni, ti))
    ti, ni = ti[order], ni[order]
    return ti, ni, c[ti, ni]


@dataclass
class AnomalyResult:
    """Anomaly iterations found by :func:`anomalies`.

    Attributes:
        frame: one row per kept anomalous (checkpoint, class), sorted by checkpoint then class,
            with columns ``step`` (training step of the checkpoint), ``checkpoint`` (row index into
            ``correct``), ``class`` (label value), ``n_flips`` (stable flips in the selected
            ``direction``: the number compared with ``threshold``), ``n_to_wrong`` / ``n_to_right``
            (stable flips correct -> wrong / wrong -> correct, whatever the direction), ``images``
            (sorted list of the image indices counted in ``n_flips``).
        counts: ``[T, C]`` int, stable flips per (checkpoint, class) in the selected direction.
        to_wrong: ``[T, C]`` int, stable correct -> wrong ("forgotten") flips.
        to_right: ``[T, C]`` int, stable wrong -> correct ("learned") flips.
        flagged: ``[T, C]`` bool, the kept anomalies (``counts >= threshold`` and the class flagged
            at least ``min_flags`` times).
        classes: ``[C]`` the class labels of the columns (sorted unique ``labels``).
        steps: ``[T]`` the step of each checkpoint.
        d, threshold, min_flags, direction: the parameters used (``d`` after defaulting).
        dropped_classes: classes that reached ``threshold`` somewhere but were flagged fewer than
            ``min_flags`` times, and so were dropped.
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

    @property
    def anomaly_steps(self) -> np.ndarray:
        """Sorted unique steps with at least one kept anomaly."""
        return np.unique(self.frame["step"].to_numpy())

    @property
    def params(self) -> dict[str, Any]:
        """The parameters used: ``d``, ``threshold``, ``min_flags``, ``direction``."""
        return {
            "d": self.d,
            "threshold": self.threshold,
            "min_flags": self.min_flags,
            "direction": self.direction,
        }

    def classes_at(self, step: Any) -> list:
        """Classes flagged at training step ``step`` (empty list if none)."""
        sel = self.frame["step"].to_numpy() == step
        return self.frame["class"].to_numpy()[sel].tolist()

    def to_frame(self) -> pd.DataFrame:
        """The anomalies as a new DataFrame (a copy of :attr:`frame`)."""
        return self.frame.copy()

    def __len__(self) -> int:
        return len(self.frame)


def anomalies(
    correct: Any,
    labels: Any,
    *,
    steps: Any = None,
    d: int | None = None,
    threshold: int = 5,
    min_flags: int = 2,
    direction: Direction = "both",
) -> AnomalyResult:
    """Find anomaly iterations: many images of one class flipping after having been stable.

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
        threshold: a (checkpoint, class) is anomalous when at least this many of the class's
            images make a stable flip there (DeepTracker: 5).
        min_flags: classes flagged fewer than this many times in total are dropped (DeepTracker:
            2). ``0`` or ``1`` keeps every flag.
        direction: which stable flips count towards ``threshold``: ``"both"`` (default),
            ``"to_wrong"`` (correct -> wrong, "forgotten") or ``"to_right"`` (wrong -> correct,
            "learned"). Both directions are always reported in ``n_to_wrong`` / ``n_to_right``.

    Returns:
        :class:`AnomalyResult` with the anomalies frame, ``[T, C]`` count matrices and the
        parameters used.

    Example:
        >>> res = anomalies(preds == y, y, steps=ckpt_steps)      # doctest: +SKIP
        >>> res.to_frame()[["step", "class", "n_flips"]]           # doctest: +SKIP
    """
    c = as_correct(correct)
    t, n = c.shape
    lab = as_labels(labels, n)
    st = _as_steps(steps, t)
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
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer) or threshold < 1:
        raise InputError(f"threshold must be an integer >= 1 (got {threshold!r}).")
    if isinstance(min_flags, bool) or not isinstance(min_flags, int | np.integer) or min_flags < 0:
        raise InputError(f"min_flags must be an integer >= 0 (got {min_flags!r}).")
    threshold, min_flags = int(threshold), int(min_flags)
    if t >= 2 and d >= t - 1:
        warnings.warn(
            f"d={d} with only {t} checkpoints: no image can hold a state for more than {t - 1} "
            "checkpoints before a flip, so no anomaly can be found; pass a smaller d.",
            stacklevel=2,
        )

    classes, cls_idx = np.unique(lab, return_inverse=True)
    n_cls = len(classes)
    ti, ni, right = stable_flips(c, d)
    ci = cls_idx[ni]
    key = ti * n_cls + ci
    size = t * n_cls
    to_right = np.bincount(key[right], minlength=size).reshape(t, n_cls)
    to_wrong = np.bincount(key[~right], minlength=size).reshape(t, n_cls)
    if direction == "both":
        counts = to_right + to_wrong
        use = np.ones(len(ti), dtype=bool)
    elif direction == "to_wrong":
        counts = to_wrong
        use = ~right
    else:
        counts = to_right
        use = right

    raw = counts >= threshold
    n_flags = raw.sum(axis=0)
    keep_cls = n_flags >= min_flags
    flagged = raw & keep_cls[None, :]
    dropped = classes[(n_flags > 0) & ~keep_cls]

    frame = _frame(flagged, counts, to_wrong, to_right, st, classes, key[use], ni[use], n_cls)
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
        dropped_classes=dropped,
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
        },
        columns=list(ANOMALY_COLUMNS),
    )
