"""Data sets for demos and tests: procedural :class:`Shapes` (with object masks) and
:class:`CIFAR10` read from local files. Nothing here downloads anything."""

from __future__ import annotations

from .cifar import CIFAR10, CIFAR10_CLASSES
from .shapes import SHAPE_NAMES, Shapes, render_masks, shape_mask

#: Class names of :class:`Shapes` with all ten classes (``Shapes(...).class_names`` for fewer).
class_names = SHAPE_NAMES

__all__ = [
    "Shapes",
    "SHAPE_NAMES",
    "class_names",
    "render_masks",
    "shape_mask",
    "CIFAR10",
    "CIFAR10_CLASSES",
]
