"""Attribution: which input pixels and which feature-map locations drive a prediction.

One call shape for every method::

    cs.explain.saliency(model, x, target=None)            -> [B, C, H, W] signed input-space signal
    cs.explain.deconvnet(model, x, target=None)           -> [B, C, H, W]
    cs.explain.guided_backprop(model, x, target=None)     -> [B, C, H, W]
    cs.explain.to_heatmap(attr)                           -> [B, H, W]  (max |.| over channels)

    cs.explain.cam(model, x, target=None, layer=None, normalize=True)          -> [B, H, W]
    cs.explain.grad_cam(model, x, target=None, layer=None, normalize=True)     -> [B, H, W]
    cs.explain.grad_cam_pp(model, x, target=None, layer=None, normalize=True)  -> [B, H, W]
    cs.explain.score_cam(model, x, target=None, layer=None, normalize=True,
                         batch_size=32, quiet=False)                           -> [B, H, W]

``target``: None (predicted class), an int, B ints, or a callable on the model output returning
``[B]`` scores or ``[B, K]`` class scores. ``layer``: a module, a module path or None
(:func:`auto_layer`). Quality metrics live in :mod:`convscope.explain.metrics`.
:func:`attribute_all` runs every method, with the metrics, over a data set in batches. See
docs/explain.md.
"""

from __future__ import annotations

from . import metrics
from .base import Layer, Target, auto_layer
from .cams import cam, grad_cam, grad_cam_pp, score_cam
from .dataset import ATTRIBUTION_METHODS, AttributionSet, attribute_all
from .gradients import deconvnet, guided_backprop, saliency, to_heatmap

__all__ = [
    "saliency",
    "deconvnet",
    "guided_backprop",
    "to_heatmap",
    "cam",
    "grad_cam",
    "grad_cam_pp",
    "score_cam",
    "auto_layer",
    "attribute_all",
    "AttributionSet",
    "ATTRIBUTION_METHODS",
    "metrics",
    "Target",
    "Layer",
]
