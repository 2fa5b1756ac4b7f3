"""A video played through a network (Yosinski et al. 2015's live view, offline): per frame all
channels of one layer (as :func:`~convscope.features.live` gives them for one image) and the
model's top-k classes, from batched forward passes.

``cs.features.play(model, "layer1.0.conv1", cs.data.read_video("clip.mp4", size=(32, 32)))``
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..nn import (
    NONFINITE_MODEL_FIX,
    LayerSpec,
    Recorder,
    call_key,
    check_args,
    check_finite,
    check_model,
    copy_tensors,
    forward,
    layer_path,
    model_device,
    positive_int,
    restore_mode,
    split_call,
)

__all__ = ["Playback", "play"]


@dataclass(frozen=True)
class Playback:
    """What :func:`play` saw. ``maps`` ``[T, C, h, w]``: frame ``t``'s channels of ``layer``,
    equal to ``live(model, layer, frames[t])`` (an fc layer's ``[C]`` is ``[C, 1, 1]``);
    ``probs`` ``[T, K]``: the softmax of the model's output per frame; ``top_index`` and
    ``top_p`` ``[T, k]``: the ``k`` most probable classes per frame, most probable first;
    ``class_names`` (or None).
    When the model's output is not ``[N, K]`` class scores (``K >= 2``), or ``top=0``, the
    class fields are None and ``note`` says why. ``times`` ``[T]``: seconds, when the frames
    came with them; ``flat``: the layer's output is ``[N, C]`` (an fc layer: draw bars, not a
    grid)."""

    layer: str
    maps: Tensor
    probs: Tensor | None
    top_index: Tensor | None
    top_p: Tensor | None
    class_names: list[str] | None = None
    times: Tensor | None = None
    note: str = ""
    flat: bool = False

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def name(self, index: int) -> str:
        """Class ``index``'s name (``"class i"`` without names)."""
        names = self.class_names
        return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"

    def top(self, t: int) -> list[tuple[int, str, float]]:
        """Frame ``t``'s top classes: ``(index, name, p)``, most probable first."""
        if self.top_index is None or self.top_p is None:
            return []
        return [(int(i), self.name(int(i)), float(p))
                for i, p in zip(self.top_index[t].tolist(), self.top_p[t].tolist(), strict=True)]


def play(model: nn.Module, layer: LayerSpec, frames: Any, *, top: int = 5,
         classes: Sequence[str] | None = None, batch: int = 32, quiet: bool = False) -> Playback:
    """Play ``frames`` through ``model``: per frame the channels of ``layer`` and the top
    ``top`` classes with their softmax probabilities.

    Args:
        model: the network (run in eval mode without gradients; modes, hooks and batch-norm
            statistics are restored afterwards, also on error).
        layer: one layer (module path, ``"path:k"`` for its k-th call, the module, a type or a
            predicate matching one module).
        frames: ``[T, C, H, W]`` float tensor, or :func:`convscope.data.read_video`'s answer
            (its ``times`` are kept).
        top: classes per frame (0: none).
        classes: class names (index ``i`` -> ``classes[i]``), or None.
        batch: frames per forward pass.
        quiet: hide the progress bar.

    Returns:
        :class:`Playback`, on the frames' device (float32 maps and probabilities).

    Raises:
        InputError: frames that are not ``[T, C, H, W]`` (empty, NaN, ...), a bad ``top`` or
            ``batch``, a layer that gives no tensor; LayerNotFoundError; ModelError when the
            model fails or gives NaN or inf (never an all-zero map).
    """
    from tqdm.auto import tqdm

    times = None
    if not isinstance(frames, Tensor) and hasattr(frames, "frames") and hasattr(frames, "times"):
        times = frames.times
        frames = frames.frames
    if not isinstance(frames, Tensor) or frames.dim() != 4 or not frames.is_floating_point():
        shape = list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise InputError(f"play takes float frames [T, C, H, W] (e.g. cs.data.read_video(path, "
                         f"size=(H, W))), got {shape}; for one image use cs.features.live.")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise InputError(f"top must be an int >= 0 (0: no classes), got {top!r}.")
    batch = positive_int(batch, "batch")
    check_model(model)
    check_args((frames,), "frames")
    if times is not None:
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1)
        if len(times) != len(frames):
            times = None
    names = None if classes is None else [str(c) for c in classes]
    path = layer_path(model, layer)
    mod_path, k = split_call(path)
    module = dict(model.named_modules())[mod_path]
    key = call_key(mod_path, k)
    device = model_device(model)
    home = frames.device
    maps: list[Tensor] = []
    flat = False
    probs: list[Tensor] = []
    note = "" if top else "top=0: no classes asked for"
    n = int(frames.shape[0])
    bar = tqdm(total=n, disable=quiet, desc=f"play {path}", unit="frame")
    rec = Recorder({mod_path: module}, keys={key},
                   value=lambda v: copy_tensors(v, clone=True, detach=True))
    try:
        with torch.no_grad(), restore_mode(model, True), rec:
            for i in range(0, n, batch):
                x = frames[i:i + batch].to(device)
                out = rec.run(forward, model, (x,), "play")
                a = rec.store.get(key)
                if not isinstance(a, Tensor) or a.dim() < 2 or a.shape[0] != x.shape[0]:
                    if key not in rec.store:
                        raise InputError(f"layer {path!r} did not run {k} time(s) in the "
                                         "forward pass: choose a layer the forward pass uses.")
                    raise InputError(f"layer {path!r} gives no [N, C, ...] tensor; choose a "
                                     "conv or fc layer.")
                check_finite(a, f"the output of layer {path!r} for frames {i}..{i + len(x) - 1}",
                             NONFINITE_MODEL_FIX)
                a = a.float()
                if a.dim() == 2:
                    flat = True
                    a = a[:, :, None, None]
                maps.append(a.to(home))
                if top:
                    p, why = _softmax(out, len(x))
                    if p is None:
                        note, top = why, 0
                        probs.clear()
                    else:
                        check_finite(out, f"the model's output for frames {i}..{i + len(x) - 1}",
                                     NONFINITE_MODEL_FIX)
                        probs.append(p.to(home))
                bar.update(len(x))
    finally:
        bar.close()
    top_index = top_p = prob = None
    if top and probs:
        prob = torch.cat(probs)
        top_p, top_index = torch.topk(prob, min(top, int(prob.shape[1])), dim=1)
    return Playback(layer=path, maps=torch.cat(maps), probs=prob, top_index=top_index,
                    top_p=top_p, class_names=names, times=times, note=note,
                    flat=flat)


def _softmax(out: Any, n: int) -> tuple[Tensor | None, str]:
    """The softmax (float32) of a ``[n, K]`` output, or None and why there is none."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n or out.shape[1] < 2:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return None, f"the model's output is {shape}, not class scores [N, K]: no top classes"
    return torch.softmax(out.detach().float(), dim=1), ""
