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

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = [
    "log_model",
    "log_feature_maps",
    "log_embedding",
    "default_map_layers",
    "FEATURE_MAP_CAP",
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
    repeat: int = 10,
    threads: int | None = None,
    quiet: bool | None = None,
) -> tuple[Any, Any]:
    """Record the graph (``objects/graph/<key>``) and, with ``profile``, the per-layer profile
    (table ``profile``, attrs in ``objects/profile/<key>``). ``quiet``: hide the progress bar
    (None: the run's setting). Returns (graph, profile DataFrame)."""
    from ..model import graph as build_graph
    from ..model import profile as run_profile

    g = build_graph(model, example_inputs)
    structure_format.write_graph(run, g, key=key)
    df = None
    if profile:
        df = run_profile(
            model, example_inputs, backward=backward, repeat=repeat, threads=threads,
            quiet=run.quiet if quiet is None else bool(quiet),
        )
        structure_format.write_profile(run, df, key=key)
    return g, df


def default_map_layers(model: nn.Module, inputs: torch.Tensor) -> list[str]:
    """Every module (leaf or block down to depth 2) whose output is a 4-D map."""
    from ..model import capture

    with torch.no_grad():
        probe = capture(model, inputs[:1], lambda name, m: name.count(".") <= 1 or
                        len(list(m.children())) == 0, clone=False)
    return [k for k, v in probe.items() if isinstance(v, torch.Tensor) and v.dim() == 4]


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
) -> dict[str, dict[str, Any]]:
    """Store the feature maps of ``images [N, C, H, W]`` at ``layers`` (default:
    :func:`default_map_layers`) as float16 arrays ``arrays/feature_maps/<layer>.npy``
    ``[N, C', h, w]`` with at most ``max_channels`` channels and ``max_size`` pixels a side.

    Returns per layer what was kept: original shape, stored shape, kept channel indices and each
    kept channel's mean activation. The sample images go to ``arrays/samples/feature_maps``.
    """
    from ..model import capture

    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InputError(
            "log_feature_maps needs images as a [N, C, H, W] tensor, got "
            f"{getattr(images, 'shape', type(images).__name__)}."
        )
    if layers is None:
        layers = default_map_layers(model, images)
    maps = capture(model, images, layers)
    maps_format.write_samples(run, images.detach().float().cpu().numpy(), labels)
    kept: dict[str, dict[str, Any]] = {}
    total = 0
    for name, x in maps.items():
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            continue
        small, channels = _cap_maps(x.detach(), max_channels, max_size)
        info = {
            "layer": name,
            "original_shape": list(x.shape),
            "stored_shape": list(small.shape),
            "channels": channels,
            "channel_mean": x[:, channels].float().mean(dim=(0, 2, 3)).tolist(),
            "capped_channels": x.shape[1] > len(channels),
            "downsampled": list(small.shape[-2:]) != list(x.shape[-2:]),
        }
        maps_format.write_layer(run, name, small.float().cpu().numpy(), info)
        total += small.numel() * 2
        kept[name] = info
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
