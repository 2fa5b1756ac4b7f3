"""The one table of attribution methods and their one call shape.

Every method is registered here under its name, with the same call shape::

    fn(model, inputs, target=None, *, layer=None, **options) -> Tensor

* ``kind="input"`` (saliency, DeconvNet, guided backprop): gradients with respect to the input;
  they return the signed signal ``[B, C, H, W]``. ``layer`` is accepted so that one call works for
  every method, and ignored (these methods have no layer). Options: ``precision`` (``"auto"``:
  a half-precision model runs as a float32 copy; ``"float32"``; ``"model"``) and ``quiet``
  (ignored: one forward and backward pass).
* ``kind="layer"`` (Grad-CAM, Grad-CAM++, Score-CAM and any variant added with
  :func:`convscope.explain.cams.register_cam`): a map ``[B, H, W]`` from a layer's channels, at
  ``layer`` (None: :func:`~convscope.explain.auto_layer`). Options: ``normalize``, ``quiet``, and
  what the method adds (Score-CAM: ``batch_size``, ``channels``).
* ``kind="classifier"`` (CAM): like ``"layer"``, but the layer must be the one feeding global
  pooling and a linear classifier, so a data-set pass leaves ``layer=None`` for it (the automatic
  choice) rather than the layer chosen for the other CAMs.

The table keeps the two return shapes rather than forcing one: an input-space signal reduced to
``[B, H, W]`` loses its sign and colour channels, which :func:`~convscope.explain.to_heatmap`
lets the caller choose how to drop. :meth:`Method.heatmap` gives the uniform ``[B, H, W]`` for
every kind (input-space reduced with ``to_heatmap``, max ``|.|`` over channels), which is what a
data-set pass compares and stores.

Example::

    cs.explain.names()                                   # ('saliency', ..., 'score_cam')
    fn = cs.explain.get("grad_cam")
    maps = fn(model, x, target=3, layer="layer4")         # [B, H, W]
    heat = cs.explain.METHODS["saliency"].heatmap(model, x)   # [B, H, W]

    @cs.explain.register("my_method", kind="input")
    def my_method(model, inputs, target=None, *, layer=None, quiet=False):
        ...
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..errors import InputError

__all__ = ["KINDS", "METHODS", "Method", "get", "names", "register", "unregister"]

#: The kinds of method (see the module docstring).
KINDS = ("input", "layer", "classifier")

_TABLE: dict[str, Method] = {}
#: Read-only view of the table, ``{name: Method}``, in registration order (the order the
#: Attribution page shows).
METHODS: Mapping[str, Method] = types.MappingProxyType(_TABLE)


@dataclass(frozen=True)
class Method:
    """One registered attribution method.

    Attributes:
        name: its name in the table (and in a run's attribution records).
        fn: ``fn(model, inputs, target=None, *, layer=None, **options)``.
        kind: ``"input"``, ``"layer"`` or ``"classifier"`` (module docstring).
        options: the keyword options ``fn`` takes besides ``layer``.
    """

    name: str
    fn: Callable[..., Tensor]
    kind: str
    options: tuple[str, ...]

    def __call__(self, model: Any, inputs: Any, target: Any = None, *, layer: Any = None,
                 **options: Any) -> Tensor:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise InputError(
                f"{self.name} takes no option(s) {unknown}; its options are "
                f"{list(self.options)}."
            )
        return self.fn(model, inputs, target, layer=layer, **options)

    def heatmap(self, model: Any, inputs: Any, target: Any = None, *, layer: Any = None,
                **options: Any) -> Tensor:
        """``[B, H, W]`` for every kind: input-space signals reduced by
        :func:`~convscope.explain.to_heatmap` (max ``|.|`` over channels), CAMs as they are."""
        out = self(model, inputs, target, layer=layer, **options)
        if self.kind == "input":
            from .gradients import to_heatmap

            return to_heatmap(out)
        return out


def _options(fn: Callable[..., Any], name: str) -> tuple[str, ...]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise InputError(f"cannot read the signature of {name!r}'s function {fn!r}; register a "
                         "Python function.") from None
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    first = {p.name for p in pos[:3]}
    if len(pos) < 3 or "layer" in first or "layer" not in {p.name for p in named}:
        raise InputError(
            f"method {name!r} must have the call shape (model, inputs, target=None, *, "
            "layer=None, **options); got "
            f"{getattr(fn, '__name__', fn)}{inspect.signature(fn)}."
        )
    return tuple(p.name for p in named if p.name not in first and p.name != "layer")


def register(
    name: str, fn: Callable[..., Tensor] | None = None, *, kind: str = "layer",
    replace: bool = False,
) -> Any:
    """Register ``fn`` under ``name``; usable as a decorator (``@register("name", kind=...)``).

    Args:
        name: the method's name (a Python identifier, e.g. ``"xgrad_cam"``).
        fn: ``fn(model, inputs, target=None, *, layer=None, **options) -> Tensor``; its
            keyword-only parameters besides ``layer`` are the method's options.
        kind: ``"input"`` (returns ``[B, C, H, W]``; ``layer`` ignored), ``"layer"`` (returns
            ``[B, H, W]`` from ``layer``) or ``"classifier"`` (``[B, H, W]``; the layer must feed
            global pooling and a linear classifier).
        replace: allow replacing a method already registered under ``name``.

    Returns:
        ``fn`` (so the decorator leaves the function as it was); with ``fn=None``, the decorator.

    Raises:
        InputError: a bad name or kind, a taken name (without ``replace``), or a function that
            does not have the call shape.
    """
    if fn is None:
        return lambda f: register(name, f, kind=kind, replace=replace)
    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"a method name must be an identifier such as 'xgrad_cam', got {name!r}.")
    if kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}.")
    if not callable(fn):
        raise InputError(f"register({name!r}, fn): fn must be callable, got {fn!r}.")
    if name in _TABLE and not replace:
        raise InputError(f"an attribution method named {name!r} is already registered; pick "
                         "another name, or pass replace=True.")
    _TABLE[name] = Method(name, fn, kind, _options(fn, name))
    return fn


def unregister(name: str) -> None:
    """Remove ``name`` from the table (for plugins and tests); unknown names raise
    :class:`InputError`."""
    get(name)
    del _TABLE[name]


def get(name: str) -> Method:
    """The registered :class:`Method` called ``name`` (callable with the one call shape).

    Raises :class:`InputError` listing the registered names when there is none.
    """
    try:
        return _TABLE[name]
    except (KeyError, TypeError):
        raise InputError(
            f"no attribution method named {name!r}; registered: {list(_TABLE)}. Register your "
            "own with cs.explain.register(name, fn, kind=...)."
        ) from None


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered method names in registration order, optionally only those of ``kind``."""
    if kind is not None and kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)} or None, got {kind!r}.")
    return tuple(n for n, m in _TABLE.items() if kind is None or m.kind == kind)
