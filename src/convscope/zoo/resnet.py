"""CIFAR-style ResNets whose stem and blocks are separate, named modules.

Layout (Li et al., figure 1): ``conv1 -> bn1 -> relu -> maxpool`` (the stem, each stage its own
module so its feature maps can be captured), four residual stages ``layer1 .. layer4`` of
:class:`BasicBlock` s (the demo's small ResNet) or :class:`Bottleneck` s (:func:`resnet50_cifar`:
ResNet-50's 3, 4, 6, 3 bottleneck blocks for 32 x 32 inputs, the network of Li et al.'s
experiment), then ``avgpool`` (global average pooling) and ``fc`` — so CAM applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "resnet50_cifar"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``conv1 -> bn1 -> relu1 -> conv2 -> bn2 (+ downsample(x) or x) -> relu2``. ``downsample``
    (1x1 conv + BN) exists when the stride or the width changes. Every ReLU is its own module
    and not in-place, so hooks see each stage's output.

    x: [B, in_planes, H, W] -> [B, planes, H / stride, W / stride]
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    """ResNet-50's block: a 1x1 reduction, a 3x3 convolution (with the stride), a 1x1 expansion
    to ``4 * planes`` channels, and a residual connection.

    ``conv1 -> bn1 -> relu1 -> conv2 -> bn2 -> relu2 -> conv3 -> bn3 (+ downsample(x) or x) ->
    relu3``; ``downsample`` (1x1 conv + BN) when the stride or the width changes. Every ReLU is
    its own module and not in-place, so hooks see each stage's output.

    x: [B, in_planes, H, W] -> [B, 4 * planes, H / stride, W / stride]
    """

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem, max-pool, four stages, global average pool, linear.

    Args:
        num_classes: outputs of ``fc``.
        in_channels: input channels.
        width: channels of ``conv1`` and ``layer1``; stage k has ``width * 2**(k-1)`` channels.
        blocks: number of blocks in each of the four stages.
        block: ``"basic"`` (:class:`BasicBlock`, two 3x3 convolutions) or ``"bottleneck"``
            (:class:`Bottleneck`, ResNet-50's; stage k then outputs ``4 * width * 2**(k-1)``
            channels).

    Stage 1 keeps the resolution after the max-pool, stages 2-4 halve it, so a 32 x 32 input gives
    feature maps of 32 (stem), 16 (``maxpool``, ``layer1``), 8, 4 and 2 (``layer4``) pixels.

    x: [B, in_channels, H, W] -> logits [B, num_classes]
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        blocks: Sequence[int] = (1, 1, 1, 1),
        block: str = "basic",
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise InputError(f"ResNet(block={block!r}): use 'basic' or 'bottleneck'.")
        unit = _BLOCKS[block]
        self.block = block
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or any(b < 1 for b in blocks):
            raise InputError(
                f"ResNet(blocks={blocks!r}): give four stage depths, each >= 1, e.g. (1, 1, 1, 1)."
            )
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise InputError(
                f"ResNet(num_classes={num_classes}, in_channels={in_channels}, width={width}): "
                "all must be positive integers."
            )
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = [width * 2**k for k in range(4)]
        in_planes = width
        for k, (p, n) in enumerate(zip(planes, blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if (k > 0 and j == 0) else 1
                layers.append(unit(in_planes, p, stride))
                in_planes = p * getattr(unit, "expansion", 1)
            setattr(self, f"layer{k + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_classes = num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(torch.flatten(x, 1))


def resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    width: int = 16,
    blocks: Sequence[int] = (1, 1, 1, 1),
    block: str = "basic",
) -> ResNet:
    """Build a :class:`ResNet` (random weights; nothing is downloaded)."""
    return ResNet(num_classes=num_classes, in_channels=in_channels, width=width, blocks=blocks,
                  block=block)


def resnet50_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-50 for 32 x 32 inputs (Li et al.'s experiment on CIFAR-10): the 3x3 stem
    (conv, BN, ReLU, max-pool to 16 x 16), bottleneck stages of 3, 4, 6 and 3 blocks with 256,
    512, 1,024 and 2,048 output channels (16, 8, 4, 2 pixels), global average pooling and a
    linear head: 23.5 M parameters for 10 classes. Random weights; nothing is downloaded."""
    return resnet(num_classes=num_classes, in_channels=in_channels, width=width,
                  blocks=(3, 4, 6, 3), block="bottleneck")
