"""What units prefer: activation maximisation and dataset examples (Li et al.;
Yosinski et al. 2015).

* :func:`maximize` — one optimised input per unit, many units as one batch; objectives
  (:func:`channel`, :func:`neuron`, :func:`class_logit`, composable with ``+ - * /``), and a
  rendering recipe :class:`Render`: parameterisation factories (:func:`fft_image`, lucid's FFT /
  decorrelated colour; :func:`pixel_image`), optimiser factories (:func:`adam`, :func:`sgd`,
  :func:`progress`), lucid-style transforms and Yosinski et al.'s regularisers
  (:func:`l2_decay`, :func:`gaussian_blur`, :func:`clip_small_norm`,
  :func:`clip_small_contribution`; presets :func:`yosinski`), applied in the order given.
* :func:`top_examples` — the ``k`` dataset images that excite each channel most, with locations
  and receptive-field crops, in one streaming pass; :func:`merge` combines shards exactly.
* :func:`live` — all channels of a layer for one image (the live view); :func:`play` — a video's
  frames through the model in batches: per frame the layer's channels and the top-k classes.
* :func:`receptive_field` — analytic (graph) or empirical (gradient) receptive fields.
"""

from __future__ import annotations

from .maximize import DEFAULTS, IMAGENET, maximize, unit_seed
from .objectives import OUTPUT, Objective, channel, class_logit, neuron
from .param import Canvas, FFTImage, PixelImage, fft_image, pixel_image
from .preferred import PreferredInputsPass, preferred_inputs
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
from .render import Progress, Render, adam, progress, sgd
from .top import (
    ReceptiveField,
    TopExamples,
    TopExamplesPass,
    live,
    merge,
    receptive_field,
    top_examples,
)
from .transforms import Jitter, Pad, RandomRotate, RandomScale, Transform, standard_transforms
from .video import Playback, play

__all__ = [
    "DEFAULTS",
    "IMAGENET",
    "LR_SCALE_0_255",
    "OUTPUT",
    "Blur",
    "Canvas",
    "ContributionClip",
    "Decay",
    "FFTImage",
    "Jitter",
    "NormClip",
    "Objective",
    "Pad",
    "PixelImage",
    "Playback",
    "PreferredInputsPass",
    "Progress",
    "Preset",
    "RandomRotate",
    "RandomScale",
    "ReceptiveField",
    "Render",
    "Regularizer",
    "TopExamples",
    "TopExamplesPass",
    "Transform",
    "adam",
    "channel",
    "class_logit",
    "clip_small_contribution",
    "clip_small_norm",
    "contribution",
    "fft_image",
    "gaussian_blur",
    "l2_decay",
    "live",
    "maximize",
    "merge",
    "neuron",
    "pixel_image",
    "play",
    "preferred_inputs",
    "progress",
    "receptive_field",
    "sgd",
    "standard_transforms",
    "top_examples",
    "unit_seed",
    "yosinski",
]
