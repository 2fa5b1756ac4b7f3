"""Image parameterisations for activation maximisation.

* :class:`PixelImage` — the optimised tensor *is* the centred image (``x - centre``), clipped to
  the value range after every step, as in the deep-visualization toolbox.
* :class:`FFTImage` — lucid's parameterisation: a spectrum scaled by ``1 / frequency`` (so that
  all frequencies learn at a similar pace), an inverse real FFT, a decorrelated colour space for
  3-channel images (the square root of ImageNet's RGB covariance, normalised) and a sigmoid onto
  the value range. Regularisers still act on the image: :meth:`FFTImage.set_image` inverts every
  step (logit, inverse colour matrix, forward FFT, divide by the scale).

Both hold a batch ``[N, C, H, W]``; nothing mixes batch items.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["PixelImage", "FFTImage", "COLOR_CORRELATION_SQRT"]

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
