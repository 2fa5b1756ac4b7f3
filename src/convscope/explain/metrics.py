"""How good is an explanation map? Batched quality metrics.

* :func:`confidence_change` / :func:`average_drop` / :func:`increase_in_confidence` -- Grad-CAM++
  paper (Chattopadhay et al. 2018): score the image multiplied by its map.
* :func:`deletion` / :func:`insertion` -- RISE (Petsiuk et al. 2018): remove (insert) pixels in
  order of decreasing saliency and integrate the class probability.
* :func:`pointing_game` -- Zhang et al. 2016: hit if the map's maximum lies in the object mask.

Maps are ``[B, H, W]`` at the input size (what every ``cs.explain`` CAM returns; reduce
input-space attributions with :func:`~convscope.explain.to_heatmap`). Confidence is the softmax
probability of the target class (a callable target returning ``[B]`` scores is used as is).

Reduced precision: the model runs in its own dtype (float16, bfloat16) and memory format; the
masked and blurred images are built in the inputs' dtype (the blur computed in float32), and every
probability, drop and AUC is computed and returned in float32 -- they are scores, not maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import InputError
from ..nn import check_args, check_finite, chunks, f32, positive_int
from .base import Target, TargetSpec, check_inputs, check_maps, check_model, prepared, run_forward

__all__ = [
    "ConfidenceChange",
    "confidence_change",
    "average_drop",
    "increase_in_confidence",
    "Curve",
    "deletion",
    "insertion",
    "pointing_game",
]


@dataclass
class ConfidenceChange:
    """Per-image confidence on the full image and on the image multiplied by its map.

    Attributes:
        original: ``[B]`` confidence ``Y_c`` on the inputs.
        explained: ``[B]`` confidence ``O_c`` on ``inputs * map``.
        drop: ``[B]`` ``max(0, Y_c - O_c) / Y_c``.
        increase: ``[B]`` bool, ``O_c > Y_c``.
    """

    original: Tensor
    explained: Tensor
    drop: Tensor
    increase: Tensor

    @property
    def average_drop(self) -> float:
        """Average drop in percent (lower is better)."""
        return float(self.drop.float().mean()) * 100.0

    @property
    def increase_in_confidence(self) -> float:
        """Percentage of images whose confidence rises on the explanation (higher is better)."""
        return float(self.increase.float().mean()) * 100.0


def _scores(
    model: nn.Module, images: Tensor, spec: TargetSpec, rows: Tensor, batch_size: int,
    quiet: bool = True, desc: str = "confidence",
) -> Tensor:
    batch_size = positive_int(batch_size, "batch_size")
    out = []
    with tqdm(total=int(images.shape[0]), disable=quiet, delay=2.0, desc=desc, leave=False,
              unit="img") as bar:
        for sl in chunks(images.shape[0], batch_size):
            out.append(spec.probabilities(run_forward(model, images[sl]), rows=rows[sl]).float())
            bar.update(sl.stop - sl.start)
    return torch.cat(out)


def _check_unit(maps: Tensor) -> None:
    lo, hi = float(maps.min()), float(maps.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"maps must lie in [0, 1] to multiply the image (got values in [{lo:.3g}, {hi:.3g}]); "
            "use normalize=True or cs.explain.to_heatmap(..., normalize=True)."
        )


def _checked(model: nn.Module, inputs: Tensor, maps: Tensor, target: Target
             ) -> tuple[Tensor, Tensor, TargetSpec]:
    """The checked inputs ``[B, C, H, W]``, maps ``[B, H, W]`` and target of a metric."""
    check_model(model)
    x = check_inputs(inputs)
    return x, check_maps(maps, x), TargetSpec(target, x.shape[0])


def confidence_change(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    target: Target = None,
    batch_size: int = 64,
    quiet: bool = False,
) -> ConfidenceChange:
    """Confidence on ``inputs`` and on ``inputs * maps`` (Grad-CAM++ paper, section 5.1).

    Args:
        model: the network (eval mode during the call; restored after).
        inputs: ``[B, C, H, W]``.
        maps: ``[B, H, W]`` in [0, 1].
        target: as in ``cs.explain``; None = the class predicted on ``inputs``.
        batch_size: images per forward pass.
        quiet: hide the progress bar (shown for runs longer than two seconds).

    Returns:
        :class:`ConfidenceChange` (``.average_drop``, ``.increase_in_confidence`` in percent).
    """
    batch_size = positive_int(batch_size, "batch_size")
    x, m, spec = _checked(model, inputs, maps, target)
    _check_unit(m)
    rows = torch.arange(x.shape[0], device=x.device)
    with prepared(model), torch.no_grad():
        out = run_forward(model, x)
        spec.resolve(out)
        y = spec.probabilities(out).float()
        o = _scores(model, x * m[:, None], spec, rows, batch_size, quiet)
    safe = torch.where(y != 0, y, 1.0)
    drop = torch.where(y != 0, (y - o).clamp(min=0) / safe, 0.0)
    return ConfidenceChange(original=y, explained=o, drop=drop, increase=o > y)


def average_drop(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, batch_size: int = 64,
    quiet: bool = False,
) -> float:
    """Average drop in percent: ``100 * mean(max(0, Y_c - O_c) / Y_c)`` (lower is better).
    Arguments as :func:`confidence_change`."""
    return confidence_change(model, inputs, maps, target, batch_size, quiet).average_drop


def increase_in_confidence(
    model: nn.Module, inputs: Tensor, maps: Tensor, target: Target = None, batch_size: int = 64,
    quiet: bool = False,
) -> float:
    """Percentage of images with ``O_c > Y_c`` (higher is better). Arguments as
    :func:`confidence_change`."""
    return confidence_change(model, inputs, maps, target, batch_size, quiet).increase_in_confidence


@dataclass
class Curve:
    """A deletion or insertion curve.

    Attributes:
        fractions: ``[S + 1]`` fraction of pixels removed/inserted at each step (0 .. 1).
        scores: ``[B, S + 1]`` target-class probability at each step.
        auc: ``[B]`` area under the curve (trapezoid rule over ``fractions``).
    """

    fractions: Tensor
    scores: Tensor
    auc: Tensor


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, computed in float32 (a bfloat16 kernel does not sum to 1) and
    returned in ``x``'s dtype."""
    dtype, x = x.dtype, f32(x)
    radius = max(1, int(round(sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    y = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad > 0 else x
    if pad < radius:  # image smaller than the kernel: fall back to zero padding for the rest
        extra = radius - pad
        y = F.pad(y, (extra, extra, extra, extra))
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c).to(dtype)


def _background(value: float | Tensor, x: Tensor, name: str) -> Tensor:
    if isinstance(value, Tensor):
        if value.is_meta:
            raise InputError(f"{name} is a meta-device tensor with no values; pass real values.")
        if value.is_complex():
            raise InputError(f"{name} must be a real tensor, got dtype {value.dtype}.")
        try:
            out = torch.broadcast_to(value.to(device=x.device, dtype=x.dtype), x.shape)
        except RuntimeError as exc:
            raise InputError(
                f"{name} tensor of shape {list(value.shape)} does not broadcast to the inputs "
                f"{list(x.shape)}; pass a float or a tensor of the inputs' shape."
            ) from exc
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = torch.full_like(x, float(value))
    else:
        raise InputError(f"{name} must be a float or a tensor, got {value!r}.")
    check_finite(out, name, f"Pass a finite {name} (e.g. 0.0).", InputError)
    return out


def _curve(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    spec: TargetSpec,
    first: Tensor,
    second: Tensor,
    steps: int,
    batch_size: int,
    quiet: bool,
    desc: str,
) -> Curve:
    """Image at step s: the top ``n_s`` pixels of the map come from ``first``, the rest ``second``."""
    steps = positive_int(steps, "steps")
    batch_size = positive_int(batch_size, "batch_size")
    b, c, h, w = x.shape
    hw = h * w
    order = maps.reshape(b, -1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(hw, device=x.device).expand(b, hw))
    counts = torch.round(torch.linspace(0, hw, steps + 1, device=x.device)).long()
    pairs = torch.cartesian_prod(torch.arange(b, device=x.device), torch.arange(steps + 1, device=x.device))
    scores = torch.empty(b, steps + 1, device=x.device)
    with tqdm(total=int(pairs.shape[0]), disable=quiet, delay=2.0, desc=desc, leave=False) as bar:
        for sl in chunks(pairs.shape[0], batch_size):
            chunk = pairs[sl]
            img, st = chunk[:, 0], chunk[:, 1]
            take = (rank[img] < counts[st][:, None]).view(-1, 1, h, w)
            images = torch.where(take, first[img], second[img])
            scores[img, st] = spec.probabilities(run_forward(model, images), rows=img).float()
            bar.update(int(chunk.shape[0]))
    fractions = counts.float() / hw
    auc = torch.trapezoid(scores, fractions, dim=1)
    return Curve(fractions=fractions, scores=scores, auc=auc)


def deletion(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    target: Target = None,
    steps: int = 32,
    baseline: float | Tensor = 0.0,
    batch_size: int = 64,
    quiet: bool = False,
) -> Curve:
    """Deletion curve (RISE): replace the most salient pixels first by ``baseline``.

    A good map makes the probability fall fast: lower AUC is better.

    Args:
        model: the network.
        inputs: ``[B, C, H, W]``.
        maps: ``[B, H, W]`` saliency (only the order of values matters; ties keep raster order).
        target: as in ``cs.explain``; None = the class predicted on ``inputs``.
        steps: number of steps; step ``s`` removes ``round(s * H * W / steps)`` pixels.
        baseline: value (or tensor broadcastable to the inputs) of removed pixels.
        batch_size: images per forward pass (``B * (steps + 1)`` images are scored).
        quiet: hide the progress bar (shown for runs longer than two seconds).

    Returns:
        :class:`Curve` with ``[B, steps + 1]`` probabilities and ``[B]`` AUC.
    """
    x, m, spec = _checked(model, inputs, maps, target)
    with prepared(model), torch.no_grad():
        spec.resolve(run_forward(model, x))
        base = _background(baseline, x, "baseline")
        return _curve(model, x, m, spec, base, x, steps, batch_size, quiet, "deletion")


def insertion(
    model: nn.Module,
    inputs: Tensor,
    maps: Tensor,
    target: Target = None,
    steps: int = 32,
    start: str | float | Tensor = "blur",
    blur_sigma: float = 5.0,
    batch_size: int = 64,
    quiet: bool = False,
) -> Curve:
    """Insertion curve (RISE): starting from ``start``, insert the most salient pixels first.

    A good map makes the probability rise fast: higher AUC is better.

    Args:
        start: ``"blur"`` (the inputs blurred with a Gaussian of ``blur_sigma`` pixels, reflect
            padding; RISE's canvas), a value, or a tensor broadcastable to the inputs.
        Others as :func:`deletion`.

    Returns:
        :class:`Curve`.
    """
    x, m, spec = _checked(model, inputs, maps, target)
    with prepared(model), torch.no_grad():
        spec.resolve(run_forward(model, x))
        if isinstance(start, str):
            if start != "blur":
                raise InputError(f"start must be 'blur', a float or a tensor, got {start!r}.")
            if isinstance(blur_sigma, bool) or not isinstance(blur_sigma, (int, float)) or not (
                0 < blur_sigma < float("inf")
            ):
                raise InputError(f"blur_sigma must be a positive number of pixels, got "
                                 f"{blur_sigma!r}; e.g. blur_sigma=5.0.")
            canvas = _gaussian_blur(x, float(blur_sigma))
        else:
            canvas = _background(start, x, "start")
        return _curve(model, x, m, spec, x, canvas, steps, batch_size, quiet, "insertion")


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Pointing game (Zhang et al. 2016): is each map's maximum inside its object mask?

    Args:
        maps: ``[B, H, W]``; the maximum is the first in raster order if it is not unique.
        masks: ``[B, H, W]`` ground-truth masks (bool or 0/1).
        tolerance: a hit also counts if a mask pixel lies within this many pixels (Euclidean) of
            the maximum (the original paper uses 15 at 224 x 224).

    Returns:
        ``[B]`` bool hits on the maps' device; ``.float().mean()`` is the accuracy. An empty mask
        is a miss.
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        got = list(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise InputError(f"maps must be a tensor [B, H, W], got {got}.")
    if not isinstance(masks, Tensor) or tuple(masks.shape) != tuple(maps.shape):
        got = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise InputError(
            f"masks must be a tensor of the maps' shape {list(maps.shape)}, got {got}."
        )
    if maps.is_complex() or masks.is_complex():
        raise InputError("maps and masks must be real tensors (float, int or bool), not complex; "
                         "pass e.g. maps.abs().")
    check_args((maps, masks), "maps and masks")  # meta, empty, NaN/inf
    if not maps.is_floating_point():
        maps = maps.float()  # argmax needs numbers: a bool or int map ranks as 0/1 / its values
    if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not (
        0 <= tolerance < float("inf")
    ):
        raise InputError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}.")
    b, h, w = maps.shape
    idx = maps.reshape(b, -1).argmax(dim=1)
    y0, x0 = (idx // w).view(b, 1, 1), (idx % w).view(b, 1, 1)
    yy = torch.arange(h, device=maps.device).view(1, h, 1)
    xx = torch.arange(w, device=maps.device).view(1, 1, w)
    near = (yy - y0) ** 2 + (xx - x0) ** 2 <= tolerance**2
    return (masks.to(maps.device).bool() & near).flatten(1).any(dim=1)
