"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, Score-CAM, and the base they share.

Every function has the shape ``(model, inputs, target=None, layer=None, normalize=True, *,
quiet=False, **options) -> [B, H, W]``: one map per image, upsampled (bilinear) to the input size,
on the inputs' device and in their dtype.

Reduced precision: the model runs in its own dtype (float16, bfloat16) and memory format
(channels_last); ``A`` and ``dS/dA`` are promoted to float32 before any variant sees them, so the
channel weights, the weighted sum, the ReLU, the upsampling and the min-max are float32, and only
the finished map is cast to the inputs' dtype. In float16, a layer gradient below 2^-8 is
recomputed from a scaled score (:func:`_layer_grad`) so that it does not round to zero.

One base (:class:`CamVariant`) checks the arguments, picks the layer, gathers the layer's
activations ``A`` and the target score's gradient ``dS/dA`` in one forward, and finishes the map
``relu(sum_k w_k A_k)``; a variant supplies only its channel weights ``[B, K]``
(:func:`grad_cam_weights`, :func:`grad_cam_pp_weights`; CAM and Score-CAM compute theirs from
the classifier and from masked forwards, through the same base). :func:`register_cam` adds a
variant to the base and to :mod:`~convscope.explain.registry` in a few lines.

``normalize=True`` applies a ReLU to the low-resolution map, upsamples it and scales each image's
map to [0, 1] (a constant map becomes zeros). ``normalize=False`` returns the upsampled raw map
``sum_k w_k A_k``: sign kept, one scale shared by all images.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import InputError, NotApplicableError
from ..nn import GridLayout, Recorder, chunks, f32, minmax, positive_int, split_call, upsample
from .base import (
    Layer,
    Target,
    TargetSpec,
    check_inputs,
    check_model,
    choose_layer,
    finish_map,
    forward_capture,
    layer_grad_check,
    prepared,
    run_forward,
)
from .registry import register

logger = logging.getLogger("convscope.explain")

__all__ = [
    "cam", "grad_cam", "grad_cam_pp", "score_cam", "CamContext", "CamVariant", "register_cam",
    "grad_cam_weights", "grad_cam_pp_weights", "cam_weights", "score_cam_weights",
    "score_cam_info", "score_cam_budget", "ScoreCamInfo", "SCORE_CAM_AUTO_LIMIT",
    "SCORE_CAM_FAST_CHANNELS",
]


# --------------------------------------------------------------------------------------------
# the base: gather A (and dS/dA) at a layer, weigh the channels, finish the map
# --------------------------------------------------------------------------------------------
@dataclass
class CamContext:
    """What a variant registered with ``context=True`` sees besides ``A`` and ``dS/dA``.

    Attributes:
        model: the network (prepared: eval mode, parameters frozen, restored afterwards).
        inputs: the checked ``[B, C, H, W]`` inputs.
        layer: the layer's module path.
        output: the model output on ``inputs``.
        target: the resolved :class:`~convscope.explain.base.TargetSpec` (``.classes``,
            ``.scores(output, rows=...)``).
        classifier: the last ``nn.Linear`` the forward called (``None`` if none).
        quiet: hide progress bars. options: the variant's own options.
    """

    model: nn.Module
    inputs: Tensor
    layer: str
    output: Any
    target: TargetSpec
    classifier: nn.Linear | None
    quiet: bool
    options: dict[str, Any]


def _gather(
    model: nn.Module, x: Tensor, spec: TargetSpec, name: str, module: nn.Module, gradients: bool,
    classifier: bool,
) -> tuple[Tensor, Tensor | None, Any, nn.Linear | None]:
    """One forward: ``(A, dS/dA or None, output, last nn.Linear called)``, A and dS/dA in
    float32 and ``[B, K, h, w]`` (a token or channels-last layer output and its gradient are
    reshaped alike by the capture's :class:`~convscope.nn.GridLayout`). The gradient is taken with
    autograd from the output to the layer only."""
    linears = (
        {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} if classifier else {}
    )
    grad = None
    with Recorder(linears, value=lambda out: None) as called, torch.inference_mode(False):
        cap = forward_capture(model, x, name, module, grad_from_layer=gradients)
        with torch.enable_grad():
            spec.resolve(cap.output)
            if gradients:
                score = spec.scores(cap.output)
                if score.requires_grad:
                    grad = _layer_grad(score, cap.act)
    if gradients and grad is None:
        raise NotApplicableError(
            f"the target score does not depend on layer {name!r} (no gradient path from the "
            "output to it); choose a layer on the path to the classifier."
        )
    assert cap.act is not None and cap.layout is not None
    grid = cap.layout  # tokens -> [B, D, h, w] (class tokens dropped), channels-last permuted
    if grad is not None:
        layer_grad_check(grad, f"layer {name!r}")
        # reductions in float32 (fp16 g**3 underflows below ~2.4e-4 and sum(A) * g**3 overflows)
        grad = _as_grid(grid, f32(grad))
    fc = linears[split_call(list(called.store)[-1])[0]] if called.store else None
    return _as_grid(grid, f32(cap.act.detach())), grad, cap.output, fc


def _as_grid(layout: GridLayout, t: Tensor) -> Tensor:
    return t if layout.kind == "channels_first" else layout.apply(t).contiguous()


#: float16 gradients at a layer smaller than this are rescaled (see :func:`_layer_grad`)
_FP16_SMALL = 2.0**-8


def _layer_grad(score: Tensor, act: Tensor) -> Tensor | None:
    """``d(sum of score)/dA`` in the model's dtype (None if ``A`` is not on the score's path).

    In float16 the backward runs where a gradient below 6.1e-5 is subnormal (fewer bits) and one
    below 6e-8 becomes 0. As loss scaling does in mixed-precision training (Micikevicius et al.
    2018), when the largest gradient at the layer is below 2^-8 the backward is run again from
    the score times a power of two (at most 2^15, the largest that float16 holds) that brings it
    near 1, and the gradient is divided by it in float32; if that backward overflows somewhere,
    the unscaled gradient is kept.
    """
    half = act.dtype == torch.float16
    (grad,) = torch.autograd.grad(score.sum(), act, allow_unused=True, retain_graph=half)
    if grad is None or not half:
        return grad
    top = float(grad.abs().max())
    if not top < _FP16_SMALL:  # large enough, or non-finite (reported by the caller)
        return grad
    power = 15 if top == 0 else min(15, int(math.floor(-math.log2(top))))
    scale = 2.0**power
    (scaled,) = torch.autograd.grad(score, act, grad_outputs=torch.full_like(score, scale))
    if not bool(torch.isfinite(scaled).all()):
        return grad
    return scaled.float() / scale


@dataclass(frozen=True)
class CamVariant:
    """A CAM method: the base plus the channel weights (the idea of pytorch-grad-cam's
    ``BaseCAM.get_cam_weights``, computed on the device).

    Calling it checks the model, inputs and target, picks the layer (:func:`auto_layer` for
    ``layer=None``), runs one forward recording the layer's activations ``A [B, K, h, w]`` and
    (with ``gradients``) ``dS/dA``, asks ``weights(A, dS/dA) -> [B, K]`` (with ``context``:
    ``weights(A, dS/dA, ctx)``, a :class:`CamContext`) and returns
    ``relu(sum_k w_k A_k)`` upsampled and min-max scaled (:func:`finish_map`). ``A`` and ``dS/dA``
    reach ``weights`` in float32 whatever the model's dtype; the map is computed in float32 and
    returned in the inputs' dtype. The model's mode, ``requires_grad`` and hooks are restored
    afterwards.
    """

    name: str
    weights: Callable[..., Tensor]
    gradients: bool = True
    context: bool = False

    def __call__(
        self, model: nn.Module, inputs: Tensor, target: Target = None, layer: Layer = None,
        normalize: bool = True, *, quiet: bool = False, **options: Any,
    ) -> Tensor:
        check_model(model)
        x = check_inputs(inputs)
        spec = TargetSpec(target, x.shape[0])
        with prepared(model):
            name, module = choose_layer(model, x, layer, self.name)
            act, grad, output, fc = _gather(model, x, spec, name, module, self.gradients,
                                            classifier=self.context)
            with torch.no_grad():
                if self.context:
                    ctx = CamContext(model, x, name, output, spec, fc, quiet, options)
                    w = self.weights(act, grad, ctx)
                else:
                    w = self.weights(act, grad)
        w = _check_weights(w, act, self.name)
        raw = torch.einsum("bk,bkhw->bhw", w, act)
        return finish_map(raw, tuple(x.shape[-2:]), normalize, x.dtype)


def _check_weights(w: Any, act: Tensor, name: str) -> Tensor:
    b, k = act.shape[:2]
    if not isinstance(w, Tensor) or tuple(w.shape) != (b, k):
        got = list(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise InputError(
            f"the weights function of {name!r} returned {got}; it must return one weight per "
            f"image and channel, a tensor [B, K] = {[b, k]}."
        )
    return w.detach().to(device=act.device, dtype=act.dtype)


def register_cam(
    name: str,
    weights: Callable[..., Tensor] | None = None,
    *,
    gradients: bool = True,
    context: bool = False,
    options: dict[str, Any] | None = None,
    kind: str = "layer",
    replace: bool = False,
) -> Any:
    """Add a CAM variant that supplies only its channel weights; usable as a decorator.

    ``weights(A, G) -> [B, K]`` receives the layer's activations ``A`` and the gradient of the
    target score ``G = dS/dA`` (both ``[B, K, h, w]``, float32, on the inputs' device); the map is
    ``relu(sum_k w_k A_k)``, upsampled to the input size and min-max scaled per image, as every
    CAM here. The method is registered in :mod:`convscope.explain.registry` and returned as a
    function ``(model, inputs, target=None, layer=None, normalize=True, *, quiet=False,
    **options) -> [B, H, W]`` (so the decorated name becomes the method)::

        @cs.explain.register_cam("xgrad_cam")
        def xgrad_cam(A, G):                      # XGrad-CAM (Fu et al. 2020)
            s = A.sum(dim=(2, 3))
            return (A * G).sum(dim=(2, 3)) / s.where(s != 0, 1.0)

        maps = xgrad_cam(model, x, target=3, layer="layer4")

    Args:
        name: the method's name in the registry.
        weights: ``(A, G) -> [B, K]``; with ``context=True`` ``(A, G, ctx) -> [B, K]`` where
            ``ctx`` is a :class:`CamContext` (model, inputs, output, target, classifier, options).
        gradients: compute ``G`` (False: ``G`` is None and the forward runs without autograd).
        context: pass the :class:`CamContext` too.
        options: the variant's own keyword options and their defaults (reach ``ctx.options``).
        kind: registry kind, ``"layer"`` or ``"classifier"``.
        replace: allow replacing a registered method of that name.
    """
    if weights is None:
        return lambda f: register_cam(name, f, gradients=gradients, context=context,
                                      options=options, kind=kind, replace=replace)
    if not callable(weights):
        raise InputError(f"register_cam({name!r}, weights): weights must be callable, got "
                         f"{weights!r}.")
    if kind not in ("layer", "classifier"):
        raise InputError(f"a CAM variant's kind is 'layer' or 'classifier', got {kind!r}.")
    variant = CamVariant(name, weights, bool(gradients), bool(context))
    defaults = dict(options or {})

    def method(model: nn.Module, inputs: Tensor, target: Target = None, layer: Layer = None,
               normalize: bool = True, *, quiet: bool = False, **opts: Any) -> Tensor:
        unknown = sorted(set(opts) - set(defaults))
        if unknown:
            raise InputError(f"{name} takes no option(s) {unknown}; its options are "
                             f"{['normalize', 'quiet', *defaults]}.")
        return variant(model, inputs, target, layer, normalize, quiet=quiet,
                       **{**defaults, **opts})

    P = inspect.Parameter
    method.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        *list(inspect.signature(method).parameters.values())[:6],
        *[P(k, P.KEYWORD_ONLY, default=v) for k, v in defaults.items()],
    ])
    method.__name__ = method.__qualname__ = name
    method.__doc__ = weights.__doc__ or f"CAM variant {name!r} (see register_cam)."
    method.variant = variant  # type: ignore[attr-defined]
    register(name, method, kind=kind, replace=replace)
    return method


# --------------------------------------------------------------------------------------------
# Grad-CAM and Grad-CAM++: channel weights from the gradient
# --------------------------------------------------------------------------------------------
def grad_cam_weights(act: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ij dS/dA_kij``."""
    return grad.mean(dim=(2, 3))


def grad_cam_pp_weights(act: Tensor, grad: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): ``w_k = sum_ij alpha_kij relu(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + (sum_ab A_kab) g^3)``; only a zero denominator is guarded.

    Computed as ``alpha = 1 / (2 + (sum_ab A_kab) g)`` where ``g != 0`` (the same fraction with
    ``g^2`` cancelled; ``alpha = 0`` where ``g = 0``, where it multiplies ``relu(g) = 0``), in
    float32: no power of ``g`` is formed, so nothing underflows or overflows at any gradient scale
    (in float16, ``g^2`` is 0 for ``|g| < 2.4e-4`` and the old form gave an all-zero map).
    """
    act, grad = f32(act), f32(grad)
    sg = act.sum(dim=(2, 3), keepdim=True) * grad
    denom = 2 + sg
    ok = (grad != 0) & (denom != 0)  # 1 / inf = 0: the limit of the fraction
    alpha = torch.where(ok, 1 / torch.where(ok, denom, 1.0), 0.0)
    return (alpha * grad.clamp(min=0)).sum(dim=(2, 3))


_GRAD_CAM = CamVariant("grad_cam", grad_cam_weights)
_GRAD_CAM_PP = CamVariant("grad_cam_pp", grad_cam_pp_weights)


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    *,
    quiet: bool = False,
) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k w_k A_k)`` with ``w_k = mean_ij dS/dA_kij``.

    The gradient is taken with ``torch.autograd.grad`` to the layer output only: the forward runs
    without autograd up to the layer, so no parameter gradients are computed and the backward
    stops at the layer.

    Args:
        model: the network (run in eval mode; mode and ``requires_grad`` restored afterwards).
        inputs: ``[B, C, H, W]`` float images.
        target: None (predicted class), an int, B ints, or a callable on the model output
            returning ``[B]`` scores or ``[B, K]`` class scores.
        layer: a module of the model, its path (``"layer4"``) or None: the last module whose
            output is ``[B, C, h, w]`` with ``h*w > 1`` (logged; see :func:`auto_layer`).
        normalize: True: ReLU + per-image min-max to [0, 1]; False: the raw signed map.
        quiet: accepted for the one call shape (one forward and backward: no progress bar).

    Returns:
        ``[B, H, W]`` maps upsampled to the input size, on the inputs' device and in their dtype
        (computed in float32; see the module's notes on reduced precision).

    Example:
        >>> maps = cs.explain.grad_cam(model, x, target=[281, 5], layer="layer4")
    """
    return _GRAD_CAM(model, inputs, target, layer, normalize, quiet=quiet)


def grad_cam_pp(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    *,
    quiet: bool = False,
) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): ``relu(sum_k w_k A_k)`` with

    ``alpha_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` and ``w_k = sum_ij alpha_kij relu(g_kij)``,
    where ``g = dS/dA``. Only a zero denominator is guarded (alpha = 0 there); no epsilon is added,
    so the map follows the formula at any gradient scale.

    Args and returns as :func:`grad_cam`.
    """
    return _GRAD_CAM_PP(model, inputs, target, layer, normalize, quiet=quiet)


def cam_weights(act: Tensor, grad: None, ctx: CamContext) -> Tensor:
    """CAM (Zhou et al. 2016): ``w_k = W_ck``, the classifier's row for each image's class,
    after checking on the batch that the output is ``W @ mean_ij(A) + b``."""
    c, name, fc, spec = act.shape[1], ctx.layer, ctx.classifier, ctx.target
    if fc is None or fc.in_features != c:
        found = (f"its last nn.Linear takes {fc.in_features} features" if fc is not None
                 else "it calls no nn.Linear")
        raise NotApplicableError(
            f"CAM needs a model of the form features -> global average pooling -> one linear "
            f"classifier (Zhou et al. 2016), with the features taken at layer {name!r} "
            f"({c} channels), but {found}. Use cs.explain.grad_cam instead (it equals CAM on "
            "such models), or pass layer= the map that feeds the global pooling."
        )
    if spec.classes is None:
        raise NotApplicableError(
            "CAM needs a class per image: pass target=None, an int, B ints, or a callable "
            "returning [B, K] class scores (not [B] scores)."
        )
    scores = f32(spec.scores(ctx.output).detach())
    cls = spec.classes.to(act.device)
    w = fc.weight.detach()[cls].to(act.dtype)  # [B, C], float32 for reduced precision
    bias = fc.bias.detach()[cls].to(act.dtype) if fc.bias is not None else 0.0
    closed = (act.mean(dim=(2, 3)) * w).sum(dim=1) + bias
    low = ctx.inputs.dtype in (torch.float16, torch.bfloat16)  # the model's sums were rounded
    rtol = 2e-2 if low else 1e-3
    tol = rtol * (1.0 + float(scores.abs().max()))
    if not torch.allclose(closed, scores.to(closed.dtype), rtol=rtol, atol=tol):
        err = float((closed - scores).abs().max())
        raise NotApplicableError(
            f"CAM needs the model output to be a linear classifier on the global average of "
            f"layer {name!r} (Zhou et al. 2016), but W @ mean(A) + b differs from the model's "
            f"scores by up to {err:.3g}; the model has another pooling or more layers after "
            f"{name!r}. Use cs.explain.grad_cam instead."
        )
    return w


_CAM = CamVariant("cam", cam_weights, gradients=False, context=True)


def cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    *,
    quiet: bool = False,
) -> Tensor:
    """CAM (Zhou et al. 2016): ``M_c = sum_k W_ck A_k`` for a GAP + linear classifier.

    Applies only to models whose output is ``W @ mean_ij(A) + b`` for the layer's map ``A``
    (torchvision ResNets with ``layer="layer4"``/None). This is checked on the batch itself:
    otherwise a :class:`~convscope.errors.NotApplicableError` says so and suggests Grad-CAM.

    Args and returns as :func:`grad_cam` (the target callable, if any, must return ``[B, K]``
    class scores, since CAM reads the class's row of ``W``).
    """
    return _CAM(model, inputs, target, layer, normalize, quiet=quiet)


# --------------------------------------------------------------------------------------------
# Score-CAM: exact, or fast (the channels with the highest estimated scores)
# --------------------------------------------------------------------------------------------
#: ``channels="auto"`` (the default of :func:`~convscope.explain.dataset.attribute_all` and so of
#: ``run.log_attributions``) scores every channel of a layer with at most this many channels,
#: and only :data:`SCORE_CAM_FAST_CHANNELS` of larger layers.
SCORE_CAM_AUTO_LIMIT = 256
#: Channels scored per image by the fast mode under ``channels="auto"``.
SCORE_CAM_FAST_CHANNELS = 128
#: An exact Score-CAM projected to run longer than this (seconds, from its first batch) says so
#: and names the fast mode.
SCORE_CAM_WARN_SECONDS = 30.0


@dataclass(frozen=True)
class ScoreCamInfo:
    """How a Score-CAM call ran (filled by :func:`score_cam_info`).

    Attributes:
        mode: ``"exact"`` (every non-constant channel scored) or ``"fast"``.
        channels: channels of the layer.
        scored: non-constant channels scored per image (the most over the batch).
        constant: constant channels per image (the most over the batch; scored by one black
            image per image).
        forwards: masked images the model ran (black images included).
        layer: the layer's module path.
    """

    mode: str
    channels: int
    scored: int
    constant: int
    forwards: int
    layer: str

    def describe(self) -> str:
        """One line for a run's record, e.g. ``"fast: 128 of 2048 channels scored per image"``."""
        if self.mode == "fast":
            return (f"fast: {self.scored} of {self.channels} channels of {self.layer!r} scored "
                    "per image (the rest estimated to first order), channels=None for exact")
        return f"exact: all {self.channels} channels of {self.layer!r} scored"


def score_cam_budget(channels: Any, k: int) -> int | None:
    """Channels to score per image for the ``channels=`` option on a layer of ``k`` channels:
    ``None`` (all: the exact computation) for ``channels=None``, for ``"auto"`` when
    ``k <= SCORE_CAM_AUTO_LIMIT`` and for an int ``>= k``; else the int (``"auto"``:
    :data:`SCORE_CAM_FAST_CHANNELS`)."""
    if channels is None:
        return None
    if isinstance(channels, str):
        if channels != "auto":
            raise InputError(f"channels must be None (exact), 'auto' or a positive int, got "
                             f"{channels!r}.")
        return None if k <= SCORE_CAM_AUTO_LIMIT else SCORE_CAM_FAST_CHANNELS
    budget = positive_int(channels, "channels", allow_none=True)
    return None if budget is None or budget >= k else budget


def _score_estimates(model: nn.Module, x: Tensor, spec: TargetSpec, act: Tensor) -> Tensor:
    """First-order estimate ``[B, K]`` of every channel's Score-CAM score.

    A Taylor expansion of the score in the mask around the channels' mean mask ``M``:
    ``S(x * H_k) ~ S(x * M) + <g * x, H_k - M>`` with ``g = dS/dx`` at ``x * M`` (the
    first-order criterion of Molchanov et al. 2017, applied to Score-CAM's masks and expanded
    where the masks are, not at the unmasked image): one forward and one backward pass to the
    input for the whole batch. ``<G, H_k>`` is computed at the layer's resolution through the
    adjoint of the bilinear upsampling (``<G, up(a)> = <up^T G, a>``), with
    ``H_k = (up(A_k) - lo_k) / (hi_k - lo_k)`` and the low-resolution extremes ``lo_k, hi_k``."""
    b, _, h, w = x.shape
    flat = act.flatten(2)
    lo, hi = flat.amin(dim=2), flat.amax(dim=2)
    span = hi - lo
    live = span > 0
    low = (act - lo[..., None, None]) / torch.where(live, span, 1.0)[..., None, None]
    low = torch.where(live[..., None, None], low, 0.0)
    mean_low = low.sum(dim=1) / live.sum(dim=1).clamp(min=1)[:, None, None]  # [B, h, w]
    mean_mask = upsample(mean_low, (h, w), align_corners=True)  # [B, H, W]
    with torch.inference_mode(False), torch.enable_grad():
        xg = (x.detach() * mean_mask[:, None].to(x.dtype)).requires_grad_(True)
        s = spec.scores(run_forward(model, xg))
        gx = (torch.autograd.grad(s.sum(), xg, allow_unused=True)[0] if s.requires_grad
              else None)
        if gx is None:  # no gradient path to the input: the estimates rank by std(A_k) alone
            gx = torch.zeros_like(xg)
        layer_grad_check(gx, "the input")
        g = f32((gx * x).detach()).sum(dim=1)  # [B, H, W]: dS/dmask
        z = torch.zeros(b, act.shape[2], act.shape[3], dtype=torch.float32, device=x.device,
                        requires_grad=True)
        (g_low,) = torch.autograd.grad((upsample(z, (h, w), align_corners=True) * g).sum(), z)
    inner = torch.einsum("bhw,bkhw->bk", g_low, low)  # <G, H_k>
    return f32(s.detach())[:, None] + inner - (g * mean_mask).sum(dim=(1, 2))[:, None]


def score_cam_weights(act: Tensor, grad: None, ctx: CamContext) -> Tensor:
    """Score-CAM (Wang et al. 2020): softmax over channels of the target score of the input
    masked by each channel; exact, or the fast mode for ``channels=K`` (see :func:`score_cam`)."""
    model, x, spec = ctx.model, ctx.inputs, ctx.target
    b, c_in, h, w = x.shape
    batch_size = ctx.options.get("batch_size")
    if batch_size is None:
        batch_size = max(16, min(256, 2**20 // (c_in * h * w)))
    k = act.shape[1]
    budget = score_cam_budget(ctx.options.get("channels"), k)
    flat = act.flatten(2)
    constant = flat.amax(dim=2) == flat.amin(dim=2)  # [B, K]: zero masks (dead channels)
    live = ~constant
    est = None
    if budget is not None and int(live.sum(dim=1).max()) > budget:
        est = _score_estimates(model, x, spec, act)
        # the channel's estimated share of the map's spatial variation: softmax weight x std
        share = est + flat.std(dim=2).clamp(min=torch.finfo(torch.float32).tiny).log()
        top = share.masked_fill(constant, -torch.inf).topk(budget, dim=1).indices
        chosen = torch.zeros_like(live).scatter_(1, top, True) & live
    else:
        chosen = live
    scores = torch.zeros(b, k, dtype=torch.float32, device=x.device)
    rows = constant.any(dim=1).nonzero()[:, 0]
    pairs = chosen.nonzero()  # [N, 2]: (image, channel), across images
    info = ScoreCamInfo("fast" if est is not None else "exact", k, int(chosen.sum(1).max()),
                        int(constant.sum(1).max()), int(pairs.shape[0] + rows.numel()),
                        ctx.layer)
    if isinstance(ctx.options.get("info"), list):
        ctx.options["info"].append(info)
    if rows.numel():  # every all-zero mask gives the black image: score it once per image
        zero = torch.zeros_like(x[rows])
        with torch.inference_mode():
            black = spec.scores(run_forward(model, zero), rows=rows).float()
        zero_scores = torch.zeros(b, dtype=torch.float32, device=x.device)
        zero_scores[rows] = black
        scores = torch.where(constant, zero_scores[:, None], scores)
    fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
    bar = tqdm(total=int(pairs.shape[0]), disable=ctx.quiet, delay=2.0,
               desc=f"score_cam ({info.mode})", unit="mask", leave=False)
    t0 = time.perf_counter()
    try:
        for i, sl in enumerate(chunks(pairs.shape[0], batch_size)):
            chunk = pairs[sl]
            img, ch = chunk[:, 0], chunk[:, 1]
            masks = minmax(upsample(act[img, ch][:, None], (h, w), align_corners=True))
            masked = (x[img] * masks.to(x.dtype)).contiguous(memory_format=fmt)
            with torch.inference_mode():
                s = spec.scores(run_forward(model, masked), rows=img).float()
            scores[img, ch] = s
            bar.update(int(chunk.shape[0]))
            if i == 0 and sl.stop < pairs.shape[0]:
                _warn_long(info, (time.perf_counter() - t0) * pairs.shape[0] / sl.stop)
    finally:
        bar.close()
    if est is not None:  # unscored channels: the estimate, less its mean error on the scored
        n = chosen.sum(dim=1).clamp(min=1)
        shift = torch.where(chosen, scores - est, 0.0).sum(dim=1) / n
        scores = torch.where(chosen | constant, scores, est + shift[:, None])
    return scores.softmax(dim=1)  # float32, as the map's reductions


def _warn_long(info: ScoreCamInfo, seconds: float) -> None:
    if seconds <= SCORE_CAM_WARN_SECONDS:
        return
    hint = (f"pass channels={SCORE_CAM_FAST_CHANNELS} (or channels='auto') for the fast mode"
            if info.mode == "exact" and info.channels > SCORE_CAM_FAST_CHANNELS
            else "pass a smaller channels=, a later layer or fewer images")
    logger.warning(
        "score_cam (%s) at %r: %d masked forward passes, about %.0f s (estimated from the "
        "first batch); %s.", info.mode, info.layer, info.forwards, seconds, hint)


_SCORE_CAM = CamVariant("score_cam", score_cam_weights, gradients=False, context=True)


def score_cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    batch_size: int | None = None,
    quiet: bool = False,
    channels: int | str | None = None,
) -> Tensor:
    """Score-CAM (Wang et al. 2020): weight each channel by the score of the input it masks.

    For every image and channel ``k`` of the layer, the mask ``H_k`` is ``A_k`` upsampled
    (bilinear) to the input size and min-max scaled to [0, 1]; ``x * H_k`` is scored by the model
    (the target's logit, or a callable target's score). The channel weights are the softmax over
    channels of these scores and the map is ``sum_k w_k A_k`` (as pytorch-grad-cam computes it).

    **Work that cannot change the map is skipped** in both modes: a constant channel (dead,
    all-zero, or any constant value) gives an all-zero mask, so its masked input is the black
    image; that is scored once per image, not once per channel. The masked inputs of all images
    are batched together, ``batch_size`` at a time, so memory stays bounded (by default as many
    as make 1 Mi input values, at least 16 and at most 256: 16 at 3 x 224 x 224, 85 at
    3 x 64 x 64). On the CPU they are fed in channels-last memory format, which is faster for
    convolutions and changes the scores only by floating-point rounding.

    **Fast mode** (``channels=K``, or ``"auto"`` on layers of more than
    :data:`SCORE_CAM_AUTO_LIMIT` channels): one forward and backward pass to the input gives a
    first-order estimate of every channel's score, ``S(x * M) + <g * x, H_k - M>`` with ``M``
    the channels' mean mask and ``g = dS/dx`` at ``x * M`` (the Taylor criterion of Molchanov
    et al. 2017, expanded where the masks are). Only the ``K`` channels with
    the largest estimated share of the map's spatial variation, ``exp(estimate) * std(A_k)``,
    are scored with a masked forward pass; every other channel keeps its estimate, shifted by
    the mean error of the estimate on the scored channels, and the softmax runs over all
    channels. With a sharp softmax (scores far apart) the share is led by the estimate, so the
    few channels that carry the map are scored exactly; with a flat one (scores close together)
    every channel carries a little of the map, and the estimates keep them: giving the unscored
    channels weight 0 (a softmax over the chosen ones) drops them and gave r of 0.5 to 0.9
    against the exact map on resnet18 in our checks. The result is not the exact map: per-image
    Pearson r >= 0.99 against it in ``tests/test_explain_scorecam.py``; see
    ``benchmarks/bench_scorecam.py`` and docs/explain.md for where it falls short.

    A run projected (from its first batch) to take longer than
    :data:`SCORE_CAM_WARN_SECONDS` logs a warning naming the option that shortens it; the
    progress bar (shown after two seconds) carries the estimate.

    Args:
        model, inputs, target, layer, normalize: as :func:`grad_cam`.
        batch_size: masked inputs per forward pass (None: automatic, see above).
        quiet: hide the progress bar.
        channels: ``None`` (default): score every channel, the exact method; an int ``K``: the
            fast mode scoring ``K`` channels per image (exact when ``K`` >= the layer's
            channels); ``"auto"``: exact up to :data:`SCORE_CAM_AUTO_LIMIT` channels, else
            ``K =`` :data:`SCORE_CAM_FAST_CHANNELS`.

    Returns:
        ``[B, H, W]`` maps upsampled to the input size. :func:`score_cam_info` also says how
        the call ran.
    """
    return score_cam_info(model, inputs, target, layer, normalize, batch_size, quiet,
                          channels)[0]


def score_cam_info(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    batch_size: int | None = None,
    quiet: bool = False,
    channels: int | str | None = None,
) -> tuple[Tensor, ScoreCamInfo]:
    """:func:`score_cam` returning ``(maps, ScoreCamInfo)``: which mode ran, how many channels
    were scored and how many masked forward passes it took."""
    batch_size = positive_int(batch_size, "batch_size", allow_none=True)
    score_cam_budget(channels, 1 << 30)  # check the value before any work
    info: list[ScoreCamInfo] = []
    maps = _SCORE_CAM(model, inputs, target, layer, normalize, quiet=quiet,
                      batch_size=batch_size, channels=channels, info=info)
    return maps, info[0]


for _fn, _kind in ((cam, "classifier"), (grad_cam, "layer"), (grad_cam_pp, "layer"),
                   (score_cam, "layer")):
    register(_fn.__name__, _fn, kind=_kind)
