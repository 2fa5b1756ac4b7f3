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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..explain.dataset import ATTRIBUTION_METHODS, AttributionSet, attribute_all
from ..store.layout import safe_key

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["ATTRIBUTION_METHODS", "log_attributions", "store_attributions"]


def log_attributions(
    run: Run,
    model: torch.nn.Module,
    images: Any,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    methods: Sequence[str] = ATTRIBUTION_METHODS,
    target: Any = None,
    layer: Any = None,
    key: str = "samples",
    class_names: Sequence[str] | None = None,
    score_cam_batch_size: int = 64,
    batch_size: int = 64,
    sharded: bool = False,
    quiet: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Compute every method in ``methods`` on ``images`` and store the maps.

    ``images``: ``[B, C, H, W]``, a map-style ``Dataset`` or an iterable of batches, explained
    ``batch_size`` images at a time (:func:`convscope.explain.dataset.attribute_all`).
    ``target``: as in :mod:`convscope.explain` (None = predicted class). ``masks`` ``[B, H, W]``
    bool (object masks) add the pointing game. Methods that do not apply to the model (plain CAM
    on a network without global pooling + linear classifier) are skipped and the reason is
    stored. ``sharded=True`` under ``torch.distributed``: every rank must call it; the images
    are split across ranks (:func:`convscope.distributed.attributions_sharded`) and rank 0
    stores the whole set. ``quiet``: hide the progress bar (``None``: the run's setting).
    Returns ``{method: maps [B, H, W]}`` (on every rank when sharded).
    """
    quiet = run.quiet if quiet is None else bool(quiet)
    kwargs = dict(methods=methods, target=target, labels=labels, masks=masks, layer=layer,
                  batch_size=batch_size, score_cam_batch_size=score_cam_batch_size,
                  keep_images=True)
    if sharded:
        from ..distributed import attributions_sharded, rank_world

        result = attributions_sharded(model, images, quiet=quiet, **kwargs)
        write = rank_world()[0] == 0
    else:
        result = attribute_all(model, images, quiet=quiet, **kwargs)
        write = True
    if write:
        store_attributions(run, result, key=key, class_names=class_names,
                           has_masks=masks is not None)
    return dict(result.maps)


def store_attributions(run: Run, result: AttributionSet, *, key: str = "samples",
                       class_names: Sequence[str] | None = None,
                       has_masks: bool = False) -> None:
    """Store an :class:`~convscope.explain.dataset.AttributionSet` computed with
    ``keep_images=True`` under ``key`` (what the Attribution page reads): the images, one
    float16 array per method, the metrics table and the description object."""
    from ..errors import InputError

    if result.images is None:
        raise InputError("store_attributions needs the images: compute the set with "
                         "attribute_all(..., keep_images=True).")
    n = len(result)
    run.log_array("attr_images", key, result.images.detach().float().cpu(), dtype=np.float16)
    for method, maps in result.maps.items():
        run.log_array("attributions", f"{key}.{method}", maps.detach().cpu(), dtype=np.float16)
    lab = result.labels.cpu().numpy().astype(np.int64)
    tgt = result.target.cpu().numpy().astype(np.int64)
    pred = result.pred.cpu().numpy().astype(np.int64)
    for method in result.maps:
        row: dict[str, Any] = {
            "key": np.array([key] * n, dtype=object),
            "method": np.array([method] * n, dtype=object),
            "image": np.arange(n, dtype=np.int64),
            "label": lab,
            "target": tgt,
            "pred": pred,
            "prob": result.prob.float().cpu().numpy(),
            "drop": result.drop[method].float().cpu().numpy(),
            "increase": result.increase[method].cpu().numpy(),
        }
        if method in result.pointing:
            row["pointing_hit"] = result.pointing[method].cpu().numpy()
        run.log_rows("attribution_metrics", row)
    run.log_object("attributions", key, {
        "key": key, "file_key": safe_key(key), "methods": list(result.maps),
        "skipped": dict(result.skipped), "layer": result.layer,
        "cam_layer": "the map feeding the global pooling", "n": int(n), "labels": lab.tolist(),
        "pred": pred.tolist(), "target": tgt.tolist(),
        "class_names": list(class_names) if class_names is not None else None,
        "seconds": dict(result.seconds), "has_masks": bool(has_masks),
    })
