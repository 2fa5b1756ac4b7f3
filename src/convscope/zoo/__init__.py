"""Reference models: CIFAR-style :class:`ResNet` s (named stem stages, GAP + linear head; the
bottleneck ResNet-50 of :func:`resnet50_cifar`)
and the DCGAN generator / discriminator of Wang & Li. Random weights; nothing is downloaded."""

from __future__ import annotations

from .dcgan import (
    GENERATOR_OUTPUTS,
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_discriminator,
    dcgan_generator,
)
from .resnet import BasicBlock, Bottleneck, ResNet, resnet, resnet50_cifar

__all__ = [
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "resnet",
    "resnet50_cifar",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "dcgan_generator",
    "dcgan_discriminator",
    "GENERATOR_OUTPUTS",
]
