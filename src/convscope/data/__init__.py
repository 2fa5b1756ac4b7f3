"""Data sets for demos and tests: procedural :class:`Shapes` (with object masks),
:class:`CIFAR10` read from local files, CelebA's aligned faces from a local folder
(:class:`CelebAFolder`, Wang & Li 2020's preprocessing), procedural :class:`Faces` (the
no-download stand-in for CelebA) and :func:`read_video`: a local MP4 or WebM file, checked and
decoded with PyAV into model-sized frames (``pip install 'convscope[video]'``). Nothing here
downloads anything."""

from __future__ import annotations

from .celeba import CELEBA_FOLDER, CelebAFolder, celeba_crop_box
from .cifar import CIFAR10, CIFAR10_CLASSES
from .faces import Faces
from .shapes import SHAPE_NAMES, Shapes, render_masks, shape_mask
from .video import LOCAL_LIMITS, VideoFrames, VideoLimits, read_video

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
    "CelebAFolder",
    "celeba_crop_box",
    "CELEBA_FOLDER",
    "Faces",
    "read_video",
    "VideoFrames",
    "VideoLimits",
    "LOCAL_LIMITS",
]
