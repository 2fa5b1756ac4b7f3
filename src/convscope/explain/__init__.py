"""Attribution: which input pixels and which feature-map locations drive a prediction.

One call shape for every method, ``(model, inputs, target=None, *, layer=None, **options)``,
and one table of them (:mod:`convscope.explain.registry`: :func:`get`, :func:`names`,
:data:`METHODS`, :func:`register`)::

    cs.explain.saliency(model, x, target=None)            -> [B, C, H, W] signed input-space signal
    cs.explain.deconvnet(model, x, target=None)           -> [B, C, H, W]
    cs.explain.guided_backprop(model, x, target=None)     -> [B, C, H, W]
    cs.explain.to_heatmap(attr)                           -> [B, H, W]  (max |.| over channels)

    cs.explain.cam(model, x, target=None, layer=None, normalize=True)          -> [B, H, W]
    cs.explain.grad_cam(model, x, target=None, layer=None, normalize=True)     -> [B, H, W]
    cs.explain.grad_cam_pp(model, x, target=None, layer=None, normalize=True)  -> [B, H, W]
    cs.explain.score_cam(model, x, target=None, layer=None, normalize=True,
                         batch_size=32, quiet=False)                           -> [B, H, W]

    cs.explain.get("grad_cam")(model, x, 3, layer="layer4")                    -> [B, H, W]
    cs.explain.METHODS["saliency"].heatmap(model, x)                           -> [B, H, W]

A CAM variant supplies only its channel weights: ``@cs.explain.register_cam("name")`` on a
function ``(A, dS/dA) -> [B, K]`` (see :func:`~convscope.explain.cams.register_cam`).

``target``: None (predicted class), an int, B ints, or a callable on the model output returning
``[B]`` scores or ``[B, K]`` class scores. ``layer``: a module, a module path or None
(:func:`auto_layer`). :func:`project_unit` / :func:`top_projections` project one unit back to
pixels (Zeiler & Fergus 2014; docs/cnnvis.md). Quality metrics live in :mod:`convscope.explain.metrics`.
:func:`attribute_all` runs every method, with the metrics, over a data set in batches. See
docs/explain.md.
"""

from __future__ import annotations

from . import metrics, registry
from .base import Layer, Target, auto_layer

# the input-space methods register first: the table's order is the Attribution page's order
from .gradients import deconvnet, guided_backprop, saliency, to_heatmap  # isort: skip
from .cams import CamContext, cam, grad_cam, grad_cam_pp, register_cam, score_cam  # isort: skip
from .dataset import ATTRIBUTION_METHODS, AttributionPass, AttributionSet, attribute_all  # isort: skip
from .registry import METHODS, Method, get, names, register, unregister  # isort: skip
from .projection import TopProjections, project_unit, top_projections  # isort: skip

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
    "AttributionPass",
    "AttributionSet",
    "ATTRIBUTION_METHODS",
    "METHODS",
    "Method",
    "CamContext",
    "get",
    "names",
    "register",
    "register_cam",
    "unregister",
    "registry",
    "metrics",
    "Target",
    "Layer",
    "project_unit",
    "top_projections",
    "TopProjections",
]
