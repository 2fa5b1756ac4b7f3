"""Objectives for activation maximisation: small composable values, in the spirit of lucent.

An :class:`Objective` maps the activations captured in one forward pass (``{layer: tensor}``) to
one value per batch item, ``[N]``. Objectives compose with arithmetic::

    obj = channel("layer3", 5) + 0.5 * neuron("layer2", 7)     # weighted sum
    obj = -channel("layer3", 5)                                 # minimise instead of maximise

A *unit* argument is either one index used for every batch item, or a sequence with one entry per
batch item: ``channel("layer3", [4, 9, 11])`` maximises channel 4 in image 0, 9 in image 1 and 11
in image 2. That is how :func:`~convscope.features.maximize` optimises many units as one batch:
in eval mode the batch items never interact, so each image only sees its own unit's gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError, TargetError

__all__ = ["Objective", "channel", "neuron", "class_logit", "OUTPUT"]

#: The "layer" name of the model's own output (the logits of a classifier).
OUTPUT = ""

Acts = dict[str, Tensor]
Shapes = dict[str, tuple[int, ...]]


class Objective:
    """A differentiable score per batch item.

    Args:
        fn: ``acts -> [N]`` where ``acts`` maps layer names to the captured outputs ``[N, ...]``.
        layers: the layers ``fn`` reads (``""`` is the model output).
        name: a readable description (shown in reprs and progress bars).
        check: optional ``shapes -> None`` that raises a ConvscopeError when the objective does
            not fit the layers' output shapes (``{layer: (N, C, ...)}``), e.g. a channel index out
            of range. :func:`~convscope.features.maximize` calls it once before optimising.
    """

    def __init__(
        self,
        fn: Callable[[Acts], Tensor],
        layers: Sequence[str],
        name: str = "objective",
        check: Callable[[Shapes], None] | None = None,
    ) -> None:
        self.fn = fn
        self.layers: tuple[str, ...] = tuple(dict.fromkeys(layers))
        self.name = name
        self._checks: tuple[Callable[[Shapes], None], ...] = (check,) if check else ()

    def __call__(self, acts: Acts) -> Tensor:
        return self.fn(acts)

    def check(self, shapes: Shapes) -> None:
        """Raise when the objective does not fit the captured output shapes."""
        for c in self._checks:
            c(shapes)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # -- composition ---------------------------------------------------------------------------
    def _combine(self, other: Any, op: Callable[[Tensor, Any], Tensor], sym: str) -> Objective:
        if isinstance(other, Objective):
            out = Objective(
                lambda a: op(self(a), other(a)),
                self.layers + other.layers,
                f"{self.name} {sym} {other.name}",
            )
            out._checks = self._checks + other._checks
            return out
        if isinstance(other, (int, float)):
            out = Objective(lambda a: op(self(a), other), self.layers, f"{self.name} {sym} {other}")
            out._checks = self._checks
            return out
        return NotImplemented

    def __add__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a + b, "+")

    __radd__ = __add__

    def __sub__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a - b, "-")

    def __rsub__(self, other: Any) -> Objective:
        return (-self) + other

    def __mul__(self, other: Any) -> Objective:
        return self._combine(other, lambda a, b: a * b, "*")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if not isinstance(other, (int, float)):
            return NotImplemented
        return self._combine(other, lambda a, b: a / b, "/")

    def __neg__(self) -> Objective:
        out = Objective(lambda a: -self(a), self.layers, f"-({self.name})")
        out._checks = self._checks
        return out


# ------------------------------------------------------------------------------------------------
# helpers


def _layer_output(acts: Acts, layer: str) -> Tensor:
    try:
        a = acts[layer]
    except KeyError:
        raise InputError(
            f"the objective needs layer {layer!r}, which was not captured in the forward pass; "
            "make sure the model runs that layer."
        ) from None
    if not isinstance(a, Tensor):
        raise InputError(
            f"layer {layer!r} outputs a {type(a).__name__}, not a tensor; choose another layer."
        )
    return a


def _indices(units: Any, what: str, device: Any = None) -> Tensor:
    """``units`` (ints, nested lists of ints or an integer tensor) as a long tensor; a string,
    a float or a bool raises :class:`InputError` (``0.5`` is not channel 0, ``True`` not 1)."""
    try:
        t = units if isinstance(units, Tensor) else torch.as_tensor(units)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputError(
            f"{what}: unit indices must be ints (one, or one per batch item), got {units!r}; "
            "pass e.g. 3 or [3, 7, 1]."
        )
    return t.to(device=device, dtype=torch.long)


def _per_item(units: Any, n: int, device: torch.device, what: str) -> Tensor:
    """``units`` (one int, or one per batch item) as a long tensor ``[n]``."""
    t = _indices(units, what, device)
    if t.dim() == 0:
        return t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise InputError(
            f"{what}: got {t.shape[0] if t.dim() == 1 else list(t.shape)} unit indices for a batch "
            f"of {n}; give one index for all items or exactly one per batch item."
        )
    return t


def _unit_list(units: Any, what: str = "objective") -> list[int]:
    return [int(v) for v in _indices(units, what).reshape(-1)]


def _check_layer(shapes: Shapes, layer: str, min_dim: int, what: str) -> tuple[int, ...]:
    if layer not in shapes:
        raise InputError(
            f"{what}: layer {layer!r} produced no tensor output in the probe forward pass; choose "
            "a layer that the model runs and that returns a tensor."
        )
    shape = shapes[layer]
    if len(shape) < min_dim:
        name = "the model output" if layer == OUTPUT else f"layer {layer!r}"
        raise InputError(
            f"{what}: {name} has output shape {list(shape)}, which has no channel dimension "
            "(need [N, C] or [N, C, H, W]); choose a convolutional or linear layer instead."
        )
    return shape


def _check_range(units: Any, size: int, layer: str, what: str, error: type = InputError) -> None:
    bad = [u for u in _unit_list(units) if not 0 <= u < size]
    if bad:
        where = "the model output" if layer == OUTPUT else f"layer {layer!r}"
        raise error(
            f"{what}: index {bad[0]} is out of range; {where} has {size} channels, so use "
            f"0..{size - 1}."
        )


# ------------------------------------------------------------------------------------------------
# objectives


def channel(layer: str, units: Any) -> Objective:
    """Mean activation of channel ``units`` of ``layer`` over all spatial positions.

    ``layer``'s output may be ``[N, C, *spatial]`` or ``[N, C]`` (then the channel is one value).
    ``units``: one channel index, or one per batch item. :func:`~convscope.features.maximize`
    hands a transformer's tokens ``[N, 1 + h*w, D]`` and a channels-last ``[N, h, w, D]`` output
    over as ``[N, D, h, w]`` (:func:`convscope.nn.grid_layout`), so there the channel is feature
    ``d`` averaged over the patch tokens (the class token dropped).
    """

    def fn(acts: Acts) -> Tensor:
        a = _layer_output(acts, layer)
        idx = _per_item(units, a.shape[0], a.device, f"channel({layer!r})")
        sel = a[torch.arange(a.shape[0], device=a.device), idx]
        return sel.reshape(sel.shape[0], -1).mean(1)

    def check(shapes: Shapes) -> None:
        shape = _check_layer(shapes, layer, 2, f"channel({layer!r})")
        _check_range(units, shape[1], layer, f"channel({layer!r})")

    return Objective(fn, [layer], f"channel({layer!r}, {_short(units)})", check)


def neuron(layer: str, units: Any, y: Any = None, x: Any = None) -> Objective:
    """Activation of one spatial position of channel ``units`` of ``layer``.

    ``y``, ``x``: the position (one value, or one per batch item); ``None`` means the spatial
    centre (``h // 2``, ``w // 2``), as the deep-visualization toolbox recommends to avoid edge
    effects. A ``[N, C]`` layer has no positions: the neuron is the channel value.
    ``units`` may also hold ``(c, y, x)`` triples, one per batch item.
    """
    if y is None and x is None:
        t = _indices(units, f"neuron({layer!r})")
        if t.dim() >= 1 and t.shape[-1] == 3 and (t.dim() == 2 or t.dim() == 1):
            t = t.reshape(-1, 3)
            units, y, x = t[:, 0].tolist(), t[:, 1].tolist(), t[:, 2].tolist()

    def pos(v: Any, size: int, n: int, device: torch.device) -> Tensor:
        if v is None:
            return torch.full((n,), size // 2, dtype=torch.long, device=device)
        return _per_item(v, n, device, f"neuron({layer!r})")

    def fn(acts: Acts) -> Tensor:
        a = _layer_output(acts, layer)
        n = a.shape[0]
        idx = _per_item(units, n, a.device, f"neuron({layer!r})")
        rows = torch.arange(n, device=a.device)
        if a.dim() == 2:
            return a[rows, idx]
        if a.dim() != 4:
            raise InputError(
                f"neuron({layer!r}) needs an output of shape [N, C, H, W] or [N, C], got "
                f"{list(a.shape)}; use channel(...) for other shapes."
            )
        return a[rows, idx, pos(y, a.shape[2], n, a.device), pos(x, a.shape[3], n, a.device)]

    def check(shapes: Shapes) -> None:
        shape = _check_layer(shapes, layer, 2, f"neuron({layer!r})")
        _check_range(units, shape[1], layer, f"neuron({layer!r})")
        if len(shape) == 4:
            for v, size, axis in ((y, shape[2], "y"), (x, shape[3], "x")):
                if v is not None:
                    bad = [p for p in _unit_list(v) if not 0 <= p < size]
                    if bad:
                        raise InputError(
                            f"neuron({layer!r}): {axis}={bad[0]} is outside the layer's "
                            f"{size} positions along {axis}; use 0..{size - 1}."
                        )
        elif len(shape) == 2 and (y is not None or x is not None):
            raise InputError(
                f"neuron({layer!r}): the layer's output {list(shape)} has no spatial positions; "
                "leave y and x out."
            )

    return Objective(fn, [layer], f"neuron({layer!r}, {_short(units)})", check)


def class_logit(units: Any, layer: str = OUTPUT) -> Objective:
    """The score of class ``units`` in the model output (or in ``layer``'s ``[N, K]`` output)."""

    def fn(acts: Acts) -> Tensor:
        a = _layer_output(acts, layer)
        idx = _per_item(units, a.shape[0], a.device, "class_logit")
        return a.reshape(a.shape[0], a.shape[1], -1)[torch.arange(a.shape[0]), idx].mean(-1)

    def check(shapes: Shapes) -> None:
        shape = _check_layer(shapes, layer, 2, "class_logit")
        _check_range(units, shape[1], layer, "class_logit", TargetError)

    return Objective(fn, [layer], f"class_logit({_short(units)})", check)


def _short(units: Any) -> str:
    vals = _unit_list(units) if not isinstance(units, (list, tuple)) or not units or not isinstance(
        units[0], (list, tuple)
    ) else [tuple(u) for u in units]
    if len(vals) == 1:
        return str(vals[0])
    if len(vals) <= 4:
        return str(vals)
    return f"[{vals[0]}, {vals[1]}, ..., {vals[-1]}] ({len(vals)} units)"
