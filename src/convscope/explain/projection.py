"""DeconvNet projections of single units (Zeiler & Fergus 2014).

Zeiler & Fergus examine one activation of a trained network by setting every other activation of
its layer to zero and passing the layer's maps back down an attached deconvnet: max *unpooling*
with the switches recorded in the forward pass, *rectification* of the signal at every ReLU, and
the *transposed* filters at every convolution. Their figure 2 shows, for units of each layer, the
top-9 activations of a data set projected back to pixels beside the image patches that caused
them.

The backward pass of autograd already is that deconvnet except at the ReLUs: through max pooling
it routes the signal to the recorded argmax positions (switch unpooling), through a convolution
it applies the transposed filters (biases play no part). :func:`convscope.explain.deconvnet`
changes the ReLU rule to ``relu(g)``; this module seeds it at a chosen *unit* instead of a class
score:

* :func:`project_unit` -- one channel of a layer (its whole map, one position, or the strongest
  position of each image) projected back to pixels, batched over images;
* :func:`top_projections` -- the ``k`` images of a data set that excite a channel most
  (:func:`convscope.features.top_examples`), their receptive-field crops, and each activation
  projected back (Zeiler & Fergus, figure 2).

The seed is, as in the paper, the unit's own activation (``seed="activation"``: the layer's maps
with every other activation set to zero) or a unit impulse (``seed="ones"``: the gradient of the
unit's summed activation, what captum's ``Deconvolution`` computes for a neuron target).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..nn import (
    LayerSpec,
    Recorder,
    call_key,
    check_model,
    forward,
    layer_path,
    model_device,
    positive_int,
    split_call,
    unwrap,
)
from .base import check_inputs
from .gradients import deconvnet

__all__ = ["Position", "project_unit", "TopProjections", "top_projections"]

#: What ``position=`` accepts: None (the whole map), ``"max"`` (the strongest position of each
#: image), one ``(y, x)`` for every image, or ``[B, 2]`` positions (one per image).
Position = None | str | tuple[int, int] | Sequence[int] | Tensor

_SEEDS = ("activation", "ones")


class _UnitScore(nn.Module):
    """Runs ``model`` up to ``layer`` (the rest of the forward pass does not run) and returns the
    per-image score whose input gradient, under the deconvnet ReLU rule, is the projection."""

    def __init__(self, model: nn.Module, layer: str, channel: int, position: Position,
                 seed: str) -> None:
        super().__init__()
        self.model = model
        self.layer = layer
        self.channel = channel
        self.position = position
        self.seed = seed

    def forward(self, x: Tensor) -> Tensor:
        path, k = split_call(self.layer)
        key = call_key(path, k)
        module = dict(self.model.named_modules())[path]
        rec = Recorder({path: module}, keys={key}, stop=True, value=lambda v: v)
        with rec:
            rec.run(forward, self.model, (x,), "project_unit")
        if key not in rec.store:
            raise InputError(
                f"layer {self.layer!r} ran {rec.counts.get(path, 0)} time(s) in the forward pass, "
                f"not {k}: choose a layer the forward pass uses."
            )
        a = rec.store[key]
        if not isinstance(a, Tensor) or a.dim() not in (2, 4):
            got = list(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise InputError(
                f"layer {self.layer!r} outputs {got}; project_unit needs a [B, C, H, W] map "
                "(or [B, C] features): choose a convolutional layer."
            )
        if not 0 <= self.channel < a.shape[1]:
            raise InputError(
                f"channel {self.channel} is out of range: layer {self.layer!r} has {a.shape[1]} "
                f"channels (valid: 0..{a.shape[1] - 1})."
            )
        unit = a[:, self.channel]  # [B, H, W] or [B]
        if unit.dim() == 1:  # [B, C] features: one position, (0, 0)
            unit = unit[:, None, None]
        mask = self._mask(unit)
        weight = unit.detach().float() if self.seed == "activation" else torch.ones_like(
            unit, dtype=torch.float32)
        if mask is not None:
            weight = weight * mask
        return (unit.float() * weight).sum((1, 2))  # reductions in float32

    def _mask(self, unit: Tensor) -> Tensor | None:
        b, h, w = unit.shape
        p = self.position
        if p is None:
            return None
        if isinstance(p, str):
            flat = unit.detach().reshape(b, -1).argmax(1)
            pos = torch.stack([flat // w, flat % w], 1)
        else:
            pos = torch.as_tensor(p, dtype=torch.long, device=unit.device)
            if pos.dim() == 1:
                pos = pos[None].expand(b, 2)
            if pos.shape != (b, 2):
                raise InputError(
                    f"position must be (y, x) or [B, 2] = [{b}, 2] positions, got shape "
                    f"{list(pos.shape)}."
                )
            bad = (pos[:, 0] < 0) | (pos[:, 0] >= h) | (pos[:, 1] < 0) | (pos[:, 1] >= w)
            if bool(bad.any()):
                y, x = (int(v) for v in pos[bad][0])
                raise InputError(
                    f"position ({y}, {x}) is outside layer {self.layer!r}'s {h} x {w} map; pass "
                    f"0 <= y < {h}, 0 <= x < {w}."
                )
        mask = torch.zeros((b, h, w), dtype=torch.float32, device=unit.device)
        mask[torch.arange(b, device=unit.device), pos[:, 0], pos[:, 1]] = 1.0
        return mask


def _check_position(position: Any) -> Position:
    if position is None or isinstance(position, Tensor):
        return position
    if isinstance(position, str):
        if position != "max":
            raise InputError(
                f"position must be None, 'max', (y, x) or [B, 2] positions, got {position!r}."
            )
        return position
    try:
        t = torch.as_tensor(position)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(
            f"position must be None, 'max', (y, x) or [B, 2] positions, got {position!r}."
        ) from None
    if t.is_floating_point() or t.dtype == torch.bool or t.dim() not in (1, 2) or t.shape[-1] != 2:
        raise InputError(
            f"position must be integer (y, x) or [B, 2] positions, got {position!r}."
        )
    return t


def project_unit(
    model: nn.Module,
    inputs: Tensor,
    layer: LayerSpec,
    channel: int,
    position: Position = None,
    *,
    seed: str = "activation",
) -> Tensor:
    """Project one unit of ``layer`` back to pixel space with a deconvnet (Zeiler & Fergus 2014).

    Every other activation of the layer is set to zero and the unit's activation is passed back
    to the input: max unpooling with the forward pass's switches, rectification at every ReLU
    (``nn.ReLU``, ``F.relu``, ``torch.relu``, in place or not), transposed filters at every
    convolution. The layers after ``layer`` do not run.

    Args:
        model: the network; run in eval mode (mode, ``requires_grad`` and batch-norm statistics
            are restored afterwards; no parameter gradients are computed).
        inputs: ``[B, C, H, W]`` float images; each is projected independently.
        layer: the layer (module path, ``"path:k"`` for its k-th call, the module, or a type /
            predicate matching one module); output ``[B, C', h, w]`` (or ``[B, C']``).
        channel: the channel of ``layer`` to project.
        position: ``None`` (the channel's whole map), ``"max"`` (the strongest position of each
            image), one ``(y, x)`` for all images, or a ``[B, 2]`` tensor of positions.
        seed: ``"activation"`` (the paper: the unit's own activation values are passed back) or
            ``"ones"`` (a unit impulse: the gradient of the unit's summed activation under the
            deconvnet rule).

    Returns:
        ``[B, C, H, W]`` signed projection on the inputs' device and in their dtype; reduce it
        for display with :func:`convscope.explain.to_heatmap` or show it as an image after a
        per-image min-max scaling (as Zeiler & Fergus do).

    Example:
        >>> proj = project_unit(model, x, "layer2.0.conv1", channel=5, position="max")
    """
    return _project(model, inputs, layer, channel, position, seed)


def _project(model: nn.Module, inputs: Tensor, layer: LayerSpec, channel: int,
             position: Position, seed: str) -> Tensor:
    """:func:`project_unit` on checked arguments."""
    model = unwrap(check_model(model))
    x = check_inputs(inputs)
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral) or channel < 0:
        raise InputError(f"channel must be an int >= 0, got {channel!r}.")
    if seed not in _SEEDS:
        raise InputError(f"seed must be one of {', '.join(_SEEDS)}; got {seed!r}.")
    path = layer_path(model, layer)
    unit = _UnitScore(model, path, int(channel), _check_position(position), seed)
    return deconvnet(unit, x, target=lambda out: out)


# ------------------------------------------------------------------------------------------------
# the top-k activations of a data set, projected back (Zeiler & Fergus, figure 2)


@dataclass
class TopProjections:
    """What :func:`top_projections` returns, best first (``k`` images, fewer when the data set
    is smaller).

    Attributes:
        layer: the layer's module path.
        channel: the projected channel.
        values: ``[k]`` the channel's spatial maximum in each image.
        indices: ``[k]`` dataset indices of the images.
        locations: ``[k, 2]`` ``(y, x)`` of the maximum in the layer's map.
        boxes: ``[k, 4]`` ``(y0, x0, y1, x1)`` receptive-field box in input pixels (clipped).
        images: ``[k, C, H, W]`` the images.
        projections: ``[k, C, H, W]`` each maximum projected back to pixels (zero outside its
            receptive field).
        crops: ``[k, C, h, w]`` the receptive-field windows of the images (0 outside the image).
        projection_crops: ``[k, C, h, w]`` the same windows of the projections (the paper's
            left panels).
        field: the layer's :class:`~convscope.features.ReceptiveField`.
    """

    layer: str
    channel: int
    values: Tensor
    indices: Tensor
    locations: Tensor
    boxes: Tensor
    images: Tensor
    projections: Tensor
    crops: Tensor
    projection_crops: Tensor
    field: Any

    @property
    def k(self) -> int:
        return int(self.values.shape[0])


def _gather_images(dataset: Any, wanted: Tensor, batch_size: int, quiet: bool) -> Tensor:
    """The images of ``dataset`` at dataset indices ``wanted`` (in that order)."""
    from torch.utils.data import Dataset, Subset
    from tqdm.auto import tqdm

    from ..nn import iter_batches

    if isinstance(dataset, Tensor):
        return dataset[wanted.cpu()]
    want = [int(i) for i in wanted]
    source = dataset
    if isinstance(dataset, Dataset) and hasattr(dataset, "__len__"):
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        source = Subset(base, want)  # a Subset reports its parent's indices
    batches, total = iter_batches(source, batch_size)
    found: dict[int, Tensor] = {}
    left = set(want)
    with tqdm(total=total, disable=quiet, desc="top projections: images", unit="img") as bar:
        for idx, xb, _ in batches:
            for i, img in zip(idx.tolist(), xb, strict=True):
                if i in left:
                    found[i] = img
                    left.discard(i)
            bar.update(xb.shape[0])
            if not left:
                break
    if left:
        raise InputError(
            f"the data set did not yield the items {sorted(left)[:5]} on a second pass; pass a "
            "tensor, a map-style Dataset or a loader without shuffling."
        )
    return torch.stack([found[i] for i in want])


def top_projections(
    model: nn.Module,
    dataset: Any,
    layer: LayerSpec,
    channel: int,
    k: int = 9,
    *,
    batch_size: int = 64,
    seed: str = "activation",
    quiet: bool = False,
) -> TopProjections:
    """The ``k`` strongest activations of one channel over a data set, projected back to pixels
    beside their receptive-field crops (Zeiler & Fergus 2014, figure 2).

    One streaming pass ranks the images (:func:`convscope.features.top_examples`, the channel's
    spatial maximum, ties to the smaller index); the ``k`` images are then fetched (directly from
    a tensor or map-style ``Dataset``, by a second pass over an iterable) and each maximum is
    projected with :func:`project_unit` at its position.

    Args:
        model: the network (eval mode; restored afterwards).
        dataset: a tensor ``[N, C, H, W]``, a map-style ``Dataset`` (items ``image`` or
            ``(image, label, ...)``) or an iterable of batches without shuffling.
        layer: the layer (module path, ``"path:k"``, the module, a type / predicate matching one).
        channel: the channel of ``layer``.
        k: how many images (Zeiler & Fergus show 9).
        batch_size: images per forward pass.
        seed: as in :func:`project_unit`.
        quiet: hide the progress bars.

    Returns:
        a :class:`TopProjections` on the model's device.
    """
    from ..features import top_examples

    model = unwrap(check_model(model))
    k = positive_int(k, "k")
    path = layer_path(model, layer)
    if isinstance(channel, bool) or not isinstance(channel, numbers.Integral) or channel < 0:
        raise InputError(f"channel must be an int >= 0, got {channel!r}.")
    top = top_examples(model, path, dataset, k, batch_size=batch_size, crops=False, quiet=quiet)
    if channel >= top.channels:
        raise InputError(
            f"channel {channel} is out of range: layer {path!r} has {top.channels} channels "
            f"(valid: 0..{top.channels - 1})."
        )
    c = int(channel)
    valid = top.indices[c] >= 0
    indices = top.indices[c][valid]
    locations = top.locations[c][valid]
    images = _gather_images(dataset, indices, batch_size, quiet).to(model_device(model))
    n = images.shape[0]
    single = replace(top, values=top.values[c:c + 1, valid], indices=torch.arange(n)[None],
                     locations=locations[None], boxes=top.boxes[c:c + 1, valid], crops=None)
    projections = _project(model, images, path, c, locations, seed)
    crops = single.cut(images)[0]
    projection_crops = single.cut(projections)[0]
    return TopProjections(
        layer=path,
        channel=c,
        values=top.values[c][valid],
        indices=indices,
        locations=locations,
        boxes=top.boxes[c][valid],
        images=images,
        projections=projections,
        crops=crops,
        projection_crops=projection_crops,
        field=top.field,
    )
