"""Input-space attributions: saliency, DeconvNet, guided backpropagation.

All three return the signed signal ``[B, C, H, W]`` in input space, in the inputs' dtype and on
their device; :func:`to_heatmap` reduces it to ``[B, H, W]`` for display (in float32, returned in
the attributions' dtype).

Reduced precision (``precision=``): these maps are the backward pass itself, so a float16 or
bfloat16 backward rounds every step of it (bfloat16 keeps 8 bits: saliency on resnet18 at 64²
reached only r = 0.979 and 0.982 against the same weights run in float32; the copy gives 1.000). By default
(``precision="auto"``) a model with float16 / bfloat16 parameters or buffers runs forward and
backward as a float32 copy (the same values; made once per call, or once per data-set pass,
see :func:`~convscope.explain.base.reuse_float32_copies`); the user's model is not touched (its
parameters, dtype, memory format and hooks stay as they are). The result is returned in the
inputs' dtype. ``precision="model"`` runs the model in its own dtype (no copy: half the
memory); ``"float32"`` forces the copy where ``"auto"`` would skip it because it would not fit
in half the free GPU memory. A channels_last float32 model runs as it is.

How the ReLU rules are applied: while the model runs forward, a ``torch`` function mode
(:class:`torch.overrides.TorchFunctionMode`) intercepts every ReLU call -- ``nn.ReLU`` (which calls
``F.relu``), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place forms -- and computes it
with a custom autograd Function whose backward is the method's rule. So models written with
``F.relu`` or ``nn.ReLU(inplace=True)`` behave exactly like their ``nn.ReLU`` twins, and nothing is
left behind: the mode ends with the forward pass, even when the forward raises.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..errors import InputError, ModelError
from ..nn import check_args, f32
from .base import (
    Target,
    TargetSpec,
    check_inputs,
    check_model,
    check_precision,
    float32_model,
    layer_grad_check,
    logger,
    minmax,
    prepared,
    run_forward,
    upcast,
)
from .registry import register

__all__ = ["saliency", "deconvnet", "guided_backprop", "to_heatmap"]


# --------------------------------------------------------------------------------------------
# ReLU with a replaced backward rule
# --------------------------------------------------------------------------------------------
class _GuidedReLU(torch.autograd.Function):
    """Forward ReLU; backward passes ``g`` where both the forward output and ``g`` are > 0."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = torch.relu(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad.clamp(min=0), out, 0.0)


class _GuidedReLUInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad.clamp(min=0), out, 0.0)


class _DeconvReLU(torch.autograd.Function):
    """Forward ReLU; backward is ReLU of the incoming signal (the forward mask is ignored)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


class _DeconvReLUInplace(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x.relu_()
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.clamp(min=0)


_OUT_OF_PLACE = {F.relu, torch.relu, Tensor.relu}
_IN_PLACE = {torch.relu_, Tensor.relu_}
_RULES = {
    "guided": (_GuidedReLU, _GuidedReLUInplace),
    "deconv": (_DeconvReLU, _DeconvReLUInplace),
}


class _ReluRule(TorchFunctionMode):
    """Route every ReLU call made during a forward pass through a rule's autograd Function."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.plain, self.inplace = _RULES[rule]
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            x = args[0] if args else kwargs.get("input")
            inplace = func in _IN_PLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            if isinstance(x, Tensor) and x.requires_grad:
                self.calls += 1
                return self.inplace.apply(x) if inplace else self.plain.apply(x)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def _input_gradient(model: nn.Module, inputs: Tensor, target: Target, rule: str | None,
                    precision: str = "auto") -> Tensor:
    check_model(model)
    x0 = check_inputs(inputs)
    spec = TargetSpec(target, x0.shape[0])
    mode = _ReluRule(rule) if rule is not None else nullcontext()
    x_in = x0
    if upcast(model, precision):  # the same weights in float32 (the user's model untouched)
        try:
            model, x_in = float32_model(model), x0.to(torch.float32)
        except Exception as exc:  # a model deepcopy refuses (e.g. wrapped for distribution)
            if precision == "float32":
                raise ModelError(
                    f"cannot make a float32 copy of the model ({type(exc).__name__}: {exc}); "
                    "pass precision='model' to run it in its own dtype, or convert it yourself "
                    "(copy.deepcopy(model).float())."
                ) from None
            logger.warning("no float32 copy of the model (%s: %s): the backward runs in the "
                           "model's own dtype.", type(exc).__name__, exc)
    with prepared(model), torch.inference_mode(False), torch.enable_grad():
        x = x_in.clone().requires_grad_(True)
        with mode:
            out = run_forward(model, x)
        spec.resolve(out)
        score = spec.scores(out)
        if not score.requires_grad:
            raise InputError(
                "the target score does not depend on the inputs (no gradient path); check that "
                "the model does not detach its input or run under torch.no_grad() internally."
            )
        (grad,) = torch.autograd.grad(score.sum(), x)
    layer_grad_check(grad, "the inputs")
    if rule is not None and mode.calls == 0:  # type: ignore[union-attr]
        logger.warning(
            "%s: the model applied no ReLU (nn.ReLU, F.relu, torch.relu), so the rule had "
            "nothing to change and the result equals saliency.",
            "guided_backprop" if rule == "guided" else "deconvnet",
        )
    return grad.to(x0.dtype)


def saliency(model: nn.Module, inputs: Tensor, target: Target = None, *,
             precision: str = "auto") -> Tensor:
    """Gradient of the target score with respect to the input (Simonyan et al. 2013).

    Args:
        model: the network; run in eval mode (its mode and parameters' ``requires_grad`` are
            restored afterwards; no parameter gradients are computed).
        inputs: ``[B, C, H, W]`` float images.
        target: None (the predicted class of each image), an int (the same class for all), B ints
            (one per image), or a callable on the model output returning ``[B]`` scores or
            ``[B, K]`` class scores (for tuple/dict outputs: ``lambda out: out["logits"]``).
        precision: ``"auto"`` (default): a float16 / bfloat16 model runs forward and backward as
            a float32 copy of itself (the model is not changed), unless the copy would not fit
            in half the free GPU memory; ``"float32"``: always the copy; ``"model"``: the
            model's own dtype (see the module notes).

    Returns:
        ``[B, C, H, W]`` signed gradient, on the inputs' device and in their dtype (memory
        format as autograd returns it). Simonyan's map is ``to_heatmap(result)`` (max of ``|.|``
        over channels).

    Example:
        >>> sal = cs.explain.saliency(model, x, target=[3, 7])
        >>> heat = cs.explain.to_heatmap(sal)          # [B, H, W]
    """
    return _input_gradient(model, inputs, target, None, check_precision(precision))


def deconvnet(model: nn.Module, inputs: Tensor, target: Target = None, *,
              precision: str = "auto") -> Tensor:
    """DeconvNet (Zeiler & Fergus 2014): project the target score back to input space.

    At every ReLU the backward signal is rectified (``relu(g)``) instead of masked by the forward
    activation. Through max pooling, autograd already routes the signal to the recorded argmax
    positions -- exactly max-unpooling with switches -- and through convolutions it applies the
    transposed filters, so only the ReLU rule differs from plain backpropagation.

    Args and returns as :func:`saliency`: ``[B, C, H, W]`` signed signal.
    """
    return _input_gradient(model, inputs, target, "deconv", check_precision(precision))


def guided_backprop(model: nn.Module, inputs: Tensor, target: Target = None, *,
                    precision: str = "auto") -> Tensor:
    """Guided backpropagation (Springenberg et al. 2015).

    At every ReLU the backward signal passes only where the forward output is positive *and* the
    signal itself is positive (``relu(g) * (out > 0)``).

    Args and returns as :func:`saliency`: ``[B, C, H, W]`` signed signal.
    """
    return _input_gradient(model, inputs, target, "guided", check_precision(precision))


# the registry's one call shape: ``layer`` is accepted and ignored (no layer: input space)
@register("saliency", kind="input")
def _saliency(model: nn.Module, inputs: Tensor, target: Target = None, *, layer: Any = None,
              quiet: bool = False, precision: str = "auto") -> Tensor:
    """:func:`saliency` in the registry's call shape: ``[B, C, H, W]`` (``layer`` ignored)."""
    return saliency(model, inputs, target, precision=precision)


@register("deconvnet", kind="input")
def _deconvnet(model: nn.Module, inputs: Tensor, target: Target = None, *, layer: Any = None,
               quiet: bool = False, precision: str = "auto") -> Tensor:
    """:func:`deconvnet` in the registry's call shape: ``[B, C, H, W]`` (``layer`` ignored)."""
    return deconvnet(model, inputs, target, precision=precision)


@register("guided_backprop", kind="input")
def _guided_backprop(model: nn.Module, inputs: Tensor, target: Target = None, *,
                     layer: Any = None, quiet: bool = False, precision: str = "auto") -> Tensor:
    """:func:`guided_backprop` in the registry's call shape: ``[B, C, H, W]`` (``layer``
    ignored)."""
    return guided_backprop(model, inputs, target, precision=precision)


_REDUCTIONS = ("max_abs", "sum_abs", "l2", "sum", "max")


def to_heatmap(attributions: Tensor, reduce: str = "max_abs", normalize: bool = False) -> Tensor:
    """Reduce input-space attributions ``[B, C, H, W]`` to a heat map ``[B, H, W]``.

    Args:
        attributions: ``[B, C, H, W]`` from :func:`saliency`, :func:`deconvnet`,
            :func:`guided_backprop`.
        reduce: over channels: ``"max_abs"`` (Simonyan: ``max_c |x|``, default), ``"sum_abs"``,
            ``"l2"`` (Euclidean norm), ``"sum"`` (signed), ``"max"`` (signed).
        normalize: scale each map to [0, 1] (per-image min-max; a constant map becomes zeros).

    Returns:
        ``[B, H, W]`` on the same device and in the same dtype (reduced in float32).
    """
    if not isinstance(attributions, Tensor) or attributions.ndim != 4:
        got = list(attributions.shape) if isinstance(attributions, Tensor) else type(attributions).__name__
        raise InputError(
            f"to_heatmap expects attributions of shape [B, C, H, W], got {got}; CAM methods "
            "already return [B, H, W] maps."
        )
    if not attributions.is_floating_point():
        raise InputError(
            f"attributions must be a floating-point tensor, got dtype {attributions.dtype}; "
            "convert with attributions.float()."
        )
    if reduce not in _REDUCTIONS:
        raise InputError(f"reduce must be one of {', '.join(_REDUCTIONS)}; got {reduce!r}.")
    check_args((attributions,), "attributions")  # meta, empty, NaN/inf
    a = f32(attributions)  # sums and squares in float32; the result in the attributions' dtype
    if reduce == "max_abs":
        out = a.abs().amax(dim=1)
    elif reduce == "sum_abs":
        out = a.abs().sum(dim=1)
    elif reduce == "l2":
        out = a.pow(2).sum(dim=1).sqrt()
    elif reduce == "sum":
        out = a.sum(dim=1)
    else:
        out = a.amax(dim=1)
    out = minmax(out) if normalize else out
    if not normalize and attributions.dtype != out.dtype and not bool(
        torch.isfinite(out.to(attributions.dtype)).all()
    ):
        raise InputError(
            f"the reduced map overflows {attributions.dtype}; pass normalize=True or "
            "attributions.float()."
        )
    return out.to(attributions.dtype)
