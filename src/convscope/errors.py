"""Errors raised by convscope.

Every message says what went wrong *and* what to do about it. All errors derive from
:class:`ConvscopeError`, so ``except cs.ConvscopeError`` catches everything convscope raises on
purpose; anything else is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConvscopeError",
    "RunExistsError",
    "NotARunError",
    "StoreError",
    "DamagedFileError",
    "InvalidValueError",
    "LayerNotFoundError",
    "ModelError",
    "NotApplicableError",
    "InputError",
    "TargetError",
    "ServeError",
    "MissingDependencyError",
    "suggest",
]


class ConvscopeError(Exception):
    """Base class of every error convscope raises on purpose."""


class RunExistsError(ConvscopeError, FileExistsError):
    """A run directory with that name already exists."""


class NotARunError(ConvscopeError, FileNotFoundError):
    """A path that should be a run directory is not one."""


class StoreError(ConvscopeError):
    """Reading or writing the run directory failed."""


class DamagedFileError(StoreError, ValueError):
    """A run file too large or too deeply nested to be what convscope wrote (a ``ValueError`` too,
    so callers that treat unparsable JSON as damage treat it alike)."""


class InvalidValueError(ConvscopeError, TypeError):
    """A value handed to a logging call cannot be stored."""


class LayerNotFoundError(ConvscopeError, KeyError):
    """A layer name does not exist in the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class ModelError(ConvscopeError):
    """The model is not usable as given (not an nn.Module, forward fails, wrong form)."""


class NotApplicableError(ModelError):
    """An analysis method does not apply to this model's architecture (CAM on a model without
    global pooling and one linear classifier, a CAM method on a model without spatial maps).
    :func:`convscope.explain.attribute_all` skips such a method and keeps the reason; every other
    error stops it."""


class InputError(ConvscopeError, ValueError):
    """Inputs have the wrong type, rank or shape."""


class TargetError(ConvscopeError, ValueError):
    """A target class is out of range or has the wrong form."""


class ServeError(ConvscopeError):
    """The dashboard cannot be served as asked."""


class MissingDependencyError(ConvscopeError, ImportError):
    """An optional package needed for this function is not installed."""


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """Return ``" Did you mean 'a', 'b'?"`` for the closest candidates, or ``""``."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"
