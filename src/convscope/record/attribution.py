"""``run.log_attributions``: attribution maps of sample images, with quality metrics.

Stored:

* ``arrays/attr_images/<key>`` — the images ``[B, C, H, W]`` (float16);
* ``arrays/attributions/<key>.<method>`` — each method's map ``[B, H, W]`` in [0, 1] (float16;
  input-space methods reduced with :func:`convscope.explain.to_heatmap`, max |.| over channels,
  then min-max scaled per image);
* table ``attribution_metrics`` — one row per (key, method, image): target, predicted class and
  probability, average-drop term, and the pointing-game hit when object masks are given;
* ``objects/attributions/<key>`` — methods, the CAM layer used, labels, class names, timings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConvscopeError, InputError
from ..store.layout import safe_key

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["ATTRIBUTION_METHODS", "log_attributions"]

ATTRIBUTION_METHODS = ("saliency", "deconvnet", "guided_backprop", "cam", "grad_cam",
                       "grad_cam_pp", "score_cam")
_INPUT_SPACE = {"saliency", "deconvnet", "guided_backprop"}


def _unit(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.reshape(maps.shape[0], -1).float()
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def log_attributions(
    run: Run,
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    methods: Sequence[str] = ATTRIBUTION_METHODS,
    target: Any = None,
    layer: Any = None,
    key: str = "samples",
    class_names: Sequence[str] | None = None,
    score_cam_batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Compute every method in ``methods`` on ``images [B, C, H, W]`` and store the maps.

    ``target``: as in :mod:`convscope.explain` (None = predicted class). ``masks`` ``[B, H, W]``
    bool (object masks) add the pointing game. Methods that do not apply to the model (plain CAM
    on a network without global pooling + linear classifier) are skipped and the reason is
    stored. Returns ``{method: maps [B, H, W]}``.
    """
    from .. import explain
    from ..explain import metrics

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError("log_attributions needs images as a [B, C, H, W] tensor, got "
                         f"{getattr(images, 'shape', type(images).__name__)}.")
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise InputError(f"unknown attribution method(s) {unknown}: choose from "
                         f"{list(ATTRIBUTION_METHODS)}.")
    if masks is not None and tuple(masks.shape) != (images.shape[0], *images.shape[-2:]):
        raise InputError(f"masks must be [B, H, W] = {[images.shape[0], *images.shape[-2:]]}, "
                         f"got {list(masks.shape)}.")
    model_was_training = model.training
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(images).float(), dim=1)
    pred = probs.argmax(dim=1)
    if target is None:
        tgt = pred
    elif isinstance(target, int):
        tgt = torch.full_like(pred, target)
    else:
        tgt = torch.as_tensor(target, device=pred.device).reshape(-1)
    cam_layer = layer if layer is not None else explain.auto_layer(model, images)
    results: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        fn = getattr(explain, method)
        t0 = time.perf_counter()
        try:
            if method in _INPUT_SPACE:
                maps = explain.to_heatmap(fn(model, images, tgt))
            elif method == "cam":  # CAM is defined on the map that feeds the global pooling
                maps = fn(model, images, tgt)
            elif method == "score_cam":
                maps = fn(model, images, tgt, layer=cam_layer, batch_size=score_cam_batch_size,
                          quiet=run.quiet)
            else:
                maps = fn(model, images, tgt, layer=cam_layer)
        except ConvscopeError as exc:  # e.g. CAM on a network without GAP + linear classifier
            skipped[method] = str(exc)
            continue
        seconds[method] = time.perf_counter() - t0
        results[method] = _unit(maps.detach())
        run.log_array("attributions", f"{key}.{method}", results[method].cpu(),
                      dtype=np.float16)
    model.train(model_was_training)
    run.log_array("attr_images", key, images.detach().float().cpu(), dtype=np.float16)
    b = images.shape[0]
    lab = (np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64) if labels is not None
           else np.full(b, -1, dtype=np.int64))
    for method, maps in results.items():
        cc = metrics.confidence_change(model, images, maps, tgt)
        row: dict[str, Any] = {
            "key": np.array([key] * b, dtype=object),
            "method": np.array([method] * b, dtype=object),
            "image": np.arange(b, dtype=np.int64),
            "label": lab,
            "target": tgt.cpu().numpy().astype(np.int64),
            "pred": pred.cpu().numpy().astype(np.int64),
            "prob": probs.gather(1, pred[:, None])[:, 0].cpu().numpy(),
            "drop": cc.drop.float().cpu().numpy(),
            "increase": cc.increase.cpu().numpy(),
        }
        if masks is not None:
            row["pointing_hit"] = metrics.pointing_game(maps, masks.to(maps.device)).cpu().numpy()
        run.log_rows("attribution_metrics", row)
    layer_name = cam_layer if isinstance(cam_layer, str) else type(cam_layer).__name__
    run.log_object("attributions", key, {
        "key": key, "file_key": safe_key(key), "methods": list(results), "skipped": skipped,
        "layer": layer_name, "cam_layer": "the map feeding the global pooling", "n": int(b), "labels": lab.tolist(),
        "pred": pred.cpu().tolist(), "target": tgt.cpu().tolist(),
        "class_names": list(class_names) if class_names is not None else None,
        "seconds": seconds, "has_masks": masks is not None,
    })
    return results
