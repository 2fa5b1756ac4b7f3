"""Budgets of long calls: time the first unit of work, project the total, warn once.

Every ``run.log_*`` call that can run for minutes states a budget (e.g. "about 60 s for a
ResNet-50 at 224² on a 2-core CPU"). While it works, the analysis code's progress bars
(:func:`progress`, a ``tqdm`` bar with its own rate and ETA) report every finished unit (a
step, a layer, a pass, a batch) to the :class:`Tracker` the recording call opened with
:func:`track`. After the first unit of each stretch of work (a *segment*: one layer's
optimisation, one profile, ...) the tracker projects the whole call::

    projected = elapsed so far + (seconds per unit in this segment) x (units left)

and when the projection exceeds ``factor`` x the budget (default 2x), it emits ONE
:class:`BudgetWarning` through :func:`warnings.warn`, naming the call, the projection, what
the work is and the option that shortens it, e.g.::

    log_preferred_inputs: ~14 min projected for 64 units at 224² (3.1 s/step), more than 2x
    its 120 s budget; pass steps=64 or max_units=8 to shorten it.

and then carries on (a warning, not an error: the user may well want the long run). ``quiet``
hides the bars but never the warning. Without an open tracker :func:`progress` is a plain
``tqdm`` bar, so analysis functions called directly behave as before.

The clock is injectable (``Budget(clock=...)``), so the projection is tested on a fake clock.
This module is torch-free.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Budget", "BudgetWarning", "Tracker", "track", "progress", "current",
           "format_seconds"]


class BudgetWarning(UserWarning):
    """A call is projected to run far longer than its stated budget; the message names the
    option that shortens it."""


@dataclass
class Budget:
    """A call's stated budget.

    Args:
        call: the call's name as the user wrote it (``"log_preferred_inputs"``).
        seconds: the stated budget in seconds.
        shorten: what to pass to shorten the call (``"steps=64 or max_units=8"``).
        what: the work in words (``"64 units at 224²"``), shown in the warning.
        factor: warn when the projection exceeds ``factor * seconds``.
        clock: a monotonic clock in seconds (tests inject a fake one).
    """

    call: str
    seconds: float
    shorten: str
    what: str = ""
    factor: float = 2.0
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)

    @property
    def limit(self) -> float:
        """Seconds above which the call warns."""
        return float(self.factor) * float(self.seconds)


def format_seconds(s: float) -> str:
    """``"42 s"``, ``"3.5 min"``, ``"1.2 h"``."""
    if not math.isfinite(s):
        return "an unbounded time"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class Tracker:
    """Projects a call's total time from its finished units and warns once (see the module).

    ``total``: units of work in the whole call (``None`` when unknown: no projection until
    :meth:`set_total`). ``unit``: their name (``"step"``). Segments: :meth:`segment` starts a
    new stretch of work whose seconds per unit are measured afresh (each progress bar opened
    under :func:`track` starts one, so a deeper layer's slower steps re-project the call).
    """

    def __init__(self, budget: Budget, total: float | None = None, *, unit: str = "unit"
                 ) -> None:
        self.budget = budget
        self.total = None if total is None else float(total)
        self.unit = unit
        self.clock = budget.clock
        self.start = self.clock()
        self.done = 0.0
        self.warned = False
        self.projected: float | None = None
        self.message: str | None = None
        self._seg_start = self.start
        self._seg_done = 0.0

    # -- feeding -----------------------------------------------------------------------------
    def set_total(self, total: float) -> None:
        """The call's units of work, once known."""
        self.total = float(total)

    def segment(self) -> None:
        """Start a new stretch of work (its seconds per unit are measured afresh)."""
        self._seg_start = self.clock()
        self._seg_done = 0.0

    def advance(self, n: float = 1) -> float | None:
        """``n`` more units finished: re-project, warn if over the limit; returns the
        projection in seconds (``None`` while the total is unknown)."""
        self.done += n
        self._seg_done += n
        now = self.clock()
        if self.total is None or self._seg_done <= 0:
            return None
        rate = (now - self._seg_start) / self._seg_done
        left = max(0.0, self.total - self.done)
        self.projected = (now - self.start) + rate * left
        if not self.warned and self.projected > self.budget.limit:
            self.warn(rate)
        return self.projected

    def expect(self, seconds: float, detail: str = "") -> None:
        """Warn now if ``seconds`` (an estimate made before the work starts) exceeds the limit
        (``detail`` says what the estimate rests on)."""
        self.projected = float(seconds)
        if not self.warned and seconds > self.budget.limit:
            self.warn(None, detail)

    # -- the one warning ---------------------------------------------------------------------
    def warn(self, rate: float | None, detail: str = "") -> None:
        b = self.budget
        what = f" for {b.what}" if b.what else ""
        if rate is not None:
            detail = detail or f"{_rate(rate)}/{self.unit}"
        detail = f" ({detail})" if detail else ""
        self.message = (
            f"{b.call}: ~{format_seconds(self.projected or 0.0)} projected{what}{detail}, "
            f"more than {b.factor:g}x its {format_seconds(b.seconds)} budget; pass {b.shorten} "
            "to shorten it."
        )
        self.warned = True
        warnings.warn(self.message, BudgetWarning, stacklevel=_user_level())


def _user_level() -> int:
    """The ``stacklevel`` that points the warning at the first frame outside convscope (the
    user's call), so it shows where the user called."""
    import os
    import sys

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame = sys._getframe(2)  # the caller of warn's caller
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def _rate(s: float) -> str:
    return f"{s:.2f} s" if s < 10 else format_seconds(s)


_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar(
    "convscope_budget", default=None)


def current() -> Tracker | None:
    """The tracker :func:`track` opened in this context, or ``None``."""
    return _CURRENT.get()


@contextlib.contextmanager
def track(budget: Budget, total: float | None = None, *, unit: str = "unit"
          ) -> Iterator[Tracker]:
    """Open a :class:`Tracker` for the calls made inside: their :func:`progress` bars feed it."""
    tracker = Tracker(budget, total, unit=unit)
    token = _CURRENT.set(tracker)
    try:
        yield tracker
    finally:
        _CURRENT.reset(token)


def progress(total: float | None = None, *, desc: str = "", unit: str = "it",
             quiet: bool = False, feed: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar (rate and ETA shown by tqdm; hidden with ``quiet``). Under :func:`track`
    (and ``feed``) its updates feed the tracker, opening it starts a new segment, and a tracker
    without a total takes the bar's."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, disable=quiet, desc=desc, unit=unit, **kwargs)
    tracker = _CURRENT.get() if feed else None
    if tracker is None:
        return bar
    if tracker.total is None and total is not None:  # a one-bar call: the bar's units
        tracker.set_total(total)
    tracker.segment()
    return _Fed(bar, tracker)


class _Fed:
    """A tqdm bar whose ``update`` also advances a tracker (everything else is the bar's)."""

    def __init__(self, bar: Any, tracker: Tracker) -> None:
        self._bar = bar
        self._tracker = tracker

    def update(self, n: float = 1) -> Any:
        out = self._bar.update(n)
        self._tracker.advance(n)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)

    def __enter__(self) -> _Fed:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._bar)
