"""``run.log_attributions``: attribution maps of sample images, with quality metrics.

Computed by :func:`convscope.explain.dataset.attribute_all` and stored through
:mod:`convscope.formats.attribution` (which owns the layout):

* the images ``[B, C, H, W]`` (float16);
* each method's map ``[B, H, W]`` in [0, 1] (float16; input-space methods reduced with
  :func:`convscope.explain.to_heatmap`, max |.| over channels, then min-max scaled per image);
* one metrics row per (key, method, image): target, predicted class and probability,
  average-drop term, and the pointing-game hit when object masks are given;
* the set's description: methods, the CAM layer used, labels, class names, timings, and how
  Score-CAM ran (exact or fast, channels scored: ``modes`` / ``mode_details``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..explain.dataset import ATTRIBUTION_METHODS, AttributionSet, attribute_all
from ..formats import attribution as fmt

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
    key: str = fmt.DEFAULT_KEY,
    class_names: Sequence[str] | None = None,
    score_cam_batch_size: int | None = None,
    score_cam_channels: int | str | None = "auto",
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
    stores the whole set. ``quiet``: hide the progress bar (None: the run's setting). Returns
    ``{method: maps [B, H, W]}`` (on every rank when sharded). ``score_cam_channels``:
    Score-CAM's ``channels=`` (``"auto"``: exact up to 256 channels, else the fast mode;
    ``None``: always exact), and ``score_cam_batch_size`` its masked images per pass (None:
    from a byte budget); the mode that ran is stored with the set.
    """
    quiet = run.quiet if quiet is None else bool(quiet)
    kwargs = dict(methods=methods, target=target, labels=labels, masks=masks, layer=layer,
                  batch_size=batch_size, score_cam_batch_size=score_cam_batch_size,
                  score_cam_channels=score_cam_channels, keep_images=True)
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


def store_attributions(run: Run, result: AttributionSet, *, key: str = fmt.DEFAULT_KEY,
                       class_names: Sequence[str] | None = None,
                       has_masks: bool = False) -> None:
    """Store an :class:`~convscope.explain.dataset.AttributionSet` computed with
    ``keep_images=True`` under ``key`` (what the Attribution page reads): the images, one
    float16 array per method, the metrics table and the description object
    (:func:`convscope.formats.attribution.write`)."""
    from ..errors import InputError

    if result.images is None:
        raise InputError("store_attributions needs the images: compute the set with "
                         "attribute_all(..., keep_images=True).")
    fmt.write(run, fmt.from_set(result, key, class_names=class_names, has_masks=has_masks))
