"""Small reference models: a CIFAR-style :class:`ResNet` (named stem stages, GAP + linear head)
and the DCGAN generator / discriminator of Wang & Li. Random weights; nothing is downloaded."""

from __future__ import annotations

from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_discriminator, dcgan_generator
from .resnet import BasicBlock, ResNet, resnet

__all__ = [
    "ResNet",
    "BasicBlock",
    "resnet",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "dcgan_generator",
    "dcgan_discriminator",
]
