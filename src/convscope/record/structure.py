"""Recording a model's structure, resources, feature maps and embeddings into a run.

These are the bodies of ``run.log_model``, ``run.log_feature_maps`` and ``run.log_embedding``:
each calls the analysis functions (``convscope.model``, ``convscope.embed``) and persists what
they return through their formats (:mod:`convscope.formats.structure`,
:mod:`~convscope.formats.feature_maps`, :mod:`~convscope.formats.embedding`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..formats import embedding as embedding_format
from ..formats import feature_maps as maps_format
from ..formats import structure as structure_format
from ..nn.ops import minmax
from ..nn.tokens import grid_layout

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = [
    "log_model",
    "log_feature_maps",
    "log_embedding",
    "default_map_layers",
    "FEATURE_MAP_CAP",
    "MAX_MAP_LAYERS",
]

# Per-layer cap of stored feature maps: channels kept and the largest spatial side.
FEATURE_MAP_CAP = {"max_channels": 32, "max_size": 32}


def log_model(
    run: Run,
    model: nn.Module,
    example_inputs: Any,
    *,
    key: str = structure_format.DEFAULT_KEY,
    profile: bool = True,
    backward: bool = True,
    repeat: int | None = None,
    threads: int | None = None,
    quiet: bool | None = None,
    clock: Any = None,
) -> tuple[Any, Any]:
    """Record the graph (``objects/graph/<key>``) and, with ``profile``, the per-layer profile
    (table ``profile``, attrs in ``objects/profile/<key>``). Returns (graph, profile DataFrame).

    Budget: 60 s for a ResNet-50 at 224², 8 images, on a 2-core CPU
    (:mod:`convscope.record.budget`). Before profiling, one forward (+ backward) pass is timed
    (it is also the profile's first warm-up pass); ``repeat=None`` then takes as many timed
    repetitions (3 to 10) as fit the budget, and a profile projected to take more than twice
    the budget warns first, naming ``repeat=``, ``backward=False`` and ``profile=False``.
    ``quiet``: hide the progress bar (None: the run's setting). ``clock``: for tests.
    """
    from ..model import graph as build_graph
    from ..model import profile as run_profile
    from .budget import BUDGETS, PASSES_PER_REPEAT, auto_repeat, open_budget

    quiet = run.quiet if quiet is None else bool(quiet)
    budget = BUDGETS["log_model"]
    shape = "x".join(str(d) for d in getattr(example_inputs, "shape", ()))
    with open_budget("log_model", budget,
                     "repeat=3, backward=False or profile=False", clock=clock) as tracker:
        g = build_graph(model, example_inputs)
        structure_format.write_graph(run, g, key=key)
        df = None
        if profile:
            seconds = _pass_seconds(model, example_inputs, backward, tracker.clock)
            reps = auto_repeat(seconds, budget) if repeat is None else repeat
            tracker.budget.what = (f"{reps} profile repeats of {shape or 'the inputs'}"
                                   f"{' with backward' if backward else ''}")
            # the timed pass above was the first warm-up; the profile's info pass, one more
            # warm-up and the repetitions remain
            estimate = (tracker.clock() - tracker.start) + seconds * (
                2 + PASSES_PER_REPEAT * (reps if isinstance(reps, int) else 1))
            tracker.expect(estimate, f"{seconds:.2f} s per pass")
            df = run_profile(model, example_inputs, backward=backward, repeat=reps, warmup=1,
                             threads=threads, quiet=quiet)
            structure_format.write_profile(run, df, key=key)
    return g, df


def _pass_seconds(model: nn.Module, example_inputs: Any, backward: bool,
                  clock: Any) -> float:
    """Seconds of one forward (+ backward) pass of ``model`` on ``example_inputs``, the model
    borrowed and restored (mode, requires_grad, gradients, batch-norm statistics)."""
    from ..nn import as_args, flat_tensors, forward, preserved

    args = as_args(example_inputs)
    grad_on = backward and any(p.requires_grad for p in model.parameters())
    cuda = any(t.is_cuda for t in flat_tensors(args))
    with preserved(model, True), torch.set_grad_enabled(grad_on):  # eval, as the profile
        if cuda:
            torch.cuda.synchronize()
        t0 = clock()
        out = forward(model, args, "log_model")
        outs = [t for t in flat_tensors(out) if t.requires_grad and t.is_floating_point()]
        if grad_on and outs:
            torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
        if cuda:
            torch.cuda.synchronize()
        seconds = clock() - t0
    return seconds


#: ``log_feature_maps(layers=None)`` keeps at most this many layers (see
#: :func:`default_map_layers`).
MAX_MAP_LAYERS = 48


def _as_map(x: Any, size: tuple[int, int]) -> torch.Tensor | None:
    """A layer output as ``[N, C, h, w]``: a spatial map read by
    :func:`convscope.nn.tokens.grid_layout` (channels first or last, ViT tokens), or any other
    4-D output as it is (e.g. a ``1 x 1`` pooled map); None for the rest."""
    if not isinstance(x, torch.Tensor):
        return None
    layout = grid_layout(x, size)
    if layout is not None:
        return layout.apply(x)
    return x if x.dim() == 4 else None


def default_map_layers(model: nn.Module, inputs: torch.Tensor, *,
                       max_layers: int = MAX_MAP_LAYERS) -> list[str]:
    """The layers ``log_feature_maps`` records by default, in execution order: of the modules
    whose output is a spatial map (a 4-D map, channels first or last, or ViT tokens on the
    patch grid: :func:`convscope.nn.tokens.grid_layout`),

    * every leaf and every block down to depth 2, when they are at most ``max_layers``
      (small networks: the demo's ResNet, VGG-16);
    * else every module down to the deepest depth that keeps at most ``max_layers`` (a deep
      network by stage and block: ResNet-50's stem, stages and 16 bottlenecks, 25 layers;
      ConvNeXt-T's stem, stages and 18 blocks, 37 layers);
    * else (a flat network with more top-level maps) ``max_layers`` of them, evenly spaced.
    """
    from ..model import capture

    with torch.no_grad():
        probe = capture(model, inputs[:1], lambda name, m: True, clone=False)
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    maps = [k for k, v in probe.items() if _as_map(v, size) is not None]
    named = dict(model.named_modules())

    def depth(name: str) -> int:
        return 0 if name == "" else name.split(":")[0].count(".") + 1

    def leaf(name: str) -> bool:
        mod = named.get(name.split(":")[0])
        return mod is not None and len(list(mod.children())) == 0

    small = [k for k in maps if depth(k) <= 2 or leaf(k)]
    if len(small) <= max_layers:
        return small
    best: list[str] = []
    for d in range(1, max(depth(k) for k in maps) + 1):
        chosen = [k for k in maps if 1 <= depth(k) <= d]
        if len(chosen) > max_layers:
            break
        best = chosen
    if best:
        return best
    top = [k for k in maps if depth(k) == 1] or maps
    step = len(top) / max_layers
    return [top[int(i * step)] for i in range(max_layers)]


def _cap_maps(x: torch.Tensor, max_channels: int, max_size: int) -> tuple[torch.Tensor, list[int]]:
    """Keep the ``max_channels`` most active channels (by mean |activation|, in channel order)
    and shrink the spatial size to at most ``max_size`` (area averaging)."""
    c = x.shape[1]
    if c > max_channels:
        score = x.abs().mean(dim=(0, 2, 3))
        keep = torch.topk(score, max_channels).indices.sort().values
        x = x[:, keep]
        channels = keep.tolist()
    else:
        channels = list(range(c))
    h, w = x.shape[-2:]
    if max(h, w) > max_size:
        scale = max_size / max(h, w)
        x = F.interpolate(x.float(), size=(max(1, round(h * scale)), max(1, round(w * scale))),
                          mode="area")
    return x, channels


def log_feature_maps(
    run: Run,
    model: nn.Module,
    images: torch.Tensor,
    layers: Any = None,
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    max_channels: int = FEATURE_MAP_CAP["max_channels"],
    max_size: int = FEATURE_MAP_CAP["max_size"],
    quiet: bool | None = None,
    clock: Any = None,
) -> dict[str, dict[str, Any]]:
    """Store the feature maps of ``images [N, C, H, W]`` (a ViT's tokens and a Swin's
    channels-last maps read as ``[N, C, h, w]`` by :func:`convscope.nn.tokens.grid_layout`) at
    ``layers`` (default: :func:`default_map_layers`, at most :data:`MAX_MAP_LAYERS`) as uint8
    arrays with a range per channel (:mod:`convscope.formats.feature_maps`)
    ``arrays/feature_maps/<layer>.npy`` ``[N, C', h, w]`` with at most ``max_channels`` channels
    and ``max_size`` pixels a side.

    Budget: 30 s for a ResNet-50 at 224², 8 images, on a 2-core CPU; a progress bar counts the
    layers stored, and a call projected to take more than twice the budget warns once, naming
    ``layers=`` and the image count. ``quiet``: hide the bar (None: the run's setting).

    Returns per layer what was kept: original shape, stored shape, kept channel indices and each
    kept channel's mean activation. The sample images go to ``arrays/samples/feature_maps``.
    """
    from ..model import capture
    from ..nn.budget import progress
    from .budget import BUDGETS, open_budget

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(
            "log_feature_maps needs images as a [N, C, H, W] tensor, got "
            f"{getattr(images, 'shape', type(images).__name__)}."
        )
    quiet = run.quiet if quiet is None else bool(quiet)
    with open_budget("log_feature_maps", BUDGETS["log_feature_maps"],
                     "fewer layers (layers=[...]) or fewer images", unit="layer",
                     clock=clock) as tracker:
        if layers is None:
            layers = default_map_layers(model, images)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        maps = {}  # every spatial output as [N, C, h, w]: ViT tokens and Swin's NHWC maps too
        for k, x in capture(model, images, layers).items():
            grid = _as_map(x, size)
            if grid is not None:
                maps[k] = (grid, list(x.shape))
        tracker.set_total(len(maps))
        tracker.budget.what = f"{len(maps)} layers of {int(images.shape[0])} images"
        maps_format.write_samples(run, images.detach().float().cpu().numpy(), labels)
        kept: dict[str, dict[str, Any]] = {}
        total = 0
        bar = progress(len(maps), quiet=quiet, desc="feature maps", unit="layer")
        try:
            for name, (x, shape) in maps.items():
                small, channels = _cap_maps(x.detach(), max_channels, max_size)
                info = {
                    "layer": name,
                    "original_shape": shape,
                    "stored_shape": list(small.shape),
                    "channels": channels,
                    "channel_mean": x[:, channels].float().mean(dim=(0, 2, 3)).tolist(),
                    "capped_channels": x.shape[1] > len(channels),
                    "downsampled": list(small.shape[-2:]) != list(x.shape[-2:]),
                }
                total += maps_format.write_layer(run, name, small.float().cpu().numpy(), info)
                kept[name] = info
                bar.update(1)
        finally:
            bar.close()
        maps_format.write_index(run, list(kept), max_channels=max_channels, max_size=max_size,
                                nbytes=total, images=int(images.shape[0]))
    return kept


def _thumbnails(images: torch.Tensor, size: int = 48) -> np.ndarray:
    """uint8 ``[N, h, w, 3]`` thumbnails, each image min-max scaled on its own."""
    x = images.detach().float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] > 3:
        x = x[:, :3]
    x = minmax(x)  # per image; a constant image is black
    if max(x.shape[-2:]) > size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def log_embedding(
    run: Run,
    features: torch.Tensor | np.ndarray,
    labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
    *,
    name: str = embedding_format.DEFAULT_NAME,
    images: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    k: int = 3,
) -> Any:
    """PCA of ``features [N, D]`` (Li et al.'s SVD recipe) stored as table ``embedding`` (one row
    per item: name, idx, pc1..pck, label) plus ``objects/embedding/<name>`` (explained variance,
    class names) and, with ``images``, thumbnails ``arrays/embedding_images/<name>``."""
    from ..embed import pca

    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor)
                            else features)
    if feats.dim() != 2:
        raise InputError(
            f"log_embedding needs features as [N, D], got shape {list(feats.shape)}: flatten or "
            "pool them first (cs.model.collect_features(..., pool='avg'))."
        )
    n = feats.shape[0]
    lab = None if labels is None else np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
    if lab is not None and len(lab) != n:
        raise InputError(f"{len(lab)} labels for {n} feature rows: pass one label per row.")
    if images is not None and images.shape[0] != n:
        raise InputError(f"{images.shape[0]} images for {n} feature rows: pass one per row.")
    res = pca(feats.float(), k=k)
    embedding_format.write(run, embedding_format.Embedding(
        name=name, projections=res.projections.detach().cpu().numpy(),
        labels=lab if lab is not None else np.full(n, -1, dtype=np.int64),
        explained_variance_ratio=res.explained_variance_ratio.detach().cpu().tolist(),
        dim=int(feats.shape[1]), class_names=class_names, method=f"pca ({res.method})",
        images=_thumbnails(images) if images is not None else None))
    return res
