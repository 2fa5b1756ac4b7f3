"""Activation maximisation: the input each unit prefers (Li et al.'s "input preference",
Yosinski et al. (2015)'s regularised optimisation), many units optimised together as one batch.

Batching and randomness: the model runs in eval mode, so batch items never interact, and the
loss is the *sum* of the per-item objectives, so each image gets exactly its own unit's gradient.
Every random number a unit uses (its starting image and its transform parameters for every step)
comes from its own generator, seeded from ``(seed, unit)``. Optimising ``[a, b, c]`` together
therefore gives the same images as optimising ``a``, ``b`` and ``c`` one at a time, up to the
floating-point differences of batched convolutions.

Transformers and other fixed-size models: a model that accepts one input size only (torchvision's
``VisionTransformer`` checks ``image_size``, timm's patch embedding ``img_size`` when
``strict_img_size``; any other model is found when it rejects the canvas, trying the sizes it
declares, or the first transformed image, fitting back to the canvas) gets every image brought
to exactly that size by a final :class:`~convscope.features.transforms.FitSize`. Token outputs
``[B, 1 + h*w, D]`` and channels-last outputs ``[B, h, w, D]`` reach the objectives as
``[B, D, h, w]`` maps (:func:`convscope.nn.grid_layout`; the class and other prefix tokens
dropped), so ``channel(layer, d)`` is the mean of feature ``d`` over the patch tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import numbers
import operator
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConvscopeError, InputError, LayerNotFoundError, ModelError
from ..nn import (
    GridLayout,
    LayerSpec,
    Recorder,
    check_model,
    chunks,
    copy_tensors,
    forward,
    grid_layout,
    layer_path,
    model_device,
    positive_int,
    resolve_layers,
    restore_mode,
    split_call,
    unwrap,
)
from .objectives import OUTPUT, Objective, channel, class_logit, neuron
from .param import Canvas, make_image
from .regularizers import Preset
from .render import Render
from .transforms import FitSize, apply_transforms, draws_of

__all__ = ["maximize", "IMAGENET", "DEFAULTS", "unit_seed", "check_units", "fixed_input_size",
           "size_hints"]

logger = logging.getLogger("convscope.features")

#: ImageNet normalisation: ``maximize(..., **cs.features.IMAGENET)`` for torchvision models.
IMAGENET = types.MappingProxyType({"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})

#: Defaults used when ``maximize`` is not told otherwise (those of :class:`Render`).
DEFAULTS = types.MappingProxyType(
    {"steps": 256, "lr": 0.1, "optimizer": "adam", "param": "fft", "transforms": "standard"}
)

_OBJECTIVES = ("channel", "neuron", "logit", "class")


def unit_seed(seed: int, unit: Any) -> int:
    """The seed of ``unit``'s generator: a stable hash of ``(seed, unit)`` (the same in every
    process and for every position of the unit in the batch)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InputError(f"seed must be an int, got {seed!r}; e.g. seed=0.")
    key = f"{int(seed)}|{unit!r}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & (2**63 - 1)


def _unit_key(u: Any) -> Any:
    if isinstance(u, Tensor):
        u = u.tolist()
    if isinstance(u, (list, tuple)):
        return tuple(int(v) for v in u)
    return int(u)


class _Hooks:
    """The outputs of the objective's layers (``path`` or ``path:k``), kept with the autograd
    graph by a :class:`~convscope.nn.Recorder` that stops the forward once all are in
    (``stop_early``; a ``BaseException``, so a model's own ``except Exception`` cannot swallow
    it)."""

    def __init__(self, model: nn.Module, layers: Sequence[str], stop_early: bool) -> None:
        from ..explain.base import patch_size, prefix_tokens

        self.model = model
        self.keys = set(layers)
        self.patch, self.prefix = patch_size(unwrap(model)), prefix_tokens(unwrap(model))
        self.layouts: dict[tuple[Any, ...], GridLayout | None] = {}
        paths = {split_call(k)[0] for k in self.keys} - {OUTPUT}
        mods = resolve_layers(model, sorted(paths)) if paths else {}
        self.rec = Recorder(mods, keys=self.keys - {OUTPUT},
                            stop=stop_early and OUTPUT not in self.keys,
                            value=lambda out: copy_tensors(out, clone=True, detach=False))

    @contextlib.contextmanager
    def active(self) -> Iterator[_Hooks]:
        with self.rec:
            yield self

    def run(self, x: Tensor) -> dict[str, Tensor]:
        out = self.rec.run(forward, self.model, (x,), "forward during maximize")
        store = dict(self.rec.store)
        if not self.rec.stopped:
            if OUTPUT in self.keys:
                store[OUTPUT] = out
            missing = self.keys - store.keys()
            if missing:
                raise LayerNotFoundError(
                    f"layer(s) {sorted(missing)} did not run in the model's forward pass, so they "
                    "cannot be maximised; choose layers that the forward pass uses."
                )
        return self.as_maps(store, (int(x.shape[-2]), int(x.shape[-1])))

    def as_maps(self, store: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """Token ``[B, N, D]`` and channels-last ``[B, h, w, D]`` layer outputs as ``[B, D, h,
        w]`` (:func:`convscope.nn.grid_layout` for the ``size`` input, with the model's patch
        size and prefix tokens); channels-first maps, vectors and the model output as they are."""
        for k, v in store.items():
            if k == OUTPUT or not isinstance(v, Tensor) or v.dim() not in (3, 4):
                continue
            key = (k, tuple(v.shape), size)
            if key not in self.layouts:
                layout = grid_layout(v, size, self.patch, prefix=self.prefix, strict=True)
                self.layouts[key] = (layout if layout is not None
                                     and layout.kind != "channels_first" else None)
            layout = self.layouts[key]
            if layout is not None:
                store[k] = layout.apply(v)
        return store


def _infer_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _pair(v: Any) -> tuple[int, int] | None:
    """An int side, ``(H, W)`` or ``(C, H, W)`` as ``(H, W)``; None for anything else."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0:
        return int(v), int(v)
    if isinstance(v, (tuple, list)) and len(v) in (2, 3) and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) > 0 for s in v):
        return int(v[-2]), int(v[-1])
    return None


def fixed_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size ``(H, W)`` a model declares it accepts, or None: torchvision's
    ``VisionTransformer`` (``image_size``; it raises on any other size) and timm models whose
    patch embedding checks its ``img_size`` (``strict_img_size``: ViT, DeiT, Swin, ...).
    Other models may be fixed-size too; :func:`maximize` finds those by a probe."""
    m = unwrap(model)
    if type(m).__name__ == "VisionTransformer" and type(m).__module__.startswith("torchvision"):
        fixed = _pair(getattr(m, "image_size", None))
        if fixed is not None:
            return fixed
    embed = getattr(m, "patch_embed", None)
    if isinstance(embed, nn.Module) and getattr(embed, "strict_img_size", False) is True:
        return _pair(getattr(embed, "img_size", None))
    return None


def size_hints(model: nn.Module) -> list[tuple[int, int]]:
    """Input sizes ``(H, W)`` a model declares, most specific first: :func:`fixed_input_size`,
    ``image_size``, ``input_size``, timm's ``patch_embed.img_size`` and its configuration's
    ``input_size``. The sizes :func:`maximize` tries when the model rejects its images."""
    m = unwrap(model)
    embed = getattr(m, "patch_embed", None)
    cfg = getattr(m, "pretrained_cfg", None) or getattr(m, "default_cfg", None)
    found = [fixed_input_size(m), _pair(getattr(m, "image_size", None)),
             _pair(getattr(m, "input_size", None)),
             _pair(getattr(embed, "img_size", None)) if isinstance(embed, nn.Module) else None,
             _pair(cfg.get("input_size")) if isinstance(cfg, dict) else None]
    return list(dict.fromkeys(s for s in found if s is not None))


def _infer_size(model: nn.Module) -> int | tuple[int, int]:
    fixed = fixed_input_size(model)
    if fixed is not None:
        return fixed
    hint = getattr(model, "input_size", None)
    if isinstance(hint, int):
        return hint
    if isinstance(hint, (tuple, list)) and hint:
        return int(hint[-1])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return 32 if max(m.stride) == 1 else 224
    return 224


def _as_vector(v: Any, c: int, name: str) -> Tensor:
    try:
        t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{name} must be {c} numbers (one per channel), got {v!r}.") from None
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{name} must be finite numbers, got {t.tolist()}.")
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise InputError(f"{name} has {t.numel()} values but the input has {c} channels.")
    return t.clone()


def _build_objective(objective: Any, layer: str | None, units: list[Any]) -> Objective:
    if isinstance(objective, Objective):
        return objective
    if isinstance(objective, str):
        kind = objective.lower()
        if kind not in _OBJECTIVES:
            raise InputError(
                f"objective={objective!r} is not known; use one of {', '.join(_OBJECTIVES)}, an "
                "Objective (e.g. cs.features.channel('layer3', 5) + 0.5 * ...) or a callable "
                "units -> Objective."
            )
        if kind in ("logit", "class"):
            return class_logit([_unit_key(u) for u in units], layer or OUTPUT)
        if layer is None:
            raise LayerNotFoundError(f"objective={objective!r} needs a layer, e.g. 'layer3'.")
        keys = [_unit_key(u) for u in units]
        if kind == "channel":
            if any(isinstance(k, tuple) for k in keys):
                raise InputError(
                    "objective='channel' takes channel indices as units; for (c, y, x) "
                    "coordinates use objective='neuron'."
                )
            return channel(layer, keys)
        if all(isinstance(k, tuple) for k in keys):
            if any(len(k) != 3 for k in keys):
                raise InputError("neuron units must be channel indices or (c, y, x) triples; pass "
                                 "e.g. units=[(0, 4, 4)].")
            return neuron(
                layer, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
            )
        if any(isinstance(k, tuple) for k in keys):
            raise InputError("mix of ints and tuples in units: give all as ints or all as (c, y, x).")
        return neuron(layer, keys)
    if callable(objective):
        obj = objective(units)
        if not isinstance(obj, Objective):
            raise InputError(
                f"objective callable returned {type(obj).__name__}; it must return an Objective."
            )
        return obj
    raise InputError(f"objective must be a string, an Objective or a callable, got {objective!r}.")


def check_units(units: Any) -> list[Any]:
    """``units`` as a non-empty list (a tensor, one index, or an iterable of indices or
    ``(c, y, x)`` triples); raises :class:`InputError` otherwise."""
    if isinstance(units, Tensor):
        units = units.tolist()
    if not hasattr(units, "__iter__"):  # one channel index
        units = [units]
    try:
        units = list(units)
    except TypeError:
        raise InputError(
            f"units must be a list of channel indices (or (c, y, x) triples), got {units!r}; "
            "pass e.g. units=[0, 1, 2]."
        ) from None
    if not units:
        raise InputError("units is empty: give at least one channel index, e.g. units=[0, 1, 2].")
    out: list[Any] = []
    for u in units:
        try:
            parts = u if isinstance(u, (tuple, list)) else (u,)
            if any(isinstance(v, bool) or type(v).__name__ == "bool_" for v in parts):
                raise TypeError("bool")  # True is not unit 1
            if isinstance(u, (tuple, list)):
                out.append(tuple(operator.index(v) for v in u))
            else:
                out.append(operator.index(u))
        except TypeError:
            raise InputError(
                f"unit {u!r} is not a channel index (int) or a (c, y, x) tuple of ints; pass e.g. "
                "units=[0, 3] (a bool is not an index: True is not unit 1)."
            ) from None
    return out


def _render_from(render: Any, old: dict[str, Any], decorrelate: bool) -> tuple[Render, Any, Any]:
    """The :class:`Render` of a call, ``(render, param factory, optimizer factory)``: ``render=``
    (a Render or a Preset), or the old keyword arguments (a Preset given as ``regularizers=``
    fills what the caller left out)."""
    given = {k: v for k, v in old.items() if v is not None}
    if render is not None:
        if given or decorrelate is not True:
            extra = [*given, *(["decorrelate"] if decorrelate is not True else [])]
            raise InputError(
                f"pass the rendering settings either as render= or as keywords, not both; got "
                f"render= and {extra}. Use render.replace({extra[0]}=...) instead."
            )
        if isinstance(render, Preset):
            render = render.render()
        if not isinstance(render, Render):
            raise InputError(f"render must be a cs.features.Render or a preset such as "
                             f"yosinski(3), got {type(render).__name__}.")
        return render, render.param_factory(), render.optimizer_factory()
    regs = given.pop("regularizers", None)
    if isinstance(regs, Preset):  # presets fill what the caller left out
        given = {**{k: v for k, v in regs.items() if k != "regularizers"}, **given}
        regs = regs["regularizers"]
    max_lr = given.pop("max_lr", None)
    render = Render(**given, regularizers=regs if regs is not None else ())  # defaults: DEFAULTS
    return render, render.param_factory(decorrelate), render.optimizer_factory(max_lr)


def maximize(
    model: nn.Module,
    layer: LayerSpec | None,
    units: Any,
    *,
    objective: Any = "channel",
    render: Render | Preset | None = None,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Any = None,
    std: Any = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    batch_size: int | None = None,
    stop_early: bool = True,
    channels_last: bool = True,
    return_values: bool = False,
    quiet: bool = False,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    max_lr: float | None = None,
    regularizers: Any = None,
    transforms: Any = None,
    param: str | None = None,
    decorrelate: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Optimise one input image per unit so that the unit's activation is as high as possible.

    Args:
        model: the network (run in eval mode; its modes are restored afterwards).
        layer: the layer, as everywhere in convscope (:data:`convscope.nn.LayerSpec`): its
            module path (``"layer3"``, ``"layer2.0.conv1"``, ``"relu:2"``), the module itself, or a
            type / predicate that matches one module; ``None`` for ``objective="logit"`` (the
            model output).
        units: channel indices ``[3, 7, 9]`` (or a list of ``(c, y, x)`` triples for neurons;
            class indices for logits; a single int is one unit). All are optimised together as
            one batch; image ``i`` is unit ``i``'s.
        objective: ``"channel"`` (mean over positions; for a transformer's token output
            ``[B, 1 + h*w, D]`` the mean of feature ``d`` over the patch tokens, the class token
            dropped), ``"neuron"`` (spatial centre, or the given ``(c, y, x)``; tokens and
            channels-last outputs are read as ``[B, D, h, w]`` maps), ``"logit"`` (class score of the model output), an
            :class:`~convscope.features.Objective` with one unit per batch item
            (``channel("layer3", units) - 0.5 * channel("layer2", 4)``), or a callable
            ``units -> Objective``.
        render: the rendering recipe, a :class:`~convscope.features.Render` (parameterisation,
            optimiser, transforms, regularisers in the order given, steps) or a preset such as
            ``yosinski(3)``; ``None``: ``Render()`` (256 steps of Adam with lr 0.1 on the FFT
            parameterisation with lucid's standard transforms), or what the keyword arguments
            below say.
        size: image side (or ``(H, W)``) of the canvas. ``None``: the size a fixed-size model
            declares (:func:`fixed_input_size`: torchvision ViT's ``image_size``, timm's strict
            ``img_size``), else ``model.input_size`` if set, else 32 for a model whose first
            convolution has stride 1 (CIFAR-style stem), else 224. A model that accepts one
            size only (declared, or found when it rejects the canvas and runs on a size it
            declares, or rejects the first transformed image and ran on the canvas) sees every image resized by
            its size over the canvas's and centre-cropped to it (:class:`FitSize`, the last
            transform); the returned images keep the canvas size.
        channels: input channels; ``None``: the first convolution's ``in_channels``.
        mean, std: per-channel normalisation the model expects (the model sees
            ``(x - mean) / std``); ``None`` (default) feeds raw values in ``value_range``. Use
            ``**cs.features.IMAGENET`` for torchvision ImageNet models.
        value_range: range of the raw pixel values (default ``(0, 1)``).
        seed: base seed; unit ``u`` uses a generator seeded by :func:`unit_seed` ``(seed, u)``.
        batch_size: optimise at most this many units at a time (``None``: all at once). Results
            do not depend on it.
        stop_early: stop each forward pass once the objective's layers have run (the rest of the
            network cannot change the objective).
        channels_last: feed the model channels-last inputs (oneDNN convolutions on the CPU ran
            ~23 % faster at batch 64 here); the model itself is not changed.
        return_values: also return the objective value of each returned image ``[N]``.
        quiet: hide the progress bar.
        steps, lr, optimizer, max_lr, regularizers, transforms, param, decorrelate: the
            rendering settings as keywords (instead of ``render=``; not both): ``steps``,
            ``lr``, ``optimizer``, ``transforms``, ``param`` and ``regularizers`` as the
            :class:`~convscope.features.Render` fields (``regularizers=`` may also be a preset,
            which then fills every setting the caller left out); ``max_lr`` caps the
            ``"progress"`` policy's step factor; ``decorrelate`` decorrelates colours in the FFT
            parameterisation (3 channels only).

    Returns:
        images ``[N, C, H, W]`` in ``value_range`` (un-normalised) on the model's device;
        with ``return_values``, ``(images, values [N])``.

    Raises:
        LayerNotFoundError, InputError (bad units, a layer without channels, out-of-range index,
        a bad render setting), TargetError (class index out of range), ModelError (the gradient
        or objective became NaN or infinite; the message says at which step and for which units).
    """
    from ..nn.budget import progress

    # what to render: the model, the layer, the units and the recipe
    check_model(model)
    if layer is not None and not isinstance(layer, str):  # a module, a type, a predicate
        layer = layer_path(model, layer)
    render, param_factory, optimizer_factory = _render_from(render, {
        "steps": steps, "lr": lr, "optimizer": optimizer, "max_lr": max_lr,
        "regularizers": regularizers, "transforms": transforms, "param": param,
    }, decorrelate)
    units = check_units(units)
    unit_seed(seed, 0)  # a bad seed fails before any work
    if layer is not None and split_call(layer)[0] != OUTPUT:
        resolve_layers(model, split_call(layer)[0])  # clear error with suggestions
    batch_size = positive_int(batch_size, "batch_size", allow_none=True)

    # the model's input convention
    inp = _input_convention(model, size, channels, mean, std, value_range)
    c, (h, w) = inp.channels, inp.size
    tlist = render.transform_list(min(h, w))

    # the objective, with the hooks that feed it
    obj = _build_objective(objective, layer, units)
    if isinstance(objective, Objective) and batch_size and int(batch_size) < len(units):
        raise InputError(
            "batch_size cannot split an Objective built for the whole batch; pass a callable "
            "units -> Objective instead (e.g. lambda u: cs.features.channel('layer3', u))."
        )
    device = model_device(model)
    hooks = _Hooks(model, obj.layers, stop_early)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    model_input = inp.feed(device, channels_last, dtype)
    fill = inp.centre.to(device, torch.float32)
    declared = fixed_input_size(model)
    feed = _Feed(model_input, fill,
                 None if declared is None else FitSize(declared, (declared[0] / h, declared[1] / w)))

    def refit() -> bool:
        """The model rejected a transformed image but ran on the canvas: fit to the canvas."""
        if feed.fit is not None:
            return False
        feed.fit = FitSize((h, w))
        logger.info("maximize: %s rejects the transformed %d x %d canvas; every transformed "
                    "image is cut back to %d x %d.", type(unwrap(model)).__name__, h, w, h, w)
        return True

    n_all = len(units)
    chunk = n_all if not batch_size else max(1, int(batch_size))
    images: list[Tensor] = []
    values: list[Tensor] = []
    bar = progress(  # a tqdm bar; feeds the budget of the recording call, if any
        total=render.steps * ((n_all + chunk - 1) // chunk),
        quiet=quiet,
        desc=f"maximize {layer if layer is not None else 'output'} ({n_all} units)",
        unit="step",
    )
    with restore_mode(model, True), torch.enable_grad(), hooks.active():
        try:
            # probe: shapes of the objective's layers, checked once (and a model that takes
            # one size only, other than the canvas's, found)
            with torch.no_grad():
                acts = _probe(model, hooks, feed, _blank(fill, c, (h, w)))
            shapes = {k: tuple(v.shape) for k, v in acts.items() if isinstance(v, Tensor)}
            obj.check(shapes)
            for sl in chunks(n_all, chunk):
                part = units[sl]
                sub = obj if chunk == n_all else _build_objective(objective, layer, part)
                canvas = Canvas(
                    (len(part), c, h, w),
                    [torch.Generator().manual_seed(unit_seed(seed, _unit_key(u))) for u in part],
                    device, torch.float32, fill, inp.lo, inp.hi,
                )
                img, val = _render(hooks, sub, part, feed, render, canvas, param_factory,
                                   optimizer_factory, tlist, bar, return_values, refit)
                images.append(img)
                if val is not None:
                    values.append(val)
        finally:
            bar.close()
    out = torch.cat(images)
    if return_values:
        return out, torch.cat(values)
    return out


def _blank(fill: Tensor, c: int, size: tuple[int, int]) -> Tensor:
    return fill.view(1, -1, 1, 1).expand(1, c, *size).contiguous()


class _Feed:
    """Raw image -> what the model is fed: brought to a fixed-size model's size by ``fit``
    (a :class:`FitSize`; None for a model that takes any size), then normalised and cast."""

    def __init__(self, model_input: Callable[[Tensor], Tensor], fill: Tensor,
                 fit: FitSize | None) -> None:
        self.model_input, self.fill, self.fit = model_input, fill, fit

    def __call__(self, img: Tensor) -> Tensor:
        if self.fit is not None:
            img = self.fit(img, None, self.fill)
        return self.model_input(img)


def _probe(model: nn.Module, hooks: _Hooks, feed: _Feed, blank: Tensor) -> dict[str, Any]:
    """The layer outputs for the blank canvas (their shapes check the objective). A model that
    rejects the canvas size (and declares none) is tried at the sizes it declares
    (:func:`size_hints`); the first that runs becomes ``feed.fit``; the first error is raised
    if none does."""
    try:
        return hooks.run(feed(blank))
    except LayerNotFoundError:
        raise
    except ConvscopeError as exc:
        if feed.fit is not None:
            raise
        size = (int(blank.shape[-2]), int(blank.shape[-1]))
        for cand in size_hints(model):
            if cand == size:
                continue
            feed.fit = FitSize(cand, (cand[0] / size[0], cand[1] / size[1]))
            try:
                acts = hooks.run(feed(blank))
            except LayerNotFoundError:
                raise
            except ConvscopeError:
                feed.fit = None
                continue
            logger.info("maximize: %s rejects %d x %d inputs (%s); images are resized to its "
                        "%d x %d.", type(unwrap(model)).__name__, *size, exc, *cand)
            return acts
        raise


def _first_run(hooks: _Hooks, feed: Callable[[Tensor], Tensor], x: Tensor,
               refit: Callable[[], bool] | None) -> dict[str, Any]:
    """``hooks.run(feed(x))``; when it fails and ``refit()`` brings the images to the size the
    model ran on in the probe, once more (the first error is raised if that fails too)."""
    try:
        return hooks.run(feed(x))
    except LayerNotFoundError:
        raise
    except ConvscopeError as exc:
        if refit is None or not refit():
            raise
        try:
            return hooks.run(feed(x))
        except ConvscopeError:
            raise exc from None


@dataclass(frozen=True)
class _Input:
    """The model's input convention: channels, size, value range and normalisation."""

    channels: int
    size: tuple[int, int]
    lo: float
    hi: float
    mean: Tensor | None
    std: Tensor | None
    centre: Tensor

    def feed(self, device: torch.device, channels_last: bool,
             dtype: torch.dtype | None = None) -> Callable[[Tensor], Tensor]:
        """Raw image -> what the model is fed (normalised, in the model's floating dtype, e.g.
        float16 / bfloat16, channels-last if asked). The image itself stays float32."""
        mean = self.mean.view(1, -1, 1, 1).to(device) if self.mean is not None else None
        std = self.std.view(1, -1, 1, 1).to(device) if self.std is not None else None

        def model_input(img: Tensor) -> Tensor:
            x = (img - mean) / std if mean is not None else img
            if dtype is not None and x.dtype != dtype:
                x = x.to(dtype)
            return x.contiguous(memory_format=torch.channels_last) if channels_last else x

        return model_input


def _input_convention(
    model: nn.Module, size: Any, channels: Any, mean: Any, std: Any, value_range: Any
) -> _Input:
    c = positive_int(channels, "channels") if channels is not None else _infer_channels(model)
    if c is None:
        raise InputError(
            f"cannot tell how many input channels {type(model).__name__} takes (it has no "
            "convolution); pass channels=..."
        )
    if size is None:
        size = _infer_size(model)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = positive_int(size[0], "size"), positive_int(size[1], "size")
    elif isinstance(size, (tuple, list)):
        raise InputError(f"size must be an int or (H, W), got {size!r}.")
    else:
        h = w = positive_int(size, "size")
    try:
        lo, hi = float(value_range[0]), float(value_range[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"value_range must be (low, high) numbers, got {value_range!r}; pass "
                         "e.g. (0.0, 1.0).") from None
    if not (hi > lo and math.isfinite(lo) and math.isfinite(hi)):
        raise InputError(f"value_range must be (low, high) with high > low, got "
                         f"{value_range!r}; pass e.g. (0.0, 1.0).")
    if (mean is None) != (std is None):
        raise InputError("give both mean and std (or neither, for raw inputs).")
    mean_t = _as_vector(mean, c, "mean") if mean is not None else None
    std_t = _as_vector(std, c, "std") if std is not None else None
    if std_t is not None and (std_t <= 0).any():
        raise InputError(f"std must be positive, got {std_t.tolist()}; pass the data set's "
                         "standard deviations.")
    centre = mean_t.clone() if mean_t is not None else torch.full((c,), (lo + hi) / 2)
    return _Input(c, (h, w), lo, hi, mean_t, std_t, centre)


def _render(
    hooks: _Hooks,
    obj: Objective,
    units: list[Any],
    model_input: Callable[[Tensor], Tensor],
    render: Render,
    canvas: Canvas,
    param_factory: Callable[[Canvas], Any],
    optimizer_factory: Callable[[list[Tensor]], Any],
    tlist: list[Any],
    bar: Any,
    want_values: bool,
    refit: Callable[[], bool] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Optimise one chunk of units (lucent's ``render_vis`` loop): parameterise, then every
    step transform, score, take the gradient, step the optimiser and regularise in order."""
    n, steps, regs = len(units), render.steps, render.regularizers
    image = make_image(param_factory, canvas, needs_inverse=bool(regs))
    n_draws = sum(draws_of(t) for t in tlist)  # each unit's transform draws, from its generator
    u_all = (torch.stack([torch.rand(steps, n_draws, generator=g) for g in canvas.generators])
             .to(canvas.device, canvas.dtype) if n_draws else None)  # [N, steps, D]
    params = list(image.params)
    opt = optimizer_factory(params)
    if not callable(getattr(opt, "step", None)):
        raise InputError(f"the optimizer factory returned {type(opt).__name__}, which has no "
                         "step(); return e.g. torch.optim.Adam(params, lr=0.05).")

    for step in range(steps):
        img = image.image()
        x = apply_transforms(tlist, img, u_all[:, step] if u_all is not None else None,
                             canvas.centre)
        acts = (_first_run(hooks, model_input, x, refit) if step == 0
                else hooks.run(model_input(x)))
        vals = obj(acts).float()  # reduced-precision models: f32 objective
        if vals.shape != (n,):
            raise InputError(
                f"the objective returned shape {list(vals.shape)}; it must give one value per "
                f"batch item ([{n}])."
            )
        if not vals.requires_grad:
            raise ModelError(
                "the objective does not depend on the input through autograd (is the layer's "
                "output detached, or computed under no_grad?); choose a layer whose output "
                "carries gradients."
            )
        g_img, grads = _gradients(vals, img, params)
        bad = ~torch.isfinite(g_img.reshape(n, -1)).all(1) | ~torch.isfinite(vals.detach())
        if bool(bad.any()):
            which = [units[i] for i in torch.nonzero(bad).reshape(-1).tolist()]
            raise ModelError(
                f"the objective or its gradient became NaN/inf at step {step} for unit(s) "
                f"{which[:8]}{' ...' if len(which) > 8 else ''}, so the optimisation stopped. "
                "Lower lr, add regularizers (e.g. Decay), or check the model for operations "
                "that are not differentiable everywhere (sqrt/log of 0, division by 0)."
            )
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.grad = -g  # optimisers descend: maximise the objective
            opt.step()
            for p in params:
                p.grad = None
            if regs:  # in the order given, on the centred image
                xc = image.centred()
                for r in regs:
                    xc = r(xc, g_img, step)
                image.set_centred(xc)
            else:
                getattr(image, "project", lambda: None)()
        bar.update(1)

    with torch.no_grad():
        final = image.image().detach()
        vals = obj(hooks.run(model_input(final))).detach().float() if want_values else None
    return final, vals


def _gradients(vals: Tensor, img: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """The objective's gradient with respect to the image and to each parameter (zeros where the
    objective does not depend on them)."""
    if len(params) == 1 and params[0] is img:  # the image is the parameter
        (g,) = torch.autograd.grad(vals.sum(), img, allow_unused=True)
        g = torch.zeros_like(img) if g is None else g
        return g, [g]
    g_img = torch.autograd.grad(vals.sum(), img, retain_graph=True, allow_unused=True)[0]
    if g_img is None:
        g_img = torch.zeros_like(img)
    grads = torch.autograd.grad(img, params, grad_outputs=g_img, allow_unused=True)
    return g_img, [torch.zeros_like(p) if g is None else g
                   for p, g in zip(params, grads, strict=True)]
