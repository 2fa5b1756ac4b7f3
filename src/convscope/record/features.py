"""``run.log_preferred_inputs`` and ``run.log_top_examples``: what each unit prefers.

Stored:

* ``arrays/preferred_inputs/<layer>`` — the optimised images ``[U, C, H, W]`` at most 96 px a
  side (the Model page's thumbnail), uint8 with a range per image, with the units and their
  reached objective values in the index meta;
* ``arrays/top_crops/<layer>`` — receptive-field crops ``[C, k, C_in, h, w]`` shrunk to at most
  96 px a side, uint8 with a range per crop, identical crops stored once
  (:mod:`convscope.formats.top_examples`);
* table ``top_examples`` — one row per (layer, channel, rank): dataset index, activation value,
  location in the layer's output and the receptive-field box in input pixels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["log_preferred_inputs", "log_top_examples", "store_top_examples",
           "store_preferred_inputs", "channels_of", "PREFERRED_METHODS", "preferred_method",
           "ProgressHook", "check_progress", "feed_progress"]

#: What ``progress=`` of the recording calls takes: a callable ``progress(phase, done, total)``
#: told, as the work goes, the phase in words and ``done`` of ``total`` units of it (``total``
#: None while unknown). Phases: ``"preferred inputs"`` (optimisation steps),
#: ``"top examples"`` (images ranked), ``"ranking"`` (images ranked by ``log_projections``
#: before it projects) and ``"projections"`` (units projected). It is called between units of
#: work, never while results are written, so an exception it raises (e.g. a job's "stop")
#: ends the call cleanly: what was stored before stays whole, the unfinished layer is not
#: stored, and the exception propagates.
ProgressHook = Callable[[str, int, "int | None"], None]


def check_progress(progress: Any) -> ProgressHook | None:
    """``progress`` when it is None or a callable; else :class:`InputError`."""
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable progress(phase, done, total), got "
                         f"{type(progress).__name__}.")
    return progress


def feed_progress(tracker: Any, progress: ProgressHook | None, phase: str) -> None:
    """Tell ``progress`` every unit the budget ``tracker`` of a recording call counts (the
    analysis code's progress bars feed it: :mod:`convscope.nn.budget`), as ``(phase, done,
    total)``; tells it ``(phase, 0, total)`` at once."""
    if progress is None:
        return
    advance = tracker.advance

    def told(n: float = 1) -> float | None:
        out = advance(n)
        progress(phase, int(tracker.done), None if tracker.total is None else int(tracker.total))
        return out

    tracker.advance = told  # this call's tracker only (made by open_budget for it)
    progress(phase, int(tracker.done), None if tracker.total is None else int(tracker.total))


def _layers(layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        return [layers]
    out = list(layers)
    if not out:
        raise InputError("pass at least one layer (module path), e.g. ['layer1.0.conv1'].")
    return out


#: The names ``log_preferred_inputs(method=...)`` and ``convscope analyze --method`` take:
#: ``"lucid"`` (the default: lucent's decorrelated, transformation-robust parameterisation) or
#: ``"yosinski:N"``, Yosinski et al. 2015's plain gradient ascent on pixels with the paper's
#: regulariser setting ``N`` (1-4: L2 decay, Gaussian blur, small-norm and small-contribution
#: clipping; :func:`convscope.features.yosinski`).
PREFERRED_METHODS = ("lucid", "yosinski:1", "yosinski:2", "yosinski:3", "yosinski:4")


def preferred_method(method: Any) -> Any:
    """The preset that ``method`` names (``None`` for ``"lucid"``, the default render);
    :class:`~convscope.errors.InputError` listing the valid names for anything else."""
    if isinstance(method, str) and method.strip().lower() in PREFERRED_METHODS:
        name = method.strip().lower()
        if name == "lucid":
            return None
        from ..features.regularizers import yosinski

        return yosinski(int(name.split(":")[1]))
    raise InputError(f"method must be one of {', '.join(PREFERRED_METHODS)} (lucid: the "
                     "lucid-style default; yosinski:N: Yosinski et al. 2015's plain gradient "
                     f"ascent with the paper's regulariser setting N), got {method!r}.")


def log_preferred_inputs(run: Run, model: Any, layers: str | Sequence[str],
                         units: Sequence[int] | None = None, *, max_units: int | None = None,
                         seed: int = 0, steps: int | None = None, lr: float | None = None,
                         size: int | tuple[int, int] | None = None, channels: int | None = None,
                         objective: Any = "channel", regularizers: Any = None,
                         transforms: Any = None, param: str | None = None, mean: Any = None,
                         std: Any = None, batch_size: int | None = None, sharded: bool = False,
                         method: str = "lucid", quiet: bool | None = None,
                         progress: ProgressHook | None = None, clock: Any = None,
                         **maximize_options: Any) -> dict[str, Any]:
    """Activation maximisation (:func:`convscope.features.maximize`) of ``units`` (default: the
    first ``max_units`` channels) of each layer, all units of a layer in one batch.

    ``seed``, ``steps``, ``lr``, ``size``, ``channels``, ``objective``, ``regularizers``,
    ``transforms``, ``param``, ``mean``, ``std``, ``batch_size`` and any further
    ``maximize_options`` go to ``maximize`` (``None``: its default), except three defaults that
    fit the model: ``size=None`` renders at the model's input size with the longer side cut to
    :data:`~convscope.record.budget.PREFERRED_MAX_SIZE` (128, lucent's size: a ResNet-50 renders
    at 128², not 224²); ``steps=None`` takes 256 steps up to 64² and 128 above
    (:func:`~convscope.record.budget.preferred_steps`; a preset or ``render=`` keeps its own);
    ``max_units=None`` takes 16 units. Where a layer's step is so slow that these would not fit
    the budget (ViT-B renders at its fixed 224²: ~3.7 s a step for 16 units on 2 cores), two
    timed steps per layer measure it and the unset ones shrink to fit, steps first (not below
    64), then units (not below 4) (:func:`~convscope.record.budget.fit_preferred`); what they
    became is printed (unless ``quiet``) and stored with the images. Not when ``units`` is given
    or ``sharded`` (the ranks must agree).

    ``method``: ``"lucid"`` (the default render: lucent-style parameterisation and transforms)
    or ``"yosinski:N"`` (N = 1-4), Yosinski et al. 2015's plain gradient ascent on pixels with
    the paper's regulariser setting N (:func:`convscope.features.yosinski`: L2 decay, blur,
    small-norm and small-contribution clipping), a preset that keeps its own steps and size (no
    timing probe); other names raise :class:`InputError` listing :data:`PREFERRED_METHODS`. The
    stored settings name the method.

    Budget: 120 s per layer (16 units at 128², 128 steps, ResNet-50, 2-core CPU). The progress
    bar counts steps; the first step of each layer projects the call, and a projection above
    twice the budget warns once, naming ``steps=``, ``size=`` and ``max_units=``.

    ``sharded=True`` under ``torch.distributed``: a collective (every rank calls it); the units
    are split across ranks (:class:`~convscope.features.preferred.PreferredInputsPass`, the
    images equal one process's) and rank 0 stores them. ``quiet``: hide the progress bar
    (``None``: the run's setting). ``progress``: a :data:`ProgressHook`, told ``("preferred
    inputs", steps done, steps in all)`` at every optimisation step (the bar's count; the
    timing probe is not counted); an exception it raises stops the call between steps, the
    layers finished before stay stored. ``clock``: the budget's clock, for tests. Returns
    ``{layer: images}`` (on every rank when sharded)."""
    from ..features.preferred import input_shape, layer_channels, preferred_inputs
    from ..features.regularizers import Preset
    from ..nn.dist import rank_world
    from .budget import (
        BUDGETS,
        PREFERRED_UNITS,
        fit_preferred,
        open_budget,
        preferred_size,
        preferred_steps,
    )

    quiet = run.quiet if quiet is None else bool(quiet)
    progress = check_progress(progress)
    names = _layers(layers)
    chosen_preset = preferred_method(method)
    method = str(method).strip().lower()
    if chosen_preset is not None:
        if regularizers is not None or "render" in maximize_options:
            raise InputError(f"method={method!r} chooses the regularisers and render settings; "
                             "pass either method= or regularizers= / render=, not both.")
        regularizers = chosen_preset
    preset = isinstance(regularizers, Preset) or "render" in maximize_options
    fit_steps = steps is None and not preset
    fit_units = max_units is None and units is None
    n_max = PREFERRED_UNITS if max_units is None else max_units
    if size is None and not preset:
        _, h, w = input_shape(model, None, channels)
        size = preferred_size((h, w))
    if steps is None and not preset:
        _, h, w = input_shape(model, size, channels)
        steps = preferred_steps((h, w))
    given = {"steps": steps, "lr": lr, "size": size, "channels": channels,
             "regularizers": regularizers, "transforms": transforms, "param": param,
             "mean": mean, "std": std, "batch_size": batch_size}
    options = {k: v for k, v in given.items() if v is not None}
    if not (isinstance(objective, str) and objective == "channel"):
        options["objective"] = objective
    options.update(maximize_options)
    world = rank_world()[1] if sharded else 1
    settings = {"method": method, "seed": seed, **options,
                **({"processes": world} if world > 1 else {})}
    write = not sharded or rank_world()[0] == 0
    per_layer = BUDGETS["log_preferred_inputs"]
    chosen_units: dict[str, list[int]] = {}
    layer_steps: dict[str, Any] = {}
    fitted: dict[str, str] = {}
    for layer in names:
        chosen = list(units) if units is not None else None
        if chosen is None:
            n = layer_channels(model, layer, size=size, channels=channels)
            chosen = list(range(min(n_max, n)))
        layer_steps[layer] = steps
        if (fit_steps or fit_units) and not sharded and isinstance(steps, int) and chosen:
            step_s = _probe_step(model, layer, chosen, seed, options, preferred_inputs)
            s_fit, u_fit = fit_preferred(step_s, len(chosen), steps, budget=per_layer,
                                         fit_steps=fit_steps, fit_units=fit_units)
            if (s_fit, u_fit) != (steps, len(chosen)):
                what = [f"{a}->{b} {name}" for a, b, name in (
                    (steps, s_fit, "steps"), (len(chosen), u_fit, "units")) if a != b]
                fitted[layer] = (f"{', '.join(what)} (a step of {len(chosen)} units took "
                                 f"{step_s:.2f} s)")
                chosen, layer_steps[layer] = chosen[:u_fit], s_fit
        chosen_units[layer] = chosen
    if fitted and not quiet:
        from tqdm.auto import tqdm

        for layer, how in fitted.items():
            tqdm.write(f"log_preferred_inputs: {layer}: {how}, to fit the "
                       f"{per_layer:.0f} s budget per layer; pass steps= and max_units= to "
                       "choose.", file=sys.stderr)
    n_units = max(len(u) for u in chosen_units.values())
    side = "x".join(str(d) for d in input_shape(model, size, channels)[1:])
    chunk = batch_size or n_units
    n_steps = steps
    if n_steps is None and isinstance(regularizers, Preset):
        n_steps = regularizers.get("steps")
    total = None
    if isinstance(n_steps, int):  # the steps of every layer's chunks
        total = sum((layer_steps[layer] or n_steps)
                    * -(-len(u) // min(chunk, len(u)) if u else 0)
                    for layer, u in chosen_units.items())
    out: dict[str, Any] = {}
    with open_budget(
            "log_preferred_inputs", per_layer * len(names),
            "steps=64, size=96 or max_units=8",
            f"{n_units} units x {len(names)} layer{'s' * (len(names) != 1)} at {side}"
            + (f", {n_steps} steps" if isinstance(n_steps, int) else ""),
            total=total, unit="step", clock=clock) as tracker:
        feed_progress(tracker, progress, "preferred inputs")
        for layer in names:
            chosen = chosen_units[layer]
            layer_options = dict(options)
            layer_settings = dict(settings)
            if layer in fitted:
                layer_options["steps"] = layer_settings["steps"] = layer_steps[layer]
                layer_settings["fitted"] = fitted[layer]
            t0 = time.perf_counter()
            images, values = preferred_inputs(model, layer, chosen, seed=seed, sharded=sharded,
                                              quiet=quiet, **layer_options)
            if write:
                store_preferred_inputs(run, layer, chosen, images, values,
                                       seconds=time.perf_counter() - t0,
                                       settings=layer_settings)
            out[layer] = images
    return out


#: Steps of the timing probe of :func:`log_preferred_inputs` (the mean, set-up included, errs
#: on the slow side).
PROBE_STEPS = 2


def _probe_step(model: Any, layer: str, chosen: list[int], seed: int,
                options: dict[str, Any], preferred_inputs: Any) -> float:
    """Seconds per optimisation step of ``chosen`` units of ``layer`` with these options:
    :data:`PROBE_STEPS` real steps, timed."""
    probe = {**options, "steps": PROBE_STEPS}
    t0 = time.perf_counter()
    preferred_inputs(model, layer, chosen, seed=seed, quiet=True, **probe)
    return (time.perf_counter() - t0) / PROBE_STEPS


def log_top_examples(run: Run, model: Any, layers: str | Sequence[str], dataset: Any, k: int = 9,
                     *, batch_size: int = 64, offset: int = 0, sharded: bool = False,
                     quiet: bool | None = None, progress: ProgressHook | None = None,
                     clock: Any = None) -> dict[str, Any]:
    """One streaming pass per layer (:func:`convscope.features.top_examples`): the ``k``
    images that excite each channel most, with receptive-field crops, ``batch_size`` images per
    forward pass (``offset`` is added to every index).

    Budget: 20 s per layer plus 0.5 s per image per layer (ResNet-50 at 224², 2-core CPU).
    After the first layer the call is projected, and a projection above twice the budget warns
    once, naming fewer ``layers`` and a subset of the data set. ``sharded=True`` under
    ``torch.distributed``: a collective (every rank calls it with the whole data set, a tensor
    or a map-style ``Dataset``); the data set is split across ranks
    (:class:`~convscope.features.top.TopExamplesPass`, the result equals one process's) and
    rank 0 stores it. ``quiet``: hide the progress bar (``None``: the run's setting).
    ``progress``: a :data:`ProgressHook`, told ``("top examples", images ranked, images in
    all)`` after every batch (counted over all the layers; under sharding, this rank's
    share); an exception it raises stops the call between batches, the layers finished before
    stay stored. ``clock``: the budget's clock, for tests. Returns ``{layer: TopExamples}`` (on
    every rank when sharded)."""
    from ..features.top import TopExamplesPass
    from ..nn.dist import rank_world
    from ..nn.passes import run_pass, run_sharded
    from .budget import BUDGETS, TOP_EXAMPLES_PER_IMAGE, open_budget

    quiet = run.quiet if quiet is None else bool(quiet)
    progress = check_progress(progress)
    write = not sharded or rank_world()[0] == 0
    names = _layers(layers)
    try:
        n_images: int | None = len(dataset)
    except TypeError:  # an iterable of batches
        n_images = None
    per_layer = BUDGETS["log_top_examples"] + TOP_EXAMPLES_PER_IMAGE * (n_images or 0)
    what = f"{len(names)} layer{'s' * (len(names) != 1)}" + (
        f" x {n_images} images" if n_images is not None else "")
    results = {}
    with open_budget("log_top_examples", per_layer * len(names),
                     "fewer layers or a subset of the data set", what, total=len(names),
                     unit="layer", clock=clock) as tracker:
        for i, layer in enumerate(names):
            p = TopExamplesPass(model, layer, dataset, k, batch_size=batch_size, crops=True,
                                offset=offset, quiet=quiet,
                                progress=_images_told(progress, "top examples", i, len(names)))
            if sharded:
                p.size()  # a tensor or a sized Dataset, also with one process
            te = run_sharded(p) if sharded else run_pass(p)
            if write:
                store_top_examples(run, te)
            results[layer] = te
            tracker.advance(1)
    return results


def _images_told(progress: ProgressHook | None, phase: str, i: int, n_layers: int
                 ) -> Callable[[int, int | None], None] | None:
    """The per-batch hook of layer ``i``'s pass: ``progress(phase, images, images in all)``
    counted over ``n_layers`` passes over the same data set."""
    if progress is None:
        return None

    def told(done: int, total: int | None) -> None:
        if total is None:
            progress(phase, int(done), None)
        else:
            progress(phase, int(i * total + done), int(n_layers * total))

    return told


def store_top_examples(run: Run, te: Any) -> None:
    """Store an already computed :class:`~convscope.features.TopExamples` (e.g. from
    :func:`convscope.distributed.top_examples_sharded`) as :func:`log_top_examples` does, through
    :mod:`convscope.formats.top_examples`: rows of table ``top_examples`` and, when it has
    crops, ``arrays/top_crops/<layer>``."""
    from ..formats import top_examples as fmt

    fmt.write(run, fmt.TopExamples(
        layer=te.layer, values=te.values.detach().float().cpu().numpy(),
        indices=te.indices.cpu().numpy(), locations=te.locations.cpu().numpy(),
        boxes=te.boxes.cpu().numpy(),
        crops=None if te.crops is None else te.crops.detach().float().cpu().numpy(),
        n_seen=te.n_seen, field=str(te.field)))


def store_preferred_inputs(run: Run, layer: str, units: Sequence[int], images: Any,
                           values: Any, *, seconds: float | None = None,
                           settings: dict[str, Any] | None = None) -> None:
    """Store already optimised images ``[U, C, H, W]`` of ``units`` of ``layer`` (e.g. from
    :func:`convscope.distributed.maximize_sharded`) as :func:`log_preferred_inputs` does, through
    :mod:`convscope.formats.preferred_inputs`: ``arrays/preferred_inputs/<layer>`` with the units
    and objective ``values [U]``."""
    from ..formats import preferred_inputs as fmt

    fmt.write(run, fmt.PreferredInputs(
        layer=layer, units=[int(u) for u in units],
        images=images.detach().float().cpu().numpy(),
        values=values.detach().float().cpu().tolist(), seconds=seconds,
        settings={k: str(v) for k, v in (settings or {}).items()}))


def channels_of(model: Any, layer: str, **kwargs: Any) -> int:
    """How many channels ``layer`` outputs for the input ``maximize`` would use (``size=``,
    ``channels=`` as for :func:`log_preferred_inputs`; other keywords are ignored)."""
    from ..features.preferred import layer_channels

    return layer_channels(model, layer, size=kwargs.get("size"), channels=kwargs.get("channels"))
