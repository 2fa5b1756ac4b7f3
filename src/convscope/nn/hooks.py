"""The one output recorder: forward hooks that keep what chosen modules compute, name every call
(``path``, ``path:2``, ...) and can stop the forward once everything wanted is in hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_map

from .modules import call_key

__all__ = ["INPUT_SUFFIX", "Recorder", "StopForward", "copy_tensors", "first_tensor", "handles"]

#: Suffix of the keys under which a module's input (first tensor argument) is recorded.
INPUT_SUFFIX = ":input"


class StopForward(BaseException):
    """Raised by a hook to end a forward pass once what is needed is in hand. A
    ``BaseException``, so a model's own ``except Exception`` cannot swallow it."""


def copy_tensors(value: Any, clone: bool = True, detach: bool = True) -> Any:
    """``value`` (a tensor or a nested structure) with every tensor detached and/or cloned."""

    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            if detach:
                x = x.detach()
            return x.clone() if clone else x
        return x

    return tree_map(one, value)


def first_tensor(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
    """A module's first tensor argument (what ``path:input`` records)."""
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return args[0] if len(args) == 1 else (args, kwargs)


@contextmanager
def handles() -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """A list to append hook handles to; every handle is removed on exit (even on error)."""
    hs: list[torch.utils.hooks.RemovableHandle] = []
    try:
        yield hs
    finally:
        for h in hs:
            h.remove()


class Recorder:
    """Forward hooks on ``{path: module}`` that record each call's output.

    Every call of a hooked module is named ``path`` (first call), ``path:2``, ... . For each call
    ``value(output)`` is stored under that name in :attr:`store` (in execution order) when the
    name is wanted: ``keys=None`` wants every call, a set of names only those. With
    ``stop=True`` the forward ends (:class:`StopForward`, caught by :meth:`run`) as soon as every
    wanted name is in. ``inputs_of`` modules also record ``value(first tensor argument)`` under
    ``path:input`` (``path:input:k``).

    Use as a context manager (the hooks are removed on exit, also on error)::

        with Recorder(mods, value=lambda out: out.detach().clone()) as rec:
            rec.run(model, x)
        rec.store  # {"layer1": ..., "layer1.relu:2": ...}
    """

    def __init__(
        self,
        outputs_of: Mapping[str, nn.Module],
        *,
        keys: set[str] | None = None,
        value: Callable[[Any], Any] = copy_tensors,
        stop: bool = False,
        inputs_of: Mapping[str, nn.Module] | None = None,
    ) -> None:
        self.outputs_of = dict(outputs_of)
        self.inputs_of = dict(inputs_of or {})
        self.keys = keys
        self.value = value
        self.stop = bool(stop) and keys is not None
        self.store: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.stopped = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def reset(self) -> None:
        self.store.clear()
        self.counts.clear()
        self.stopped = False

    def _hook(self, path: str, want_out: bool, want_in: bool) -> Callable[..., None]:
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            k = self.counts.get(path, 0) + 1
            self.counts[path] = k
            key = call_key(path, k)
            if want_out and (self.keys is None or key in self.keys):
                self.store[key] = self.value(out)
            if want_in:
                in_key = call_key(path + INPUT_SUFFIX, k)
                if self.keys is None or in_key in self.keys:
                    self.store[in_key] = self.value(first_tensor(args, kwargs))
            if self.stop and self.keys is not None and self.keys <= self.store.keys():
                raise StopForward

        return hook

    def __enter__(self) -> Recorder:
        try:
            for path in dict.fromkeys([*self.outputs_of, *self.inputs_of]):
                mod = self.outputs_of.get(path, self.inputs_of.get(path))
                self._handles.append(mod.register_forward_hook(
                    self._hook(path, path in self.outputs_of, path in self.inputs_of),
                    with_kwargs=True,
                ))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (say ``forward(model, args)``) after :meth:`reset`; ``None`` when a
        hook stopped it early (then :attr:`stopped` is true)."""
        self.reset()
        try:
            return fn(*args)
        except StopForward:
            self.stopped = True
            return None
