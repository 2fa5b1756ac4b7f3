"""The four image regularisers of Yosinski et al. (2015), "Understanding Neural Networks Through
Deep Visualization", as small batched functions, plus the paper's four presets.

All functions act on the *centred* image ``x: [N, C, H, W]`` (``x = 0`` is the mean image, as in
the deep-visualization toolbox) and treat every batch item on its own: percentiles are taken per
image, never across the batch. Each returns a new tensor.

Order of application each step (after the gradient step ``x <- x + lr * grad``), as the paper and
the toolbox list them:

1. :func:`l2_decay`: ``x <- (1 - theta_decay) * x``
2. :func:`gaussian_blur` with radius ``sigma``, every ``k`` steps (steps 0, k, 2k, ...)
3. :func:`clip_small_norm`: zero pixels whose norm over channels is below the ``theta_n``
   percentile
4. :func:`clip_small_contribution`: zero pixels whose contribution ``|sum_c x * da/dx|`` is below
   the ``theta_c`` percentile

:class:`Decay`, :class:`Blur`, :class:`NormClip` and :class:`ContributionClip` wrap them with their
hyper-parameters for :func:`~convscope.features.maximize` (``regularizers=[...]`` or
``Render(regularizers=[...])``), which applies them in the order given; the presets
(:func:`yosinski`) list them in the paper's order, and :func:`sort_regularizers` puts any list
into it.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

__all__ = [
    "l2_decay",
    "gaussian_blur",
    "clip_small_norm",
    "clip_small_contribution",
    "Regularizer",
    "Decay",
    "Blur",
    "NormClip",
    "ContributionClip",
    "Preset",
    "yosinski",
    "LR_SCALE_0_255",
]

#: Factor that turns a learning rate of plain gradient ascent on 0-255 pixel values into the same
#: trajectory on 0-1 pixel values: with ``x255 = 255 * x01`` the gradient grows by 255 and the
#: step must shrink by 255 in the new units, so ``lr01 = lr255 / 255**2``.
LR_SCALE_0_255 = 1.0 / 255.0**2


def _number(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """``value`` as a float in ``[lo, hi]``; :class:`InputError` for anything else (a string,
    a bool, NaN)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok and isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point():
        value, ok = float(value), True
    if not ok or not lo <= float(value) <= hi:
        span = f"between {lo} and {hi}" if math.isfinite(hi) else f">= {lo}"
        raise InputError(f"{name} must be a number {span}, got {value!r}.")
    return float(value)


def _check_pct(pct: float, name: str) -> float:
    return _number(pct, f"{name} (a percentile)", 0.0, 100.0)


def _check_image(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = (f"{list(x.shape)} {x.dtype}" if isinstance(x, Tensor)
                 else type(x).__name__)
        raise InputError(f"{name} must be a float tensor [N, C, H, W], got {shape}.")


def l2_decay(x: Tensor, theta: float) -> Tensor:
    """``(1 - theta) * x``: L2 decay toward the mean image. ``x: [N, C, H, W]`` centred."""
    _check_image(x)
    theta = _number(theta, "l2_decay: theta", 0.0, 1.0)
    return x * (1.0 - theta)


def _gauss_kernel(sigma: float, radius: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _symmetric_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` on both sides with half-sample
    symmetric reflection (``d c b a | a b c d | d c b a``, scipy's ``mode='reflect'``), valid for
    any radius (the pattern repeats with period ``2n``)."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def gaussian_blur(x: Tensor, sigma: float, truncate: float = 4.0) -> Tensor:
    """Gaussian blur of each channel of each image with standard deviation ``sigma`` pixels.

    Separable, kernel radius ``int(truncate * sigma + 0.5)``, borders reflected symmetrically:
    the same result as ``scipy.ndimage.gaussian_filter(x[n, c], sigma)`` (its defaults), which the
    toolbox uses. ``sigma <= 0`` returns ``x`` unchanged. ``x: [N, C, H, W]``.
    """
    _check_image(x)
    sigma = _number(sigma, "gaussian_blur: sigma")
    truncate = _number(truncate, "gaussian_blur: truncate", 0.0)
    if sigma <= 0:
        return x
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x
    n, c, h, w = x.shape
    k = _gauss_kernel(sigma, radius, x.dtype, x.device)
    flat = x.reshape(n * c, 1, h, w)
    flat = flat.index_select(2, _symmetric_index(h, radius, x.device))
    flat = F.conv2d(flat, k.view(1, 1, -1, 1))
    flat = flat.index_select(3, _symmetric_index(w, radius, x.device))
    flat = F.conv2d(flat, k.view(1, 1, 1, -1))
    return flat.reshape(n, c, h, w)


def _zero_below_percentile(x: Tensor, score: Tensor, pct: float) -> Tensor:
    """Zero the pixels of ``x [N, C, H, W]`` whose ``score [N, H, W]`` is strictly below the
    per-image ``pct`` percentile (linear interpolation, as ``numpy.percentile``)."""
    if pct <= 0:
        return x
    n = score.shape[0]
    flat = score.reshape(n, -1)
    thr = torch.quantile(flat.double(), pct / 100.0, dim=1).to(flat.dtype)
    keep = (flat >= thr[:, None]).reshape(score.shape)
    return x * keep.unsqueeze(1).to(x.dtype)


def clip_small_norm(x: Tensor, percentile: float) -> Tensor:
    """Zero every pixel whose L2 norm over the channels is below the per-image ``percentile``
    (0-100) of those norms. ``x: [N, C, H, W]`` centred."""
    _check_image(x)
    pct = _check_pct(percentile, "clip_small_norm: percentile")
    return _zero_below_percentile(x, x.norm(dim=1), pct)


def contribution(x: Tensor, grad: Tensor) -> Tensor:
    """Per-pixel contribution ``|sum_c x * grad|`` ``[N, H, W]``: the first-order change of the
    objective if that pixel were set to the mean (zero)."""
    _check_image(x)
    _check_image(grad, "grad")
    return (x * grad).sum(1).abs()


def clip_small_contribution(x: Tensor, grad: Tensor, percentile: float) -> Tensor:
    """Zero every pixel whose contribution ``|sum_c x * da/dx|`` is below the per-image
    ``percentile`` (0-100). ``x``, ``grad``: ``[N, C, H, W]``; ``grad`` is the objective's gradient
    with respect to the (centred) image."""
    _check_image(x)
    if not isinstance(grad, Tensor) or grad.shape != x.shape:
        raise InputError(
            "clip_small_contribution: grad must be a tensor of the same shape as x "
            f"{list(x.shape)}, got {list(grad.shape) if isinstance(grad, Tensor) else grad!r}."
        )
    pct = _check_pct(percentile, "clip_small_contribution: percentile")
    return _zero_below_percentile(x, contribution(x, grad), pct)


# ------------------------------------------------------------------------------------------------
# configured regularisers


class Regularizer(ABC):
    """Base of the configured regularisers. ``order`` sorts them into the paper's sequence;
    ``__call__(x, grad, step)`` returns the regularised centred image."""

    order: int = 100

    @abstractmethod
    def __call__(self, x: Tensor, grad: Tensor, step: int) -> Tensor:
        """Apply to ``x``; every subclass defines it."""


@dataclass(frozen=True)
class Decay(Regularizer):
    """L2 decay: ``x <- (1 - theta) * x`` every step."""

    theta: float
    order: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        _number(self.theta, "Decay: theta", 0.0, 1.0)

    def __call__(self, x: Tensor, grad: Tensor, step: int) -> Tensor:
        return l2_decay(x, self.theta)


@dataclass(frozen=True)
class Blur(Regularizer):
    """Gaussian blur with radius ``sigma`` pixels at steps 0, ``every``, 2 ``every``, ..."""

    sigma: float
    every: int = 1
    order: int = field(default=1, repr=False)

    def __post_init__(self) -> None:
        _number(self.sigma, "Blur: sigma (pixels)")
        if isinstance(self.every, bool) or not isinstance(self.every, numbers.Integral) or (
            self.every < 1
        ):
            raise InputError(f"Blur: every must be an int >= 1 (steps), got {self.every!r}.")

    def __call__(self, x: Tensor, grad: Tensor, step: int) -> Tensor:
        if step % int(self.every):
            return x
        return gaussian_blur(x, self.sigma)


@dataclass(frozen=True)
class NormClip(Regularizer):
    """Zero pixels whose norm is below the ``percentile`` (theta_n)."""

    percentile: float
    order: int = field(default=2, repr=False)

    def __post_init__(self) -> None:
        _check_pct(self.percentile, "NormClip: percentile")

    def __call__(self, x: Tensor, grad: Tensor, step: int) -> Tensor:
        return clip_small_norm(x, self.percentile)


@dataclass(frozen=True)
class ContributionClip(Regularizer):
    """Zero pixels whose contribution ``|x * da/dx|`` is below the ``percentile`` (theta_c)."""

    percentile: float
    order: int = field(default=3, repr=False)

    def __post_init__(self) -> None:
        _check_pct(self.percentile, "ContributionClip: percentile")

    def __call__(self, x: Tensor, grad: Tensor, step: int) -> Tensor:
        return clip_small_contribution(x, grad, self.percentile)


class Preset(Mapping):
    """Keyword arguments of :func:`~convscope.features.maximize` for a named recipe:
    ``maximize(model, layer, units, **yosinski(3))``. Also accepted as ``regularizers=``, which
    then fills every setting the caller left out."""

    def __init__(self, name: str, description: str, **kwargs: Any) -> None:
        self.name = name
        self.description = description
        self._kw = dict(kwargs)

    def __getitem__(self, key: str) -> Any:
        return self._kw[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._kw)

    def __len__(self) -> int:
        return len(self._kw)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._kw.items())
        return f"Preset({self.name!r}: {inner})"

    def render(self, **changes: Any) -> Any:
        """The preset as a :class:`~convscope.features.Render` (with ``changes`` applied):
        ``maximize(model, layer, units, render=yosinski(3).render(steps=200))``."""
        from .render import Render

        return Render(**{**self._kw, **changes})


#: The paper's four combinations, in its units (0-255 pixels): decay, blur radius, blur every,
#: norm percentile, contribution percentile, iterations, learning rate ("progress" = the
#: toolbox's progress policy).
_PAPER = {
    1: (0.0, 0.5, 4, 50.0, None, 500, "progress"),
    2: (0.3, None, None, 20.0, None, 750, 100.0),
    3: (1e-4, 1.0, 4, None, None, 1000, 100.0),
    4: (0.0, 0.5, 4, None, 90.0, 1000, "progress"),
}

#: Objective gain per step asked of the progress policy in presets 1 and 4 (the toolbox's
#: ``desired_prog``; its hyper-parameter search drew it from 0.1 .. 5).
PROGRESS_GAIN = 0.5


def yosinski(n: int) -> Preset:
    """The paper's hyper-parameter combination ``n`` (1-4), scaled for inputs in [0, 1].

    ====  =====  ===========  ========  =========  =====  ==========================
     n    decay  blur r/every  norm pct  contr pct  steps  learning rate
    ====  =====  ===========  ========  =========  =====  ==========================
     1    0      0.5 / 4      50        -          500    progress policy
     2    0.3    -            20        -          750    100 (0-255) -> 100 / 255**2
     3    1e-4   1.0 / 4      -         -          1000   100 (0-255) -> 100 / 255**2
     4    0      0.5 / 4      -         90         1000   progress policy
    ====  =====  ===========  ========  =========  =====  ==========================

    Scaling from the paper's 0-255 pixels to 0-1: decay and percentiles are unit-free and the
    blur radius is in pixels, so they stay. A constant learning rate of plain gradient ascent is
    multiplied by :data:`LR_SCALE_0_255` (``1 / 255**2``), which gives exactly the same trajectory
    for a network fed ``255 * x``. The progress policy (step length chosen so that the predicted
    objective gain is :data:`PROGRESS_GAIN` per step) is unit-free in the pixels. All four use
    plain gradient ascent on raw pixels (``optimizer="sgd"`` / ``"progress"``, ``param="pixel"``,
    no transforms), starting from the mean image plus a little noise, as the toolbox does.
    """
    if n not in _PAPER:
        raise InputError(f"yosinski(n): n must be 1, 2, 3 or 4 (the paper's four settings), got {n!r}.")
    decay, radius, every, norm_pct, contr_pct, steps, lr = _PAPER[n]
    regs: list[Regularizer] = []
    if decay:
        regs.append(Decay(decay))
    if radius:
        regs.append(Blur(radius, every))
    if norm_pct:
        regs.append(NormClip(norm_pct))
    if contr_pct:
        regs.append(ContributionClip(contr_pct))
    if lr == "progress":
        opt, rate = "progress", PROGRESS_GAIN
    else:
        opt, rate = "sgd", float(lr) * LR_SCALE_0_255
    return Preset(
        f"yosinski({n})",
        f"Yosinski et al. 2015, setting {n}",
        regularizers=tuple(regs),
        steps=steps,
        lr=rate,
        optimizer=opt,
        transforms=(),
        param="pixel",
    )


def sort_regularizers(regs: Any) -> list[Any]:
    """Built-in regularisers in the paper's order; custom callables keep their order, after them.

    ``maximize`` applies regularisers in the order given; pass ``sort_regularizers(regs)`` to get
    the paper's order (which the presets already use)."""
    items = list(regs)
    return sorted(items, key=lambda r: getattr(r, "order", 100) if isinstance(r, Regularizer) else 100)

