"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, Score-CAM.

Every function has the shape ``(model, inputs, target=None, layer=None, normalize=True) ->
[B, H, W]``: one map per image, upsampled (bilinear) to the input size, on the inputs' device.

``normalize=True`` applies a ReLU to the low-resolution map, upsamples it and scales each image's
map to [0, 1] (a constant map becomes zeros). ``normalize=False`` returns the upsampled raw map
``sum_k w_k A_k``: sign kept, one scale shared by all images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import NotApplicableError
from ..nn import Recorder, chunks, f32, minmax, positive_int, split_call, upsample
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

__all__ = ["cam", "grad_cam", "grad_cam_pp", "score_cam"]


def _layer_gradient(
    model: nn.Module, inputs: Tensor, target: Target, layer: Layer, method: str
) -> tuple[Tensor, Tensor, Tensor]:
    """``(x, A, dS/dA)`` for the chosen layer: autograd only from the layer to the output."""
    check_model(model)
    x = check_inputs(inputs)
    spec = TargetSpec(target, x.shape[0])
    with prepared(model):
        name, module = choose_layer(model, x, layer, method)
        with torch.inference_mode(False):
            cap = forward_capture(model, x, name, module, grad_from_layer=True)
            with torch.enable_grad():
                spec.resolve(cap.output)
                score = spec.scores(cap.output)
                grad = None
                if score.requires_grad:
                    (grad,) = torch.autograd.grad(score.sum(), cap.act, allow_unused=True)
    if grad is None:
        raise NotApplicableError(
            f"the target score does not depend on layer {name!r} (no gradient path from the "
            "output to it); choose a layer on the path to the classifier."
        )
    assert cap.act is not None
    layer_grad_check(grad, f"layer {name!r}")
    # reductions in float32 (fp16 g**3 underflows below ~2.4e-4 and sum(A) * g**3 overflows)
    return x, f32(cap.act.detach()), f32(grad)


def grad_cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
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

    Returns:
        ``[B, H, W]`` maps upsampled to the input size.

    Example:
        >>> maps = cs.explain.grad_cam(model, x, target=[281, 5], layer="layer4")
    """
    x, act, grad = _layer_gradient(model, inputs, target, layer, "grad_cam")
    weights = grad.mean(dim=(2, 3))
    raw = torch.einsum("bk,bkhw->bhw", weights, act)
    return finish_map(raw, tuple(x.shape[-2:]), normalize, x.dtype)


def grad_cam_pp(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19): ``relu(sum_k w_k A_k)`` with

    ``alpha_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` and ``w_k = sum_ij alpha_kij relu(g_kij)``,
    where ``g = dS/dA``. Only a zero denominator is guarded (alpha = 0 there); no epsilon is added,
    so the map follows the formula at any gradient scale.

    Args and returns as :func:`grad_cam`.
    """
    x, act, grad = _layer_gradient(model, inputs, target, layer, "grad_cam_pp")
    g2 = grad * grad
    g3 = g2 * grad
    denom = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
    nonzero = denom != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, 1.0), 0.0)
    weights = (alpha * grad.clamp(min=0)).sum(dim=(2, 3))
    raw = torch.einsum("bk,bkhw->bhw", weights, act)
    return finish_map(raw, tuple(x.shape[-2:]), normalize, x.dtype)


def _classifier_on_gap(
    model: nn.Module, x: Tensor, name: str, module: nn.Module
) -> tuple[Tensor, Any, nn.Linear]:
    """Forward once; return the layer output, the model output and the final ``nn.Linear``."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    with Recorder(linears, value=lambda out: None) as called:
        cap = forward_capture(model, x, name, module, grad_from_layer=False)
    assert cap.act is not None
    c = cap.act.shape[1]
    fc = linears[split_call(list(called.store)[-1])[0]] if called.store else None
    if fc is None or fc.in_features != c:
        found = (
            f"its last nn.Linear takes {fc.in_features} features"
            if fc is not None
            else "it calls no nn.Linear"
        )
        raise NotApplicableError(
            f"CAM needs a model of the form features -> global average pooling -> one linear "
            f"classifier (Zhou et al. 2016), with the features taken at layer {name!r} "
            f"({c} channels), but {found}. Use cs.explain.grad_cam instead (it equals CAM on "
            "such models), or pass layer= the map that feeds the global pooling."
        )
    return cap.act, cap.output, fc


def cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
) -> Tensor:
    """CAM (Zhou et al. 2016): ``M_c = sum_k W_ck A_k`` for a GAP + linear classifier.

    Applies only to models whose output is ``W @ mean_ij(A) + b`` for the layer's map ``A``
    (torchvision ResNets with ``layer="layer4"``/None). This is checked on the batch itself:
    otherwise a :class:`~convscope.errors.ModelError` says so and suggests Grad-CAM.

    Args and returns as :func:`grad_cam` (the target callable, if any, must return ``[B, K]``
    class scores, since CAM reads the class's row of ``W``).
    """
    check_model(model)
    x = check_inputs(inputs)
    spec = TargetSpec(target, x.shape[0])
    with prepared(model):
        name, module = choose_layer(model, x, layer, "cam")
        act, output, fc = _classifier_on_gap(model, x, name, module)
        spec.resolve(output)
    if spec.classes is None:
        raise NotApplicableError(
            "CAM needs a class per image: pass target=None, an int, B ints, or a callable "
            "returning [B, K] class scores (not [B] scores)."
        )
    scores = f32(spec.scores(output).detach())
    act = f32(act)
    cls = spec.classes.to(act.device)
    w = fc.weight.detach()[cls].to(act.dtype)  # [B, C], float32 for reduced precision
    bias = fc.bias.detach()[cls].to(act.dtype) if fc.bias is not None else 0.0
    closed = (act.mean(dim=(2, 3)) * w).sum(dim=1) + bias
    low = x.dtype in (torch.float16, torch.bfloat16)  # the model's own sums were rounded
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
    raw = torch.einsum("bk,bkhw->bhw", w, act)
    return finish_map(raw, tuple(x.shape[-2:]), normalize, x.dtype)


def score_cam(
    model: nn.Module,
    inputs: Tensor,
    target: Target = None,
    layer: Layer = None,
    normalize: bool = True,
    batch_size: int | None = None,
    quiet: bool = False,
) -> Tensor:
    """Score-CAM (Wang et al. 2020): weight each channel by the score of the input it masks.

    For every image and channel ``k`` of the layer, the mask ``H_k`` is ``A_k`` upsampled
    (bilinear) to the input size and min-max scaled to [0, 1]; ``x * H_k`` is scored by the model
    (the target's logit, or a callable target's score). The channel weights are the softmax over
    channels of these scores and the map is ``sum_k w_k A_k`` (as pytorch-grad-cam computes it).
    A constant channel gives an all-zero mask; its score (the model's score of a black image for
    the image's target) is computed once per image.

    Masked inputs are built and scored ``batch_size`` at a time, so memory stays bounded
    (``batch_size`` masked images, not ``B * C``; by default as many as make 1 Mi input values,
    at least 16 and at most 256: 16 at 3 x 224 x 224, 85 at 3 x 64 x 64). On the CPU they are fed
    in channels-last memory format, which is faster for convolutions and changes the scores only
    by floating-point rounding.

    Args:
        model, inputs, target, layer, normalize: as :func:`grad_cam`.
        batch_size: masked inputs per forward pass (None: automatic, see above).
        quiet: hide the progress bar (shown for runs longer than two seconds).

    Returns:
        ``[B, H, W]`` maps upsampled to the input size.
    """
    check_model(model)
    x = check_inputs(inputs)
    b, c_in, h, w = x.shape
    batch_size = positive_int(batch_size, "batch_size", allow_none=True)
    if batch_size is None:
        batch_size = max(16, min(256, 2**20 // (c_in * h * w)))
    spec = TargetSpec(target, b)
    with prepared(model), torch.no_grad():
        name, module = choose_layer(model, x, layer, "score_cam")
        cap = forward_capture(model, x, name, module, grad_from_layer=False)
        spec.resolve(cap.output)
        act = cap.act
        assert act is not None
        k = act.shape[1]
        flat = act.flatten(2)
        constant = flat.amax(dim=2) == flat.amin(dim=2)  # [B, K]: zero masks
        scores = torch.empty(b, k, dtype=torch.float32, device=x.device)
        if bool(constant.any()):  # all-zero masks: score a black image once per such image
            rows = constant.any(dim=1).nonzero()[:, 0]
            zero = torch.zeros_like(x[rows])
            zero_scores = torch.zeros(b, dtype=torch.float32, device=x.device)
            zero_scores[rows] = spec.scores(run_forward(model, zero), rows=rows).float()
            scores[constant] = zero_scores[:, None].expand(b, k)[constant]
        pairs = (~constant).nonzero()  # [N, 2]: (image, channel)
        fmt = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
        bar = tqdm(
            total=int(pairs.shape[0]), disable=quiet, delay=2.0, desc="score_cam", unit="mask",
            leave=False,
        )
        try:
            for sl in chunks(pairs.shape[0], batch_size):
                chunk = pairs[sl]
                img, ch = chunk[:, 0], chunk[:, 1]
                masks = minmax(upsample(f32(act[img, ch][:, None]), (h, w), align_corners=True))
                masked = (x[img] * masks.to(x.dtype)).contiguous(memory_format=fmt)
                with torch.inference_mode():
                    s = spec.scores(run_forward(model, masked), rows=img).float()
                scores[img, ch] = s
                bar.update(int(chunk.shape[0]))
        finally:
            bar.close()
        weights = scores.softmax(dim=1)  # float32, as the reductions below
        raw = torch.einsum("bk,bkhw->bhw", weights, f32(act))
    return finish_map(raw, (h, w), normalize, x.dtype)
