"""The source documents' experiments, runnable end to end (``convscope experiment NAME``).

* :mod:`.resnet50_cifar10` -- Li et al.: a bottleneck ResNet-50 trained on CIFAR-10 with the
  paper's split, recording what the paper shows (stem feature maps, stage 4's structure and
  outputs, the input preference of every conv layer of stages 1 and 4, the memory and time
  rings, a 3-D PCA of the test set).
* :mod:`.dcgan` -- Wang & Li (2020): the DCGAN tuning story, generator v1/v2 and discriminator
  v1/v3, each round its own run (losses, generated image grids, diagnosis reports and views).
"""

from __future__ import annotations

__all__ = ["EXPERIMENTS"]

#: ``convscope experiment`` names -> ``module:function``
EXPERIMENTS = {"resnet50-cifar10": "resnet50_cifar10:run_experiment",
               "dcgan": "dcgan:run_experiment"}  # Wang & Li 2020
