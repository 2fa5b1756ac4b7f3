"""How :func:`~convscope.features.maximize` renders an image, as one value (lucent's
``render_vis(param_f=..., optimizer=..., transforms=...)`` idea).

:class:`Render` holds the recipe: the parameterisation (a factory, see
:mod:`~convscope.features.param`), the optimiser (a factory ``params -> optimizer``), the
transforms, the regularisers (applied in the order given) and the number of steps::

    r = cs.features.Render(steps=512, optimizer=cs.features.adam(0.05),
                           regularizers=[cs.features.Decay(1e-3), cs.features.Blur(0.5, 4)])
    imgs = cs.features.maximize(model, "layer3", range(16), render=r)
    imgs = cs.features.maximize(model, "layer3", range(16), render=cs.features.yosinski(3))

Strings name the built-ins: ``param="fft"`` / ``"pixel"`` (:func:`fft_image`,
:func:`pixel_image`), ``optimizer="adam"`` / ``"sgd"`` / ``"progress"`` (:func:`adam`,
:func:`sgd`, :func:`progress`, with ``lr``), ``transforms="standard"``
(:func:`~convscope.features.standard_transforms` at the image size).

An optimiser factory returns an object with ``step()`` that, like a ``torch.optim`` optimiser,
reads each parameter's ``.grad`` and *descends*: ``maximize`` sets ``.grad`` to minus the
objective's gradient before every step (so ``torch.optim.Adam`` etc. work as they are).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from ..nn import positive_int
from .param import fft_image, pixel_image

__all__ = ["Render", "adam", "sgd", "progress", "Progress", "PARAMS", "OPTIMIZERS"]

#: Default learning rate of the named optimisers.
DEFAULT_LR = 0.1


def adam(lr: float = DEFAULT_LR) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    """Factory of ``torch.optim.Adam(params, lr=lr)`` (the default, lucid's optimiser)."""
    lr = _check_lr(lr)
    return _named(lambda params: torch.optim.Adam(params, lr=lr), f"adam({lr})")


def sgd(lr: float) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
    """Factory of plain gradient ascent ``x += lr * grad`` (the deep-visualization toolbox's
    constant policy; ``torch.optim.SGD`` on the negated gradient)."""
    lr = _check_lr(lr)
    return _named(lambda params: torch.optim.SGD(params, lr=lr), f"sgd({lr})")


class Progress:
    """The toolbox's progress policy: per image, ``x += min(max_lr, gain / |g|^2) g``, so the
    first-order objective gain of every step is ``gain`` (``max_lr`` caps the step factor).
    Images are the first dimension of each parameter; a zero gradient gives no step."""

    def __init__(self, params: Iterable[Tensor], gain: float, max_lr: float | None = None) -> None:
        self.params = list(params)
        self.gain = gain
        self.max_lr = max_lr

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            g = -p.grad  # the ascent direction (maximize sets .grad to minus the gradient)
            n = g.shape[0]
            sq = g.reshape(n, -1).pow(2).sum(1)
            rate = torch.where(sq > 0, self.gain / sq.clamp_min(1e-30), torch.zeros_like(sq))
            if self.max_lr is not None:
                rate = rate.clamp_max(self.max_lr)
            p.add_(g * rate.view(n, *([1] * (g.dim() - 1))))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def progress(gain: float = 0.5, max_lr: float | None = None) -> Callable[[list[Tensor]], Progress]:
    """Factory of :class:`Progress` (``optimizer="progress"`` with ``lr=gain``)."""
    gain = _check_lr(gain)
    if max_lr is not None:
        if isinstance(max_lr, bool) or not isinstance(max_lr, numbers.Real) or not (
            0 <= max_lr < math.inf
        ):
            raise InputError(f"max_lr must be a finite number >= 0 or None, got {max_lr!r}.")
        max_lr = float(max_lr)
    return _named(lambda params: Progress(params, gain, max_lr), f"progress({gain}, {max_lr})")


#: Named parameterisations: ``name -> () -> factory``.
PARAMS: dict[str, Callable[[], Callable[..., Any]]] = {"fft": fft_image, "pixel": pixel_image}
#: Named optimisers: ``name -> lr -> factory``.
OPTIMIZERS: dict[str, Callable[[float], Callable[..., Any]]] = {
    "adam": adam, "sgd": sgd, "progress": progress,
}


def _named(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    fn.__name__ = fn.__qualname__ = name
    return fn


def _check_lr(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 <= lr < float("inf"):
        raise InputError(f"lr must be a finite number >= 0, got {lr!r}; e.g. lr=0.05.")
    return float(lr)


@dataclass(frozen=True)
class Render:
    """The rendering recipe of :func:`~convscope.features.maximize`.

    Attributes:
        steps: optimisation steps (default 256).
        param: ``"fft"`` (default: lucid's decorrelated Fourier parameterisation with a
            sigmoid), ``"pixel"`` (raw pixels clipped to the value range) or a factory
            ``canvas -> image`` (:mod:`~convscope.features.param`).
        optimizer: ``"adam"`` (default), ``"sgd"``, ``"progress"`` or a factory
            ``params -> optimizer`` (e.g. ``lambda p: torch.optim.Adam(p, lr=0.05)``).
        lr: learning rate of a named optimiser (default 0.1; for ``"progress"`` the objective
            gain per step). ``None`` with a factory (which sets its own).
        transforms: ``"standard"`` (default: lucid's set scaled to the image size) or a sequence
            of transforms (``()`` for none), applied in order every step.
        regularizers: callables ``(x_centred, grad, step) -> x_centred`` applied after every
            step in the order given (:class:`~convscope.features.Decay`, ``Blur``, ``NormClip``,
            ``ContributionClip`` or your own).
    """

    steps: int = 256
    param: str | Callable[..., Any] = "fft"
    optimizer: str | Callable[..., Any] = "adam"
    lr: float | None = None
    transforms: str | Sequence[Any] = "standard"
    regularizers: Sequence[Any] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "steps", positive_int(self.steps, "steps"))
        if isinstance(self.optimizer, str):
            if self.optimizer.lower() not in OPTIMIZERS:
                raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                                 f"{self.optimizer!r}; pass one of those or a factory "
                                 "params -> optimizer.")
            set_(self, "optimizer", self.optimizer.lower())
            set_(self, "lr", _check_lr(DEFAULT_LR if self.lr is None else self.lr))
        elif not callable(self.optimizer):
            raise InputError(f"optimizer must be a name or a factory params -> optimizer, got "
                             f"{self.optimizer!r}.")
        elif self.lr is not None:
            raise InputError("lr= applies to a named optimizer ('adam', 'sgd', 'progress'); an "
                             "optimizer factory sets its own learning rate.")
        if isinstance(self.param, str):
            if self.param.lower() not in PARAMS:
                raise InputError(f"param must be 'fft' or 'pixel', got {self.param!r}; pass one "
                                 "of those or a factory canvas -> image.")
            set_(self, "param", self.param.lower())
        elif not callable(self.param):
            raise InputError(f"param must be 'fft', 'pixel' or a factory, got {self.param!r}.")
        if isinstance(self.transforms, str):
            if self.transforms != "standard":
                raise InputError(f"transforms must be 'standard' or a list of transforms, got "
                                 f"{self.transforms!r}; pass e.g. transforms=() for none.")
        else:
            set_(self, "transforms", tuple(_iterable(self.transforms, "transforms")))
        regs = tuple(_iterable(self.regularizers, "regularizers"))
        bad = [r for r in regs if not callable(r)]
        if bad:
            raise InputError(f"regularizers must be callables (x, grad, step) -> x such as "
                             f"Decay(0.01), got {bad[0]!r}.")
        set_(self, "regularizers", regs)

    def replace(self, **changes: Any) -> Render:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # -- what maximize uses --------------------------------------------------------------------
    def param_factory(self, decorrelate: bool = True) -> Callable[..., Any]:
        """The parameterisation factory (a name resolved to its built-in)."""
        if self.param == "fft":
            return fft_image(decorrelate)
        return PARAMS[self.param]() if isinstance(self.param, str) else self.param

    def optimizer_factory(self, max_lr: float | None = None) -> Callable[..., Any]:
        """The optimiser factory (a name resolved with ``lr``; ``max_lr`` for ``"progress"``)."""
        if self.optimizer == "progress":
            return progress(self.lr, max_lr)
        if isinstance(self.optimizer, str):
            return OPTIMIZERS[self.optimizer](self.lr)
        return self.optimizer

    def transform_list(self, size: int) -> list[Any]:
        """The transforms for images whose smaller side is ``size``."""
        from .transforms import standard_transforms

        if self.transforms == "standard":
            return list(standard_transforms(size))
        return list(self.transforms)


def _iterable(value: Any, name: str) -> Iterable[Any]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(f"{name} must be a list, got {value!r}; pass e.g. {name}=[] for none.")
    return value
