"""The stated budgets of the ``run.log_*`` calls and the defaults that keep them within it.

Each long recording call opens a :class:`~convscope.nn.budget.Tracker` (:func:`open_budget`)
whose projection warns once, naming the option that shortens the call, when the call is
projected to take more than twice its budget (:mod:`convscope.nn.budget`).

The budgets are for a ResNet-50 (torchvision, random weights) at 224², 8 images, on a 2-core
CPU; they are provisional until ``benchmarks/bench_budget.py`` is run on a quiet machine (see
docs/model.md, "Budgets and defaults"):

============================  ===============================================================
call                          budget
============================  ===============================================================
``log_model``                 60 s (graph and profile; the profile repeats fit the budget)
``log_feature_maps``          30 s
``log_diagnosis``             90 s for one batch (more layers or images: proportionally more)
``log_preferred_inputs``      120 s per layer (16 units at 128², 128 steps; on a model whose
                              step is slower, e.g. ViT-B at its fixed 224², the defaults
                              shrink to fit: :func:`fit_preferred`)
``log_top_examples``          20 s per layer plus 0.5 s per image per layer
``log_projections``           90 s per layer plus 0.5 s per image per layer (the ranking pass
                              of ``log_top_examples``, then 16 units x 9 DeconvNet projections)
============================  ===============================================================
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

from ..nn.budget import Budget, Tracker, track

__all__ = ["BUDGETS", "open_budget", "auto_repeat", "preferred_size", "preferred_steps",
           "fit_preferred", "PROFILE_REPEATS", "PASSES_PER_REPEAT", "PREFERRED_MAX_SIZE",
           "PREFERRED_UNITS", "PREFERRED_MIN_STEPS", "PREFERRED_MIN_UNITS"]

#: Seconds each call is stated to take on the reference case (see the module doc).
BUDGETS: dict[str, float] = {
    "log_model": 60.0,
    "log_feature_maps": 30.0,
    "log_diagnosis": 90.0,
    "log_preferred_inputs": 120.0,  # per layer
    "log_top_examples": 20.0,  # per layer, plus TOP_EXAMPLES_PER_IMAGE per image
    "log_projections": 90.0,  # per layer, plus TOP_EXAMPLES_PER_IMAGE per image  # DeconvNet
}
TOP_EXAMPLES_PER_IMAGE = 0.5
DIAGNOSIS_PER_IMAGE = 0.5

#: The profile's timed repetitions chosen by ``log_model(repeat=None)``: as many as fit the
#: profile's share of the budget, within these bounds.
PROFILE_REPEATS = (3, 10)
#: One timed repetition costs about this many plain forward + backward passes (the whole pass,
#: the forward with per-layer timers, the forward and backward with per-node timers).
PASSES_PER_REPEAT = 3.5
#: Share of ``log_model``'s budget the timed repetitions may take (the rest: graph, warm-up).
PROFILE_SHARE = 0.6

#: ``log_preferred_inputs(size=None)`` renders at the model's input size, at most this side
#: (lucent's default image size; a 224² render costs ~3x as much as a 128² one).
PREFERRED_MAX_SIZE = 128


def auto_repeat(pass_seconds: float, budget: float = BUDGETS["log_model"]) -> int:
    """Timed repetitions of the profile that fit ``PROFILE_SHARE`` of ``budget`` when one
    forward (+ backward) pass takes ``pass_seconds``, clamped to :data:`PROFILE_REPEATS`."""
    lo, hi = PROFILE_REPEATS
    if not math.isfinite(pass_seconds) or pass_seconds <= 0:
        return hi
    fit = int(PROFILE_SHARE * budget / (PASSES_PER_REPEAT * pass_seconds))
    return max(lo, min(hi, fit))


def preferred_size(native: tuple[int, int]) -> tuple[int, int]:
    """The render size ``log_preferred_inputs`` uses when ``size`` is not given: the model's
    own input size, scaled down (aspect kept) so its longer side is at most
    :data:`PREFERRED_MAX_SIZE`."""
    h, w = int(native[0]), int(native[1])
    side = max(h, w)
    if side <= PREFERRED_MAX_SIZE:
        return h, w
    scale = PREFERRED_MAX_SIZE / side
    return max(1, round(h * scale)), max(1, round(w * scale))


def preferred_steps(size: tuple[int, int]) -> int:
    """Optimisation steps ``log_preferred_inputs`` uses when ``steps`` is not given: 256 (the
    render default) for images up to 64², 128 above (where each step costs 4x or more)."""
    return 256 if max(size) <= 64 else 128


#: ``log_preferred_inputs(max_units=None)``: this many units per layer, fewer (down to
#: :data:`PREFERRED_MIN_UNITS`) where a step is so slow that they would not fit the budget.
PREFERRED_UNITS = 16
#: The fewest steps and units the fitted defaults go down to (below, the images stop being
#: worth looking at: the call then warns instead).
PREFERRED_MIN_STEPS = 64
PREFERRED_MIN_UNITS = 4


def fit_preferred(step_seconds: float, units: int, steps: int, *, budget: float,
                  fit_steps: bool = True, fit_units: bool = True) -> tuple[int, int]:
    """``(steps, units)`` for one layer of ``log_preferred_inputs`` whose defaults must fit
    ``budget`` seconds, when one optimisation step of all ``units`` takes ``step_seconds``
    (measured; a step's cost is taken as proportional to the units in the batch).

    Nothing changes when ``steps x step_seconds`` fits. Otherwise the steps come down first
    (when ``fit_steps``: the user left ``steps`` unset), to what fits but not below
    :data:`PREFERRED_MIN_STEPS`; then the units (when ``fit_units``), to what fits at those
    steps but not below :data:`PREFERRED_MIN_UNITS`. What still does not fit is left to the
    budget warning."""
    units, steps = int(units), int(steps)
    if not math.isfinite(step_seconds) or step_seconds <= 0 or units <= 0 or steps <= 0:
        return steps, units
    if steps * step_seconds <= budget:
        return steps, units
    if fit_steps:
        steps = max(min(steps, PREFERRED_MIN_STEPS), min(steps, int(budget / step_seconds)))
    per_unit = step_seconds / units
    if fit_units and steps * per_unit * units > budget:
        units = max(min(units, PREFERRED_MIN_UNITS), min(units, int(budget / (steps * per_unit))))
    return steps, units


@contextlib.contextmanager
def open_budget(call: str, seconds: float, shorten: str, what: str = "", *,
                total: float | None = None, unit: str = "unit",
                clock: Callable[[], float] | None = None) -> Iterator[Tracker]:
    """A tracker for one recording call (:func:`convscope.nn.budget.track`)."""
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    with track(Budget(call, seconds, shorten, what, **extra), total, unit=unit) as tracker:
        yield tracker
