"""Activation maximisation: the input each unit prefers (Li et al.'s "input preference",
Yosinski et al. (2015)'s regularised optimisation), many units optimised together as one batch.

Batching and randomness: the model runs in eval mode, so batch items never interact, and the
loss is the *sum* of the per-item objectives, so each image gets exactly its own unit's gradient.
Every random number a unit uses (its starting image and its transform parameters for every step)
comes from its own generator, seeded from ``(seed, unit)``. Optimising ``[a, b, c]`` together
therefore gives the same images as optimising ``a``, ``b`` and ``c`` one at a time, up to the
floating-point differences of batched convolutions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import operator
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, LayerNotFoundError, ModelError
from ..nn import (
    LayerSpec,
    Recorder,
    check_model,
    chunks,
    copy_tensors,
    forward,
    layer_path,
    model_device,
    positive_int,
    resolve_layers,
    restore_mode,
    split_call,
)
from .objectives import OUTPUT, Objective, channel, class_logit, neuron
from .param import FFTImage, PixelImage
from .regularizers import Preset, sort_regularizers
from .transforms import apply_transforms, draws_of, standard_transforms

__all__ = ["maximize", "IMAGENET", "DEFAULTS", "unit_seed"]

#: ImageNet normalisation: ``maximize(..., **cs.features.IMAGENET)`` for torchvision models.
IMAGENET = types.MappingProxyType({"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})

#: Defaults used when ``maximize`` is not told otherwise.
DEFAULTS = types.MappingProxyType(
    {"steps": 256, "lr": 0.1, "optimizer": "adam", "param": "fft", "transforms": "standard"}
)

_OBJECTIVES = ("channel", "neuron", "logit", "class")
_OPTIMIZERS = ("adam", "sgd", "progress")


def unit_seed(seed: int, unit: Any) -> int:
    """The seed of ``unit``'s generator: a stable hash of ``(seed, unit)`` (the same in every
    process and for every position of the unit in the batch)."""
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
        self.model = model
        self.keys = set(layers)
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
        if self.rec.stopped:
            return store
        if OUTPUT in self.keys:
            store[OUTPUT] = out
        missing = self.keys - store.keys()
        if missing:
            raise LayerNotFoundError(
                f"layer(s) {sorted(missing)} did not run in the model's forward pass, so they "
                "cannot be maximised; choose layers that the forward pass uses."
            )
        return store


def _infer_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def _infer_size(model: nn.Module) -> int:
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


def maximize(
    model: nn.Module,
    layer: LayerSpec | None,
    units: Any,
    *,
    objective: Any = "channel",
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    steps: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    max_lr: float | None = None,
    regularizers: Any = None,
    transforms: Any = None,
    param: str | None = None,
    decorrelate: bool = True,
    seed: int = 0,
    mean: Any = None,
    std: Any = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
    stop_early: bool = True,
    channels_last: bool = True,
    return_values: bool = False,
    quiet: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Optimise one input image per unit so that the unit's activation is as high as possible.

    Args:
        model: the network (run in eval mode; its modes are restored afterwards).
        layer: the layer, as everywhere in convscope (:data:`convscope.nn.LayerSpec`): its
            module path (``"layer3"``, ``"layer2.0.conv1"``, ``"relu:2"``), the module itself, or a
            type / predicate that matches one module; ``None`` for ``objective="logit"`` (the model output).
        units: channel indices ``[3, 7, 9]`` (or a list of ``(c, y, x)`` triples for neurons;
            class indices for logits; a single int is one unit). All are optimised together as one batch; image ``i`` is unit ``i``'s.
        objective: ``"channel"`` (mean over positions), ``"neuron"`` (spatial centre, or the
            given ``(c, y, x)``), ``"logit"`` (class score of the model output), an
            :class:`~convscope.features.Objective` with one unit per batch item
            (``channel("layer3", units) - 0.5 * channel("layer2", 4)``), or a callable
            ``units -> Objective``.
        size: image side (or ``(H, W)``). ``None``: ``model.input_size`` if set, else 32 for a
            model whose first convolution has stride 1 (CIFAR-style stem), else 224.
        channels: input channels; ``None``: the first convolution's ``in_channels``.
        steps: optimisation steps (default 256).
        lr: step size (default 0.1 for Adam; for ``"sgd"`` the factor on the gradient; for
            ``"progress"`` the objective gain asked per step).
        optimizer: ``"adam"`` (default), ``"sgd"`` (plain ascent ``x += lr * grad``, the toolbox's
            constant policy) or ``"progress"`` (``x += min(max_lr, lr / |grad|^2) * grad`` per
            image, the toolbox's progress policy).
        max_lr: cap of the progress policy's step factor (``None``: no cap).
        regularizers: a list of :class:`Decay`, :class:`Blur`, :class:`NormClip`,
            :class:`ContributionClip` (applied in that order after every step, on the centred
            image) and/or callables ``(x_centred, grad, step) -> x_centred``; or a
            :class:`Preset` such as ``yosinski(3)``, which also sets what the caller left out.
        transforms: ``"standard"`` (default: lucid's set scaled to the image size, see
            :func:`standard_transforms`), a list of transforms, or ``()``/``None``-like empty for
            none.
        param: ``"fft"`` (default: decorrelated Fourier parameterisation with a sigmoid) or
            ``"pixel"`` (raw pixels, clipped to the value range).
        decorrelate: decorrelate colours in the FFT parameterisation (3 channels only).
        seed: base seed; unit ``u`` uses a generator seeded by :func:`unit_seed` ``(seed, u)``.
        mean, std: per-channel normalisation the model expects (the model sees
            ``(x - mean) / std``); ``None`` (default) feeds raw values in ``value_range``. Use
            ``**cs.features.IMAGENET`` for torchvision ImageNet models.
        value_range: range of the raw pixel values (default ``(0, 1)``).
        batch_size: optimise at most this many units at a time (``None``: all at once). Results
            do not depend on it.
        stop_early: stop each forward pass once the objective's layers have run (the rest of the
            network cannot change the objective).
        channels_last: feed the model channels-last inputs (oneDNN convolutions on the CPU ran
            ~23 % faster at batch 64 here); the model itself is not changed.
        return_values: also return the objective value of each returned image ``[N]``.
        quiet: hide the progress bar.

    Returns:
        images ``[N, C, H, W]`` in ``value_range`` (un-normalised) on the model's device;
        with ``return_values``, ``(images, values [N])``.

    Raises:
        LayerNotFoundError, InputError (bad units, a layer without channels, out-of-range index),
        TargetError (class index out of range), ModelError (the gradient or objective became NaN
        or infinite; the message says at which step and for which units).
    """
    from tqdm.auto import tqdm

    check_model(model)
    if layer is not None and not isinstance(layer, str):  # a module, a type, a predicate
        layer = layer_path(model, layer)
    # presets fill what the caller left out
    if isinstance(regularizers, Preset):
        preset = regularizers
        regularizers = preset["regularizers"]
        steps = preset.get("steps") if steps is None else steps
        lr = preset.get("lr") if lr is None else lr
        optimizer = preset.get("optimizer") if optimizer is None else optimizer
        transforms = preset.get("transforms") if transforms is None else transforms
        param = preset.get("param") if param is None else param
    steps = positive_int(DEFAULTS["steps"] if steps is None else steps, "steps")
    optimizer = (optimizer or DEFAULTS["optimizer"]).lower()
    if optimizer not in _OPTIMIZERS:
        raise InputError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}, got {optimizer!r}; pass "
                         "one of those.")
    lr = DEFAULTS["lr"] if lr is None else lr
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 <= lr < float("inf"):
        raise InputError(f"lr must be a finite number >= 0, got {lr!r}; e.g. lr=0.05.")
    lr = float(lr)
    param = (param or DEFAULTS["param"]).lower()
    if param not in ("fft", "pixel"):
        raise InputError(f"param must be 'fft' or 'pixel', got {param!r}; pass one of those.")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}.")
    units = check_units(units)
    if layer is not None and not isinstance(layer, str):
        raise LayerNotFoundError(
            f"layer must be a module path string, got {type(layer).__name__}; pass e.g. "
            "layer='layer2' (see model.named_modules())."
        )
    if layer is not None and split_call(layer)[0] != OUTPUT:
        resolve_layers(model, split_call(layer)[0])  # clear error with suggestions

    batch_size = positive_int(batch_size, "batch_size", allow_none=True)
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

    if transforms is None or (isinstance(transforms, str) and transforms == "standard"):
        tlist: list[Any] = standard_transforms(min(h, w))
    elif isinstance(transforms, str):
        raise InputError(f"transforms must be 'standard' or a list of transforms, got "
                         f"{transforms!r}; pass e.g. transforms=() for none.")
    else:
        tlist = list(transforms)
    regs = sort_regularizers(regularizers or [])
    n_draws = sum(draws_of(t) for t in tlist)

    obj = _build_objective(objective, layer, units)
    if isinstance(objective, Objective) and batch_size and int(batch_size) < len(units):
        raise InputError(
            "batch_size cannot split an Objective built for the whole batch; pass a callable "
            "units -> Objective instead (e.g. lambda u: cs.features.channel('layer3', u))."
        )
    device = model_device(model)
    dtype = torch.float32
    hooks = _Hooks(model, obj.layers, stop_early)
    mean_d = mean_t.view(1, -1, 1, 1).to(device, dtype) if mean_t is not None else None
    std_d = std_t.view(1, -1, 1, 1).to(device, dtype) if std_t is not None else None
    fill = centre.to(device, dtype)

    def model_input(img: Tensor) -> Tensor:
        x = (img - mean_d) / std_d if mean_d is not None else img
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    n_all = len(units)
    chunk = n_all if not batch_size else max(1, int(batch_size))
    images: list[Tensor] = []
    values: list[Tensor] = []
    bar = tqdm(
        total=steps * ((n_all + chunk - 1) // chunk),
        disable=quiet,
        desc=f"maximize {layer if layer is not None else 'output'} ({n_all} units)",
        unit="step",
    )
    with restore_mode(model, True), torch.enable_grad(), hooks.active():
        try:
            # probe: shapes of the objective's layers, checked once
            with torch.no_grad():
                probe = model_input(fill.view(1, -1, 1, 1).expand(1, c, h, w).contiguous())
                acts = hooks.run(probe)
            shapes = {k: tuple(v.shape) for k, v in acts.items() if isinstance(v, Tensor)}
            obj.check(shapes)
            for sl in chunks(n_all, chunk):
                part = units[sl]
                sub = obj if chunk == n_all else _build_objective(objective, layer, part)
                img, val = _optimise(
                    hooks, sub, part, model_input, steps=steps, lr=lr, optimizer=optimizer,
                    max_lr=max_lr, regs=regs, tlist=tlist, n_draws=n_draws, param=param,
                    decorrelate=decorrelate, seed=seed, size=(h, w), c=c, lo=lo, hi=hi,
                    centre=fill, device=device, dtype=dtype, bar=bar,
                    want_values=return_values,
                )
                images.append(img)
                if val is not None:
                    values.append(val)
        finally:
            bar.close()
    out = torch.cat(images)
    if return_values:
        return out, torch.cat(values)
    return out


def _optimise(
    hooks: _Hooks,
    obj: Objective,
    units: list[Any],
    model_input: Callable[[Tensor], Tensor],
    *,
    steps: int,
    lr: float,
    optimizer: str,
    max_lr: float | None,
    regs: list[Any],
    tlist: list[Any],
    n_draws: int,
    param: str,
    decorrelate: bool,
    seed: int,
    size: tuple[int, int],
    c: int,
    lo: float,
    hi: float,
    centre: Tensor,
    device: torch.device,
    dtype: torch.dtype,
    bar: Any,
    want_values: bool,
) -> tuple[Tensor, Tensor | None]:
    h, w = size
    n = len(units)
    inits, draws = [], []
    for u in units:
        g = torch.Generator().manual_seed(unit_seed(seed, _unit_key(u)))
        if param == "fft":
            inits.append(torch.randn(c, h, w // 2 + 1, 2, generator=g) * 0.01)
        else:
            # the toolbox's "mean plus noise" start: N(0, 10) on 0-255 pixels
            inits.append(torch.randn(c, h, w, generator=g) * (0.04 * (hi - lo)))
        draws.append(torch.rand(steps, n_draws, generator=g) if n_draws else torch.empty(0))
    init = torch.stack(inits).to(device, dtype)
    u_all = torch.stack(draws).to(device, dtype) if n_draws else None  # [N, steps, D]
    if param == "fft":
        p: FFTImage | PixelImage = FFTImage(init, (h, w), centre, lo, hi, decorrelate)
    else:
        p = PixelImage(init, centre, lo, hi)
    var = p.params[0]
    opt = torch.optim.Adam([var], lr=lr) if optimizer == "adam" else None
    need_img_grad = param == "fft"

    for step in range(steps):
        img = p.image()
        x = apply_transforms(tlist, img, u_all[:, step] if u_all is not None else None, centre)
        vals = obj(hooks.run(model_input(x)))
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
        g_img = torch.autograd.grad(
            vals.sum(), img, retain_graph=need_img_grad, allow_unused=True
        )[0]
        if g_img is None:
            g_img = torch.zeros_like(img)
        bad = ~torch.isfinite(g_img.reshape(n, -1)).all(1) | ~torch.isfinite(vals.detach())
        if bool(bad.any()):
            which = [units[i] for i in torch.nonzero(bad).reshape(-1).tolist()]
            raise ModelError(
                f"the objective or its gradient became NaN/inf at step {step} for unit(s) "
                f"{which[:8]}{' ...' if len(which) > 8 else ''}, so the optimisation stopped. "
                "Lower lr, add regularizers (e.g. Decay), or check the model for operations "
                "that are not differentiable everywhere (sqrt/log of 0, division by 0)."
            )
        g = torch.autograd.grad(img, var, grad_outputs=g_img)[0] if need_img_grad else g_img
        with torch.no_grad():
            if opt is not None:
                var.grad = -g
                opt.step()
                var.grad = None
            elif optimizer == "sgd":
                var.add_(g, alpha=lr)
            else:  # progress policy, per image
                sq = g.reshape(n, -1).pow(2).sum(1)
                rate = torch.where(sq > 0, lr / sq.clamp_min(1e-30), torch.zeros_like(sq))
                if max_lr is not None:
                    rate = rate.clamp_max(max_lr)
                var.add_(g * rate.view(n, *([1] * (g.dim() - 1))))
            if regs:
                xc = p.centred()
                for r in regs:
                    xc = r(xc, g_img, step)
                p.set_centred(xc)
            else:
                p.project()
        bar.update(1)

    with torch.no_grad():
        final = p.image().detach()
        vals = obj(hooks.run(model_input(final))).detach() if want_values else None
    return final, vals
