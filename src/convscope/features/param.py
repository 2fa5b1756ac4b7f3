"""Image parameterisations for activation maximisation.

* :class:`PixelImage` — the optimised tensor *is* the centred image (``x - centre``), clipped to
  the value range after every step, as in the deep-visualization toolbox.
* :class:`FFTImage` — lucid's parameterisation: a spectrum scaled by ``1 / frequency`` (so that
  all frequencies learn at a similar pace), an inverse real FFT, a decorrelated colour space for
  3-channel images (the square root of ImageNet's RGB covariance, normalised) and a sigmoid onto
  the value range. Regularisers still act on the image: :meth:`FFTImage.set_image` inverts every
  step (logit, inverse colour matrix, forward FFT, divide by the scale).

Both hold a batch ``[N, C, H, W]``; nothing mixes batch items.

:func:`~convscope.features.maximize` takes a parameterisation as a *factory*
``param(canvas) -> image`` (:class:`Canvas`: batch shape, one generator per unit, device, value
range, mean colour). :func:`pixel_image` and :func:`fft_image` are the built-in factories
(``param="pixel"`` / ``"fft"``). The returned object has ``params`` (the leaf tensors the
optimiser updates) and ``image()`` (the raw ``[N, C, H, W]`` image, differentiable); to work with
regularisers it also has ``centred()`` and ``set_centred(x)``, and ``project()`` after each step.
A factory may instead return lucent's pair ``(params, to_image)`` (no regularisers then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError

__all__ = [
    "PixelImage", "FFTImage", "COLOR_CORRELATION_SQRT", "Canvas", "pixel_image", "fft_image",
    "make_image",
]

#: Square root of ImageNet's RGB colour covariance (lucid's constant), used to decorrelate colours.
COLOR_CORRELATION_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)


class PixelImage:
    """Raw pixels. ``centred: [N, C, H, W]`` initial centred image; ``centre: [C]``;
    ``lo``, ``hi``: the value range."""

    def __init__(self, centred: Tensor, centre: Tensor, lo: float, hi: float) -> None:
        self.centre = centre.view(1, -1, 1, 1).to(centred)
        self.lo = lo
        self.hi = hi
        self.x = self._clip(centred.detach().clone()).requires_grad_(True)

    def _clip(self, xc: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(xc, self.hi - self.centre), self.lo - self.centre)

    @property
    def params(self) -> list[Tensor]:
        return [self.x]

    def image(self) -> Tensor:
        """Raw image ``[N, C, H, W]`` in the value range (differentiable)."""
        return self.x + self.centre

    def centred(self) -> Tensor:
        return self.x.detach()

    def set_centred(self, xc: Tensor) -> None:
        with torch.no_grad():
            self.x.copy_(self._clip(xc))

    def project(self) -> None:
        """Clip to the value range (after an optimiser step)."""
        with torch.no_grad():
            self.x.copy_(self._clip(self.x))


def _freq_scale(h: int, w: int, decay_power: float = 1.0) -> Tensor:
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    freqs = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power


class FFTImage:
    """Fourier parameterisation with decorrelated colour and a sigmoid.

    ``spectrum: [N, C, H, W // 2 + 1, 2]`` initial (real, imaginary) coefficients (lucid draws
    them with standard deviation 0.01); ``lo``, ``hi``: the value range; ``centre: [C]`` the
    mean colour (used for the centred view that regularisers see).
    """

    EPS = 1e-4

    def __init__(
        self,
        spectrum: Tensor,
        size: tuple[int, int],
        centre: Tensor,
        lo: float,
        hi: float,
        decorrelate: bool = True,
    ) -> None:
        self.h, self.w = size
        dtype, device = spectrum.dtype, spectrum.device
        self.scale = _freq_scale(self.h, self.w).to(dtype=dtype, device=device)
        self.s = spectrum.detach().clone().requires_grad_(True)
        self.lo, self.hi = lo, hi
        self.centre = centre.view(1, -1, 1, 1).to(dtype=dtype, device=device)
        c = spectrum.shape[1]
        self.color: Tensor | None = None
        if decorrelate and c == 3:
            m = COLOR_CORRELATION_SQRT
            m = m / m.norm(dim=0).max()
            self.color = m.to(dtype=dtype, device=device)
            self.color_inv = torch.linalg.inv(m).to(dtype=dtype, device=device)

    @property
    def params(self) -> list[Tensor]:
        return [self.s]

    def _logits(self) -> Tensor:
        spec = torch.view_as_complex(self.s) * self.scale
        z = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho") / 4.0
        if self.color is not None:
            z = torch.einsum("ij,njhw->nihw", self.color, z)
        return z

    def image(self) -> Tensor:
        """Raw image ``[N, C, H, W]`` in the value range (differentiable)."""
        return self.lo + (self.hi - self.lo) * torch.sigmoid(self._logits())

    def centred(self) -> Tensor:
        with torch.no_grad():
            return self.image() - self.centre

    def set_centred(self, xc: Tensor) -> None:
        """Make the parameters represent the image ``xc + centre`` (values clipped into the open
        value range)."""
        with torch.no_grad():
            v = ((xc + self.centre - self.lo) / (self.hi - self.lo)).clamp(self.EPS, 1 - self.EPS)
            z = torch.log(v) - torch.log1p(-v)
            if self.color is not None:
                z = torch.einsum("ij,njhw->nihw", self.color_inv, z)
            spec = torch.fft.rfft2(z * 4.0, norm="ortho") / self.scale
            self.s.copy_(torch.view_as_real(spec))

    def project(self) -> None:
        """Nothing to do: the sigmoid keeps the image in range."""


# ------------------------------------------------------------------------------------------------
# factories


@dataclass(frozen=True)
class Canvas:
    """What a parameterisation factory is told.

    Attributes:
        shape: ``(N, C, H, W)`` of the batch (one image per unit).
        generators: one ``torch.Generator`` (CPU) per unit: draw the unit's start from its own
            generator, so a unit's image does not depend on the other units in the batch.
        device, dtype: where and in which dtype the parameters live.
        centre: ``[C]`` the mean colour (``x = 0`` of the centred image regularisers see).
        lo, hi: the raw pixel value range.
    """

    shape: tuple[int, int, int, int]
    generators: Sequence[torch.Generator]
    device: torch.device
    dtype: torch.dtype
    centre: Tensor
    lo: float
    hi: float


def pixel_image() -> Callable[[Canvas], PixelImage]:
    """Factory of :class:`PixelImage`: raw pixels starting at the mean image plus
    N(0, (0.04 (hi - lo))^2) noise (the toolbox's N(0, 10) on 0-255 pixels)."""

    def make(canvas: Canvas) -> PixelImage:
        _, c, h, w = canvas.shape
        scale = 0.04 * (canvas.hi - canvas.lo)
        init = torch.stack([torch.randn(c, h, w, generator=g) * scale for g in canvas.generators])
        return PixelImage(init.to(canvas.device, canvas.dtype), canvas.centre, canvas.lo, canvas.hi)

    make.__qualname__ = make.__name__ = "pixel_image"
    return make


def fft_image(decorrelate: bool = True) -> Callable[[Canvas], FFTImage]:
    """Factory of :class:`FFTImage` (lucid's parameterisation): a spectrum drawn with standard
    deviation 0.01, colours decorrelated for 3 channels when ``decorrelate``."""

    def make(canvas: Canvas) -> FFTImage:
        _, c, h, w = canvas.shape
        init = torch.stack(
            [torch.randn(c, h, w // 2 + 1, 2, generator=g) * 0.01 for g in canvas.generators]
        )
        return FFTImage(init.to(canvas.device, canvas.dtype), (h, w), canvas.centre, canvas.lo,
                        canvas.hi, decorrelate)

    make.__qualname__ = make.__name__ = f"fft_image(decorrelate={bool(decorrelate)})"
    return make


class _Lucent:
    """A factory's ``(params, to_image)`` pair seen through the image protocol."""

    def __init__(self, params: Any, to_image: Callable[[], Tensor], centre: Tensor) -> None:
        self.params = list(params)
        self.to_image = to_image
        self.centre = centre.view(1, -1, 1, 1)

    def image(self) -> Tensor:
        return self.to_image()

    def project(self) -> None:
        """Nothing to do: ``to_image`` is responsible for the range."""


def make_image(factory: Callable[[Canvas], Any], canvas: Canvas, needs_inverse: bool) -> Any:
    """Call a parameterisation factory and check what it returned (:class:`InputError`
    otherwise)."""
    got = factory(canvas)
    if isinstance(got, tuple) and len(got) == 2 and callable(got[1]):
        got = _Lucent(got[0], got[1], canvas.centre)
    params = getattr(got, "params", None)
    if not callable(getattr(got, "image", None)) or not params or not all(
        isinstance(p, Tensor) and p.requires_grad and p.is_leaf for p in params
    ):
        raise InputError(
            f"the parameterisation factory {getattr(factory, '__name__', factory)!r} returned "
            f"{type(got).__name__}; it must return an object with .params (leaf tensors that "
            "require grad) and .image() -> [N, C, H, W], or a pair (params, to_image)."
        )
    if needs_inverse and not callable(getattr(got, "set_centred", None)):
        raise InputError(
            "regularisers act on the image and need a parameterisation that can be set from an "
            "image (.centred() and .set_centred(x), like PixelImage and FFTImage); drop the "
            "regularisers or use param='pixel' / 'fft'."
        )
    return got
