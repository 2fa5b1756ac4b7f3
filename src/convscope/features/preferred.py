"""Preferred inputs of many units as a pass (:mod:`convscope.nn.passes`): the units are the
items, a share is a contiguous slice of them, and every unit's random start comes from its own
generator (:func:`~convscope.features.unit_seed`), so the images do not depend on how the units
are split: merged (concatenated in order) they are those one :func:`~convscope.features.maximize`
call makes with the same ``seed`` (up to floating-point rounding of batched convolutions).

* :class:`PreferredInputsPass` -- the pass; :func:`preferred_inputs` runs it in one process or,
  with ``sharded=True``, across the ranks of ``torch.distributed``;
* :func:`input_shape` -- the ``(C, H, W)`` of the images ``maximize`` optimises for a model
  (``model.input_size`` may be an int, ``(H, W)`` or ``(C, H, W)``, as ``maximize`` reads it;
  a fixed-size model's declared size comes first);
* :func:`layer_channels` -- how many channels a layer outputs for that input, i.e. how many
  units there are to choose from (a transformer's token output ``[B, 1 + h*w, D]`` has ``D``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConvscopeError, InputError, LayerNotFoundError
from ..nn import LayerSpec, check_model, grid_layout, model_device, positive_int, unwrap
from ..nn.passes import Pass, Share, run_pass, run_sharded, to_device

__all__ = ["PreferredInputsPass", "preferred_inputs", "input_shape", "layer_channels"]


class PreferredInputsPass(Pass[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]):
    """:func:`~convscope.features.maximize` of ``units`` of ``layer`` as a pass over the units.

    ``run`` optimises a share of the units (one ``maximize`` call, ``return_values=True``),
    ``merge`` concatenates ``(images, values)`` in unit order and ``finish`` moves them to the
    model's device. ``options`` go to ``maximize`` (``steps=``, ``lr=``, ``size=``, ``param=``,
    ``quiet=`` ...). ``run_sharded(PreferredInputsPass(...))`` is
    :func:`convscope.distributed.maximize_sharded`.
    """

    what = "preferred inputs"

    def __init__(self, model: nn.Module, layer: LayerSpec | None, units: Any, *, seed: int = 0,
                 **options: Any) -> None:
        from .maximize import check_units

        self.model = unwrap(model)
        self.layer = layer
        self.units = check_units(units)
        self.seed = seed
        self.options = options

    def size(self) -> int:
        return len(self.units)

    def run(self, share: Share) -> tuple[Tensor, Tensor]:
        from .maximize import maximize

        images, values = maximize(self.model, self.layer, share.slice(self.units),
                                  seed=self.seed, return_values=True, **self.options)
        return images.detach(), values.detach()

    def merge(self, partials: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        if len(partials) == 1:
            return partials[0]
        device = partials[0][0].device
        return (torch.cat([p[0].to(device) for p in partials]),
                torch.cat([p[1].to(device) for p in partials]))

    def finish(self, partial: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return to_device(partial, model_device(self.model))


def preferred_inputs(model: nn.Module, layer: LayerSpec | None, units: Any, *, seed: int = 0,
                     sharded: bool = False, group: Any = None,
                     **options: Any) -> tuple[Tensor, Tensor]:
    """``(images [U, C, H, W], values [U])``: the preferred input of every unit, in the order of
    ``units``, on the model's device. ``sharded=True``: a collective under
    ``torch.distributed`` (every rank calls it with the same units; the units are split across
    the ranks of ``group`` and every rank gets all images). ``options`` go to
    :func:`~convscope.features.maximize`."""
    p = PreferredInputsPass(model, layer, units, seed=seed, **options)
    return run_sharded(p, group) if sharded else run_pass(p)


def input_shape(model: nn.Module, size: int | Sequence[int] | None = None,
                channels: int | None = None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images :func:`~convscope.features.maximize` optimises for ``model``
    with these ``size`` / ``channels`` arguments: ``channels`` or the first convolution's
    ``in_channels``; ``size`` (an int or ``(H, W)``), else the size a fixed-size model declares
    (:func:`~convscope.features.maximize.fixed_input_size`: torchvision ViT, timm with a strict
    ``img_size``), else ``model.input_size`` (an int, or a tuple whose last entry is the side:
    ``(H, W)`` and ``(C, H, W)`` alike), else 32 for a model whose first convolution has stride
    1 (a CIFAR-style stem), else 224."""
    from .maximize import fixed_input_size

    check_model(model)
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if channels is not None:
        c = positive_int(channels, "channels")
    elif convs:
        c = int(convs[0].in_channels)
    else:
        raise InputError(f"cannot tell how many input channels {type(model).__name__} takes (it "
                         "has no convolution); pass channels=...")
    if size is None:
        size = fixed_input_size(model)
    if size is None:
        hint = getattr(model, "input_size", None)
        if isinstance(hint, int):
            size = hint
        elif isinstance(hint, (tuple, list)) and hint:
            size = int(hint[-1])
        else:
            conv2d = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
            size = 224 if conv2d is None or max(conv2d.stride) != 1 else 32
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return c, positive_int(size[0], "size"), positive_int(size[1], "size")
    if isinstance(size, (tuple, list)):
        raise InputError(f"size must be an int or (H, W), got {size!r}.")
    side = positive_int(size, "size")
    return c, side, side


def layer_channels(model: nn.Module, layer: LayerSpec, *, size: Any = None,
                   channels: int | None = None) -> int:
    """How many channels ``layer`` outputs for the input :func:`input_shape` gives (the units
    ``maximize`` can optimise there): ``C`` of ``[B, C, ...]``, ``D`` of a transformer's tokens
    ``[B, 1 + h*w, D]`` or of a channels-last map ``[B, h, w, D]`` (read as ``maximize`` reads
    them, :func:`convscope.nn.grid_layout`). A model that rejects that size (one that accepts
    its declared size only) is probed at its declared sizes
    (:func:`~convscope.features.maximize.size_hints`). Raises :class:`InputError` for a layer
    without channels."""
    from ..explain.base import patch_size, prefix_tokens
    from ..model import capture
    from .maximize import fixed_input_size, size_hints

    c, h, w = input_shape(model, size, channels)
    sizes = list(dict.fromkeys([fixed_input_size(model) or (h, w), (h, w), *size_hints(model)]))
    error: ConvscopeError | None = None
    for hw in sizes:
        try:
            probe = capture(model, torch.zeros(1, c, *hw, device=model_device(model)), layer)
            break
        except LayerNotFoundError:
            raise
        except ConvscopeError as exc:
            error = error or exc
    else:
        assert error is not None
        raise error
    out = next(iter(probe.values()), None)
    if not isinstance(out, Tensor) or out.dim() < 2:
        raise InputError(f"layer {layer!r} gives no [B, C, ...] output, so it has no channels "
                         "to optimise; choose a convolutional layer.")
    if out.dim() in (3, 4):
        m = unwrap(model)
        layout = grid_layout(out, hw, patch_size(m), prefix=prefix_tokens(m), strict=True)
        if layout is not None and layout.kind != "channels_first":
            return int(layout.apply(out).shape[1])
    return int(out.shape[1])
