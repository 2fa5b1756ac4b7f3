"""``diagnose``: Wang & Li (2020)'s analysis procedure, from a model and inputs (or from stored
activations) to a :class:`~convscope.diagnose.report.Report`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConvscopeError, InputError, ModelError
from ..nn import grid_layout
from .cluster import MAX_CHANNELS
from .report import Report
from .rules import (
    STAGES,
    explain_zero_weights,
    output_findings,
    param_findings,
    profile_findings,
)
from .stats import MAX_ELEMENTS, LayerStats, ParamStats, output_stats, param_stats
from .thresholds import Thresholds

__all__ = [
    "diagnose",
    "diagnose_activations",
    "diagnose_checkpoint",
    "default_layers",
    "finish_report",
    "choose_params",
    "is_activation",
    "has_weights",
]

_PARAM_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an activation function module: everything in
    ``torch.nn.modules.activation`` (``nn.ReLU``, ``nn.GELU``, ...) and its subclasses except
    softmax-like and attention modules, and the element-wise activations of other libraries'
    ``activations`` modules by name (timm's ``GELU``, ``Swish``, ``HardSwish``, ...)."""
    for cls in type(module).__mro__:
        if cls.__module__ == "torch.nn.modules.activation":
            name = cls.__name__
            return not (name.startswith("Softmax") or name.startswith("LogSoftmax")
                        or name in ("MultiheadAttention", "Softmin", "Softmax2d"))
    mod = type(module).__module__.rsplit(".", 1)[-1]
    return (mod.startswith("activation")
            and type(module).__name__.lower().rstrip("_") in _ACTIVATION_NAMES)


#: element-wise activations known by name in other libraries' ``activations`` modules
_ACTIVATION_NAMES = frozenset({
    "relu", "relu6", "leakyrelu", "prelu", "elu", "selu", "celu", "gelu", "gelutanh",
    "quickgelu", "silu", "swish", "mish", "sigmoid", "hardsigmoid", "tanh", "hardtanh",
    "hardswish", "softplus"})


def has_weights(module: nn.Module) -> bool:
    """Conv, transposed conv or linear module with a weight tensor."""
    return isinstance(module, _PARAM_TYPES) and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )


def _execution_order(model: nn.Module, args: tuple[Any, ...]) -> tuple[list[tuple[str, nn.Module]], Any]:
    """Leaf-module calls in execution order (``path`` or ``path:k``) and the model output,
    from one eval-mode, no-grad forward with hooks that keep nothing but names."""
    from ..nn import Recorder, forward, leaf_modules, restore_mode, split_call

    leaves = leaf_modules(model)
    with torch.no_grad(), restore_mode(model, True), Recorder(
        leaves, value=lambda out: isinstance(out, torch.Tensor)
    ) as rec:
        out = forward(model, args, "diagnosis")
    calls = [(key, leaves[split_call(key)[0]]) for key, is_tensor in rec.store.items() if is_tensor]
    return calls, out


def _nonfinite(output: Any) -> bool:
    """Whether the model output is a floating-point tensor holding NaN or infinity (then the
    output itself, under the name ``""``, is analysed too, so the report says so)."""
    return (isinstance(output, torch.Tensor) and output.is_floating_point()
            and not output.is_meta and not bool(torch.isfinite(output).all()))


def channels_first(x: torch.Tensor, reference: Any) -> tuple[torch.Tensor, str | None]:
    """A transformer-style layer output with its channels moved to dimension 1, as every
    statistic here expects, and a note saying so (None when ``x`` is left as it is).

    With an image ``reference`` ``[B, C, H, W]``, :func:`convscope.nn.grid_layout` reads ``x``:
    a channels-last grid ``[B, h, w, C]`` (Swin, ConvNeXt blocks) becomes ``[B, C, h, w]``, patch
    tokens ``[B, N, D]`` (ViT) become ``[B, D, N]`` -- D channels over N positions, class tokens
    kept, since they are units' activity too.
    """
    if not isinstance(reference, torch.Tensor) or reference.dim() != 4 or x.dim() not in (3, 4):
        return x, None
    layout = grid_layout(x, (int(reference.shape[2]), int(reference.shape[3])))
    if layout is None or layout.kind == "channels_first":
        return x, None
    if layout.kind == "channels_last":
        return layout.apply(x), (
            f"channels-last output {list(x.shape)} read as [B, C, h, w] (channels last dim).")
    return x.transpose(1, 2), (
        f"token output {list(x.shape)} read as {int(x.shape[2])} channels over "
        f"{int(x.shape[1])} token positions ({layout.describe()}).")


def default_layers(calls: list[tuple[str, nn.Module]]) -> list[str]:
    """Wang & Li (2020) analyse each layer's output *after* its activation. From leaf calls in
    execution order: every activation-module call, plus the conv / linear calls after the last
    activation (the head, e.g. the logits). A model without activation modules (``F.relu`` in
    ``forward``) gets every conv / linear call."""
    acts = [i for i, (_, m) in enumerate(calls) if is_activation(m)]
    if not acts:
        return [n for n, m in calls if has_weights(m)]
    last = acts[-1]
    return [n for i, (n, m) in enumerate(calls) if is_activation(m) or (i > last and has_weights(m))]


def _weights_of(value: Any) -> tuple[Any, torch.Tensor | None, bool | None]:
    """``(module or weight, bias, transposed)`` from the accepted forms of a params entry."""
    if isinstance(value, nn.Module):
        if not isinstance(getattr(value, "weight", None), torch.Tensor):
            raise InputError(f"{type(value).__name__} has no weight tensor to analyse.")
        return value, None, None
    if isinstance(value, torch.Tensor):
        return value, None, None
    if isinstance(value, Mapping):
        if "weight" not in value:
            raise InputError("a params entry given as a dict needs a 'weight' key.")
        return value["weight"], value.get("bias"), value.get("transposed")
    if isinstance(value, (tuple, list)) and len(value) in (1, 2, 3):
        w = value[0]
        b = value[1] if len(value) > 1 else None
        t = value[2] if len(value) > 2 else None
        return w, b, t
    raise InputError(
        f"cannot read weights from a {type(value).__name__}: give a module, a weight tensor, "
        "(weight, bias[, transposed]) or {'weight': ..., 'bias': ..., 'transposed': ...}."
    )


def choose_params(model: nn.Module, params: Any, chosen: Mapping[str, nn.Module] | None
                  ) -> dict[str, nn.Module]:
    """The weights to analyse: ``params=False`` none; ``None`` every conv / linear module when
    ``chosen`` (the explicitly chosen output layers, ``{call name: module}``) is None, else those
    among ``chosen``; otherwise the modules ``params`` names."""
    from ..nn import resolve_layers, split_call

    if params is False:
        return {}
    if params is None:
        if chosen is None:
            return {n: m for n, m in model.named_modules() if has_weights(m)}
        return {split_call(n)[0]: m for n, m in chosen.items() if has_weights(m)}
    return {n: m for n, m in resolve_layers(model, params).items() if has_weights(m)}


def finish_report(report: Report, layer_stats: list[LayerStats], param_list: list[ParamStats],
                  th: Thresholds) -> Report:
    """Apply the rules to the measured layers and weights and put the findings in Wang & Li (2020)'s
    order (stage, then layer order; the findings of one layer keep the rule order)."""
    findings = []
    for st in layer_stats:
        findings.extend(output_findings(st, th))
    for ps in param_list:
        findings.extend(param_findings(ps, th))
    findings.extend(profile_findings(param_list, th))
    findings = explain_zero_weights(findings, param_list)  # all-zero layers: not the activation
    pos = {st.name: i for i, st in enumerate(layer_stats)}
    ppos = {p.name: i for i, p in enumerate(param_list)}
    findings.sort(key=lambda f: (
        STAGES.index(f.stage),
        (ppos if "parameters" in f.stage else pos).get(f.layer, 0),
    ))
    report.findings = findings
    report.layers = layer_stats
    report.params = param_list
    return report


def diagnose_activations(
    activations: Mapping[str, torch.Tensor],
    params: Mapping[str, Any] | None = None,
    *,
    reference: torch.Tensor | None = None,
    types: Mapping[str, str] | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    abstraction: Mapping[str, str] | None = None,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    views: bool = False,
    max_channels: int = MAX_CHANNELS,
    max_elements: int = MAX_ELEMENTS,
    seed: int = 0,
    quiet: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> Report:
    """Diagnose from stored layer outputs and weights alone (no model, no forward pass).

    Args:
        activations: ``{layer: output}`` in execution order; outputs ``[B, C, H, W]`` or
            ``[B, F]`` (numpy arrays are accepted).
        params: ``{layer: weights}``: a module, a weight tensor (PyTorch layout), a tuple
            ``(weight, bias[, transposed])`` or a dict ``{"weight", "bias", "transposed"}``
            (``transposed=True`` for a transposed conv's ``[c_in, c_out, kh, kw]``).
        reference: ``[B, R, H, W]`` image the low-abstraction maps are compared with (the input
            of a classifier / discriminator, the output of a generator); also sets which maps
            count as low-abstraction. ``None``: the largest maps among ``activations`` set the
            scale and no similarity is measured.
        types: ``{layer: module class name}`` (e.g. ``"Tanh"``: saturation is measured).
        modules: ``{layer: module}``, an alternative source of the types.
        abstraction: ``{layer: "low" | "high"}`` to override the automatic level.
        thresholds: :class:`Thresholds` or a dict of overrides.
        views: also build :class:`~convscope.diagnose.views.OutputView` /
            :class:`~convscope.diagnose.views.ParamView` per layer (``report.output_views``,
            ``report.param_views``).
        max_channels, max_elements, seed: sampling of enormous layers (reported as ``sampled``).
        quiet: hide the progress bar.
        meta: extra entries for ``report.meta``.

    Returns:
        :class:`Report`.
    """
    from ..nn.budget import progress

    th = Thresholds.coerce(thresholds if not isinstance(thresholds, Mapping) else dict(thresholds))
    if not isinstance(activations, Mapping):
        raise InputError(
            f"activations must be a dict {{layer name: tensor}}, got {type(activations).__name__}."
        )
    params = dict(params or {})
    types = dict(types or {})
    modules = dict(modules or {})
    abstraction = dict(abstraction or {})
    for k, v in abstraction.items():
        if v not in ("low", "high"):
            raise InputError(f"abstraction[{k!r}] = {v!r}: use 'low' or 'high'.")
    t0 = time.perf_counter()
    ref = reference
    if ref is not None:
        ref = torch.as_tensor(ref)
        if ref.dim() != 4:
            raise InputError(
                f"reference must be an image batch [B, C, H, W], got shape {list(ref.shape)}."
            )
    size_ref = ref
    if size_ref is None:
        maps = [torch.as_tensor(a) for a in activations.values()
                if isinstance(a, torch.Tensor) and a.dim() == 4]
        if maps:
            biggest = max(maps, key=lambda a: min(a.shape[2], a.shape[3]))
            size_ref = torch.empty(0, 1, int(biggest.shape[2]), int(biggest.shape[3]))
    report = Report(thresholds=th, meta=dict(meta or {}))
    layer_stats: list[LayerStats] = []
    param_list: list[ParamStats] = []
    total = len(activations) + len(params)
    bar = progress(total, quiet=quiet, desc="diagnose", unit="layer")
    try:
        for order, (name, x) in enumerate(activations.items()):
            bar.set_postfix_str(name, refresh=False)
            mtype = types.get(name) or (type(modules[name]).__name__ if name in modules else "")
            if not isinstance(x, torch.Tensor):
                try:
                    x = torch.as_tensor(x)
                except (TypeError, ValueError, RuntimeError):
                    st = LayerStats(name=name, type=mtype, order=order, kind="other")
                    st.notes.append(
                        f"output is a {type(x).__name__}, not a tensor; not analysed."
                    )
                    layer_stats.append(st)
                    bar.update(1)
                    continue
            x, moved = channels_first(x, ref)
            level = abstraction.get(name)
            if level is None and x.dim() == 4 and size_ref is not None:
                side = min(int(size_ref.shape[2]), int(size_ref.shape[3]))
                level = "low" if min(x.shape[2], x.shape[3]) >= th.low_abstraction_min_scale * side \
                    else "high"
            sim_ref = ref if (ref is not None and x.dim() == 4) else None
            st, _ = output_stats(
                x, name=name, module_type=mtype, module=modules.get(name), order=order,
                reference=sim_ref, abstraction=level or "high", thresholds=th,
                max_channels=max_channels, max_elements=max_elements, seed=seed,
            )
            if moved:
                st.notes.append(moved)
            layer_stats.append(st)
            if views and st.kind in ("maps", "features") and x.numel():
                from .views import output_view

                report.output_views[name] = output_view(
                    x, name=name, module_type=mtype, reference=sim_ref, thresholds=th, seed=seed,
                    stats=st.to_dict(),
                )
            bar.update(1)
        for order, (name, value) in enumerate(params.items()):
            bar.set_postfix_str(name, refresh=False)
            w, b, transposed = _weights_of(value)
            if not isinstance(w, (torch.Tensor, nn.Module)):
                w = torch.as_tensor(w)
            if b is not None and not isinstance(b, torch.Tensor):
                b = torch.as_tensor(b)
            ps, _ = param_stats(
                w, b, name=name, order=order, transposed=transposed, thresholds=th,
                max_channels=max_channels, max_elements=max_elements, seed=seed,
            )
            param_list.append(ps)
            if views:
                from .views import param_view

                report.param_views[name] = param_view(
                    w, b, name=name, transposed=transposed, thresholds=th, seed=seed,
                    stats=ps.to_dict(),
                )
            bar.update(1)
    finally:
        bar.close()
    finish_report(report, layer_stats, param_list, th)
    report.meta.setdefault("reference_shape", list(ref.shape) if ref is not None else None)
    report.meta["seconds"] = time.perf_counter() - t0 + float(report.meta.get("seconds", 0.0))
    report.meta.setdefault("max_channels", max_channels)
    report.meta.setdefault("max_elements", max_elements)
    report.meta.setdefault("seed", seed)
    return report


def diagnose(
    model: nn.Module,
    inputs: Any,
    *,
    layers: Any = None,
    params: Any = None,
    reference: Any = "auto",
    thresholds: Thresholds | Mapping[str, float] | None = None,
    views: bool = False,
    max_channels: int = MAX_CHANNELS,
    max_elements: int = MAX_ELEMENTS,
    seed: int = 0,
    quiet: bool = False,
) -> Report:
    """Wang & Li's visual diagnosis of a CNN, as findings that name the layer, the evidence and
    the fix.

    One forward pass (eval mode, no gradients) captures the chosen layers' outputs; each output
    and each conv / linear weight is measured (dead channels, channel-tree merge heights, share
    near 0, scale, saturation, similarity to the image, weight distribution shape) and the rules
    turn the numbers into findings, in Wang & Li's order: low-abstraction outputs,
    high-abstraction outputs, conv parameters, dense parameters.

    Args:
        model: the network.
        inputs: ``[B, C, H, W]`` images (or ``[B, D]`` latent vectors for a generator; or a
            tuple of forward arguments). Use a batch of real data, at least a few dozen items:
            "dead" means dead over the batch.
        layers: outputs to analyse: module path(s) (``"layer1.0.relu1"``, ``"relu:2"``), a
            module type, a predicate ``(name, module) -> bool`` or a list. ``None``: every
            activation-module output plus the conv / linear outputs after the last activation
            (the head) — Wang & Li's "layer outputs".
        params: weights to analyse, same forms; ``None``: every conv / transposed conv / linear
            module when ``layers`` is None, else the conv / linear modules among ``layers``;
            ``False``: none.
        reference: image the low-abstraction maps are compared with: ``"auto"`` (the input when
            it is an image batch, else the model's output when that is one — a generator), a
            tensor ``[B, R, H, W]``, or ``None``.
        thresholds: :class:`Thresholds` or a dict of overrides (``{"dead_fraction": 0.5}``).
        views: also compute the figure data per layer (``report.output_views`` /
            ``report.param_views``).
        max_channels: layers with more channels are clustered on a seeded sample of this many
            (reported as a ``sampled`` note). max_elements: budget of values per clustering;
            longer channel vectors are cut to seeded positions (also reported).
        seed: seed of that sampling.
        quiet: hide the progress bar.

    Returns:
        :class:`Report` — ``print(report)``, ``report.findings``, ``report.to_frame()``,
        ``report.to_dict()``.

    Raises:
        ModelError / InputError when the forward pass fails; LayerNotFoundError (with close
        names) for unknown layers.
    """
    from ..model import capture
    from ..nn import as_args, check_model, split_call

    check_model(model)
    args = as_args(inputs)
    t0 = time.perf_counter()
    calls, output = _execution_order(model, args)
    if not calls:
        raise ModelError(
            f"{type(model).__name__} ran no leaf module returning a tensor; there is nothing to "
            "diagnose."
        )
    if layers is None:
        chosen = default_layers(calls)
        acts = capture(model, args, chosen) if chosen else {}
        acts = {k: v for k, v in acts.items() if k in set(chosen)}
    else:
        acts = capture(model, args, layers)
        if not acts:
            raise InputError(
                "none of the chosen layers ran during the forward pass; choose layers the "
                "forward pass uses (see cs.model.leaf_modules(model))."
            )
    if "" not in acts and _nonfinite(output):  # NaN/inf only at the output: still a finding
        acts[""] = output.detach()
    named = dict(model.named_modules())
    mods = {n: named[split_call(n)[0]] for n in acts}

    pmods = choose_params(model, params, None if layers is None else mods)

    ref = None
    ref_from = None
    if isinstance(reference, str):
        if reference != "auto":
            raise InputError(f"reference={reference!r}: use 'auto', a tensor [B, C, H, W] or None.")
        first = args[0] if isinstance(args[0], torch.Tensor) else None
        if first is not None and first.dim() == 4:
            ref, ref_from = first.detach(), "input"
        elif isinstance(output, torch.Tensor) and output.dim() == 4:
            ref, ref_from = output.detach(), "output"
    elif reference is not None:
        ref, ref_from = torch.as_tensor(reference), "given"

    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    meta = {
        "model": type(model).__name__,
        "input_shape": list(first.shape) if first is not None else None,
        "reference": ref_from,
        "layers": list(acts),
        "params": list(pmods),
        "seconds": time.perf_counter() - t0,
    }
    return diagnose_activations(
        acts, pmods, reference=ref, modules=mods, thresholds=thresholds, views=views,
        max_channels=max_channels, max_elements=max_elements, seed=seed, quiet=quiet, meta=meta,
    )


def diagnose_checkpoint(
    checkpoint: Any,
    model_fn: Any,
    inputs: Any,
    **kwargs: Any,
) -> Report:
    """Diagnose a saved model: ``model = model_fn()``, load ``checkpoint`` (a path to a
    ``torch.save`` d state dict, a state dict, or a dict holding one under ``"state_dict"`` /
    ``"model"`` / ``"model_state_dict"``), then :func:`diagnose` with ``kwargs``.

    Loading uses ``torch.load(weights_only=True)`` on the CPU, whose restricted unpickler builds
    tensors and plain containers only: a file holding a pickled module or other objects is
    refused (unpickling it would run code from the file), never executed."""
    if isinstance(checkpoint, Mapping):
        state = checkpoint
    else:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise InputError(f"no checkpoint file at {checkpoint!s}; pass the path of a file "
                             "saved with torch.save(model.state_dict(), path).") from None
        except (IsADirectoryError, PermissionError) as exc:
            raise InputError(f"cannot open the checkpoint {checkpoint!s} ({exc.strerror}): pass "
                             "the path of a readable file saved with "
                             "torch.save(model.state_dict(), path).") from None
        except Exception as exc:  # unpickling errors come in many types
            raise InputError(
                f"cannot read the checkpoint {checkpoint!s} as weights only "
                f"({str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}). It "
                "must hold tensors (a state dict), not a pickled module or other objects, which "
                "are not unpickled since that runs code from the file: save it with "
                "torch.save(model.state_dict(), path), or for a convscope run use "
                "cs.open_run(path).load_model()."
            ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise InputError(
            f"the checkpoint holds a {type(state).__name__}, not a state dict (parameter names "
            "-> tensors): pass one saved with torch.save(model.state_dict(), path).")
    try:
        model = model_fn()
    except ConvscopeError:
        raise
    except Exception as exc:
        raise ModelError(f"model_fn() failed ({type(exc).__name__}: {str(exc)[:300]}): pass a "
                         "callable that builds the architecture the checkpoint was saved from."
                         ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model_fn() must return an nn.Module, got {type(model).__name__}: pass "
                         "a callable that builds the model, e.g. lambda: cs.zoo.resnet().")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(
            f"the checkpoint does not fit the model built by model_fn: {exc}".split("\n")[0]
            + " Build the same architecture the checkpoint was saved from."
        ) from exc
    if isinstance(inputs, torch.Tensor):
        p = next(model.parameters(), None)
        if p is not None:
            inputs = inputs.to(p.device)
    return diagnose(model, inputs, **kwargs)
