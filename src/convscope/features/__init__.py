"""What units prefer: activation maximisation and dataset examples (Li et al.;
Yosinski et al. 2015).

* :func:`maximize` — one optimised input per unit, many units as one batch; objectives
  (:func:`channel`, :func:`neuron`, :func:`class_logit`, composable with ``+ - *``), Yosinski et
  al.'s regularisers (:func:`l2_decay`, :func:`gaussian_blur`, :func:`clip_small_norm`,
  :func:`clip_small_contribution`; presets :func:`yosinski`), lucid-style transforms and an FFT /
  decorrelated-colour parameterisation.
* :func:`top_examples` — the ``k`` dataset images that excite each channel most, with locations
  and receptive-field crops, in one streaming pass; :func:`merge` combines shards exactly.
* :func:`live` — all channels of a layer for one image (the live view).
* :func:`receptive_field` — analytic (graph) or empirical (gradient) receptive fields.
"""

from __future__ import annotations

from .maximize import DEFAULTS, IMAGENET, maximize, unit_seed
from .objectives import OUTPUT, Objective, channel, class_logit, neuron
from .param import FFTImage, PixelImage
from .regularizers import (
    LR_SCALE_0_255,
    Blur,
    ContributionClip,
    Decay,
    NormClip,
    Preset,
    Regularizer,
    clip_small_contribution,
    clip_small_norm,
    contribution,
    gaussian_blur,
    l2_decay,
    yosinski,
)
from .top import ReceptiveField, TopExamples, live, merge, receptive_field, top_examples
from .transforms import Jitter, Pad, RandomRotate, RandomScale, Transform, standard_transforms

__all__ = [
    "DEFAULTS",
    "IMAGENET",
    "LR_SCALE_0_255",
    "OUTPUT",
    "Blur",
    "ContributionClip",
    "Decay",
    "FFTImage",
    "Jitter",
    "NormClip",
    "Objective",
    "Pad",
    "PixelImage",
    "Preset",
    "RandomRotate",
    "RandomScale",
    "ReceptiveField",
    "Regularizer",
    "TopExamples",
    "Transform",
    "channel",
    "class_logit",
    "clip_small_contribution",
    "clip_small_norm",
    "contribution",
    "gaussian_blur",
    "l2_decay",
    "live",
    "maximize",
    "merge",
    "neuron",
    "receptive_field",
    "standard_transforms",
    "top_examples",
    "unit_seed",
    "yosinski",
]
