"""Lazy re-exports: the module ``__getattr__`` (PEP 562) that ``convscope``, ``convscope.store``
and ``convscope.store.reader`` use to offer names that live elsewhere (the sub-packages, and names
that moved to :mod:`convscope.formats`) without importing them before first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(owner: str, names: Mapping[str, tuple[str, str | None]],
                 namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``owner`` (the module's ``__name__``): ``names[name] =
    (module, attribute)`` is imported on first use (``attribute`` None: the module itself) and
    kept in ``namespace`` (the module's ``globals()``), so later look-ups do not come back here.
    Any other name raises ``AttributeError``, as a module does."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {owner!r} has no attribute {name!r}")
        module, attr = names[name]
        value = importlib.import_module(module)
        if attr is not None:
            value = getattr(value, attr)
        namespace[name] = value
        return value

    return __getattr__
