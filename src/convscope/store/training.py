"""Moved: the training-dynamics tables and queries live in :mod:`convscope.formats.training`
(the one place that knows the watch and validation tables). These names stay importable from
here for code written against earlier versions."""

from __future__ import annotations

from ..formats.training import TrainingQueries, ValidationMatrix, most_changed_rows

__all__ = ["TrainingQueries", "ValidationMatrix", "most_changed_rows"]
