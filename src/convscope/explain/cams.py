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
from ..nn import (
    GridLayout,
    Recorder,
    chunks,
    f32,
    fold_batchnorm,
    minmax,
    positive_int,
    split_call,
    upsample,
)
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
    "score_cam_info", "score_cam_budget", "score_cam_batch", "ScoreCamInfo",
    "SCORE_CAM_AUTO_LIMIT", "SCORE_CAM_FAST_CHANNELS", "SCORE_CAM_TOLERANCE",
    "SCORE_CAM_MAX_FACTOR", "SCORE_CAM_BATCH_BYTES", "SCORE_CAM_MIN_BATCH",
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
#: Fast mode: extra rounds stop once the estimated error that the unscored channels can still
#: put into the map is at most this fraction of the map's spatial variation (relative L2 norm of
#: the centred low-resolution map; a relative error e gives Pearson r of about 1 - e²/2, so 0.05
#: leaves a wide margin under the r >= 0.99 goal).
SCORE_CAM_TOLERANCE = 0.05
#: Fast mode scores at most this many times ``channels=K`` channels per image, in all rounds.
SCORE_CAM_MAX_FACTOR = 2
#: Byte budget of one masked batch (masked inputs, masks and the model's largest activations
#: per image, measured on one image) that sets the default ``batch_size`` (at least
#: :data:`SCORE_CAM_MIN_BATCH`, at most 256).
SCORE_CAM_BATCH_BYTES = 16 * 2**20
#: The smallest automatic batch: pytorch-grad-cam's ScoreCAM default (16), which in addition
#: holds every masked input of an image at once; convscope holds one batch.
SCORE_CAM_MIN_BATCH = 16
#: Masked passes from which Score-CAM folds the model's batch norms into their convolutions
#: (:func:`~convscope.nn.fold_batchnorm`): tracing costs about as much as a few passes.
SCORE_CAM_FOLD_PASSES = 64
_FEATURE_GRID = 4  # the calibration's mask features: masks average-pooled to at most 4 x 4
_RIDGE = 1e-3


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
        first: fast mode: the channels of the first round (``channels=K``); exact: 0.
        rounds: scoring rounds (exact: 1).
        bound: fast mode: the largest estimated relative error of an image's map when scoring
            stopped (see :func:`score_cam`); exact: 0.
        batch_size: masked images per forward pass.
        folded: batch norms folded into the convolution before them for the masked passes
            (:func:`~convscope.nn.fold_batchnorm`; 0 when none could be).
    """

    mode: str
    channels: int
    scored: int
    constant: int
    forwards: int
    layer: str
    first: int = 0
    rounds: int = 1
    bound: float = 0.0
    batch_size: int = 0
    folded: int = 0

    def describe(self) -> str:
        """One line for a run's record, e.g. ``"fast: 128 of 2048 channels ..."``."""
        if self.mode == "fast":
            return (f"fast: {self.scored} of {self.channels} channels of {self.layer!r} scored "
                    f"per image at most ({self.first} first, {self.rounds} round(s); the rest "
                    f"predicted, estimated map error <= {self.bound:.3f}), channels=None for "
                    "exact")
        return f"exact: all {self.channels} channels of {self.layer!r} scored"

    def merge(self, other: ScoreCamInfo) -> ScoreCamInfo:
        """One record for two calls on the same layer (two batches of images): the most
        channels, rounds and error bound, the forwards added up; fast if either was."""
        fast = self if self.mode == "fast" else other
        return ScoreCamInfo(
            fast.mode, max(self.channels, other.channels), max(self.scored, other.scored),
            max(self.constant, other.constant), self.forwards + other.forwards, self.layer,
            first=max(self.first, other.first), rounds=max(self.rounds, other.rounds),
            bound=max(self.bound, other.bound), batch_size=max(self.batch_size, other.batch_size),
            folded=max(self.folded, other.folded))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoreCamInfo:
        """The inverse of :meth:`to_dict`."""
        return cls(str(d["mode"]), int(d["channels"]), int(d["scored"]), int(d["constant"]),
                   int(d["forwards"]), str(d["layer"]), first=int(d.get("first", 0)),
                   rounds=int(d.get("rounds", 1)), bound=float(d.get("bound", 0.0)),
                   batch_size=int(d.get("batch_size", 0)), folded=int(d.get("folded", 0)))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (what a run stores)."""
        return {"mode": self.mode, "channels": int(self.channels), "scored": int(self.scored),
                "constant": int(self.constant), "forwards": int(self.forwards),
                "layer": self.layer, "first": int(self.first), "rounds": int(self.rounds),
                "bound": float(self.bound), "batch_size": int(self.batch_size),
                "folded": int(self.folded)}


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


def score_cam_batch(model: nn.Module, x: Tensor) -> int:
    """The automatic ``batch_size`` of Score-CAM for inputs like ``x``: as many masked images as
    fit :data:`SCORE_CAM_BATCH_BYTES`, counting per image the masked input and its mask and
    three times the largest output of any leaf module (its input, its output and a skip
    connection or a convolution's workspace), measured by one forward of one image; at least
    :data:`SCORE_CAM_MIN_BATCH`, at most 256."""
    largest = [0]

    def hook(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            largest[0] = max(largest[0], out[:1].numel() * out.element_size())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.inference_mode():
            run_forward(model, x[:1])
    finally:
        for h in handles:
            h.remove()
    per_image = 2 * x[:1].numel() * x.element_size() + 3 * largest[0]
    return int(max(SCORE_CAM_MIN_BATCH, min(256, SCORE_CAM_BATCH_BYTES // max(1, per_image))))


def _score_estimates(model: nn.Module, x: Tensor, spec: TargetSpec, act: Tensor,
                     low: Tensor, live: Tensor) -> Tensor:
    """First-order estimate ``[B, K]`` of every channel's Score-CAM score.

    A Taylor expansion of the score in the mask around the channels' mean mask ``M``:
    ``S(x * H_k) ~ S(x * M) + <g * x, H_k - M>`` with ``g = dS/dx`` at ``x * M`` (the
    first-order criterion of Molchanov et al. 2017, applied to Score-CAM's masks and expanded
    where the masks are, not at the unmasked image): one forward and one backward pass to the
    input for the whole batch. ``<G, H_k>`` is computed at the layer's resolution through the
    adjoint of the bilinear upsampling (``<G, up(a)> = <up^T G, a>``), with ``low`` the
    min-max scaled low-resolution maps ``(A_k - lo_k) / (hi_k - lo_k)`` (0 for constant ones)."""
    b, _, h, w = x.shape
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


def _calibrate(est: Tensor, feats: Tensor, scores: Tensor, scored: Tensor, live: Tensor,
               cen: Tensor) -> tuple[Tensor, float]:
    """One image: predicted scores ``[K]`` of the unscored channels and the estimated relative
    error of the map they leave (see :func:`score_cam`).

    ``est [K]`` first-order estimates, ``feats [K, F]`` pooled masks, ``scores [K]`` (valid
    where ``scored``), ``cen [K, h*w]`` the spatially centred channel maps. Computed in
    float64 (small matrices)."""
    est, feats, scores, cen = (t.double() for t in (est, feats, scores, cen))
    fit = scored & live
    n = int(fit.sum())
    e_sd = est[live].std() if int(live.sum()) > 1 else est.new_tensor(1.0)
    e_sd = e_sd if float(e_sd) > 0 else est.new_tensor(1.0)
    cols = [torch.ones_like(est), (est - est[live].mean()) / e_sd]
    if n >= 4 * (feats.shape[1] + 2):  # the mask features only with enough channels scored
        cols += list(feats.T)
    X = torch.stack(cols, dim=1)  # [K, p]
    p = X.shape[1]
    Xs, y = X[fit], scores[fit]
    ridge = torch.full((p,), _RIDGE * max(n, 1), dtype=torch.float64, device=X.device)
    ridge[:2] = 1e-9 * max(n, 1)  # only the mask features are shrunk (they overlap)
    G = torch.linalg.inv(Xs.T @ Xs + torch.diag(ridge))  # [p, p]
    beta = G @ (Xs.T @ y)
    hat = ((Xs @ G) * Xs).sum(dim=1).clamp(max=1 - 1e-6)
    loo = (y - Xs @ beta) / (1 - hat)  # leave-one-out residuals: out-of-sample errors
    sigma2 = float(loo.pow(2).mean()) if n > p else float("inf")
    pred = X @ beta
    full = torch.where(scored | ~live, scores, pred)
    wts = full.softmax(dim=0)
    m = (wts[:, None] * cen).sum(dim=0)
    unscored = live & ~scored
    if not bool(unscored.any()):
        return pred.float(), 0.0
    norm = float(m.norm())
    wu = wts[unscored]
    e_ind = sigma2 * float((wu.pow(2) * cen[unscored].pow(2).sum(dim=1)).sum())
    J = (wu[:, None] * cen[unscored]).T @ X[unscored]  # [h*w, p]: map change per coefficient
    e_coef = sigma2 * float(((J @ G) * J).sum())
    err = math.sqrt(e_ind + e_coef) if math.isfinite(sigma2) else math.inf
    if norm == 0:  # a spatially constant map: nothing for Pearson r to follow
        return pred.float(), 0.0 if err == 0 else math.inf
    return pred.float(), err / norm


def _score_pairs(model: nn.Module, x: Tensor, spec: TargetSpec, act: Tensor, pairs: Tensor,
                 scores: Tensor, batch_size: int, bar: Any, info: ScoreCamInfo | None) -> None:
    """Score the masked inputs of ``pairs [N, 2]`` of (image, channel), across images,
    ``batch_size`` at a time, into ``scores``; ``info``: warn from the first batch when the
    projected time is long."""
    h, w = x.shape[-2:]
    fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
    t0 = time.perf_counter()
    for i, sl in enumerate(chunks(pairs.shape[0], batch_size)):
        chunk = pairs[sl]
        img, ch = chunk[:, 0], chunk[:, 1]
        masks = minmax(upsample(act[img, ch][:, None], (h, w), align_corners=True))
        masked = (x[img] * masks.to(x.dtype)).contiguous(memory_format=fmt)
        with torch.inference_mode():
            s = spec.scores(run_forward(model, masked), rows=img).float()
        scores[img, ch] = s
        bar.update(int(chunk.shape[0]))
        if i == 0 and info is not None and sl.stop < pairs.shape[0]:
            _warn_long(info, (time.perf_counter() - t0) * pairs.shape[0] / sl.stop)


def score_cam_weights(act: Tensor, grad: None, ctx: CamContext) -> Tensor:
    """Score-CAM (Wang et al. 2020): softmax over channels of the target score of the input
    masked by each channel; exact, or the fast mode for ``channels=K`` (see :func:`score_cam`)."""
    model, x, spec = ctx.model, ctx.inputs, ctx.target
    b = x.shape[0]
    k = act.shape[1]
    budget = score_cam_budget(ctx.options.get("channels"), k)
    flat = act.flatten(2)
    lo, hi = flat.amin(dim=2), flat.amax(dim=2)
    constant = hi == lo  # [B, K]: zero masks (dead channels)
    live = ~constant
    fast = budget is not None and int(live.sum(dim=1).max()) > budget
    est = low = None
    if fast:
        low = (act - lo[..., None, None]) / torch.where(live, hi - lo, 1.0)[..., None, None]
        low = torch.where(live[..., None, None], low, 0.0)
        est = _score_estimates(model, x, spec, act, low, live)
        # the channel's estimated share of the map's spatial variation: softmax weight x std
        share = est + flat.std(dim=2).clamp(min=torch.finfo(torch.float32).tiny).log()
        top = share.masked_fill(constant, -torch.inf).topk(budget, dim=1).indices
        chosen = torch.zeros_like(live).scatter_(1, top, True) & live
    else:
        chosen = live
    batch_size = ctx.options.get("batch_size")
    if batch_size is None:
        batch_size = (score_cam_batch(model, x) if int(chosen.sum()) > SCORE_CAM_MIN_BATCH
                      else SCORE_CAM_MIN_BATCH)
    scores = torch.zeros(b, k, dtype=torch.float32, device=x.device)
    rows = constant.any(dim=1).nonzero()[:, 0]
    pairs = chosen.nonzero()  # [N, 2]: (image, channel), across images
    # the masked passes need the model's function only: batch norms folded into their
    # convolutions (the same function up to rounding) once the passes outweigh the tracing
    scorer, folds = (fold_batchnorm(model) if pairs.shape[0] >= SCORE_CAM_FOLD_PASSES
                     else (model, 0))
    info = ScoreCamInfo("fast" if fast else "exact", k, int(chosen.sum(1).max()),
                        int(constant.sum(1).max()), int(pairs.shape[0] + rows.numel()),
                        ctx.layer, first=budget if fast else 0, batch_size=int(batch_size),
                        folded=folds)
    if rows.numel():  # every all-zero mask gives the black image: score it once per image
        zero = torch.zeros_like(x[rows])
        with torch.inference_mode():
            black = spec.scores(run_forward(scorer, zero), rows=rows).float()
        zero_scores = torch.zeros(b, dtype=torch.float32, device=x.device)
        zero_scores[rows] = black
        scores = torch.where(constant, zero_scores[:, None], scores)
    bar = tqdm(total=int(pairs.shape[0]), disable=ctx.quiet, delay=2.0,
               desc=f"score_cam ({info.mode})", unit="mask", leave=False)
    try:
        _score_pairs(scorer, x, spec, act, pairs, scores, batch_size, bar, info)
        if fast:
            assert est is not None and low is not None and budget is not None
            scores, info = _fast_rounds(scorer, x, spec, act, low, est, scores, chosen, live,
                                        budget, batch_size, bar, info)
    finally:
        bar.close()
    if isinstance(ctx.options.get("info"), list):
        ctx.options["info"].append(info)
    return scores.softmax(dim=1)  # float32, as the map's reductions


def _fast_rounds(model: nn.Module, x: Tensor, spec: TargetSpec, act: Tensor, low: Tensor,
                 est: Tensor, scores: Tensor, scored: Tensor, live: Tensor, budget: int,
                 batch_size: int, bar: Any, info: ScoreCamInfo) -> tuple[Tensor, ScoreCamInfo]:
    """The fast mode after its first round: predict the unscored channels' scores, and score
    more channels, by their estimated contribution to the map, while an image's estimated map
    error exceeds :data:`SCORE_CAM_TOLERANCE` (see :func:`score_cam`)."""
    b, k, hh, ww = act.shape
    grid = (min(_FEATURE_GRID, hh), min(_FEATURE_GRID, ww))
    feats = torch.nn.functional.adaptive_avg_pool2d(low, grid).flatten(2)  # [B, K, F]
    flat = act.flatten(2)
    cen = flat - flat.mean(dim=2, keepdim=True)  # Pearson r ignores a constant offset
    cnorm = cen.norm(dim=2)
    cap = min(k, SCORE_CAM_MAX_FACTOR * budget)
    step = max(8, -(-budget // 4))
    rounds, forwards = 1, info.forwards
    out = scores.clone()
    while True:
        bounds = []
        extra = torch.zeros_like(scored)
        for i in range(b):
            pred, bound = _calibrate(est[i], feats[i], scores[i], scored[i], live[i], cen[i])
            out[i] = torch.where(scored[i] | ~live[i], scores[i], pred)
            bounds.append(bound)
            room = cap - int(scored[i].sum())
            unscored = live[i] & ~scored[i]
            if bound > SCORE_CAM_TOLERANCE and room > 0 and bool(unscored.any()):
                contrib = (out[i].softmax(dim=0) * cnorm[i]).masked_fill(~unscored, -1.0)
                n = min(step, room, int(unscored.sum()))
                extra[i, contrib.topk(n).indices] = True
        pairs = extra.nonzero()
        if not pairs.shape[0]:
            break
        rounds += 1
        forwards += int(pairs.shape[0])
        bar.total = (bar.total or 0) + int(pairs.shape[0])
        _score_pairs(model, x, spec, act, pairs, scores, batch_size, bar, None)
        scored = scored | extra
    info = ScoreCamInfo(info.mode, info.channels, int(scored.sum(1).max()), info.constant,
                        forwards, info.layer, first=budget, rounds=rounds,
                        bound=float(max(bounds)) if bounds else 0.0,
                        batch_size=info.batch_size, folded=info.folded)
    return out, info


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
    are batched together, ``batch_size`` at a time, so memory stays bounded: by default as many
    as fit :data:`SCORE_CAM_BATCH_BYTES` (16 MiB) by :func:`score_cam_batch`, at least 16 (the
    batch of pytorch-grad-cam's ScoreCAM, which in addition holds every masked input of an image
    at once), at most 256: 16 for ResNets from 128², 18 at 64², 75 at 32². On the CPU they are fed
    in channels-last memory format, which is faster for convolutions, and from
    :data:`SCORE_CAM_FOLD_PASSES` masked passes on, through a copy of the model's forward with
    each eval-mode batch norm folded into the convolution before it
    (:func:`~convscope.nn.fold_batchnorm`; the user's model is not changed, and a model that
    ``torch.fx`` cannot trace runs as it is). Both change the scores only by floating-point
    rounding; ``ScoreCamInfo.folded`` says how many batch norms were folded.

    **Fast mode** (``channels=K``, or ``"auto"`` on layers of more than
    :data:`SCORE_CAM_AUTO_LIMIT` channels): one forward and backward pass to the input gives a
    first-order estimate of every channel's score, ``ŝ_k = S(x * M) + <g * x, H_k - M>`` with
    ``M`` the channels' mean mask and ``g = dS/dx`` at ``x * M`` (the Taylor criterion of
    Molchanov et al. 2017, expanded where the masks are). Per image:

    1. the ``K`` channels with the largest estimated share of the map's spatial variation,
       ``exp(ŝ_k) * std(A_k)``, are scored with a masked forward pass;
    2. the unscored channels get a calibrated prediction: a ridge regression
       ``s_k ~ a + b ŝ_k + <beta, pool(H_k)>`` fitted on the scored channels, with ``pool(H_k)``
       the low-resolution mask average-pooled to at most 4 x 4 (the first-order estimate errs by
       where the mask lies, and with flat scores those errors add up over hundreds of channels;
       the mask features model that part). The softmax runs over all channels;
    3. **stopping rule.** To first order, a score error ``d_k`` moves the spatially centred map
       by ``w_k d_k A_k^c`` (the softmax's normalising term only rescales the map, which the
       min-max scaling and Pearson r ignore). With ``sigma^2`` the mean squared leave-one-out
       residual of the regression (its out-of-sample error) the expected error of the map
       left by the unscored channels ``U`` is
       ``E^2 = sigma^2 (sum_U w_k^2 |A_k^c|^2 + tr(J C J^T))``: independent errors plus the
       coherent error of the fitted coefficients (``J = sum_U w_k A_k^c x_k^T`` the map's
       change per coefficient, ``C = (X^T X + R)^-1``). While ``E / |M^c|`` exceeds
       :data:`SCORE_CAM_TOLERANCE` (0.05: a relative error ``e`` gives r of about
       ``1 - e^2 / 2``, so about 0.999), the ``max(8, K / 4)`` unscored channels with the
       largest estimated contribution ``w_k |A_k^c|`` are scored and the regression refitted,
       up to ``SCORE_CAM_MAX_FACTOR * K`` (2K) channels per image.

    With a sharp softmax a few channels carry the map, the first round scores them and the bound
    is ~0 at once; with a flat one every channel carries a little of the map and the predictions
    keep them (weight 0 for the unscored channels gave r of 0.5 to 0.9 against the exact map on
    resnet18 in our checks). The bound rests on the regression's model of the errors; it is an
    estimate, not a guarantee. The result is not the exact map: per-image Pearson r >= 0.99
    against it on four architectures, flat and sharp scores, in
    ``tests/test_explain_scorecam.py``; see ``benchmarks/bench_scorecam.py`` and docs/explain.md.

    A run projected (from its first batch) to take longer than
    :data:`SCORE_CAM_WARN_SECONDS` logs a warning naming the option that shortens it; the
    progress bar (shown after two seconds) carries the estimate.

    Args:
        model, inputs, target, layer, normalize: as :func:`grad_cam`.
        batch_size: masked inputs per forward pass (None: from the byte budget, see above).
        quiet: hide the progress bar.
        channels: ``None`` (default): score every channel, the exact method; an int ``K``: the
            fast mode scoring ``K`` channels per image first and up to ``2K`` by the stopping
            rule (exact when ``K`` >= the layer's channels); ``"auto"``: exact up to
            :data:`SCORE_CAM_AUTO_LIMIT` channels, else ``K =`` :data:`SCORE_CAM_FAST_CHANNELS`.

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
