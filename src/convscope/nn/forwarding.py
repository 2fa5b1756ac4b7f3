"""Running a user's model: argument checks, the NaN/inf check, and the one forward whose errors
name the failing layer."""

from __future__ import annotations

import numbers
import operator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import ConvscopeError, InputError, ModelError
from .modules import module_names

__all__ = [
    "NONFINITE_MODEL_FIX",
    "as_args",
    "check_args",
    "check_finite",
    "describe_inputs",
    "flat_tensors",
    "forward",
    "positive_int",
    "shape_of",
    "translate_error",
]

#: The advice given when a model's output (or a layer's) is NaN or infinite.
NONFINITE_MODEL_FIX = (
    "Check the weights (all(torch.isfinite(p).all() for p in model.parameters())), the input "
    "scale, and reduced-precision overflow (run in float32: model.float(), x.float()); "
    "cs.diagnose(model, x) names the first layer with NaN/inf."
)


def positive_int(value: Any, name: str, *, allow_none: bool = False) -> int | None:
    """``value`` as an ``int >= 1`` (``None`` passes when ``allow_none``); bools, floats such as
    ``2.5``, strings and numbers below 1 raise :class:`InputError`. The one check of every
    ``batch_size=``, ``k=``, ``steps=`` style argument."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, (bool, str, bytes)) and isinstance(value, numbers.Integral)
    if not ok and isinstance(value, torch.Tensor) and value.ndim == 0:
        ok = not value.is_floating_point() and value.dtype != torch.bool
    if not ok:
        extra = " or None" if allow_none else ""
        raise InputError(
            f"{name} must be a positive int{extra}, got {value!r} ({type(value).__name__}); "
            f"pass e.g. {name}=32."
        )
    n = operator.index(value)
    if n < 1:
        raise InputError(f"{name} must be a positive int (>= 1), got {n}; pass e.g. {name}=32.")
    return n


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors inside a nested structure of tuples, lists, dicts and dataclass-like pytrees."""
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def shape_of(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape]


def check_finite(
    value: Any,
    what: str,
    fix: str,
    error: type[ConvscopeError] = ModelError,
) -> None:
    """Raise ``error`` naming ``what`` and ``fix`` when a floating-point tensor in ``value`` (a
    tensor or a nested structure) holds NaN or infinity. The one NaN/inf check of convscope:
    NaN or inf outputs, gradients and maps are an error, never an all-zero map."""
    for t in flat_tensors(value):
        if not (t.is_floating_point() or t.is_complex()) or t.is_meta or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t).all()):
            n_nan = int(torch.isnan(t).sum())
            n_inf = int(torch.isinf(t).sum())
            raise error(
                f"{what} contains non-finite values ({n_nan} NaN, {n_inf} inf of {t.numel()} "
                f"values, shape {list(t.shape)}), so the result would be meaningless. {fix}"
            )


def check_args(args: tuple[Any, ...], name: str = "inputs") -> tuple[Any, ...]:
    """Check the tensors among forward arguments: none on the meta device, none with an empty
    first (batch) dimension, no NaN or infinity in floating-point ones. Raises
    :class:`InputError` saying what to do."""
    for t in flat_tensors(args):
        if t.is_meta:
            raise InputError(
                f"{name} include a tensor on the meta device (shape {list(t.shape)}), which holds "
                "no values; pass real data, e.g. torch.rand(...) or a batch from a DataLoader."
            )
        if t.ndim >= 1 and t.shape[0] == 0:
            raise InputError(
                f"{name} are an empty batch (shape {list(t.shape)}): there is nothing to "
                "analyse; pass at least one item."
            )
    check_finite(
        args, name,
        "Replace or drop the NaN/inf items (torch.nan_to_num, or filter with "
        "torch.isfinite(x).flatten(1).all(1)) before analysing them.",
        InputError,
    )
    return args


def as_args(inputs: Any) -> tuple[Any, ...]:
    """Normalise ``inputs`` to the positional-argument tuple handed to ``model(*args)``.

    A tensor becomes ``(tensor,)``; a tuple or list is used as the argument list. Anything else,
    an argument list without a single tensor, or tensors that :func:`check_args` refuses (meta
    device, empty batch, NaN/inf) raise :class:`InputError`.
    """
    if isinstance(inputs, torch.Tensor):
        return check_args((inputs,))
    if isinstance(inputs, (tuple, list)):
        args = tuple(inputs)
        if not any(isinstance(t, torch.Tensor) for t in flat_tensors(args)):
            raise InputError(
                "inputs hold no tensor: pass a tensor [B, C, H, W] or a tuple of forward arguments "
                "that contains tensors."
            )
        return check_args(args)
    raise InputError(
        f"inputs must be a tensor [B, C, H, W] or a tuple of forward arguments, got "
        f"{type(inputs).__name__}. Convert images with torchvision.transforms.ToTensor() and add "
        "a batch dimension with x.unsqueeze(0)."
    )


def _failing_module(tb: Any, names: dict[nn.Module, str]) -> tuple[str, nn.Module] | None:
    """The innermost module of the model on the traceback ``tb``, as ``(path, module)``."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        obj = frame.f_locals.get("self")
        if isinstance(obj, nn.Module) and obj in names:
            found = (names[obj], obj)
        tb = tb.tb_next
    return found


_SHAPE_WORDS = (
    "shape",
    "size",
    "dimension",
    "channels",
    "mat1 and mat2",
    "expected input",
    "expected 3d",
    "expected 4d",
    "must match",
    "input type",
    "dtype",
    "kernel size can't be greater",
    "output size is too small",
    "non-empty",
)


def _expectation(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        nd = len(module.kernel_size)
        spatial = ", ".join("HWD"[i] for i in range(nd))
        return f" It expects [B, {module.in_channels}, {spatial}]."
    if isinstance(module, nn.Linear):
        return f" It expects [..., {module.in_features}]."
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f" It expects {module.num_features} channels."
    return ""


def describe_inputs(args: tuple[Any, ...]) -> str:
    parts = []
    for a in args:
        if isinstance(a, torch.Tensor):
            parts.append(f"{list(a.shape)} {str(a.dtype).replace('torch.', '')}")
        else:
            parts.append(type(a).__name__)
    return ", ".join(parts)


def translate_error(
    exc: BaseException,
    model: nn.Module,
    args: tuple[Any, ...],
    action: str = "forward",
    error: type[ConvscopeError] | None = None,
) -> ConvscopeError:
    """Turn an exception raised inside ``model``'s forward into a ConvscopeError naming the
    layer where it happened: an :class:`InputError` when it reads like a shape / dtype mismatch,
    a :class:`ModelError` otherwise (always ``error`` when given)."""
    names = module_names(model)
    where = _failing_module(exc.__traceback__, names)
    if where is not None:
        path, mod = where
        loc = f"in layer {path!r} ({type(mod).__name__})" if path else f"in {type(mod).__name__}.forward"
        hint = _expectation(mod)
    else:
        loc, hint = "", ""
    text = f"{type(exc).__name__}: {exc}".strip()
    msg_l = str(exc).lower()
    if isinstance(exc, (RuntimeError, ValueError, IndexError, TypeError)) and any(
        w in msg_l for w in _SHAPE_WORDS
    ):
        return (error or InputError)(
            f"the {action} of {type(model).__name__} failed {loc} on inputs "
            f"[{describe_inputs(args)}]: {text}.{hint} Check the inputs' shape (the input size "
            "and channels), dtype and device against what the model was built for."
        )
    return (error or ModelError)(
        f"the {action} of {type(model).__name__} failed {loc}: {text}. Make sure "
        f"model(*inputs) runs on its own before handing the model to convscope."
    )


def forward(
    model: nn.Module,
    args: tuple[Any, ...],
    action: str = "forward",
    *,
    error: type[ConvscopeError] | None = None,
    finite: bool = False,
) -> Any:
    """``model(*args)``, with any exception turned into a ConvscopeError that names the layer
    (of class ``error`` when given, see :func:`translate_error`); with ``finite`` a NaN or
    infinite output raises :class:`ModelError` too (never an all-zero map)."""
    try:
        out = model(*args)
    except ConvscopeError:
        raise
    except Exception as exc:
        raise translate_error(exc, model, args, action, error) from exc
    if finite:
        check_finite(out, f"the output of {type(model).__name__}", NONFINITE_MODEL_FIX)
    return out
