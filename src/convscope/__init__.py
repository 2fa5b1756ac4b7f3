"""convscope: a microscope for convolutional networks in PyTorch.

``import convscope as cs`` gives the user's handle on a run (:class:`Run`), the read side
(:func:`open_run`) and the analysis sub-packages (``cs.model``, ``cs.explain``, ``cs.features``,
``cs.diagnose``, ``cs.track``, ``cs.embed``, ``cs.data``, ``cs.zoo``). Sub-packages are imported
lazily, so ``import convscope`` stays fast and does not import torch until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._version import __version__
from .errors import ConvscopeError
from .lazy import lazy_getattr

if TYPE_CHECKING:  # pragma: no cover
    from .formats.reader import RunReader, open_run
    from .run import Run

__all__ = [
    "__version__",
    "ConvscopeError",
    "Run",
    "open_run",
    "RunReader",
    "data",
    "zoo",
    "model",
    "explain",
    "features",
    "diagnose",
    "track",
    "embed",
    "store",
    "figures",
    "profile",
    "distributed",
]

_LAZY_ATTRS: dict[str, tuple[str, str | None]] = {
    "Run": ("convscope.run", "Run"),
    "open_run": ("convscope.formats.reader", "open_run"),
    "RunReader": ("convscope.formats.reader", "RunReader"),
    "profile": ("convscope.model.profile", "profile"),
}
_SUBPACKAGES = {
    "data", "zoo", "model", "explain", "features", "diagnose", "track", "embed", "store",
    "figures", "app", "distributed",
}
__getattr__ = lazy_getattr(
    "convscope", {**_LAZY_ATTRS, **{p: (f"convscope.{p}", None) for p in _SUBPACKAGES}}, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
