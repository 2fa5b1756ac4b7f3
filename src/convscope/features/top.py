"""Dataset-centric view of a unit (Yosinski et al. 2015, the deep visualisation toolbox's
"top 9"): the images of a dataset that excite each channel most, where, and the receptive-field
crop around that place.

:func:`top_examples` streams over the data once and keeps, per channel, the ``k`` images with the
highest *spatial maximum* of the channel; memory is ``O(channels x k)``. Ties are broken by the
smaller dataset index, so the ranking is a total order: :func:`merge` of results over disjoint
shards equals the single pass exactly.

Receptive fields (:func:`receptive_field`) are computed analytically from the graph of the model
(:func:`convscope.model.graph`): kernel size, stride, padding and dilation of every convolution
and pooling layer, the union over the inputs of residual additions and other element-wise ops.
Where the graph holds an operation that changes the spatial size in a way it cannot read (a
functional pooling call, an interpolation), it falls back to an empirical field: the support of
the input gradient of the layer's centre position over a few random inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, LayerNotFoundError, ModelError
from ..nn import (
    NONFINITE_MODEL_FIX,
    LayerSpec,
    check_args,
    check_finite,
    check_model,
    layer_path,
    model_device,
    positive_int,
    restore_mode,
    split_call,
)
from ..nn.passes import DatasetPass, Share, run_pass, to_device

__all__ = ["ReceptiveField", "receptive_field", "TopExamples", "TopExamplesPass", "top_examples",
           "merge", "live", "CROP_SIZE"]

#: Default largest side of the crops kept (the dashboard's largest thumbnail, 96 pixels): larger
#: receptive-field windows are area-averaged by an integer factor as they are cut, so memory is
#: ``O(channels x k x CROP_SIZE²)`` whatever the layer's field (``crop_size=None``: full windows).
CROP_SIZE = 96
#: Input values cut at once (bounds the memory of the full-size windows before they shrink).
_CUT_VALUES = 1 << 24


# ------------------------------------------------------------------------------------------------
# receptive fields


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the positions of one layer, per axis ``(y, x)``.

    Position ``(i, j)`` of the layer sees input rows ``offset[0] + i * stride[0]`` up to (not
    including) that plus ``size[0]``, and the same for columns. ``offset`` may be negative (zero
    padding). ``method`` is ``"graph"`` (analytic) or ``"gradient"`` (empirical).
    ``size`` is ``None`` for layers that see the whole image (after global pooling).
    """

    size: tuple[int, int] | None
    stride: tuple[int, int]
    offset: tuple[int, int]
    method: str = "graph"

    def box(self, y: int, x: int, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of position ``(y, x)``'s field, clipped to the image."""
        h, w = image_size
        if self.size is None:
            return (0, 0, h, w)
        y0 = self.offset[0] + y * self.stride[0]
        x0 = self.offset[1] + x * self.stride[1]
        return (max(0, y0), max(0, x0), min(h, y0 + self.size[0]), min(w, x0 + self.size[1]))


class _Unknown(Exception):
    pass


# per axis: (size, jump, start) or None (sees everything)
_Axis = tuple[int, int, int] | None


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


def _spatial(shape: list[int] | None) -> tuple[int, ...] | None:
    if shape is None or len(shape) < 3:
        return None
    return tuple(shape[2:])


def _union(states: list[tuple[_Axis, _Axis]]) -> tuple[_Axis, _Axis]:
    out = []
    for ax in range(2):
        vals = [s[ax] for s in states]
        if any(v is None for v in vals):
            out.append(None)
            continue
        start = min(v[2] for v in vals)
        end = max(v[2] + v[0] for v in vals)
        jump = max(v[1] for v in vals)
        out.append((end - start, jump, start))
    return (out[0], out[1])


def _owner(node: Any) -> str:
    return node.module if node.op == "module" and node.module is not None else (node.parent or "")


def _layer_node(g: Any, layer: str) -> Any:
    if layer in g:
        return g[layer]
    path, call = split_call(layer)
    owned = [n for n in g if n.op not in ("input", "output") and (
        _owner(n) == path or _owner(n).startswith(path + ".") or path == "")]
    if not owned:
        raise LayerNotFoundError(f"layer {layer!r} did not run in the model's forward pass.")
    return owned[-1]


def _graph_field(model: nn.Module, example: Tensor, layer: str) -> ReceptiveField:
    from ..model import graph

    g = graph(model, example, verify=False)
    target = _layer_node(g, layer)
    named = dict(model.named_modules())
    state: dict[str, tuple[_Axis, _Axis]] = {}
    for node in g:
        if node.op == "input":
            state[node.name] = ((1, 1, 0), (1, 1, 0))
        else:
            preds = [p for p in g.predecessors(node.name) if p in state]
            if not preds:
                raise _Unknown(node.name)
            ins = _union([state[p] for p in preds])
            mod = named.get(node.module) if node.op == "module" and node.module is not None else None
            out_sp = _spatial(node.output_shape)
            in_sp = _spatial(node.input_shapes[0]) if node.input_shapes else None
            if isinstance(mod, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                k = _pair(mod.kernel_size)
                s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
                p = _pair(mod.padding)
                d = _pair(getattr(mod, "dilation", 1))
                new = []
                for ax in range(2):
                    a = ins[ax]
                    if a is None:
                        new.append(None)
                        continue
                    size, jump, start = a
                    keff = d[ax] * (k[ax] - 1) + 1
                    new.append((size + (keff - 1) * jump, jump * s[ax], start - p[ax] * jump))
                state[node.name] = (new[0], new[1])
            elif out_sp is None or (out_sp is not None and all(v == 1 for v in out_sp)
                                    and (in_sp is None or any(v != 1 for v in in_sp))):
                state[node.name] = (None, None)  # global pooling, flatten, linear
            elif in_sp is not None and out_sp == in_sp:
                state[node.name] = ins  # element-wise: BN, ReLU, add, ...
            else:
                raise _Unknown(node.name)
        if node.name == target.name:
            break
    y, x = state[target.name]
    if y is None or x is None:
        return ReceptiveField(None, (1, 1), (0, 0), "graph")
    return ReceptiveField((y[0], x[0]), (y[1], x[1]), (y[2], x[2]), "graph")


def _layout(model: nn.Module, x: Tensor, out: Tensor) -> Any:
    """How the layer output ``out`` for images ``x`` reads as ``[B, D, h, w]``: a convolution's
    map as it is (also a 1 x 1 one), Swin's channels-last ``[B, h, w, D]`` permuted, a ViT's
    ``[B, N, D]`` tokens on the patch grid without the class token
    (:func:`convscope.explain.base.layer_layout`); None when it is no spatial map."""
    from ..explain.base import layer_layout
    from ..nn import GridLayout

    if out.dim() == 4 and tuple(out.shape[2:]) == (1, 1):
        return GridLayout("channels_first", (1, 1))
    return layer_layout(model, x, out) if out.dim() in (3, 4) else None


def _gradient_field(
    model: nn.Module, example: Tensor, layer: str, trials: int = 4
) -> ReceptiveField:
    from ..model import capture

    gen = torch.Generator().manual_seed(0)
    x = torch.rand((trials,) + tuple(example.shape[1:]), generator=gen).to(example)
    x.requires_grad_(True)
    out = capture(model, x, layer, no_grad=False)[layer]
    layout = _layout(model, x, out)
    if layout is None:
        return ReceptiveField(None, (1, 1), (0, 0), "gradient")
    out = layout.apply(out)
    cy, cx = out.shape[2] // 2, out.shape[3] // 2
    (g,) = torch.autograd.grad(out[:, :, cy, cx].sum(), x)
    support = g.abs().sum((0, 1)) > 0  # [H, W]
    h, w = support.shape
    jy = max(1, round(h / out.shape[2]))
    jx = max(1, round(w / out.shape[3]))
    rows = torch.nonzero(support.any(1)).reshape(-1)
    cols = torch.nonzero(support.any(0)).reshape(-1)
    if rows.numel() == 0:
        return ReceptiveField((1, 1), (jy, jx), (cy * jy, cx * jx), "gradient")
    y0, y1 = int(rows.min()), int(rows.max()) + 1
    x0, x1 = int(cols.min()), int(cols.max()) + 1
    return ReceptiveField((y1 - y0, x1 - x0), (jy, jx), (y0 - cy * jy, x0 - cx * jx), "gradient")


def receptive_field(model: nn.Module, layer: LayerSpec, example: Tensor) -> ReceptiveField:
    """Receptive field of ``layer``'s positions for inputs shaped like ``example [1, C, H, W]``:
    from the graph when every operation on the way is understood, else from input gradients."""
    check_model(model)
    layer = layer_path(model, layer)  # one layer spec: path, "path:k", module, type, predicate
    if not isinstance(example, Tensor) or example.dim() != 4:
        got = list(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise InputError(f"example must be an image batch [1, C, H, W], got {got}.")
    check_args((example,), "example")
    example = example[:1].detach()
    with restore_mode(model, True):
        try:
            return _graph_field(model, example, layer)
        except (_Unknown, ModelError):
            return _gradient_field(model, example, layer)


# ------------------------------------------------------------------------------------------------
# top examples


@dataclass
class TopExamples:
    """What :func:`top_examples` returns; ``C`` channels, ``k`` slots per channel, best first.

    Attributes:
        layer: the layer's module path.
        values: ``[C, k]`` spatial-max activation (``-inf`` in unused slots).
        indices: ``[C, k]`` dataset index (``-1`` in unused slots).
        locations: ``[C, k, 2]`` ``(y, x)`` of the maximum in the layer's output.
        boxes: ``[C, k, 4]`` ``(y0, x0, y1, x1)`` receptive-field box in input pixels, clipped
            to the image.
        crops: ``[C, k, C_in, h, w]`` the receptive-field window of the input around the maximum
            (``min(field, H)`` pixels; parts outside the image are 0), area-averaged by the
            smallest integer factor ``f`` that brings it to at most ``crop_size`` pixels a side
            (``h = min(field, H) // f``: the last rows and columns that do not fill a block are
            dropped), or ``None``.
        field: the layer's :class:`ReceptiveField`.
        image_size: ``(H, W)`` of the inputs.
        n_seen: how many images were ranked.
        crop_size: the largest side of the crops (``None``: full windows).
    """

    layer: str
    values: Tensor
    indices: Tensor
    locations: Tensor
    boxes: Tensor
    crops: Tensor | None
    field: ReceptiveField
    image_size: tuple[int, int]
    n_seen: int
    crop_size: int | None = None

    @property
    def k(self) -> int:
        return int(self.values.shape[1])

    @property
    def channels(self) -> int:
        return int(self.values.shape[0])

    def merge(self, other: TopExamples) -> TopExamples:
        """The result of one pass over both data sets (they must be disjoint)."""
        return merge(self, other)

    def cut(self, images: Tensor) -> Tensor:
        """Cut the receptive-field windows ``[C, k, C_in, h, w]`` out of ``images [N, C_in, H, W]``
        (indexed by dataset index) at the stored locations, shrunk as :attr:`crops` are (to at
        most :attr:`crop_size` a side); unused slots are 0."""
        if images.dim() != 4 or tuple(images.shape[2:]) != tuple(self.image_size):
            raise InputError(
                f"images must be [N, C_in, {self.image_size[0]}, {self.image_size[1]}], got "
                f"{list(images.shape)}."
            )
        idx = self.indices.reshape(-1)
        valid = idx >= 0
        if valid.any() and int(idx[valid].max()) >= images.shape[0]:
            raise InputError(
                f"images has {images.shape[0]} items but index {int(idx.max())} is stored; pass "
                "the whole data set the indices refer to."
            )
        safe = idx.clamp_min(0).to(images.device)
        locs = self.locations.reshape(-1, 2).to(images.device)
        crops = _cut_small(images, safe, locs, self.field, self.image_size, self.crop_size)
        crops = crops * valid.to(crops.device).view(-1, 1, 1, 1).to(crops.dtype)
        return crops.reshape(self.channels, self.k, *crops.shape[1:])


def _window(field: ReceptiveField, image_size: tuple[int, int]) -> tuple[int, int]:
    h, w = image_size
    if field.size is None:
        return (h, w)
    return (min(field.size[0], h), min(field.size[1], w))


def _factor(window: tuple[int, int], crop_size: int | None) -> int:
    """The integer area-averaging factor that brings ``window`` to at most ``crop_size``."""
    return 1 if crop_size is None else max(1, -(-max(window) // int(crop_size)))


def _crop_shape(field: ReceptiveField, image_size: tuple[int, int],
                crop_size: int | None) -> tuple[int, int]:
    wh, ww = _window(field, image_size)
    f = _factor((wh, ww), crop_size)
    return (wh // f, ww // f)


def _starts(locs: Tensor, field: ReceptiveField, image_size: tuple[int, int]
            ) -> tuple[Tensor, Tensor]:
    """Top-left input pixel ``(y0, x0)`` of the windows :func:`_cut` cuts at ``locs [M, 2]``."""
    h, w = image_size
    if field.size is None:
        zero = torch.zeros_like(locs[:, 0])
        return zero, zero
    y0 = field.offset[0] + locs[:, 0] * field.stride[0]
    x0 = field.offset[1] + locs[:, 1] * field.stride[1]
    if field.size[0] >= h:
        y0 = torch.zeros_like(y0)
    if field.size[1] >= w:
        x0 = torch.zeros_like(x0)
    return y0, x0


def _cut_small(images: Tensor, which: Tensor, locs: Tensor, field: ReceptiveField,
               image_size: tuple[int, int], crop_size: int | None) -> Tensor:
    """:func:`_cut`, area-averaged to at most ``crop_size`` a side. Each distinct window is cut
    once, and at most ``_CUT_VALUES`` input values at a time (a deep layer's windows are whole
    images, and many channels share them)."""
    wh, ww = _window(field, image_size)
    f = _factor((wh, ww), crop_size)
    if which.numel() == 0:
        return images.new_zeros((0, images.shape[1], wh // f, ww // f))
    y0, x0 = _starts(locs, field, image_size)
    keys, inverse = torch.unique(torch.stack([which, y0, x0], 1), dim=0, return_inverse=True)
    step = max(1, _CUT_VALUES // max(1, images.shape[1] * wh * ww))
    parts = []
    for i in range(0, keys.shape[0], step):
        part = keys[i: i + step]
        win = _cut(images, part[:, 0], part[:, 1:], field, image_size, starts=True)
        if f > 1:
            win = torch.nn.functional.avg_pool2d(
                win[..., : wh // f * f, : ww // f * f].float(), f).to(images.dtype)
        parts.append(win)
    return torch.cat(parts)[inverse]


def _cut(
    images: Tensor, which: Tensor, locs: Tensor, field: ReceptiveField, image_size: tuple[int, int],
    starts: bool = False,
) -> Tensor:
    """Windows ``[M, C_in, wh, ww]`` of ``images[which]`` around layer positions ``locs [M, 2]``
    (``starts=True``: ``locs`` are already the windows' top-left input pixels, :func:`_starts`)."""
    h, w = image_size
    wh, ww = _window(field, image_size)
    if field.size is None:
        return images[which].clone()
    y0, x0 = (locs[:, 0], locs[:, 1]) if starts else _starts(locs, field, image_size)
    padded = torch.nn.functional.pad(images, (ww, ww, wh, wh))
    rows = (y0.clamp(-wh, h) + wh)[:, None] + torch.arange(wh, device=images.device)  # [M, wh]
    cols = (x0.clamp(-ww, w) + ww)[:, None] + torch.arange(ww, device=images.device)  # [M, ww]
    sel = padded[which]  # [M, C, H+2wh, W+2ww]
    m, c = sel.shape[:2]
    sel = sel.gather(2, rows[:, None, :, None].expand(m, c, wh, sel.shape[3]))
    return sel.gather(3, cols[:, None, None, :].expand(m, c, wh, ww))


def _boxes(locs: Tensor, field: ReceptiveField, image_size: tuple[int, int]) -> Tensor:
    h, w = image_size
    if field.size is None:
        out = torch.zeros(locs.shape[:-1] + (4,), dtype=torch.long, device=locs.device)
        out[..., 2], out[..., 3] = h, w
        return out
    y0 = field.offset[0] + locs[..., 0] * field.stride[0]
    x0 = field.offset[1] + locs[..., 1] * field.stride[1]
    return torch.stack(
        [y0.clamp_min(0), x0.clamp_min(0), (y0 + field.size[0]).clamp_max(h),
         (x0 + field.size[1]).clamp_max(w)], -1,
    )


def _order(values: Tensor, indices: Tensor, k: int) -> Tensor:
    """Per row, the positions of the ``k`` best entries: value descending, then index ascending
    (unused slots, index -1, last)."""
    big = torch.iinfo(torch.long).max
    key = torch.where(indices < 0, torch.full_like(indices, big), indices)
    o1 = torch.argsort(key, dim=1, stable=True)
    v1 = values.gather(1, o1)
    v1 = torch.where(torch.isnan(v1), torch.full_like(v1, -math.inf), v1)
    o2 = torch.argsort(-v1, dim=1, stable=True)
    return o1.gather(1, o2)[:, :k]


def _batches(
    dataset: Any, batch_size: int, offset: int
) -> tuple[Iterator[tuple[Tensor, Tensor]], int | None]:
    """Yield ``(dataset indices [B], images [B, C, H, W])``."""
    from ..nn import iter_batches

    batches, total = iter_batches(dataset, batch_size, offset)
    return ((idx, x) for idx, x, _ in batches), total


def top_examples(
    model: nn.Module,
    layer: LayerSpec,
    dataset: Any,
    k: int = 9,
    *,
    batch_size: int = 64,
    crops: bool = True,
    crop_size: int | None = CROP_SIZE,
    offset: int = 0,
    quiet: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> TopExamples:
    """The ``k`` images of ``dataset`` that excite each channel of ``layer`` most.

    One streaming pass: per batch, each channel's spatial maximum and its position; the running
    top ``k`` per channel is updated and the receptive-field crops of newly admitted images are
    cut from the batch, so memory stays ``O(channels x k)`` whatever the data set's size.

    Args:
        model: the network (run in eval mode under ``torch.no_grad``; modes restored).
        layer: the layer (module path, ``path:k``, the module, or a type / predicate matching one
            module); its output must be ``[B, C, H, W]`` (or ``[B, C]``: location (0, 0)).
        dataset: a tensor ``[N, C_in, H, W]``, a map-style ``Dataset`` (items ``image`` or
            ``(image, label, ...)``; a ``Subset`` reports the parent's indices), or an iterable
            of batches (a ``DataLoader`` without shuffling; indices count from 0).
        k: images kept per channel.
        batch_size: images per forward pass (tensor and Dataset inputs).
        crops: keep the receptive-field crops (else only boxes; cut them later with
            :meth:`TopExamples.cut`).
        crop_size: the largest side of the crops kept (default 96, the dashboard's largest
            thumbnail): larger windows are area-averaged by an integer factor as they are cut, so
            a deep layer's whole-image windows cost ``C x k x 96²`` values, not ``C x k x H x W``;
            ``None`` keeps full windows.
        offset: added to every index (for shards of a larger data set: shard ``[5000:10000]``
            gets ``offset=5000``), so shard results :func:`merge` into the whole.
        quiet: hide the progress bar.
        progress: called after every batch with ``(images ranked so far, images in all)``
            (the total is None for an iterable of batches without a length): the hook a
            caller's own progress display (the dashboard's job status) reads. An exception it
            raises stops the pass (and propagates); nothing is returned then.

    Returns:
        a :class:`TopExamples`; ties in value go to the smaller index.
    """
    p = TopExamplesPass(model, layer, dataset, k, batch_size=batch_size, crops=crops,
                        crop_size=crop_size, offset=offset, quiet=quiet, progress=progress)
    return run_pass(p)


class TopExamplesPass(DatasetPass[TopExamples, TopExamples]):
    """:func:`top_examples` as a data-set pass (:mod:`convscope.nn.passes`): a share is a slice
    of the data set ranked with its offset, partials combine with the exact :func:`merge`, and
    the result is moved to the model's device. ``run_sharded(TopExamplesPass(...))`` is
    :func:`convscope.distributed.top_examples_sharded`. ``progress``: as for
    :func:`top_examples` (under sharding, each rank counts the images of its own share)."""

    def __init__(self, model: nn.Module, layer: LayerSpec, dataset: Any, k: int = 9, *,
                 batch_size: int = 64, crops: bool = True,
                 crop_size: int | None = CROP_SIZE, offset: int = 0,
                 quiet: bool = False,
                 progress: Callable[[int, int | None], None] | None = None) -> None:
        from ..nn import unwrap

        model = unwrap(model)
        check_model(model)
        self.model = model
        self.k = positive_int(k, "k")
        super().__init__(dataset, batch_size, "top examples")
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise InputError(f"offset must be an int >= 0, got {offset!r}.")
        self.offset = int(offset)
        self.layer = layer_path(model, layer)  # one layer spec: path, "path:k", module, type ...
        self.crops = bool(crops)
        self.crop_size = None if crop_size is None else positive_int(crop_size, "crop_size")
        self.quiet = quiet
        if progress is not None and not callable(progress):
            raise InputError(f"progress must be a callable (done, total), got "
                             f"{type(progress).__name__}.")
        self.progress = progress

    def run(self, share: Share) -> TopExamples:
        piece, offset = self.piece(share)
        return _scan(self.model, self.layer, piece, self.k, self.align, self.crops,
                     self.offset + offset, self.quiet, self.crop_size, self.progress)

    def merge(self, partials: Sequence[TopExamples]) -> TopExamples:
        out = partials[0]
        for p in partials[1:]:
            out = merge(out, p)
        return out

    def finish(self, partial: TopExamples) -> TopExamples:
        return to_device(partial, model_device(self.model))


def _scan(model: nn.Module, layer: str, dataset: Any, k: int, batch_size: int, crops: bool,
          offset: int, quiet: bool, crop_size: int | None = CROP_SIZE,
          progress: Callable[[int, int | None], None] | None = None) -> TopExamples:
    """The streaming pass of :func:`top_examples` over ``dataset`` (checked arguments); the
    tqdm bar and ``progress`` are told every batch's images."""
    from tqdm.auto import tqdm

    from ..model.capture import capture_first

    device = model_device(model)
    batches, total = _batches(dataset, int(batch_size), int(offset))
    state: TopExamples | None = None
    layout: Any = None  # how the layer's output reads as [B, D, h, w] (the first batch's)
    n_seen = 0
    bar = tqdm(total=total, disable=quiet, desc=f"top examples {layer}", unit="img")
    try:
        if progress is not None:
            progress(0, total)
        for idx, x in batches:
            if x.dim() != 4:
                raise InputError(f"images must be [B, C, H, W], got {list(x.shape)}.")
            if not x.is_floating_point():
                raise InputError(f"images must be floating-point, got {x.dtype}; use x.float().")
            check_args((x,), "images")  # meta, empty, NaN/inf
            x = x.to(device)
            a = capture_first(model, x, layer)  # the layers after it do not run
            if not isinstance(a, Tensor):
                raise InputError(
                    f"layer {layer!r} gives no tensor output; choose a convolutional layer."
                )
            if a.dim() == 2:
                a = a[:, :, None, None]
            elif a.dim() in (3, 4):  # tokens and channels-last maps as [B, D, h, w]
                if state is None:
                    layout = _layout(model, x, a)
                if layout is None:
                    raise InputError(
                        f"layer {layer!r} outputs shape {list(a.shape)}, which is no spatial "
                        "map of the input: top_examples needs [B, C, H, W], [B, C], a "
                        "channels-last [B, H, W, C] or tokens [B, N, D] on the patch grid."
                    )
                a = layout.apply(a)
            else:
                raise InputError(
                    f"layer {layer!r} outputs shape {list(a.shape)}; top_examples needs "
                    "[B, C, H, W] or [B, C] (channels to rank)."
                )
            check_finite(a, f"the output of layer {layer!r}", NONFINITE_MODEL_FIX)
            if state is None:
                fld = receptive_field(model, layer, x[:1]) if tuple(a.shape[2:]) != (1, 1) \
                    else ReceptiveField(None, (1, 1), (0, 0), "graph")
                state = _empty(layer, a.shape[1], k, fld, (x.shape[2], x.shape[3]),
                               (x.shape[1],) if crops else None, x.dtype, x.device, crop_size)
            state = _update(state, a, idx.to(x.device), x if crops else None)
            n_seen += x.shape[0]
            bar.update(x.shape[0])
            if progress is not None:
                progress(n_seen, total)
    finally:
        bar.close()
    if state is None:
        raise InputError("the data set is empty: there is nothing to rank.")
    state.n_seen = n_seen
    return state


def _empty(
    layer: str, c: int, k: int, fld: ReceptiveField, image_size: tuple[int, int],
    crop_channels: tuple[int] | None, dtype: torch.dtype, device: torch.device,
    crop_size: int | None = None,
) -> TopExamples:
    wh, ww = _crop_shape(fld, image_size, crop_size)
    locs = torch.zeros(c, k, 2, dtype=torch.long, device=device)
    return TopExamples(
        layer=layer,
        values=torch.full((c, k), -math.inf, dtype=dtype, device=device),
        indices=torch.full((c, k), -1, dtype=torch.long, device=device),
        locations=locs,
        boxes=_boxes(locs, fld, image_size),
        crops=(torch.zeros(c, k, crop_channels[0], wh, ww, dtype=dtype, device=device)
               if crop_channels else None),
        field=fld,
        image_size=image_size,
        n_seen=0,
        crop_size=crop_size,
    )


def _update(state: TopExamples, acts: Tensor, idx: Tensor, x: Tensor | None) -> TopExamples:
    b, c = acts.shape[:2]
    w = acts.shape[3]
    v, arg = acts.reshape(b, c, -1).max(2)  # [B, C]; first maximum on ties
    locs = torch.stack([arg // w, arg % w], -1)  # [B, C, 2]
    k = state.k
    cand_v = torch.cat([state.values, v.t().to(state.values.dtype)], 1)  # [C, k+B]
    cand_i = torch.cat([state.indices, idx[None, :].expand(c, b)], 1)
    cand_l = torch.cat([state.locations, locs.transpose(0, 1)], 1)  # [C, k+B, 2]
    sel = _order(cand_v, cand_i, k)  # [C, k]
    new_locs = cand_l.gather(1, sel[..., None].expand(c, k, 2))
    crops = state.crops
    if crops is not None and x is not None:
        from_batch = sel >= k
        crops = crops.gather(
            1, sel.clamp_max(k - 1)[..., None, None, None].expand(crops.shape)
        ).clone()
        if from_batch.any():
            ch, slot = torch.nonzero(from_batch, as_tuple=True)
            item = sel[ch, slot] - k
            crops[ch, slot] = _cut_small(x, item, new_locs[ch, slot], state.field,
                                         state.image_size, state.crop_size).to(crops.dtype)
    return replace(
        state,
        values=cand_v.gather(1, sel),
        indices=cand_i.gather(1, sel),
        locations=new_locs,
        boxes=_boxes(new_locs, state.field, state.image_size),
        crops=crops,
    )


def merge(a: TopExamples, b: TopExamples) -> TopExamples:
    """Combine the results of two passes over disjoint data (shards with the right ``offset``):
    the same as one pass over both, ties going to the smaller index."""
    if not isinstance(a, TopExamples) or not isinstance(b, TopExamples):
        raise InputError("merge takes two TopExamples results.")
    if a.layer != b.layer or a.values.shape != b.values.shape:
        raise InputError(
            f"cannot merge results of different layers or sizes: {a.layer!r} {list(a.values.shape)}"
            f" and {b.layer!r} {list(b.values.shape)}; run top_examples with the same layer and k."
        )
    if a.image_size != b.image_size:
        raise InputError("cannot merge results over images of different sizes.")
    if (a.crops is None) != (b.crops is None):
        raise InputError("cannot merge a result with crops and one without; use crops= alike.")
    if a.crops is not None and a.crops.shape[2:] != b.crops.shape[2:]:
        raise InputError("cannot merge results whose crops differ in size; use crop_size= alike.")
    k, c = a.k, a.channels
    cand_v = torch.cat([a.values, b.values.to(a.values)], 1)
    cand_i = torch.cat([a.indices, b.indices.to(a.indices.device)], 1)
    sel = _order(cand_v, cand_i, k)
    locs = torch.cat([a.locations, b.locations.to(a.locations.device)], 1)
    locs = locs.gather(1, sel[..., None].expand(c, k, 2))
    crops = None
    if a.crops is not None and b.crops is not None:
        both = torch.cat([a.crops, b.crops.to(a.crops)], 1)
        crops = both.gather(1, sel[..., None, None, None].expand(c, k, *both.shape[2:]))
    return replace(
        a,
        values=cand_v.gather(1, sel),
        indices=cand_i.gather(1, sel),
        locations=locs,
        boxes=_boxes(locs, a.field, a.image_size),
        crops=crops,
        n_seen=a.n_seen + b.n_seen,
    )


# ------------------------------------------------------------------------------------------------
# live activations


def live(model: nn.Module, layer: LayerSpec, image: Tensor) -> Tensor:
    """All channels of ``layer`` for one image: ``image [C_in, H, W]`` (or ``[1, C_in, H, W]``)
    -> ``[C, h, w]`` (a ``[1, C]`` output gives ``[C, 1, 1]``), for the dashboard's live view.
    Eval mode, no gradients, nothing left on the model."""
    from ..model import capture

    check_model(model)
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or (
        image.dim() == 4 and image.shape[0] != 1
    ):
        shape = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise InputError(
            f"live takes one image [C, H, W] (or [1, C, H, W]), got {shape}; for a batch use "
            "cs.model.capture."
        )
    x = image if image.dim() == 4 else image.unsqueeze(0)
    check_args((x,), "image")
    x = x.to(model_device(model))
    layer = layer_path(model, layer)
    a = capture(model, x, layer).get(layer)
    if not isinstance(a, Tensor) or a.dim() < 2:
        raise InputError(f"layer {layer!r} gives no [1, C, ...] tensor; choose a conv layer.")
    check_finite(a, f"the output of layer {layer!r}", NONFINITE_MODEL_FIX)
    a = a[0]
    if a.dim() == 1:
        return a[:, None, None]
    return a
