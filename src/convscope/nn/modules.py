"""What a model is made of: the model check, DDP / ``torch.compile`` unwrapping, module paths,
and the ONE layer specification convscope accepts wherever it takes a layer.

A layer specification is a module path (``"layer4.1.conv2"``, ``""`` for the whole model,
``"layer1.0.relu:2"`` for a module's second call in one forward), the module object itself, an
``nn.Module`` subclass (every module of that type), a predicate ``(name, module) -> bool``, or a
list mixing those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import LayerNotFoundError, ModelError, suggest

__all__ = [
    "LayerSpec",
    "call_key",
    "check_model",
    "is_leaf",
    "layer_path",
    "leaf_modules",
    "model_device",
    "module_names",
    "resolve_layer",
    "resolve_layers",
    "split_call",
    "unwrap",
]

#: What a ``layer=`` / ``layers=`` argument accepts: a module path (``path:k`` for the k-th
#: call), a module of the model, an ``nn.Module`` subclass, a predicate ``(name, module) ->
#: bool``, or a list mixing those.
LayerSpec = (
    str
    | nn.Module
    | type
    | Callable[[str, nn.Module], bool]
    | Iterable[str | nn.Module | type | Callable[[str, nn.Module], bool]]
)

_CALL_RE = re.compile(r"^(.*):(\d+)$")
_WRAPPERS = ("DistributedDataParallel", "DataParallel", "OptimizedModule")


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


def unwrap(model: nn.Module) -> nn.Module:
    """The wrapped module of DDP / DataParallel / torch.compile wrappers (names without
    ``module.`` or ``_orig_mod.``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module) and type(model).__name__ in _WRAPPERS:
            model = inner
        else:
            return model


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
    """The device of the model's first parameter (or buffer); the CPU for a model without."""
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


def call_key(path: str, k: int) -> str:
    """The name of the ``k``-th call of module ``path``: ``path`` for the first, ``path:k``
    after (the inverse of :func:`split_call`)."""
    return path if k == 1 else f"{path}:{k}"


def _specs(layers: Any) -> list[Any]:
    if isinstance(layers, (str, type, nn.Module)) or callable(layers):
        return [layers]
    try:
        return list(layers)
    except TypeError:
        raise LayerNotFoundError(
            f"layers must be a module path, a module of the model, an nn.Module subclass, a "
            f"predicate (name, module) -> bool, or a list of those; got {type(layers).__name__}."
        ) from None


def _names_of(model: nn.Module, named: dict[str, nn.Module], spec: Any) -> list[str]:
    """Paths (in model order; a ``path:k`` spec kept as given) that one spec names."""
    if isinstance(spec, str):
        path, _ = split_call(spec)
        if path not in named:
            raise LayerNotFoundError(
                f"no layer named {spec!r} in {type(model).__name__}."
                + suggest(path, [n for n in named if n])
                + " Pass a module path as listed by model.named_modules()."
            )
        return [spec]
    if isinstance(spec, nn.Module):
        hits = [n for n, m in named.items() if m is spec]
        if not hits:
            raise LayerNotFoundError(
                f"the {type(spec).__name__} module passed as a layer is not part of the model; "
                "pass a module of this model or its path, e.g. layer='layer4'."
            )
        return hits[:1]
    if isinstance(spec, type):
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
        return hits
    if callable(spec):
        return [n for n, m in named.items() if spec(n, m)]
    raise LayerNotFoundError(
        f"cannot use {spec!r} to choose layers: pass a module path, a module of the model, an "
        "nn.Module subclass or a predicate (name, module) -> bool."
    )


def resolve_layers(
    model: nn.Module, layers: Any, *, default_leaves: bool = True
) -> dict[str, nn.Module]:
    """Turn a layer specification into ``{path: module}`` (in model order; a ``path:k`` entry
    is reported under its ``path``).

    ``layers`` may be ``None`` (every leaf module when ``default_leaves``) or any
    :data:`LayerSpec`. Unknown names raise :class:`LayerNotFoundError` with the closest names.
    """
    if layers is None:
        return leaf_modules(model) if default_leaves else {}
    named = dict(model.named_modules())
    chosen: set[str] = set()
    for spec in _specs(layers):
        chosen.update(split_call(n)[0] for n in _names_of(model, named, spec))
    return {n: m for n, m in named.items() if n in chosen}


def layer_path(model: nn.Module, layer: Any, *, whole: bool = True) -> str:
    """The name of the ONE layer a specification picks: its module path, with ``:k`` kept when
    the spec is ``"path:k"``. A type or predicate must match exactly one module; ``whole=False``
    refuses ``""`` (the model itself). Raises :class:`LayerNotFoundError` otherwise."""
    named = dict(model.named_modules())
    hits = list(dict.fromkeys(n for spec in _specs(layer) for n in _names_of(model, named, spec)))
    if not whole and hits == [""]:
        raise LayerNotFoundError(
            f"the model has no layer named ''.{suggest('', [n for n in named if n])} Layer names "
            "are module paths as listed by model.named_modules(), or pass layer=None to choose "
            "automatically."
        )
    if len(hits) != 1:
        shown = ", ".join(repr(h) for h in hits[:8]) or "none"
        raise LayerNotFoundError(
            f"this argument takes one layer, but {layer!r} names {len(hits)} modules ({shown}); "
            "pass one module path, e.g. layer='layer4'."
        )
    return hits[0]


def resolve_layer(model: nn.Module, layer: Any, *, whole: bool = True) -> tuple[str, nn.Module]:
    """``(module path, module)`` of the one layer ``layer`` picks (see :func:`layer_path`; a
    ``path:k`` spec gives ``path``)."""
    path = split_call(layer_path(model, layer, whole=whole))[0]
    return path, dict(model.named_modules())[path]
