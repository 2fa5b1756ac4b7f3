"""Moved: the training-dynamics tables and queries live in :mod:`convscope.formats.training`
(the one place that knows the watch and validation tables). These names stay importable from
here for code written against earlier versions; they are imported on first use, so ``store``
itself never imports ``formats``."""

from __future__ import annotations

from ..lazy import lazy_getattr

_MOVED = ("TrainingQueries", "ValidationMatrix", "most_changed_rows")

__getattr__ = lazy_getattr(__name__, {n: ("convscope.formats.training", n) for n in _MOVED},
                           globals())
