"""What every method of :mod:`convscope.explain` shares on top of :mod:`convscope.nn`: the
input and ``target=`` checks, the automatic CAM layer, the layer capture and the map finish.

The public functions live in ``gradients``, ``cams`` and ``metrics``; ``registry`` is their table.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import numbers
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, LayerNotFoundError, ModelError, NotApplicableError, TargetError
from ..nn import (
    NONFINITE_MODEL_FIX,
    GridLayout,
    Recorder,
    check_args,
    check_finite,
    check_model,
    f32,
    flat_tensors,
    forward,
    grid_layout,
    handles,
    resolve_layer,
    split_call,
    upsample,
)
from ..nn import eval_frozen as prepared
from ..nn import minmax as scale

logger = logging.getLogger("convscope.explain")

#: What ``target=`` accepts: None (predicted class), one int for every image, B ints (a sequence or
#: a 1-D integer tensor), or a callable on the model output returning ``[B]`` scores or ``[B, K]``
#: class scores.
Target = None | int | Sequence[int] | Tensor | Callable[[Any], Tensor]
#: What ``layer=`` accepts: None (automatic) or a layer specification naming one module: its
#: module path (``"layer4.1.conv2"``), the module, a type or predicate matching one module.
Layer = None | str | nn.Module | type | Callable[[str, nn.Module], bool]


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def check_inputs(inputs: Any, name: str = "inputs") -> Tensor:
    """Return ``inputs`` detached; raise :class:`InputError` unless it is a float ``[B, C, H, W]``
    batch of at least one image, with real (not meta) finite values."""
    if not isinstance(inputs, Tensor):
        raise InputError(
            f"{name} must be a torch.Tensor of shape [B, C, H, W], got {type(inputs).__name__}; "
            "convert with torch.as_tensor(...) and stack images into one batch."
        )
    if inputs.is_meta:
        check_args((inputs,), name)
    if inputs.ndim != 4:
        hint = (
            " For a single image use x.unsqueeze(0)." if inputs.ndim == 3
            else " Pass one batch of images, e.g. torch.stack(images) or x.reshape(-1, C, H, W)."
        )
        raise InputError(
            f"{name} must have 4 dimensions [B, C, H, W], got shape {list(inputs.shape)}.{hint}"
        )
    if not inputs.is_floating_point():
        raise InputError(
            f"{name} must be a floating-point tensor, got dtype {inputs.dtype}; convert with "
            "x.float() (and scale/normalise it the way the model was trained)."
        )
    check_args((inputs,), name)  # empty batch, NaN/inf
    x = inputs.detach()
    if x.is_inference():  # made under torch.inference_mode(): autograd cannot use it
        with torch.inference_mode(False):
            x = x.clone()
    return x


def check_maps(maps: Any, inputs: Tensor, name: str = "maps") -> Tensor:
    """Return ``maps`` as ``[B, H, W]`` matching ``inputs``; raise :class:`InputError` otherwise."""
    if not isinstance(maps, Tensor):
        raise InputError(f"{name} must be a torch.Tensor [B, H, W], got {type(maps).__name__}.")
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    b, _, h, w = inputs.shape
    if maps.ndim != 3 or tuple(maps.shape) != (b, h, w):
        raise InputError(
            f"{name} must have shape [B, H, W] = {[b, h, w]} to match inputs {list(inputs.shape)}, "
            f"got {list(maps.shape)}; reduce attributions with cs.explain.to_heatmap(...) and "
            "upsample with torch.nn.functional.interpolate to the input size."
        )
    check_finite(maps, name, "Compute the maps from finite inputs and a finite model.",
                 InputError)
    return maps.detach().to(device=inputs.device, dtype=inputs.dtype)


# --------------------------------------------------------------------------------------------
# targets
# --------------------------------------------------------------------------------------------
def _target_entry_ok(e: Any) -> bool:
    if isinstance(e, Tensor):
        return e.ndim == 0 and not e.is_floating_point() and not e.is_complex() \
            and e.dtype != torch.bool
    return isinstance(e, numbers.Integral) and not isinstance(e, bool) \
        and type(e).__name__ != "bool_"


def check_target(target: Any, batch: int) -> None | Callable[[Any], Tensor] | Tensor:
    """The one check of ``target=``: ``None``, a callable, or a CPU ``long`` tensor ``[batch]``.

    Raises :class:`TargetError` for a bool (``True`` is not class 1), a string (``'cat'``), a
    float, a nested or ragged list, or the wrong number of entries. Ranges are checked against
    the model output by :meth:`TargetSpec.resolve`.
    """
    if target is None:
        return None
    if callable(target) and not isinstance(target, Tensor):
        return target
    if isinstance(target, (str, bytes)):
        raise TargetError(
            f"target must be a class index (int), B ints or a callable, got the string "
            f"{target!r}; map class names to indices first, e.g. target=classes.index('cat')."
        )
    if isinstance(target, bool) or type(target).__name__ == "bool_":
        raise TargetError(f"target must be a class index, got {target!r}; pass an int.")
    if isinstance(target, numbers.Integral):
        return torch.full((batch,), int(target), dtype=torch.long)
    if isinstance(target, (Tensor, Sequence)) or hasattr(target, "__array__"):
        if isinstance(target, Sequence) and not isinstance(target, Tensor):
            bad = [e for e in target if not _target_entry_ok(e)]
            if bad:
                raise TargetError(
                    f"target entries must be class indices (ints), got {bad[0]!r} "
                    f"({type(bad[0]).__name__}) in {list(target)[:8]!r}; pass e.g. [3, 7, 1, 0] "
                    "(a bool is not a class index: True is not class 1)."
                )
        try:
            t = torch.as_tensor(target) if not isinstance(target, Tensor) else target.detach()
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TargetError(
                f"target cannot be read as class indices ({exc}); pass one int or a list of "
                f"{batch} ints."
            ) from None
        if t.is_meta:
            raise TargetError("target is a meta-device tensor with no values; pass real ints.")
        if t.ndim == 0:
            t = t.expand(batch)
        if t.ndim != 1 or t.numel() != batch:
            raise TargetError(
                f"target has {t.numel()} entries (shape {list(t.shape)}) but the batch has "
                f"{batch} images; pass one int for all images or exactly {batch} ints."
            )
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TargetError(
                f"target must hold integer class indices, got dtype {t.dtype}; "
                "pass e.g. [3, 7, 1, 0] or torch.tensor([...], dtype=torch.long)."
            )
        return t.to(torch.long).cpu()
    raise TargetError(
        f"target must be None, an int, a sequence of {batch} ints or a callable on the "
        f"model output; got {type(target).__name__}. pass e.g. target=3 or target=None (the "
        "predicted class)."
    )


class TargetSpec:
    """Turns ``target=`` into per-image scores of a model output.

    After :meth:`resolve` on the output for the original batch, ``classes`` holds one class index
    per image (``None`` when a callable target returns ``[B]`` scores directly).
    """

    def __init__(self, target: Target, batch: int) -> None:
        self.batch = batch
        self.fn: Callable[[Any], Tensor] | None = None
        self.fixed: Tensor | None = None
        self.classes: Tensor | None = None
        checked = check_target(target, batch)
        if isinstance(checked, Tensor):
            self.fixed = checked
        elif checked is not None:
            self.fn = checked

    # -- helpers -------------------------------------------------------------------------
    def _class_scores(self, output: Any) -> Tensor:
        """The ``[N, K]`` (or ``[N]`` for a callable returning scores) tensor to pick from."""
        if self.fn is not None:
            value = self.fn(output)
            if not isinstance(value, Tensor) or value.ndim not in (1, 2):
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise TargetError(
                    f"a callable target must return a tensor of [B] scores or [B, K] class "
                    f"scores, got {got}; e.g. target=lambda out: out['logits']."
                )
            check_finite(value, "the scores the callable target returned",
                         NONFINITE_MODEL_FIX)
            return value
        if not isinstance(output, Tensor):
            raise TargetError(
                f"the model returns a {type(output).__name__}, not a [B, K] tensor of class "
                "scores; pass a callable target that picks the scores, e.g. "
                "target=lambda out: out[0] (tuple) or target=lambda out: out['logits'] (dict)."
            )
        if output.ndim != 2:
            raise TargetError(
                f"the model output has shape {list(output.shape)}, expected [B, K] class scores; "
                "pass a callable target returning [B] scores or [B, K] class scores, e.g. "
                "target=lambda out: out.flatten(2).mean(-1)."
            )
        return output

    def resolve(self, output: Any) -> None:
        """Fix the class per image from the output of the original batch (checks ranges)."""
        scores = self._class_scores(output)
        if scores.shape[0] != self.batch:
            raise TargetError(
                f"the target scores have {scores.shape[0]} rows but the batch has {self.batch} "
                "images; a callable target must keep the batch dimension first."
            )
        if scores.ndim == 1:
            if self.fixed is not None:  # pragma: no cover - fn and fixed are exclusive
                raise TargetError("internal: fixed classes with [B] scores")
            self.classes = None
            return
        k = scores.shape[1]
        if self.fixed is None:
            self.classes = scores.detach().argmax(dim=1).cpu()
        else:
            bad = (self.fixed < 0) | (self.fixed >= k)
            if bool(bad.any()):
                first = int(self.fixed[bad][0])
                raise TargetError(
                    f"target class {first} is out of range: the model has {k} classes "
                    f"(valid: 0..{k - 1}); pass indices in that range or target=None for the "
                    "predicted class."
                )
            self.classes = self.fixed
        self.classes = self.classes.to(scores.device)

    def scores(self, output: Any, rows: Tensor | None = None) -> Tensor:
        """Per-row target scores ``[N]``; ``rows`` maps each output row to its image index."""
        values = self._class_scores(output)
        if values.ndim == 1:
            return values
        if self.classes is None:
            raise TargetError(
                "the callable target returned [B] scores for the original batch but [N, K] "
                "class scores now; make it return the same form every time."
            )
        cls = self.classes if rows is None else self.classes[rows.to(self.classes.device)]
        return values.gather(1, cls.to(values.device).view(-1, 1)).squeeze(1)

    def probabilities(self, output: Any, rows: Tensor | None = None) -> Tensor:
        """Softmax probability of the target class (callable ``[B]`` scores are used as is)."""
        values = self._class_scores(output)
        if values.ndim == 1:
            return values
        if self.classes is None:
            raise TargetError("internal: probabilities() before resolve()")
        cls = self.classes if rows is None else self.classes[rows.to(self.classes.device)]
        probs = values.float().softmax(dim=1)  # float32: fp16 softmax loses small probabilities
        return probs.gather(1, cls.to(values.device).view(-1, 1)).squeeze(1)


# --------------------------------------------------------------------------------------------
# model state
# --------------------------------------------------------------------------------------------
def run_forward(model: nn.Module, inputs: Tensor) -> Any:
    """Call the model (:func:`convscope.nn.forward`): its exceptions become a
    :class:`ModelError` naming the failing layer; a NaN or infinite output is a
    :class:`ModelError` too (never an all-zero map)."""
    return forward(model, (inputs,), error=ModelError, finite=True)


# --------------------------------------------------------------------------------------------
# precision: a float32 copy of a half-precision model
# --------------------------------------------------------------------------------------------
HALF = (torch.float16, torch.bfloat16)
PRECISIONS = ("auto", "float32", "model")
_COPIES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, nn.Module]] = \
    weakref.WeakKeyDictionary()
_REUSE = [0]  # depth of reuse_float32_copies() blocks


def half_bytes(model: nn.Module) -> int:
    """Bytes a float32 copy of the model's float16 / bfloat16 parameters and buffers takes
    (0: nothing to upcast)."""
    return sum(4 * t.numel() for t in (*model.parameters(), *model.buffers()) if t.dtype in HALF)


def check_precision(precision: Any) -> str:
    """Raise :class:`InputError` unless ``precision`` is one of :data:`PRECISIONS`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise InputError(
            f"precision must be one of {list(PRECISIONS)}, got {precision!r}: 'auto' (default) "
            "runs a float16/bfloat16 model's backward on a float32 copy when it fits, 'float32' "
            "always does, 'model' runs the model in its own dtype."
        )
    return precision


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device)
                 for t in (*model.parameters(), *model.buffers()))


def _float32_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose float16 / bfloat16 parameters, buffers and tensor attributes
    are float32 (the same values: both convert to float32 exactly), in their memory format and
    on their device. Other tensors share storage with the model; hooks are shared (the copy runs
    what the model would), never deep-copied (a hook bound to a writer is not duplicated). The
    model itself is not touched."""
    memo: dict[int, Any] = {}
    for t in (*model.parameters(), *model.buffers()):
        memo[id(t)] = t  # shared by the deep copy; replaced in the copy below
    for m in model.modules():
        for key, value in vars(m).items():
            if "hook" in key and isinstance(value, dict):
                for fn in value.values():
                    memo[id(fn)] = fn
            elif isinstance(value, Tensor) and id(value) not in memo:
                # a tensor attribute (weight_norm's computed `weight` is no graph leaf, which
                # deepcopy refuses): detached, float32 if half
                v = value.detach()
                memo[id(value)] = v.to(torch.float32) if v.dtype in HALF else v
    twin = copy.deepcopy(model, memo)
    new: dict[int, Tensor] = {}  # tied weights stay tied

    def convert(t: Tensor, param: bool) -> Tensor:
        if id(t) not in new:
            v = t.detach()
            v = v.to(torch.float32) if v.dtype in HALF else v
            new[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if param else v
        return new[id(t)]

    for m in twin.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = convert(p, True)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = convert(b, False)
    return twin


def float32_model(model: nn.Module) -> nn.Module:
    """The model to run a float32 backward on: a float32 copy of a float16 / bfloat16 model
    (see :func:`_float32_copy`), made once per call -- or once while the model's weights stay
    the same, inside :func:`reuse_float32_copies` -- and ``model`` itself when it has nothing to
    upcast."""
    if not half_bytes(model):
        return model
    if _REUSE[0]:
        key = _fingerprint(model)
        hit = _COPIES.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        twin = _float32_copy(model)
        _COPIES[model] = (key, twin)
        return twin
    return _float32_copy(model)


@contextlib.contextmanager
def reuse_float32_copies() -> Iterator[None]:
    """Inside the block, the float32 copy of a half-precision model is made once and reused by
    every call (a data-set pass: three input-space methods per batch) while the model's weights
    are unchanged (same tensors, same in-place version); it is dropped when the outermost block
    ends."""
    _REUSE[0] += 1
    try:
        yield
    finally:
        _REUSE[0] -= 1
        if not _REUSE[0]:
            _COPIES.clear()


def upcast(model: nn.Module, precision: str) -> bool:
    """Whether ``precision`` (checked) runs ``model`` as a float32 copy: never for ``"model"``
    or a model with no float16 / bfloat16 tensors; always for ``"float32"``; for ``"auto"``
    unless the copy would take more than half of the free memory of the model's CUDA device
    (then the model runs in its own dtype, with a warning naming ``precision=``)."""
    need = half_bytes(model) if check_precision(precision) != "model" else 0
    if not need:
        return False
    if precision == "float32":
        return True
    device = next((t.device for t in model.parameters() if t.dtype in HALF), None)
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free // 2:
            logger.warning(
                "a float32 copy of the model (%.0f MB) does not fit in half of the free GPU "
                "memory (%.0f MB): the backward runs in the model's own dtype; pass "
                "precision='float32' to force the copy.", need / 2**20, free / 2**20)
            return False
    return True


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------
def _is_feature_map(t: Any) -> bool:
    return isinstance(t, Tensor) and t.ndim == 4 and t.shape[2] * t.shape[3] > 1


def patch_size(model: nn.Module) -> int | None:
    """The model's patch size when it declares one (torchvision ``VisionTransformer.patch_size``,
    timm ``patch_embed.patch_size``) and it is square; None otherwise."""
    for owner in (model, getattr(model, "patch_embed", None)):
        p = getattr(owner, "patch_size", None) if owner is not None else None
        if isinstance(p, (tuple, list)) and len(p) == 2 and p[0] == p[1]:
            p = p[0]
        if isinstance(p, numbers.Integral) and not isinstance(p, bool) and int(p) > 0:
            return int(p)
    return None


def prefix_tokens(model: nn.Module) -> int | None:
    """The model's count of leading non-patch tokens when it declares one (timm's
    ``num_prefix_tokens``: class token plus register or distillation tokens); None otherwise."""
    p = getattr(model, "num_prefix_tokens", None)
    if isinstance(p, numbers.Integral) and not isinstance(p, bool) and int(p) >= 0:
        return int(p)
    return None


def layer_layout(model: nn.Module, inputs: Tensor, act: Any) -> GridLayout | None:
    """How a layer output ``act`` for ``inputs`` reads as ``[B, D, h, w]``
    (:func:`convscope.nn.grid_layout` with the model's patch size and prefix tokens); None if it
    cannot."""
    return grid_layout(act, tuple(inputs.shape[-2:]), patch_size(model),
                       prefix=prefix_tokens(model))


_AUTO_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[str, GridLayout]]] = \
    weakref.WeakKeyDictionary()
_REPORTED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()


def _probe_scores(output: Any, features: Any) -> list[Tensor]:
    """Scalars that probe which layers the output depends on: the top class's score of the first
    image (``[B, K]`` scores; else the sum of the first output tensor), then a fixed random
    projection of the classifier's input (the last ``nn.Linear``'s), for heads that start at zero
    (torchvision's ViT) and so make every gradient of the score zero."""
    probes = []
    first = output if isinstance(output, Tensor) else next(iter(flat_tensors(output)), None)
    if isinstance(first, Tensor) and first.is_floating_point() and first.requires_grad:
        probes.append(first[0, int(first[0].detach().argmax())] if first.ndim == 2
                      else first.float().sum())
    if isinstance(features, Tensor) and features.is_floating_point() and features.requires_grad:
        gen = torch.Generator().manual_seed(0)
        r = torch.randn(features[:1].shape, generator=gen).to(features.device)
        probes.append((features[:1].float() * r).sum())
    return probes


def _rearranges(t: Tensor, prev: Tensor) -> bool:
    """``t`` is ``prev``'s data in another shape (a permute or view layer), not ``prev`` itself."""
    return (t is not prev and t.numel() == prev.numel()
            and t.untyped_storage().data_ptr() == prev.untyped_storage().data_ptr())


def _depended_on(seen: list[tuple[str, Tensor, GridLayout]], scores: list[Tensor]) -> int:
    """Index of the last spatial output whose positions (class tokens excluded) the first probe
    score that depends on any of them depends on: in a ViT, the patch tokens after the last
    block's attention reach the class token no more. The last output if none does."""
    for score in scores:
        end, step = len(seen), 2
        while end > 0:  # from the end in growing chunks: a few backward passes, bounded memory
            idx = [i for i in range(max(0, end - step), end) if seen[i][1].requires_grad]
            grads = torch.autograd.grad(score, [seen[i][1] for i in idx], retain_graph=True,
                                        allow_unused=True) if idx else ()
            for i, g in reversed(list(zip(idx, grads, strict=True))):
                if g is not None and bool((seen[i][2].apply(g) != 0).any()):
                    return i
            end, step = end - step, step * 4
    return len(seen) - 1


def _preferred(seen: list[tuple[str, Tensor, GridLayout]], modules: dict[str, nn.Module],
               size: tuple[int, int]) -> list[tuple[str, Tensor, GridLayout]]:
    """The candidates a user would name: outputs that are a grid of the input (not an attention
    matrix or per-head queries read as a map) and not a ``nn.Linear``'s (a transformer block's
    query/key/value projection or MLP hidden layer: timm's ``attn.qkv`` would otherwise win over
    the block's ``norm1``). All of ``seen`` when none is left."""
    kept = [s for s in seen
            if not isinstance(modules.get(s[0]), nn.Linear)
            and (s[2].kind != "channels_first" or grid_layout(s[1], size, strict=True))]
    return kept or seen


def _auto(model: nn.Module, x: Tensor) -> tuple[str, GridLayout]:
    key = (tuple(x.shape[1:]), x.dtype, x.device.type, tuple(id(m) for m in model.modules()))
    cache = _AUTO_CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    size, patch, prefix = tuple(x.shape[-2:]), patch_size(model), prefix_tokens(model)
    # an nn.Identity (timm's norm_pre, final_conv, q_norm, ... stand-ins) returns another
    # layer's output (or the input): that layer is the one to name
    modules = {name: module for name, module in model.named_modules()
               if name and not isinstance(module, nn.Identity)}

    def keep(out: Any) -> Any:
        layout = grid_layout(out, size, patch, prefix=prefix)
        return None if layout is None else (out, layout)

    linears = {n: m for n, m in modules.items() if isinstance(m, nn.Linear)}
    with prepared(model), torch.inference_mode(False), torch.enable_grad(), \
            Recorder(modules, value=keep) as rec, \
            Recorder({}, inputs_of=linears, value=lambda t: t) as fed:
        probe = x[:1].clone().requires_grad_(True)  # not an inference tensor, even in one
        output = run_forward(model, probe)
        scores = _probe_scores(output, list(fed.store.values())[-1] if fed.store else None)
        seen = [(split_call(k)[0], v[0], v[1]) for k, v in rec.store.items() if v is not None]
        if not seen:
            raise NotApplicableError(
                "no layer of the model outputs a spatial map -- [B, C, h, w], channels-last "
                f"[B, h, w, C] or patch tokens [B, N, D] -- for inputs of shape {list(x.shape)}; "
                "pass layer=... naming a convolutional layer, or use larger inputs."
            )
        seen = _preferred(seen, modules, size)
        pick = _depended_on(seen, scores)
        while pick > 0 and _rearranges(seen[pick][1], seen[pick - 1][1]):
            pick -= 1  # Swin: its final `norm`, not the `permute` after it
    cache[key] = (seen[pick][0], seen[pick][2])
    return cache[key]


def auto_layer(model: nn.Module, inputs: Tensor) -> str:
    """Module path of the layer CAM methods use when ``layer=None``.

    It is the last module (in execution order, the model itself excluded) with a spatial output
    -- a feature map ``[B, C, h, w]`` with ``h * w > 1``, a channels-last ``[B, h, w, C]`` grid or
    a sequence of patch tokens ``[B, N, D]`` (see :func:`convscope.nn.grid_layout`) -- on which the
    top class's score depends at some position (class tokens excluded); a layer that only permutes
    the previous one's output yields to it. For torchvision ResNets it is ``'layer4'``, for
    ConvNeXt ``'features'`` (the output of its last stage), for Swin ``'norm'`` (the last stage's
    norm) and for a ViT the last encoder block's first LayerNorm,
    ``'encoder.layers.encoder_layer_11.ln_1'`` in ``vit_b_16`` (the layers after it reach the
    class token only through the class token itself). Found by a forward and backward pass of the
    first image in eval mode (the model's mode and ``requires_grad`` are restored); the answer is
    cached per model and input shape.

    Args:
        model: the network.
        inputs: ``[B, C, H, W]`` (only ``inputs[:1]`` is run).

    Returns:
        The module path, usable as ``layer=``.
    """
    check_model(model)
    return _auto(model, check_inputs(inputs))[0]


def choose_layer(model: nn.Module, inputs: Tensor, layer: Layer, method: str) -> tuple[str, nn.Module]:
    """Resolve ``layer=`` (reporting an automatic choice) to ``(path, module)``."""
    if layer is not None:
        return resolve_layer(model, layer, whole=False)
    name, layout = _auto(model, inputs)
    msg = (
        f"{method}: layer=None -> using {name!r} ({layout.describe()}; the last layer with a "
        "spatial output that the top score depends on); pass layer=... to choose another."
    )
    reported = _REPORTED.setdefault(model, set())
    if name not in reported:
        reported.add(name)
        logger.warning(msg)
    else:
        logger.info(msg)
    return resolve_layer(model, name, whole=False)


def check_feature_map(name: str, act: Any, layout: GridLayout | None = None) -> Tensor:
    """Raise unless a layer output reads as a spatial map (``layout``, from
    :func:`layer_layout`; without one: a ``[B, C, h, w]`` map with h*w > 1): a layer that was not
    called raises :class:`LayerNotFoundError`, any other output :class:`InputError`."""
    if act is None:
        raise LayerNotFoundError(
            f"layer {name!r} was not called during the model's forward pass; choose a layer "
            "that the forward uses (see model.named_modules()) or layer=None."
        )
    if layout is None and not _is_feature_map(act):
        shape = list(act.shape) if isinstance(act, Tensor) else type(act).__name__
        raise InputError(
            f"layer {name!r} outputs {shape}, not a spatial feature map -- [B, C, h, w] with "
            "h*w > 1, channels-last [B, h, w, C], or patch tokens [B, N, D] with N = h*w (plus "
            "leading class tokens) for a grid that fits the input -- so it has no map to show; "
            "choose a convolutional layer before the global pooling ('layer4' in a ResNet), "
            "the last block's 'ln_1' in a ViT, or layer=None."
        )
    return act


@dataclass
class Capture:
    """The target layer's output of the last forward (``act``, as the layer returned it), how it
    reads as ``[B, D, h, w]`` (``layout``) and the model output."""

    act: Tensor | None = None
    output: Any = None
    layout: GridLayout | None = None


def forward_capture(
    model: nn.Module, x: Tensor, name: str, module: nn.Module, grad_from_layer: bool
) -> Capture:
    """Forward ``x`` recording the output of ``module`` (its last call).

    With ``grad_from_layer`` the forward runs without autograd up to the layer; the layer output
    becomes a leaf that requires grad and autograd records only the rest of the network, so
    ``torch.autograd.grad(score, cap.act)`` touches nothing before the layer. The module returns a
    copy of its output, so in-place operations after it (``ReLU(inplace=True)``) cannot change the
    captured activation. ``cap.layout`` reshapes ``cap.act`` and its gradient to ``[B, D, h, w]``
    (tokens to the grid, class tokens dropped; channels-last permuted); it is logged at INFO level
    when it is not the identity.
    """
    cap = Capture()

    def hook(mod: nn.Module, args: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            cap.act = output
            return None
        if grad_from_layer:
            torch.set_grad_enabled(True)  # restored by the enclosing no_grad() on exit
            leaf = output.detach().requires_grad_(True)
            cap.act = leaf
            return leaf.clone()
        cap.act = output.detach()
        return output.clone()

    with handles() as hs, torch.no_grad():
        hs.append(module.register_forward_hook(hook))
        cap.output = run_forward(model, x)
    cap.layout = layer_layout(model, x, cap.act) if isinstance(cap.act, Tensor) else None
    cap.act = check_feature_map(name, cap.act, cap.layout)
    if cap.layout is None:  # a 4-D map that is no grid of the input: as it is
        cap.layout = GridLayout("channels_first", tuple(cap.act.shape[2:]))
    elif cap.layout.kind != "channels_first":
        logger.info("layer %r: %s", name, cap.layout.describe())
    return cap


# --------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------
def layer_grad_check(grad: Tensor, name: str) -> Tensor:
    """Raise :class:`ModelError` when the gradient at layer ``name`` is NaN or infinite."""
    check_finite(grad, f"the gradient of the target score at {name}", NONFINITE_MODEL_FIX)
    return grad


def finish_map(
    raw: Tensor, size: tuple[int, int], normalize: bool, dtype: torch.dtype | None = None
) -> Tensor:
    """``[B, h, w]`` -> ``[B, H, W]``: ReLU, bilinear upsampling, per-image min-max to [0, 1],
    computed in (at least) float32 and returned in ``dtype`` (default: ``raw``'s dtype).

    With ``normalize=False`` only the upsampling is applied (sign and shared scale kept).
    A NaN or infinite map raises :class:`ModelError`.
    """
    dtype = raw.dtype if dtype is None else dtype
    raw = f32(raw)
    check_finite(raw, "the attribution map", NONFINITE_MODEL_FIX)
    if normalize:
        raw = raw.clamp(min=0)
    up = upsample(raw, size)
    if not normalize:
        if dtype in (torch.float16, torch.bfloat16) and not bool(
            torch.isfinite(up.to(dtype)).all()
        ):
            raise ModelError(
                f"the raw map's values (up to {float(up.abs().max()):.3g}) overflow {dtype}; "
                "use normalize=True or run the model in float32 (model.float(), x.float())."
            )
        return up.to(dtype)
    return minmax(up).to(dtype)


def minmax(maps: Tensor) -> Tensor:
    """Per-image min-max scaling of ``[B, ...]`` to [0, 1]; a constant map becomes all zeros.

    Computed in float32 for reduced-precision maps and returned in the maps' dtype; NaN or
    infinite values raise :class:`InputError` (min-max would silently turn them into 0).
    """
    check_finite(maps, "the maps to scale", "Pass finite maps (see torch.isfinite).",
                 InputError)
    return scale(maps)
