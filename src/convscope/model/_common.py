"""Shared plumbing for ``convscope.model``: checking arguments, running a forward pass with
errors translated into :class:`~convscope.errors.ConvscopeError` subclasses, restoring the
model's train/eval mode, and resolving layer specifications to module paths.

Nothing here is public API; the public functions live in ``graph``, ``capture`` and ``profile``.
"""

from __future__ import annotations

import contextlib
import numbers
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from ..errors import ConvscopeError, InputError, LayerNotFoundError, ModelError, suggest

__all__ = [
    "LayerSpec",
    "as_args",
    "check_args",
    "check_finite",
    "check_model",
    "flat_tensors",
    "forward",
    "is_leaf",
    "leaf_modules",
    "model_device",
    "module_names",
    "positive_int",
    "preserved",
    "resolve_layers",
    "restore_mode",
    "shape_of",
    "split_call",
]

#: What a ``layers=`` argument accepts: a module path, an ``nn.Module`` subclass, a predicate
#: ``(name, module) -> bool``, or a list mixing those.
LayerSpec = (
    str
    | type
    | Callable[[str, nn.Module], bool]
    | Iterable[str | type | Callable[[str, nn.Module], bool]]
)

_CALL_RE = re.compile(r"^(.*):(\d+)$")


def check_model(model: Any, what: str = "model") -> nn.Module:
    """Raise :class:`ModelError` unless ``model`` is an ``nn.Module`` whose parameters and
    buffers hold data (none on the ``meta`` device)."""
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{what} must be a torch.nn.Module, got {type(model).__name__}. Pass the network "
            "itself (e.g. torchvision.models.resnet18(weights=None)), not its state_dict or output."
        )
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise ModelError(
                f"{what} has tensors on the meta device (first: {name!r}), which hold no values "
                "to compute with. Materialise it first: model.to_empty(device='cpu') and then "
                "model.load_state_dict(...) (or re-create it without device='meta')."
            )
    return model


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


#: The advice given when a model's output (or a layer's) is NaN or infinite.
NONFINITE_MODEL_FIX = (
    "Check the weights (all(torch.isfinite(p).all() for p in model.parameters())), the input "
    "scale, and reduced-precision overflow (run in float32: model.float(), x.float()); "
    "cs.diagnose(model, x) names the first layer with NaN/inf."
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


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors inside a nested structure of tuples, lists, dicts and dataclass-like pytrees."""
    leaves, _ = tree_flatten(obj)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def shape_of(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape]


def is_leaf(module: nn.Module) -> bool:
    """A leaf module has no child modules (Conv2d, BatchNorm2d, ReLU, Linear, ...)."""
    return next(iter(module.children()), None) is None


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Map every sub-module to its path (the first path when a module is registered twice)."""
    names: dict[nn.Module, str] = {}
    for name, mod in model.named_modules():
        names.setdefault(mod, name)
    return names


def leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: module}`` of every leaf module, in registration order. A model that is itself a
    leaf (say a bare ``nn.Conv2d``) is returned under the name ``""``."""
    return {name: mod for name, mod in model.named_modules() if is_leaf(mod)}


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def split_call(name: str) -> tuple[str, int]:
    """``"layer1.0.relu:2"`` -> ``("layer1.0.relu", 2)``; a plain path gets call number 1."""
    m = _CALL_RE.match(name)
    if m:
        return m.group(1), int(m.group(2))
    return name, 1


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


@contextlib.contextmanager
def preserved(
    model: nn.Module, eval_mode: bool | None = None, *, freeze: bool = False
) -> Iterator[None]:
    """The one way convscope borrows a user's model: whatever happens inside the block (also an
    error), the model leaves it as it came in.

    Saved and restored: every sub-module's ``training`` flag, every parameter's
    ``requires_grad`` and ``.grad``, the running statistics of every normalisation layer
    (``running_mean``, ``running_var``, ``num_batches_tracked`` of batch / instance norms) and
    the hooks (any forward/backward hook added inside the block and still registered is
    removed).

    Args:
        model: the user's network.
        eval_mode: ``True`` puts it in eval mode, ``False`` in train mode, ``None`` leaves it.
        freeze: set ``requires_grad=False`` on every parameter inside the block (no parameter
            gradients are computed; autograd records only what the input/layer gradients need).
    """
    modules = list(model.modules())
    modes = [(m, m.training) for m in modules]
    params = list(model.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    stats: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        for m in modules:
            if isinstance(m, nn.modules.batchnorm._NormBase):
                for bname, buf in m.named_buffers(recurse=False):
                    if buf is not None:
                        stats.append((m, bname, buf, buf.detach().clone()))
    hooks = [(m, {d: set(getattr(m, d, {}) or {}) for d in _HOOK_DICTS}) for m in modules]
    try:
        if eval_mode is True:
            model.eval()
        elif eval_mode is False:
            model.train()
        if freeze:
            for p in params:
                p.requires_grad_(False)
        yield
    finally:
        for m, flag in modes:
            m.training = flag
        for p, flag, grad in flags:
            p.requires_grad_(flag)
            p.grad = grad
        with torch.no_grad():
            for m, bname, buf, saved in stats:
                m._buffers[bname] = buf
                if not torch.equal(buf, saved):
                    buf.copy_(saved)
        for m, before in hooks:
            for d, keys in before.items():
                table = getattr(m, d, None)
                if table:
                    for key in [k for k in table if k not in keys]:
                        del table[key]


def restore_mode(model: nn.Module, eval_mode: bool | None) -> contextlib.AbstractContextManager:
    """Put ``model`` in eval (``True``) or train (``False``) mode, or leave it (``None``), and
    restore it afterwards, even on error: see :func:`preserved` (modes, ``requires_grad``,
    normalisation statistics, hooks)."""
    return preserved(model, eval_mode)


def resolve_layers(
    model: nn.Module, layers: Any, *, default_leaves: bool = True
) -> dict[str, nn.Module]:
    """Turn a layer specification into ``{path: module}`` (in model order).

    ``layers`` may be ``None`` (every leaf module when ``default_leaves``), a module path
    (``"layer4.1.conv2"``, ``""`` for the whole model, ``"layer1.0.relu:2"`` for a module's second
    call), an ``nn.Module`` subclass (every module of that type), a predicate
    ``(name, module) -> bool``, or a list of those. Unknown names raise
    :class:`LayerNotFoundError` with the closest names.
    """
    named = dict(model.named_modules())
    if layers is None:
        return leaf_modules(model) if default_leaves else {}
    specs: list[Any]
    if isinstance(layers, (str, type)) or callable(layers) and not isinstance(layers, nn.Module):
        specs = [layers]
    elif isinstance(layers, nn.Module):
        specs = [layers]
    else:
        try:
            specs = list(layers)
        except TypeError:
            raise LayerNotFoundError(
                f"layers must be a module path, an nn.Module subclass, a predicate "
                f"(name, module) -> bool, or a list of those; got {type(layers).__name__}."
            ) from None
    chosen: set[str] = set()
    for spec in specs:
        if isinstance(spec, str):
            path, _ = split_call(spec)
            if path not in named:
                raise LayerNotFoundError(
                    f"no layer named {spec!r} in {type(model).__name__}."
                    + suggest(path, [n for n in named if n])
                    + " Pass a module path as listed by model.named_modules()."
                )
            chosen.add(path)
        elif isinstance(spec, nn.Module):
            hits = [n for n, m in named.items() if m is spec]
            if not hits:
                raise LayerNotFoundError(
                    f"the {type(spec).__name__} module passed in layers is not part of the model; "
                    "pass a module of this model or its path."
                )
            chosen.add(hits[0])
        elif isinstance(spec, type):
            if not issubclass(spec, nn.Module):
                raise LayerNotFoundError(
                    f"layer type {spec.__name__} is not an nn.Module subclass; pass e.g. nn.Conv2d."
                )
            hits = [n for n, m in named.items() if isinstance(m, spec)]
            if not hits:
                types = sorted({type(m).__name__ for m in named.values()})
                raise LayerNotFoundError(
                    f"{type(model).__name__} has no {spec.__name__} module; its module types are "
                    f"{', '.join(types)}."
                )
            chosen.update(hits)
        elif callable(spec):
            chosen.update(n for n, m in named.items() if spec(n, m))
        else:
            raise LayerNotFoundError(
                f"cannot use {spec!r} to choose layers: pass a module path, an nn.Module subclass "
                "or a predicate (name, module) -> bool."
            )
    return {n: m for n, m in named.items() if n in chosen}


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
    exc: BaseException, model: nn.Module, args: tuple[Any, ...], action: str = "forward"
) -> ModelError | InputError:
    """Turn an exception raised inside ``model``'s forward into a ConvscopeError naming the
    layer where it happened."""
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
        return InputError(
            f"the {action} of {type(model).__name__} failed {loc} on inputs "
            f"[{describe_inputs(args)}]: {text}.{hint} Check the inputs' shape, dtype and device "
            "against what the model was built for."
        )
    return ModelError(
        f"the {action} of {type(model).__name__} failed {loc}: {text}. Make sure "
        f"model(*inputs) runs on its own before handing the model to convscope."
    )


def forward(model: nn.Module, args: tuple[Any, ...], action: str = "forward") -> Any:
    """``model(*args)``, with any exception turned into a ConvscopeError that names the layer."""
    try:
        return model(*args)
    except (InputError, ModelError):
        raise
    except Exception as exc:
        err = translate_error(exc, model, args, action)
        raise err from exc
