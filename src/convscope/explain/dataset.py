"""Every attribution method over a whole data set, batch by batch, with the quality metrics.

:func:`attribute_all` is what ``run.log_attributions`` stores. It runs :class:`AttributionPass`,
a data-set pass of :mod:`convscope.nn.passes`, in one process;
:func:`convscope.distributed.attributions_sharded` runs the same pass split across processes:
each image's maps and metrics depend on that image alone (the model runs in eval mode), so
results over disjoint shares, concatenated in order (:meth:`AttributionSet.cat`), are the
results of one pass. :func:`_attribute_one` is the one place that calls a method by its name.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, NotApplicableError, TargetError
from ..nn import model_device, positive_int, preserved
from ..nn.passes import DatasetPass, Share, run_pass
from . import registry
from .base import (
    TargetSpec,
    auto_layer,
    check_inputs,
    check_model,
    check_target,
    reuse_float32_copies,
    run_forward,
)

__all__ = ["ATTRIBUTION_METHODS", "AttributionPass", "AttributionSet", "attribute_all",
           "unit_scale"]

#: Every method, in the order the Attribution page shows them.
ATTRIBUTION_METHODS = ("saliency", "deconvnet", "guided_backprop", "cam", "grad_cam",
                       "grad_cam_pp", "score_cam")


def unit_scale(maps: Tensor) -> Tensor:
    """Min-max scale each map of ``[B, ...]`` to [0, 1] in float32 (a constant map becomes 0;
    NaN or inf raises :class:`~convscope.errors.InputError`)."""
    from .base import minmax

    return minmax(maps.float())


@dataclass
class AttributionSet:
    """Maps and per-image metrics of several methods over ``N`` images.

    Attributes:
        methods: the methods computed, in order.
        maps: ``{method: [N, H, W]}`` in [0, 1] (input-space methods reduced with
            :func:`~convscope.explain.to_heatmap`, max |.| over channels; every map min-max
            scaled per image).
        indices: ``[N]`` position of each image in the data set.
        labels: ``[N]`` true class, ``-1`` where unknown.
        target: ``[N]`` class explained. pred: ``[N]`` predicted class. prob: ``[N]`` its
            probability.
        drop, increase: ``{method: [N]}`` the average-drop term ``max(0, y - o) / y`` and
            whether the confidence rose (``o > y``) on ``image * map`` (Grad-CAM++ paper).
        pointing: ``{method: [N]}`` pointing-game hits when object masks were given.
        skipped: ``{method: reason}`` for methods that do not apply to the model.
        seconds: ``{method: seconds}`` spent computing the maps.
        layer: the layer Grad-CAM, Grad-CAM++ and Score-CAM used.
        modes: ``{method: how it ran}`` where a method has modes (Score-CAM: ``"exact: ..."``
            or ``"fast: n of C channels ..."``, :meth:`~convscope.explain.cams.ScoreCamInfo.
            describe`, over all batches).
        mode_details: ``{method: fields}``, the same as JSON-ready dicts
            (:meth:`~convscope.explain.cams.ScoreCamInfo.to_dict`: mode, channels, scored,
            forwards summed over batches, ...).
        images: ``[N, C, H, W]`` the explained images (float32, CPU) when asked for with
            ``keep_images=True``, else ``None``.
    """

    methods: list[str]
    maps: dict[str, Tensor]
    indices: Tensor
    labels: Tensor
    target: Tensor
    pred: Tensor
    prob: Tensor
    drop: dict[str, Tensor]
    increase: dict[str, Tensor]
    pointing: dict[str, Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    layer: str = ""
    images: Tensor | None = None
    modes: dict[str, str] = field(default_factory=dict)
    mode_details: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device: Any) -> AttributionSet:
        """A copy with every tensor on ``device``."""
        def mv(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return AttributionSet(
            methods=list(self.methods), maps=mv(self.maps), indices=self.indices.to(device),
            labels=self.labels.to(device), target=self.target.to(device),
            pred=self.pred.to(device), prob=self.prob.to(device), drop=mv(self.drop),
            increase=mv(self.increase), pointing=mv(self.pointing), skipped=dict(self.skipped),
            seconds=dict(self.seconds), layer=self.layer,
            images=None if self.images is None else self.images.to(device),
            modes=dict(self.modes), mode_details=dict(self.mode_details),
        )

    @classmethod
    def cat(cls, parts: Sequence[AttributionSet]) -> AttributionSet:
        """Concatenate results over consecutive shares (in order); times add up."""
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise InputError("no attribution results to concatenate.")
        first = parts[0]
        for p in parts[1:]:
            if p.methods != first.methods or p.layer != first.layer:
                raise InputError(
                    f"cannot concatenate attribution results of different methods or layers: "
                    f"{first.methods} at {first.layer!r} and {p.methods} at {p.layer!r}."
                )

        def cat_d(name: str) -> dict[str, Tensor]:
            keys = getattr(first, name).keys()
            return {k: torch.cat([getattr(p, name)[k] for p in parts]) for k in keys}

        seconds: dict[str, float] = {}
        for p in parts:
            for k, v in p.seconds.items():
                seconds[k] = seconds.get(k, 0.0) + v
        skipped: dict[str, str] = {}
        modes: dict[str, str] = {}
        details: dict[str, Any] = {}
        for p in parts:
            skipped.update(p.skipped)
            modes.update(p.modes)
            for k, d in p.mode_details.items():
                details[k] = _merge_mode(details.get(k), d)
        modes.update({k: _describe_mode(d) for k, d in details.items()})
        return cls(
            methods=list(first.methods), maps=cat_d("maps"),
            indices=torch.cat([p.indices for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            target=torch.cat([p.target for p in parts]),
            pred=torch.cat([p.pred for p in parts]), prob=torch.cat([p.prob for p in parts]),
            drop=cat_d("drop"), increase=cat_d("increase"), pointing=cat_d("pointing"),
            skipped=skipped, seconds=seconds, layer=first.layer,
            images=(torch.cat([p.images for p in parts])
                    if all(p.images is not None for p in parts) else None),
            modes=modes, mode_details=details,
        )


def _merge_mode(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    from .cams import ScoreCamInfo

    return b if a is None else ScoreCamInfo.from_dict(a).merge(ScoreCamInfo.from_dict(b)).to_dict()


def _describe_mode(d: dict[str, Any]) -> str:
    from .cams import ScoreCamInfo

    return ScoreCamInfo.from_dict(d).describe()


def _check_methods(methods: Sequence[str]) -> list[str]:
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    known = registry.names()  # the built-in seven and any registered by the user
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise InputError(f"unknown attribution method(s) {unknown or methods}: choose from "
                         f"{list(known)}.")
    return methods


def _pass_target(target: Any, n: int | None) -> Any:
    """``target`` checked once for the whole pass: None, a callable, an int, or ``[N]`` longs."""
    if target is None or (callable(target) and not isinstance(target, Tensor)):
        return target
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, Tensor):
        count = target.numel() if target.ndim <= 1 else -1
    elif isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        count = len(target)
    else:
        count = 1
    try:
        return check_target(target, n if n is not None else count)
    except TargetError as exc:
        if n is not None and count not in (n, -1) and count >= 0:
            raise TargetError(f"target has {count} entries for {n} images: give one class per "
                              "image, one int, None (the predicted class) or a callable.") from None
        raise exc from None


def _target_slice(target: Any, a: int, b: int) -> Any:
    """The part of the checked ``target`` for images ``[a, b)`` of the pass."""
    if isinstance(target, Tensor):
        if target.numel() < b:
            raise TargetError(f"target has {target.numel()} entries but the data set has more "
                              "images; give one class per image, one int or None.")
        return target[a:b]
    return target


def attribute_all(
    model: nn.Module,
    dataset: Any,
    *,
    methods: Sequence[str] = ATTRIBUTION_METHODS,
    target: Any = None,
    labels: Any = None,
    masks: Tensor | None = None,
    layer: Any = None,
    batch_size: int = 64,
    score_cam_batch_size: int | None = None,
    score_cam_channels: int | str | None = "auto",
    offset: int = 0,
    keep_images: bool = False,
    quiet: bool = False,
    progress: Callable[[int], None] | None = None,
) -> AttributionSet:
    """Every method in ``methods`` on every image of ``dataset``, ``batch_size`` images at a time.

    Args:
        model: the network (eval mode during the call; its mode is restored).
        dataset: images ``[N, C, H, W]``, a map-style ``Dataset`` (items ``(image, label)``
            give the labels) or an iterable of batches.
        methods: any of :data:`ATTRIBUTION_METHODS`. A method that does not apply to the model
            (CAM needs global pooling + a linear classifier) is skipped and the reason kept.
        target: class to explain: ``None`` (the predicted class), an int, ``N`` ints or a
            callable as in :mod:`convscope.explain`.
        labels: ``[N]`` true classes (default: from the data set's items, else unknown).
        masks: ``[N, H, W]`` object masks for the pointing game.
        layer: Grad-CAM / Grad-CAM++ / Score-CAM layer (default :func:`auto_layer`).
        batch_size: images per pass. score_cam_batch_size: masked images per Score-CAM pass
            (None: sized from a byte budget, :func:`~convscope.explain.cams.score_cam_batch`).
        score_cam_channels: Score-CAM's ``channels=`` (:func:`~convscope.explain.score_cam`):
            ``"auto"`` (default) scores every channel of layers with at most 256 channels and
            128 first, then more while the map can still move (the fast mode) of larger ones;
            ``None``: always exact. The mode that ran is in ``.modes`` and ``.mode_details``.
        offset: added to the running image positions (the share's start, when sharded).
        keep_images: also return the images (``.images``, CPU float32), e.g. to store them
            next to the maps (a shuffling loader could not be read in the same order twice).
        quiet: hide the progress bar. progress: called with each batch's size.

    Returns:
        :class:`AttributionSet` on the model's device.
    """
    return run_pass(AttributionPass(
        model, dataset, methods=methods, target=target, labels=labels, masks=masks, layer=layer,
        batch_size=batch_size, score_cam_batch_size=score_cam_batch_size,
        score_cam_channels=score_cam_channels, offset=offset, keep_images=keep_images,
        quiet=quiet, progress=progress))


class AttributionPass(DatasetPass[AttributionSet, AttributionSet]):
    """:func:`attribute_all` as a data-set pass (:mod:`convscope.nn.passes`): a share is a slice
    of the images (with its slice of ``labels``, ``masks`` and a per-image ``target``), partials
    concatenate in order (:meth:`AttributionSet.cat`: each image's result depends on that image
    alone), and the result is moved to the model's device (``images`` stay on the CPU).
    ``run_sharded(AttributionPass(...))`` is
    :func:`convscope.distributed.attributions_sharded`. Arguments as for :func:`attribute_all`."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        *,
        methods: Sequence[str] = ATTRIBUTION_METHODS,
        target: Any = None,
        labels: Any = None,
        masks: Tensor | None = None,
        layer: Any = None,
        batch_size: int = 64,
        score_cam_batch_size: int | None = None,
        score_cam_channels: int | str | None = "auto",
        offset: int = 0,
        keep_images: bool = False,
        quiet: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        from ..nn import unwrap

        model = unwrap(model)
        check_model(model)
        self.model = model
        self.methods = _check_methods(methods)
        super().__init__(dataset, batch_size, "attributions")
        self.score_cam_batch_size = positive_int(score_cam_batch_size, "score_cam_batch_size",
                                                 allow_none=True)
        from .cams import score_cam_budget

        score_cam_budget(score_cam_channels, 1 << 30)  # checks the value
        self.score_cam_channels = score_cam_channels
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise InputError(f"offset must be an int >= 0, got {offset!r}.")
        if isinstance(dataset, Tensor) and dataset.dim() == 3:
            self.dataset = dataset.unsqueeze(0)
        self.offset = int(offset)
        self.target, self.labels, self.masks, self.layer = target, labels, masks, layer
        self.keep_images, self.quiet, self.progress = keep_images, quiet, progress

    def run(self, share: Share) -> AttributionSet:
        piece, offset = self.piece(share)

        def cut(v: Any) -> Any:  # the share's part of a per-image argument
            if share.whole or v is None or isinstance(v, int) or callable(v):
                return v
            return torch.as_tensor(v)[share.start:share.stop]

        return _attribute_share(
            self.model, piece, methods=self.methods, target=cut(self.target),
            labels=cut(self.labels), masks=cut(self.masks), layer=self.layer,
            batch_size=self.align, score_cam_batch_size=self.score_cam_batch_size,
            score_cam_channels=self.score_cam_channels, offset=self.offset + offset, keep_images=self.keep_images, quiet=self.quiet,
            progress=self.progress)

    def merge(self, partials: Sequence[AttributionSet]) -> AttributionSet:
        return AttributionSet.cat(partials)

    def finish(self, partial: AttributionSet) -> AttributionSet:
        out = partial.to(model_device(self.model))
        out.images = partial.images  # CPU float32, as kept
        return out


def _attribute_one(method: str, model: nn.Module, x: Tensor, target: Any, layer: Any, *,
                   score_cam_batch_size: int | None = None, score_cam_channels: Any = "auto",
                   modes: dict[str, dict[str, Any]] | None = None) -> Tensor:
    """The raw map ``[B, H, W]`` of one registered method on one batch (input-space methods
    reduced with :func:`~convscope.explain.to_heatmap`); raises NotApplicableError when it does
    not fit. CAM ("classifier" kind) always takes the layer that feeds the global pooling.
    The built-in Score-CAM's mode is merged into ``modes`` (``{method: fields}``)."""
    from . import cams

    m = registry.get(method)
    opts: dict[str, Any] = {}
    if "batch_size" in m.options:
        opts["batch_size"] = score_cam_batch_size
    if "channels" in m.options:
        opts["channels"] = score_cam_channels
    if "quiet" in m.options:
        opts["quiet"] = True
    if m.fn is cams.score_cam:
        maps, info = cams.score_cam_info(model, x, target, layer, **opts)
        if modes is not None:
            modes[method] = _merge_mode(modes.get(method), info.to_dict())
        return maps
    return m.heatmap(model, x, target, layer=None if m.kind == "classifier" else layer, **opts)


def _attribute_share(
    model: nn.Module,
    dataset: Any,
    *,
    methods: list[str],
    target: Any,
    labels: Any,
    masks: Tensor | None,
    layer: Any,
    batch_size: int,
    score_cam_batch_size: int | None,
    score_cam_channels: Any,
    offset: int,
    keep_images: bool,
    quiet: bool,
    progress: Callable[[int], None] | None,
) -> AttributionSet:
    """Every method on every image of one share, batch by batch (arguments checked by
    :class:`AttributionPass`, except those that depend on the share's length)."""
    from tqdm.auto import tqdm

    from ..nn import iter_batches
    from . import metrics

    batches, total = iter_batches(dataset, batch_size)
    if total == 0:
        raise InputError("the data set is empty: there is nothing to explain.")
    target = _pass_target(target, total)
    if labels is not None:
        try:
            labels = torch.as_tensor(labels).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(f"labels must be {total} ints (class per image): {exc}.") from None
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise InputError(f"labels must hold integer classes, got dtype {labels.dtype}.")
        labels = labels.long()
        if total is not None and labels.numel() != total:
            raise InputError(f"labels has {labels.numel()} entries for {total} images.")
    if masks is not None and (not isinstance(masks, Tensor) or masks.dim() != 3 or (
            total is not None and int(masks.shape[0]) != total)):
        got = list(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise InputError(f"masks must be a tensor [N, H, W] with N = {total} images, got "
                         f"{got}.")
    device = model_device(model)
    parts: list[AttributionSet] = []
    skipped: dict[str, str] = {}
    modes: dict[str, dict[str, Any]] = {}
    cam_layer = layer
    bar = tqdm(total=total, disable=quiet, desc="attributions", unit="img")
    # modes, requires_grad, batch-norm statistics, hooks; a half-precision model's float32 copy
    # (for the input-space methods) is made once for the whole pass
    with preserved(model, True), reuse_float32_copies():
        try:
            pos = 0
            for idx, x, y in batches:
                b = int(x.shape[0])
                x = check_inputs(x, "images").to(device)  # [B, C, H, W] float, finite
                if cam_layer is None:
                    try:
                        cam_layer = auto_layer(model, x)
                    except NotApplicableError as exc:  # no spatial maps: only input-space methods
                        cam_layer = ""
                        for m in methods:
                            if registry.get(m).kind != "input":
                                skipped[m] = str(exc)
                with torch.no_grad():
                    out = run_forward(model, x)  # NaN/inf outputs raise here
                t = _target_slice(target, pos, pos + b)
                if not isinstance(out, Tensor) or out.ndim != 2:
                    raise InputError(
                        f"attribute_all needs a model returning [B, K] class scores, got "
                        f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}.")
                spec = TargetSpec(t, b)
                spec.resolve(out)  # out-of-range classes raise here, never skip a method
                probs = torch.softmax(out.float(), dim=1)
                pred = probs.argmax(dim=1)
                if t is None:
                    tgt = pred
                elif isinstance(t, int):
                    tgt = torch.full_like(pred, t)
                elif callable(t):
                    tgt = t
                else:
                    tgt = t.to(pred.device)
                if labels is not None:
                    lab = labels[pos:pos + b]
                elif y is not None:
                    lab = y
                else:
                    lab = torch.full((b,), -1, dtype=torch.long)
                m_b = masks[pos:pos + b].to(device) if masks is not None else None
                maps: dict[str, Tensor] = {}
                seconds: dict[str, float] = {}
                for method in methods:
                    if method in skipped:
                        continue
                    t0 = time.perf_counter()
                    try:
                        raw = _attribute_one(method, model, x, tgt, cam_layer,
                                             score_cam_batch_size=score_cam_batch_size,
                                             score_cam_channels=score_cam_channels,
                                             modes=modes)
                    except NotApplicableError as exc:  # the method does not fit the model
                        if any(method in p.maps for p in parts):  # it worked on earlier images
                            raise
                        skipped[method] = str(exc)
                        continue
                    seconds[method] = time.perf_counter() - t0
                    maps[method] = unit_scale(raw.detach())
                # a callable target scores classes itself: report the predicted class for it
                explained = tgt if isinstance(tgt, Tensor) else pred
                drop, inc, hit = {}, {}, {}
                for method, mp in maps.items():
                    cc = metrics.confidence_change(model, x, mp, tgt, quiet=True)
                    drop[method] = cc.drop.float()
                    inc[method] = cc.increase
                    if m_b is not None:
                        hit[method] = metrics.pointing_game(mp, m_b)
                parts.append(AttributionSet(
                    methods=[m for m in methods if m in maps], maps=maps,
                    indices=idx.to(device) + offset, labels=lab.to(device).long(),
                    target=explained.long(), pred=pred, prob=probs.gather(1, pred[:, None])[:, 0],
                    drop=drop, increase=inc, pointing=hit, seconds=seconds,
                    layer=cam_layer if isinstance(cam_layer, str) else type(cam_layer).__name__,
                    images=x.detach().float().cpu() if keep_images else None,
                ))
                pos += b
                bar.update(b)
                if progress is not None:
                    progress(b)
        finally:
            bar.close()
    if not parts:
        raise InputError("the data set is empty: there is nothing to explain.")
    out = AttributionSet.cat(parts)
    out.skipped = skipped
    out.mode_details = modes
    out.modes = {k: _describe_mode(d) for k, d in modes.items()}
    return out
