"""``run.log_preferred_inputs`` and ``run.log_top_examples``: what each unit prefers.

Stored:

* ``arrays/preferred_inputs/<layer>`` — the optimised images ``[U, C, H, W]`` (float16) with the
  units and their reached objective values in the index meta;
* ``arrays/top_crops/<layer>`` — receptive-field crops ``[C, k, C_in, h, w]`` (float16);
* table ``top_examples`` — one row per (layer, channel, rank): dataset index, activation value,
  location in the layer's output and the receptive-field box in input pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Run

__all__ = ["log_preferred_inputs", "log_top_examples", "store_top_examples",
           "store_preferred_inputs", "channels_of"]


def _layers(layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        return [layers]
    out = list(layers)
    if not out:
        raise InputError("pass at least one layer (module path), e.g. ['layer1.0.conv1'].")
    return out


def log_preferred_inputs(run: Run, model: Any, layers: str | Sequence[str],
                         units: Sequence[int] | None = None, *, max_units: int = 16,
                         **kwargs: Any) -> dict[str, Any]:
    """Activation maximisation (:func:`convscope.features.maximize`) of ``units`` (default: the
    first ``max_units`` channels) of each layer, all units of a layer in one batch. Keyword
    arguments go to ``maximize`` (``steps=``, ``lr=``, ``regularizers=``, ``transforms=``,
    ``param=``, ``size=``, ``mean=``, ``std=``, ``seed=``). Returns ``{layer: images}``."""
    from ..features import maximize

    out: dict[str, Any] = {}
    for layer in _layers(layers):
        chosen = list(units) if units is not None else None
        if chosen is None:
            chosen = list(range(min(max_units, channels_of(model, layer, **kwargs))))
        t0 = time.perf_counter()
        images, values = maximize(model, layer, chosen, return_values=True, quiet=run.quiet,
                                  **kwargs)
        store_preferred_inputs(run, layer, chosen, images, values,
                               seconds=time.perf_counter() - t0, settings=kwargs)
        out[layer] = images
    return out


def _input_shape(model: Any, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) the maximisation will use: the caller's ``size``/``channels`` or the model's
    first convolution (the same defaults as :func:`convscope.features.maximize`)."""
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    c = kwargs.get("channels") or (first.in_channels if first is not None else 3)
    size = kwargs.get("size") or getattr(model, "input_size", None)
    if size is None:
        stride = first.stride[0] if first is not None else 2
        size = 32 if stride == 1 else 224
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(c), int(h), int(w)


def log_top_examples(run: Run, model: Any, layers: str | Sequence[str], dataset: Any, k: int = 9,
                     **kwargs: Any) -> dict[str, Any]:
    """One streaming pass per layer (:func:`convscope.features.top_examples`): the ``k``
    images that excite each channel most, with receptive-field crops. Returns
    ``{layer: TopExamples}``."""
    from ..features import top_examples

    results = {}
    for layer in _layers(layers):
        te = top_examples(model, layer, dataset, k=k, crops=True, quiet=run.quiet, **kwargs)
        store_top_examples(run, te)
        results[layer] = te
    return results


def store_top_examples(run: Run, te: Any) -> None:
    """Store an already computed :class:`~convscope.features.TopExamples` (e.g. from
    :func:`convscope.distributed.top_examples_sharded`) as :func:`log_top_examples` does, through
    :mod:`convscope.formats.top_examples`: rows of table ``top_examples`` and, when it has
    crops, ``arrays/top_crops/<layer>``."""
    from ..formats import top_examples as fmt

    fmt.write(run, fmt.TopExamples(
        layer=te.layer, values=te.values.detach().float().cpu().numpy(),
        indices=te.indices.cpu().numpy(), locations=te.locations.cpu().numpy(),
        boxes=te.boxes.cpu().numpy(),
        crops=None if te.crops is None else te.crops.detach().float().cpu().numpy(),
        n_seen=te.n_seen, field=str(te.field)))


def store_preferred_inputs(run: Run, layer: str, units: Sequence[int], images: Any,
                           values: Any, *, seconds: float | None = None,
                           settings: dict[str, Any] | None = None) -> None:
    """Store already optimised images ``[U, C, H, W]`` of ``units`` of ``layer`` (e.g. from
    :func:`convscope.distributed.maximize_sharded`) as :func:`log_preferred_inputs` does, through
    :mod:`convscope.formats.preferred_inputs`: ``arrays/preferred_inputs/<layer>`` with the units
    and objective ``values [U]``."""
    from ..formats import preferred_inputs as fmt

    fmt.write(run, fmt.PreferredInputs(
        layer=layer, units=[int(u) for u in units],
        images=images.detach().float().cpu().numpy(),
        values=values.detach().float().cpu().tolist(), seconds=seconds,
        settings={k: str(v) for k, v in (settings or {}).items()}))


def channels_of(model: Any, layer: str, **kwargs: Any) -> int:
    """How many channels ``layer`` outputs for the input ``maximize`` would use (``size=``,
    ``channels=`` as for :func:`log_preferred_inputs`)."""
    import torch

    from ..model import capture

    probe = capture(model, torch.zeros(1, *_input_shape(model, kwargs)), layer)
    return int(next(iter(probe.values())).shape[1])
