"""Capture what layers compute: outputs (and inputs) of chosen modules in one forward pass.

Keys are module paths (``"layer4.1.conv2"``). A module that runs more than once in one forward
(torchvision's ``BasicBlock`` calls its ``relu`` twice) gives ``"path"``, ``"path:2"``, ... — the
same names as the nodes of :func:`convscope.model.graph`. Captured tensors are detached copies:
later in-place operations (an in-place ReLU after a batch norm, ``out += identity``) cannot change
them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import InputError, LayerNotFoundError, ModelError
from ..nn import (
    INPUT_SUFFIX,
    LayerSpec,
    Recorder,
    as_args,
    call_key,
    check_model,
    copy_tensors,
    forward,
    layer_path,
    model_device,
    positive_int,
    resolve_layers,
    restore_mode,
    split_call,
)

__all__ = [
    "capture",
    "capture_first",
    "capture_inputs",
    "default_feature_layer",
    "collect_features",
    "recording",
    "Recording",
]

def _specs(spec: Any) -> list[Any]:
    if spec is None:
        return []
    if isinstance(spec, (str, type, nn.Module)) or callable(spec):
        return [spec]
    try:
        return list(spec)
    except TypeError:
        return [spec]  # resolve_layers explains what is accepted


def _selection(
    model: nn.Module, spec: Any, default_leaves: bool
) -> tuple[dict[str, nn.Module], Callable[[str], bool]]:
    """Modules to hook for ``spec`` and a filter on result keys (``path:k`` picks one call)."""
    if spec is None:
        mods = resolve_layers(model, None, default_leaves=default_leaves)
        return mods, lambda key: True
    specs = _specs(spec)
    calls = {s for s in specs if isinstance(s, str) and split_call(s)[0] != s}
    whole = [s for s in specs if s not in calls]
    whole_mods = resolve_layers(model, whole) if whole else {}
    call_mods = resolve_layers(model, [split_call(s)[0] for s in calls]) if calls else {}
    keys = {s if split_call(s)[1] != 1 else split_call(s)[0] for s in calls}

    def keep(key: str) -> bool:
        return split_call(key)[0] in whole_mods or key in keys

    mods = {n: m for n, m in model.named_modules() if n in whole_mods or n in call_mods}
    return mods, keep


#: What :func:`recording` yields (:class:`convscope.nn.Recorder`): ``store`` fills during each
#: forward pass; call :meth:`~convscope.nn.Recorder.reset` between passes.
Recording = Recorder


def recording(
    model: nn.Module,
    outputs_of: dict[str, nn.Module],
    inputs_of: dict[str, nn.Module] | None = None,
    *,
    clone: bool = True,
    detach: bool = True,
) -> Recorder:
    """Context manager: forward hooks on the given modules fill ``rec.store`` during every
    forward pass run inside the block; all hooks are removed on exit, also on error. Output keys
    are module paths (``path:k`` for the k-th call), input keys ``path:input`` (``path:input:k``)
    holding the module's first tensor argument. ``clone`` stores copies (safe from later in-place
    ops); ``detach`` cuts them from the autograd graph."""
    return Recorder(outputs_of, inputs_of=inputs_of,
                    value=lambda v: copy_tensors(v, clone=clone, detach=detach))


def _run_capture(
    model: nn.Module,
    inputs: Any,
    outputs_of: dict[str, nn.Module],
    inputs_of: dict[str, nn.Module],
    *,
    eval: bool,
    no_grad: bool,
    clone: bool,
) -> dict[str, Any]:
    args = as_args(inputs)
    grad_ctx = torch.no_grad() if no_grad else contextlib.nullcontext()
    with grad_ctx, restore_mode(model, True if eval else None), recording(
        model, outputs_of, inputs_of, clone=clone, detach=no_grad
    ) as rec:
        forward(model, args, "capture")
    return rec.store


def capture(
    model: nn.Module,
    inputs: Any,
    layers: Any = None,
    *,
    inputs_of: Any = None,
    eval: bool = True,
    no_grad: bool = True,
    clone: bool = True,
) -> dict[str, torch.Tensor]:
    """Outputs of chosen layers, from one forward pass of ``inputs``.

    Args:
        model: the network.
        inputs: ``[B, C, H, W]`` tensor (or a tuple of forward arguments).
        layers: module path(s) (``"layer1.0.conv1"``, ``"layer1.0.relu:2"`` for a second call),
            an ``nn.Module`` subclass (``nn.Conv2d``: every conv), a predicate
            ``(name, module) -> bool``, or a list of those. ``None``: every leaf module — unless
            ``inputs_of`` is given, then no outputs.
        inputs_of: the same kinds of selection; for those modules the *input* (first tensor
            argument) is captured under ``"path:input"``. ``inputs_of="fc"`` gives the features
            the classifier sees.
        eval: run in eval mode (the model's train/eval flags are restored afterwards).
        no_grad: run under ``torch.no_grad()`` and detach the results; ``False`` keeps them in
            the autograd graph (gradients flow through them; ``clone=False`` returns the very
            tensors the model computed, e.g. to register tensor hooks on them).
        clone: store copies, safe from later in-place ops (``out += identity``, in-place ReLU).

    Returns:
        ``{name: tensor}`` in execution order; a module that returns a tuple or dict gives that
        structure. A module called k times gives ``name``, ``name:2``, ... ``name:k``.

    Raises:
        LayerNotFoundError (with close names) for an unknown layer, ModelError / InputError when
        the forward fails (naming the layer). No hook is left on the model in any case.
    """
    check_model(model)
    as_args(inputs)
    outs, keep_out = _selection(model, layers, default_leaves=inputs_of is None)
    ins, keep_in = _selection(model, inputs_of, default_leaves=False)
    store = _run_capture(model, inputs, outs, ins, eval=eval, no_grad=no_grad, clone=clone)
    result = {}
    for key, value in store.items():
        if INPUT_SUFFIX in key:
            if keep_in(key.replace(INPUT_SUFFIX, "")):
                result[key] = value
        elif keep_out(key):
            result[key] = value
    return result


def capture_first(model: nn.Module, inputs: Any, layer: LayerSpec) -> Any:
    """The output of the first call of module ``layer`` (a module path, ``path:k`` for the k-th
    call, the module, or a type / predicate matching one module) from a forward pass in eval mode without gradients that **stops there**: the
    layers after it do not run, so an early layer of a deep network costs a fraction of a full
    pass. The value is the one :func:`capture` gives for that key.

    Raises:
        LayerNotFoundError for an unknown layer; ModelError / InputError when the forward fails;
        InputError when the layer did not run.
    """
    check_model(model)
    args = as_args(inputs)
    path, k = split_call(layer_path(model, layer))
    module = dict(model.named_modules())[path]
    key = call_key(path, k)
    rec = Recorder({path: module}, keys={key}, stop=True,
                   value=lambda v: copy_tensors(v, clone=False, detach=True))
    with torch.no_grad(), restore_mode(model, True), rec:
        rec.run(forward, model, args, "capture")
    if key not in rec.store:
        raise InputError(f"layer {layer!r} ran {rec.counts.get(path, 0)} time(s) in the forward "
                         f"pass, not {k}: choose a layer the forward pass uses.")
    return rec.store[key]


def capture_inputs(
    model: nn.Module, inputs: Any, layers: Any, *, eval: bool = True, no_grad: bool = True
) -> dict[str, torch.Tensor]:
    """Inputs (first tensor argument) of the chosen modules, keyed by module path:
    ``capture_inputs(model, x, "fc")["fc"]`` is what the classifier sees, ``[B, 512]`` for a
    ResNet-18."""
    check_model(model)
    if layers is None:
        raise LayerNotFoundError(
            "capture_inputs needs layers=...: the module(s) whose input to capture, e.g. 'fc' "
            "(see default_feature_layer(model))."
        )
    got = capture(model, inputs, inputs_of=layers, eval=eval, no_grad=no_grad)
    return {k.replace(INPUT_SUFFIX, ""): v for k, v in got.items()}


def default_feature_layer(model: nn.Module, inputs: Any = None) -> str:
    """Path of the model's final ``nn.Linear`` (its input is the default embedding feature).

    Without ``inputs`` the last ``nn.Linear`` in registration order is chosen; with ``inputs`` the
    last one *executed* in a forward pass (robust to unusual registration order).

    Raises:
        LayerNotFoundError: the model has no ``nn.Linear``; pass a layer explicitly then.
    """
    check_model(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LayerNotFoundError(
            f"{type(model).__name__} has no nn.Linear layer, so there is no default feature layer; "
            "pass layer='<module path>' (e.g. the global pooling layer) explicitly."
        )
    if inputs is None:
        return linears[-1]
    got = capture(model, inputs, nn.Linear)
    executed = [split_call(k)[0] for k in got]
    return executed[-1] if executed else linears[-1]


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        x = batch.get("image", batch.get("input", batch.get("x")))
        y = batch.get("label", batch.get("target", batch.get("y")))
        if x is None:
            raise InputError(
                "a dict batch needs an 'image', 'input' or 'x' key for the inputs; got keys "
                f"{sorted(batch)}."
            )
        return x, y
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise InputError(
        f"cannot read a batch of type {type(batch).__name__}: the loader should yield (x, y) pairs "
        "or tensors."
    )


def collect_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: str | None = None,
    *,
    max_items: int | None = None,
    pool: str | None = None,
    quiet: bool = False,
    eval: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a data loader through the model and collect one feature vector per item.

    Args:
        model: the network.
        loader: yields ``(x [B, C, H, W], y [B])`` pairs (or tensors, or dicts with
            ``image``/``label``).
        layer: ``None`` (the input of :func:`default_feature_layer`), a module path (that module's
            output, flattened to ``[B, D]``), or ``"path:input"`` (that module's input).
        max_items: stop after this many items.
        pool: ``"avg"`` or ``"max"`` over the spatial dimensions before flattening (for conv
            outputs ``[B, C, H, W]`` -> ``[B, C]``); ``None`` flattens as is.
        quiet: hide the tqdm progress bar.

    Returns:
        ``(features [N, D], labels [N])`` on the loader's device (``labels`` is ``None`` when
        the loader yields no labels).
    """
    from tqdm.auto import tqdm

    check_model(model)
    if pool not in (None, "avg", "max"):
        raise InputError(f"pool must be None, 'avg' or 'max', got {pool!r}.")
    max_items = positive_int(max_items, "max_items", allow_none=True)
    if layer is not None and not isinstance(layer, str):
        raise LayerNotFoundError(
            f"layer must be None or a module path string, got {type(layer).__name__}; "
            "pass e.g. layer='fc:input' (see model.named_modules())."
        )
    if layer is None:
        layer = default_feature_layer(model) + INPUT_SUFFIX
    want_input = layer.endswith(INPUT_SUFFIX)
    path = layer[: -len(INPUT_SUFFIX)] if want_input else layer
    mods = resolve_layers(model, path)
    key = path + INPUT_SUFFIX if want_input else path
    device = model_device(model)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    n = 0
    total = None
    if max_items is None:
        try:
            total = len(loader.dataset)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):
            total = None
    else:
        total = max_items
    bar = tqdm(total=total, disable=quiet, desc=f"features {layer}", unit="item")
    try:
        with torch.no_grad(), restore_mode(model, True if eval else None), recording(
            model, {} if want_input else mods, mods if want_input else {}, clone=False
        ) as rec:
            for batch in loader:
                if max_items is not None and n >= max_items:
                    break
                x, y = _split_batch(batch)
                args = as_args(x)
                src_device = args[0].device if isinstance(args[0], torch.Tensor) else device
                args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
                rec.reset()
                forward(model, args, "feature collection")
                store = rec.store
                if key not in store:
                    raise ModelError(
                        f"layer {path!r} did not run during the forward pass, so it has no "
                        "features; choose a layer the forward pass uses."
                    )
                f = store[key]
                if not isinstance(f, torch.Tensor):
                    raise ModelError(
                        f"layer {layer!r} gives a {type(f).__name__}, not a tensor; choose "
                        "another layer."
                    )
                if pool is not None and f.dim() > 2:
                    f = f.flatten(2)
                    f = f.mean(2) if pool == "avg" else f.amax(2)
                f = f.reshape(f.shape[0], -1)
                take = f.shape[0] if max_items is None else min(f.shape[0], max_items - n)
                feats.append(f[:take].to(src_device))
                if y is not None:
                    y = torch.as_tensor(y)
                    labels.append(y[:take].to(src_device))
                n += take
                bar.update(take)
    finally:
        bar.close()
    if not feats:
        raise InputError("the loader yielded no batches, so there are no features to collect.")
    return torch.cat(feats), (torch.cat(labels) if labels else None)
