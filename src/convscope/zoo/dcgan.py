"""The DCGAN generator and discriminator of Wang & Li (2020), in their diagnosed versions.

Generator v1 (the paper's Table 1): z (256, standard normal) -> FC 2560, ReLU -> FC 25600, ReLU ->
reshape 64 x 20 x 20 -> three 5x5 stride-2 transposed convolutions to 32, 16 and 3 channels, each
followed by ReLU -> 160 x 160. The paper lists ReLU for the last layer too (the data are in [-1, 1],
so such a generator cannot produce negative values: that is the paper's model, kept as the default;
``output="tanh"`` gives the usual DCGAN output instead). The paper names no padding and no batch
normalisation in the generator: each transposed convolution here exactly doubles H and W ("same"
padding: padding 2, output padding 1). Diagnosis found dead FC outputs; **v2 removes one FC layer**
(z -> FC 25600 directly, Table 3).

Discriminator v1 (Table 2): three 5x5 stride-2 convolutions (16, 32, 64 channels, LeakyReLU; the
paper gives no slope, 0.2 here) -> flatten 25600 -> FC 160 (LeakyReLU) -> FC 1 -> sigmoid. It extracted only texture; **v3 adds batch normalisation to every
layer** (Table 4: after each convolution and after FC 160; the 1-unit output layer keeps no BN).

Layouts follow PyTorch: images are ``[B, 3, H, W]`` (the paper writes ``[batch, h, w, channel]``).
Every layer is a named module (``fc1``, ``relu1``, ``deconv1``, ``conv1``, ``bn1``, ``lrelu1`` ...)
so the diagnosis views can address it: generator v1's ReLUs are ``relu1`` ... ``relu5`` (v2:
``relu1`` ... ``relu4``), the paper's "layers 3-5" of v1 are ``deconv1`` ... ``deconv3``.
``image_size`` (a multiple of 8) and ``latent_dim`` can be made small for cheap tests; defaults are
the paper's (latent 256, 160 x 160). The pre-paper variant (latent 100, tanh output) is
``dcgan_generator(latent_dim=100, output="tanh")``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "dcgan_generator", "dcgan_discriminator",
           "GENERATOR_OUTPUTS"]

#: Output activations of :class:`DCGANGenerator`: ``"relu"`` is the paper's (Table 1), ``"tanh"``
#: the usual DCGAN choice for data in [-1, 1].
GENERATOR_OUTPUTS = ("relu", "tanh")


def _check_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 8 or image_size % 8:
        raise InputError(
            f"image_size={image_size!r}: must be a multiple of 8 (three stride-2 layers), e.g. 160."
        )
    return int(image_size)


def _deconv(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    # 5x5, stride 2, exactly doubles H and W
    return nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1)


class DCGANGenerator(nn.Module):
    """DCGAN generator of Wang & Li (2020).

    Args:
        version: 1 (two FC layers, 2560 then 64 * (S/8)^2) or 2 (one FC layer).
        latent_dim: size of z.
        image_size: side S of the output image (multiple of 8; 160 in the paper).
        hidden: width of the first FC layer in version 1 (2560 in the paper).
        channels: output image channels.
        output: ``"relu"`` (the paper's last activation; module ``relu5`` in v1, ``relu4`` in
            v2) or ``"tanh"`` (module ``tanh``).

    z: [B, latent_dim] -> images [B, channels, S, S] (>= 0 for ``"relu"``, in [-1, 1] for tanh)
    """

    def __init__(
        self,
        version: int = 1,
        latent_dim: int = 256,
        image_size: int = 160,
        hidden: int = 2560,
        channels: int = 3,
        output: str = "relu",
    ) -> None:
        super().__init__()
        if output not in GENERATOR_OUTPUTS:
            raise InputError(
                f"dcgan_generator(output={output!r}): choose 'relu' (Wang & Li 2020's Table 1) "
                "or 'tanh'."
            )
        if version not in (1, 2):
            raise InputError(
                f"dcgan_generator(version={version!r}): Wang & Li (2020) have generator versions 1 "
                "(two FC layers) and 2 (one FC layer removed)."
            )
        s = _check_size(image_size) // 8
        self.version = version
        self.latent_dim = int(latent_dim)
        self.image_size = s * 8
        feat = 64 * s * s
        k = 1
        if version == 1:
            self.fc1 = nn.Linear(latent_dim, hidden)
            self.relu1 = nn.ReLU()
            self.fc2 = nn.Linear(hidden, feat)
            self.relu2 = nn.ReLU()
            k = 3
        else:
            self.fc1 = nn.Linear(latent_dim, feat)
            self.relu1 = nn.ReLU()
            k = 2
        self.unflatten = nn.Unflatten(1, (64, s, s))
        self.deconv1 = _deconv(64, 32)
        setattr(self, f"relu{k}", nn.ReLU())
        self.deconv2 = _deconv(32, 16)
        setattr(self, f"relu{k + 1}", nn.ReLU())
        self.deconv3 = _deconv(16, channels)
        self.output = output
        self._out = "tanh" if output == "tanh" else f"relu{k + 2}"
        setattr(self, self._out, nn.Tanh() if output == "tanh" else nn.ReLU())
        self._relus = [f"relu{k}", f"relu{k + 1}"]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise InputError(
                f"DCGANGenerator expects z of shape [B, {self.latent_dim}], got "
                f"{list(z.shape)}. Sample z = torch.randn(B, {self.latent_dim})."
            )
        x = self.relu1(self.fc1(z))
        if self.version == 1:
            x = self.relu2(self.fc2(x))
        x = self.unflatten(x)
        x = getattr(self, self._relus[0])(self.deconv1(x))
        x = getattr(self, self._relus[1])(self.deconv2(x))
        return getattr(self, self._out)(self.deconv3(x))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator of Wang & Li (2020).

    Args:
        version: 1 (no normalisation) or 3 (batch norm after every conv and after FC 160).
        image_size: side S of the input image (multiple of 8; 160 in the paper).
        hidden: width of the hidden FC layer (160 in the paper).
        channels: input image channels.
        negative_slope: LeakyReLU slope.

    x: [B, channels, S, S] -> probability of "real" [B, 1]
    """

    def __init__(
        self,
        version: int = 1,
        image_size: int = 160,
        hidden: int = 160,
        channels: int = 3,
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if version not in (1, 3):
            raise InputError(
                f"dcgan_discriminator(version={version!r}): Wang & Li have discriminator versions "
                "1 (no normalisation) and 3 (batch norm on every layer)."
            )
        s = _check_size(image_size) // 8
        self.version = version
        self.image_size = s * 8
        bn = version == 3
        widths = [channels, 16, 32, 64]
        for k in range(3):
            setattr(
                self,
                f"conv{k + 1}",
                nn.Conv2d(widths[k], widths[k + 1], 5, stride=2, padding=2, bias=not bn),
            )
            if bn:
                setattr(self, f"bn{k + 1}", nn.BatchNorm2d(widths[k + 1]))
            setattr(self, f"lrelu{k + 1}", nn.LeakyReLU(negative_slope))
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64 * s * s, hidden, bias=not bn)
        if bn:
            self.bn4 = nn.BatchNorm1d(hidden)
        self.lrelu4 = nn.LeakyReLU(negative_slope)
        self.fc2 = nn.Linear(hidden, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if x.dim() != 4 or x.shape[2] != s or x.shape[3] != s:
            raise InputError(
                f"DCGANDiscriminator(image_size={s}) expects images [B, C, {s}, {s}], got "
                f"{list(x.shape)}. Build it with image_size={x.shape[-1]} or resize the images."
            )
        for k in range(1, 4):
            x = getattr(self, f"conv{k}")(x)
            if self.version == 3:
                x = getattr(self, f"bn{k}")(x)
            x = getattr(self, f"lrelu{k}")(x)
        x = self.fc1(self.flatten(x))
        if self.version == 3:
            x = self.bn4(x)
        x = self.lrelu4(x)
        return self.sigmoid(self.fc2(x))


def dcgan_generator(
    version: int = 1,
    latent_dim: int = 256,
    image_size: int = 160,
    hidden: int = 2560,
    output: str = "relu",
) -> DCGANGenerator:
    """Wang & Li (2020)'s generator, version 1 or 2 (see :class:`DCGANGenerator`); the defaults
    are the paper's (latent 256, 160 x 160, ReLU output)."""
    return DCGANGenerator(version=version, latent_dim=latent_dim, image_size=image_size,
                          hidden=hidden, output=output)


def dcgan_discriminator(
    version: int = 1, image_size: int = 160, hidden: int = 160
) -> DCGANDiscriminator:
    """Wang & Li (2020)'s discriminator, version 1 or 3 (see :class:`DCGANDiscriminator`)."""
    return DCGANDiscriminator(version=version, image_size=image_size, hidden=hidden)
