"""``run.log_projections``: DeconvNet projections of units (Zeiler & Fergus 2014, figure 2).

For each layer, one streaming pass ranks the data set for every channel
(:func:`convscope.features.top_examples`); then, for each chosen unit, the images of its top
``k`` activations are fetched and each activation is projected back to pixels by the deconvnet
(:func:`convscope.explain.project_unit` at the activation's position: switch unpooling,
rectification, transposed filters). The receptive-field windows of the projection and of the
image are stored side by side (:mod:`convscope.formats.projections`); the Model page shows them
for the unit picked in a layer's panel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..formats.projections import Projections
    from ..run import Run
    from .features import ProgressHook

__all__ = ["log_projections", "SEEDS"]

#: What ``seed=`` accepts (see :func:`convscope.explain.project_unit`).
SEEDS = ("activation", "ones")


class _NoReluNote(logging.Filter):
    """Drops the deconvnet's note that a model "applied no ReLU": a unit of the first
    convolution has none below it (its projection is its transposed filter, as in the paper),
    and the note would repeat for every unit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "applied no ReLU" not in record.getMessage()


@contextlib.contextmanager
def _quiet_no_relu() -> Any:
    log = logging.getLogger("convscope.explain")
    note = _NoReluNote()
    log.addFilter(note)
    try:
        yield
    finally:
        log.removeFilter(note)


def _layer_names(layers: Any) -> list[Any]:
    if not isinstance(layers, (list, tuple)):
        return [layers]  # a path, a module, a type or a predicate
    out = list(layers)
    if not out:
        raise InputError("pass at least one layer (module path), e.g. ['layer1.0.conv1'].")
    return out


def _check_units(units: Any) -> list[int] | None:
    if units is None:
        return None
    items = [units] if isinstance(units, numbers.Integral) else list(units)
    if not items or any(isinstance(u, bool) or not isinstance(u, numbers.Integral) or u < 0
                        for u in items):
        raise InputError(f"units must be channel indices (ints >= 0), got {units!r}.")
    return list(dict.fromkeys(int(u) for u in items))


def _images_at(dataset: Any, wanted: list[int], batch_size: int) -> dict[int, Any]:
    """The images of ``dataset`` at dataset indices ``wanted``, as the ranking pass numbered
    them (a tensor and a map-style ``Dataset`` are indexed directly; an iterable of batches is
    read again up to the last one wanted)."""
    from torch import Tensor
    from torch.utils.data import Dataset, Subset

    from ..nn import iter_batches

    if isinstance(dataset, Tensor):
        return {i: dataset[i] for i in wanted}
    source = dataset
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        source = Subset(base, wanted)  # a Subset reports its parent's indices
    found: dict[int, Any] = {}
    left = set(wanted)
    batches, _ = iter_batches(source, batch_size)
    for idx, xb, _ in batches:
        for i, img in zip(idx.tolist(), xb, strict=True):
            if i in left:
                found[i] = img
                left.discard(i)
        if not left:
            break
    if left:
        raise InputError(
            f"the data set did not yield the items {sorted(left)[:5]} on a second pass; pass a "
            "tensor, a map-style Dataset or a loader without shuffling.")
    return found


def _check_ranked(ranked: Any, k: int) -> dict[str, Any]:
    """``ranked`` as ``{layer: TopExamples}`` ranked with ``k``; else :class:`InputError`."""
    from ..features.top import TopExamples

    if ranked is None:
        return {}
    if not isinstance(ranked, dict) or not all(
            isinstance(v, TopExamples) and v.layer == name for name, v in ranked.items()):
        raise InputError("ranked must map each layer's module path to its TopExamples (what "
                         "log_top_examples returns).")
    bad = [name for name, v in ranked.items() if v.k != k]
    if bad:
        raise InputError(f"the ranking of {bad[0]!r} keeps {ranked[bad[0]].k} images per "
                         f"channel, not k={k}: pass the same k, or ranked=None.")
    return ranked


def log_projections(run: Run, model: Any, layers: Any, dataset: Any, *,
                    units: Sequence[int] | None = None, max_units: int = 16, k: int = 9,
                    batch_size: int = 64, seed: str = "activation", quiet: bool | None = None,
                    progress: ProgressHook | None = None, ranked: Any = None,
                    clock: Any = None) -> dict[str, Projections]:
    """The top ``k`` activations of ``units`` (default: the first ``max_units`` channels) of each
    layer over ``dataset``, projected back to pixels, stored beside their receptive-field crops.

    Budget: 90 s per layer plus 0.5 s per image per layer (the ranking pass of
    ``log_top_examples`` plus 16 units of 9 projections; ResNet-50 at 224², 2-core CPU). The
    progress bar counts projected units; one projected at more than twice the budget warns
    once, naming ``max_units=``, fewer layers and a subset of the data set. ``quiet``: hide the
    progress bars (``None``: the run's setting). ``progress``: a
    :data:`~convscope.record.features.ProgressHook`, told ``("ranking", images ranked, images
    in all)`` after every batch of the ranking passes, then ``("projections", units projected,
    units in all)``; an exception it raises stops the call between batches or units, the
    layers finished before stay stored (a layer is stored whole or not at all). ``ranked``:
    ``{layer: TopExamples}`` of a ranking already made over the same ``dataset`` with the same
    ``k`` (what ``log_top_examples`` returns): those layers skip their ranking pass (the
    dashboard's job computes both). ``clock``: the budget's clock, for tests. Returns ``{layer: Projections}`` (the windows at full size, as
    computed, before they are shrunk for storage)."""
    import numpy as np
    import torch

    from ..explain import project_unit
    from ..features import top_examples
    from ..formats import projections as fmt
    from ..nn import check_model, layer_path, model_device, positive_int, unwrap
    from ..nn.budget import progress as progress_bar
    from .budget import BUDGETS, TOP_EXAMPLES_PER_IMAGE, open_budget
    from .features import _images_told, check_progress, feed_progress

    quiet = run.quiet if quiet is None else bool(quiet)
    progress = check_progress(progress)
    k = positive_int(k, "k")
    max_units = positive_int(max_units, "max_units")
    batch_size = positive_int(batch_size, "batch_size")
    if seed not in SEEDS:
        raise InputError(f"seed must be one of {', '.join(SEEDS)}; got {seed!r}.")
    chosen_units = _check_units(units)
    model = unwrap(check_model(model))
    names = [layer_path(model, spec) for spec in _layer_names(layers)]
    names = list(dict.fromkeys(names))
    ranked = _check_ranked(ranked, k)
    try:
        n_images: int | None = len(dataset)
    except TypeError:  # an iterable of batches
        n_images = None
    per_layer = BUDGETS["log_projections"] + TOP_EXAMPLES_PER_IMAGE * (n_images or 0)
    what = f"{len(names)} layer{'s' * (len(names) != 1)}" + (
        f" x {n_images} images" if n_images is not None else "")
    device = model_device(model)
    out: dict[str, Projections] = {}
    with open_budget("log_projections", per_layer * len(names),
                     "max_units=4, fewer layers or a subset of the data set", what,
                     unit="unit", clock=clock) as tracker:
        tops, ranked_s = {}, {}
        for i, layer in enumerate(names):  # the ranking passes first: then the units are known
            t0 = time.perf_counter()
            if layer in ranked:
                tops[layer] = dataclasses.replace(ranked[layer], crops=None)
                ranked_s[layer] = 0.0
                continue
            tops[layer] = top_examples(model, layer, dataset, k, batch_size=batch_size,
                                       crops=False, quiet=quiet,
                                       progress=_images_told(progress, "ranking", i, len(names)))
            ranked_s[layer] = time.perf_counter() - t0
        per_layer_units: dict[str, list[int]] = {}
        for layer, top in tops.items():
            c = top.channels
            if chosen_units is None:
                per_layer_units[layer] = list(range(min(max_units, c)))
            else:
                bad = [u for u in chosen_units if u >= c]
                if bad:
                    raise InputError(f"unit {bad[0]} is out of range: layer {layer!r} has {c} "
                                     f"channels (valid: 0..{c - 1}).")
                per_layer_units[layer] = chosen_units
        tracker.set_total(sum(len(v) for v in per_layer_units.values()))
        feed_progress(tracker, progress, "projections")
        bar = progress_bar(tracker.total, quiet=quiet, desc="DeconvNet projections", unit="unit")
        try:
            for layer, top in tops.items():
                t0 = time.perf_counter()
                chosen = per_layer_units[layer]
                wanted = sorted({int(i) for u in chosen for i in top.indices[u].tolist()
                                 if i >= 0})
                found = _images_at(dataset, wanted, batch_size)
                kk = top.k
                values = np.full((len(chosen), kk), np.nan, dtype=np.float32)
                indices = np.full((len(chosen), kk), -1, dtype=np.int64)
                locations = np.zeros((len(chosen), kk, 2), dtype=np.int64)
                boxes = np.zeros((len(chosen), kk, 4), dtype=np.int64)
                proj_w = crop_w = None
                for row, u in enumerate(chosen):
                    valid = top.indices[u] >= 0
                    n = int(valid.sum())
                    if n:
                        idx = top.indices[u][valid]
                        locs = top.locations[u][valid]
                        images = torch.stack([found[int(i)] for i in idx]).to(device)
                        with _quiet_no_relu():
                            proj = project_unit(model, images, layer, u, locs.to(device),
                                                seed=seed)
                        single = dataclasses.replace(
                            top, values=top.values[u:u + 1, valid],
                            indices=torch.arange(n)[None], locations=locs[None],
                            boxes=top.boxes[u:u + 1, valid], crops=None)
                        pw = single.cut(proj.detach())[0].float().cpu().numpy()
                        cw = single.cut(images)[0].float().cpu().numpy()
                        if proj_w is None:
                            proj_w = np.zeros((len(chosen), kk, *pw.shape[1:]), np.float32)
                            crop_w = np.zeros_like(proj_w)
                        proj_w[row, :n], crop_w[row, :n] = pw, cw
                        values[row, :n] = top.values[u][valid].float().cpu().numpy()
                        indices[row, :n] = idx.cpu().numpy()
                        locations[row, :n] = locs.cpu().numpy()
                        boxes[row, :n] = top.boxes[u][valid].cpu().numpy()
                    bar.update(1)
                if proj_w is None:
                    raise InputError(f"the data set gave no image to rank for layer {layer!r}: "
                                     "pass at least one image.")
                result = fmt.Projections(
                    layer=layer, units=list(chosen), values=values, indices=indices,
                    locations=locations, boxes=boxes, projections=proj_w, crops=crop_w,
                    n_seen=int(top.n_seen), field=str(top.field),
                    image_size=tuple(int(v) for v in top.image_size), seed=seed,
                    seconds=ranked_s[layer] + time.perf_counter() - t0)
                fmt.write(run, result)
                out[layer] = result
        finally:
            bar.close()
    return out
