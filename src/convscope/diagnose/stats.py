"""The numbers behind Wang & Li (2020)'s pictures, per layer output and per parameter tensor.

All reductions run batched in torch on the tensor's device over the *whole* tensor; only the
clustering (a ``C x C`` distance matrix) and the image-similarity score work on a seeded sample of
the channels of enormous layers, and the sampling is recorded in the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from ..nn import upsample
from .cluster import (
    MAX_CHANNELS,
    Clustering,
    channel_clustering,
    cluster_rows,
    merge_height_stats,
    sample_indices,
    split_collapse,
)
from .thresholds import Thresholds

__all__ = [
    "LayerStats",
    "ParamStats",
    "output_stats",
    "param_stats",
    "input_similarity",
    "conv_layout",
    "saturation_bounds",
    "measure_batch",
    "fill_stats",
    "similarity_terms",
    "distribution_shape",
    "power_sums",
    "shape_from_sums",
    "channel_distance",
    "quantile_distance",
    "dense_noise",
    "depth_profile",
]

#: Budget of values fed to one clustering: with ``C`` channels clustered, each channel vector is
#: cut (seeded positions) to ``max(1024, MAX_ELEMENTS // C)`` values.
MAX_ELEMENTS = 1 << 22


def values_cap(channels: int, max_channels: int, max_elements: int) -> int:
    """Values per channel kept for clustering under the ``max_elements`` budget."""
    return max(1024, int(max_elements) // max(1, min(int(channels), int(max_channels))))


def _f(x: Any) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


class _DictRoundTrip:
    """``to_dict`` (JSON-serialisable) and ``from_dict`` (ignores unknown keys) for the
    statistics dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class LayerStats(_DictRoundTrip):
    """Numbers describing one layer output ``[B, C, *spatial]`` or ``[B, F]``.

    Attributes:
        name: module path (``layer1.0.relu2``). type: module class name (``""`` if unknown).
        order: position in execution order. shape: the output's shape.
        kind: ``"maps"`` (>= 3-D: channels with space) or ``"features"`` (2-D).
        abstraction: ``"low"`` (maps whose size is close to the reference image's) or
            ``"high"``; see :class:`Thresholds`.
        channels: C (or F). values: number of values in the tensor.
        nonfinite_share: share of NaN / Inf values (the numbers below use finite values).
        dead_fraction: share of channels whose values are all ``|x| <= dead_atol``.
        dead_map_fraction: share of the ``B x C`` single maps that are all zero (maps only).
        near_zero_share: share of values with ``|x| <= near_zero_eps``.
        mean, std, rms, absmax: activation scale.
        saturation: share of saturated values for bounded activations, else ``None``.
        merge_median, merge_iqr, merge_q10, merge_q90: distribution of the live channels'
            single-linkage merge heights (cosine distance); ``None`` without a tree.
        input_similarity: low-abstraction maps only: mean over live channels and samples of the
            best ``|correlation|`` with a channel of the reference image resized to the map.
        zero_share: share of values with ``|x| <= dead_atol`` (exact zeros by default).
        skewness, excess_kurtosis: shape of the whole layer's value distribution (finite
            values; 0 and 0 for a normal distribution).
        active_kurtosis: excess kurtosis of the values with ``|x| > dead_atol`` only (the
            ReLU's zeros left out): large when a few values dominate the layer
            (:func:`distribution_shape`).
        channel_distance: how unlike the live channels' value distributions are: mean pairwise
            1-Wasserstein distance between channels over the mean within-channel standard
            deviation (0: identical distributions; :func:`channel_distance`).
        clustered: channels in the tree. sampled: whether channels or values were sampled.
        notes: why something could not be measured, what was sampled.
    """

    name: str
    type: str = ""
    order: int = 0
    shape: list[int] = field(default_factory=list)
    kind: str = "maps"
    abstraction: str = "high"
    channels: int = 0
    values: int = 0
    nonfinite_share: float = 0.0
    dead_fraction: float | None = None
    dead_map_fraction: float | None = None
    near_zero_share: float | None = None
    mean: float | None = None
    std: float | None = None
    rms: float | None = None
    absmax: float | None = None
    saturation: float | None = None
    merge_median: float | None = None
    merge_iqr: float | None = None
    merge_q10: float | None = None
    merge_q90: float | None = None
    input_similarity: float | None = None
    zero_share: float | None = None
    skewness: float | None = None
    excess_kurtosis: float | None = None
    active_kurtosis: float | None = None
    channel_distance: float | None = None
    clustered: int = 0
    sampled: bool = False
    notes: list[str] = field(default_factory=list)



@dataclass
class ParamStats(_DictRoundTrip):
    """Numbers describing a conv / transposed-conv / linear weight (Wang & Li's layout: one row
    per output channel or output feature).

    Attributes:
        name: module path. type: module class name. order: position in registration order.
        kind: ``"conv"``, ``"deconv"`` or ``"linear"``. shape: the weight's PyTorch shape.
        outputs: c_out (or f_out). fan_in: inputs per output as PyTorch's init counts them.
        values: number of weights. nonfinite_share: share of NaN / Inf weights.
        mean, std, min, max: of the finite weights. excess_kurtosis: 0 normal, -1.2 uniform.
        gain: ``std * sqrt(fan_in)`` (0.58 for PyTorch's default init, 1.41 Kaiming-normal).
        shape_label: ``"normal"``, ``"uniform"``, ``"heavy-tailed"`` or ``"other"``.
        wide: ``gain > wide_gain``.
        bias_mean, bias_std: of the bias (``None`` without one).
        merge_median, merge_iqr, merge_q10, merge_q90: merge heights of the tree over outputs.
        split_collapse: largest share of those merge heights inside one window of
            ``split_tie_width`` (:func:`~convscope.diagnose.cluster.split_collapse`; 1: every
            split point at the same height).
        dense_noise: linear layers: share of the weight energy that looks like noise
            (:func:`dense_noise`; 1 for i.i.d. noise, lower with learned structure).
        depth: relative position among the analysed weight tensors (0 first, 1 last), and
        gain_ratio: ``gain`` over the median gain of those tensors; both set by
            :func:`depth_profile` (``None`` until then).
        clustered, sampled, notes: as in :class:`LayerStats`.
    """

    name: str
    type: str = ""
    order: int = 0
    kind: str = "conv"
    shape: list[int] = field(default_factory=list)
    outputs: int = 0
    fan_in: int = 0
    values: int = 0
    nonfinite_share: float = 0.0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    excess_kurtosis: float | None = None
    gain: float | None = None
    shape_label: str = "other"
    wide: bool = False
    bias_mean: float | None = None
    bias_std: float | None = None
    merge_median: float | None = None
    merge_iqr: float | None = None
    merge_q10: float | None = None
    merge_q90: float | None = None
    split_collapse: float | None = None
    dense_noise: float | None = None
    depth: float | None = None
    gain_ratio: float | None = None
    clustered: int = 0
    sampled: bool = False
    notes: list[str] = field(default_factory=list)



# ------------------------------------------------------------------------------------------------
# outputs

_BOUNDED = {
    "Tanh": (-1.0, 1.0),
    "Softsign": (-1.0, 1.0),
    "Sigmoid": (0.0, 1.0),
    "Hardsigmoid": (0.0, 1.0),
    "ReLU6": (None, 6.0),
}


def saturation_bounds(module_type: str, module: Any = None) -> tuple[float | None, float | None]:
    """``(low, high)`` output bounds of a bounded activation (``None`` = unbounded side), or
    ``(None, None)`` for other layers. ``Hardtanh`` reads its ``min_val``/``max_val``."""
    if module_type == "Hardtanh" and module is not None:
        return float(module.min_val), float(module.max_val)
    if module_type == "Hardtanh":
        return -1.0, 1.0
    return _BOUNDED.get(module_type, (None, None))


def input_similarity(
    maps: torch.Tensor, reference: torch.Tensor, live: torch.Tensor | None = None
) -> float | None:
    """How much a layer's maps look like the image (Wang & Li 2020: low-abstraction maps should).

    maps: ``[B, C, H, W]``; reference: ``[B, R, H0, W0]`` (the input or generated image), resized
    to ``H x W`` (area averaging when shrinking, bilinear when growing). For every sample and
    channel the best absolute Pearson correlation with one of the ``R`` reference channels; the
    result is the mean over samples and over ``live`` channels (channels whose map varies).
    ``None`` when the maps have fewer than 2 pixels or no channel varies."""
    terms = similarity_terms(maps, reference)
    if terms is None:
        return None
    best, varies = terms
    if live is not None:
        varies = varies & live.to(varies.device).unsqueeze(0)
    if not bool(varies.any()):
        return None
    return float(best[varies].mean())


def similarity_terms(
    maps: torch.Tensor, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The per-(sample, channel) terms of :func:`input_similarity`: ``best [B, C]`` (best
    absolute correlation with a reference channel) and ``varies [B, C]`` (the map is not
    constant); ``None`` when they do not exist (shapes, fewer than 2 pixels)."""
    if maps.dim() != 4 or reference.dim() != 4 or maps.shape[0] != reference.shape[0]:
        return None
    b, c, h, w = maps.shape
    if h * w < 2:
        return None
    ref = reference.to(device=maps.device, dtype=torch.float32)
    ref = torch.nan_to_num(ref, nan=0.0, posinf=0.0, neginf=0.0)
    if ref.shape[2] >= h and ref.shape[3] >= w:
        ref = F.adaptive_avg_pool2d(ref, (h, w))
    else:
        ref = upsample(ref, (h, w))
    m = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).flatten(2)  # [B, C, P]
    r = ref.flatten(2)  # [B, R, P]
    m = m - m.mean(2, keepdim=True)
    r = r - r.mean(2, keepdim=True)
    mn = m.norm(dim=2)
    rn = r.norm(dim=2)
    corr = torch.einsum("bcp,brp->bcr", m, r) / (
        mn.unsqueeze(2) * rn.unsqueeze(1)
    ).clamp_min(1e-12)
    valid_ref = (rn > 0).unsqueeze(1)  # [B, 1, R]
    best = torch.where(valid_ref, corr.abs(), torch.zeros_like(corr)).amax(2)  # [B, C]
    return best, mn > 0


def measure_batch(
    x: torch.Tensor,
    *,
    thresholds: Thresholds | None = None,
    module_type: str = "",
    module: Any = None,
) -> dict[str, Any]:
    """The additive numbers of one layer output ``[B, C, *spatial]`` / ``[B, F]``: counts,
    float64 sums, extrema and per-channel liveness, which add up over batches (and shards) to
    those of the whole data set. :func:`fill_stats` turns them into :class:`LayerStats` fields.

    Returns a dict: ``values``, ``finite`` (counts), ``s1``, ``s2`` (float64 sums of the finite
    values and of their squares), ``absmax``, ``near_zero`` (count), ``saturated`` (count, or
    ``None`` for an unbounded activation), ``alive`` (``[C]`` bool: some value above
    ``dead_atol`` or non-finite), ``dead_maps`` and ``maps`` (counts of all-zero single maps and
    of maps; 0 for 2-D outputs), and ``xz`` (the output as float32 with non-finite values 0).
    """
    th = thresholds or Thresholds()
    xf = x.detach()
    if not (xf.is_floating_point() or xf.is_complex()):
        xf = xf.float()
    c = int(xf.shape[1])
    values = int(xf.numel())
    finite = torch.isfinite(xf)
    all_finite = bool(finite.all())
    n_finite = values if all_finite else int(finite.sum())
    xz = xf.float() if all_finite else torch.where(finite, xf, torch.zeros_like(xf)).float()
    ax = xz.abs()
    alive_val = ax > th.dead_atol  # non-finite values count as alive
    if not all_finite:
        alive_val |= ~finite
    alive = alive_val.transpose(0, 1).reshape(c, -1).any(1)
    dead_maps = maps = 0
    if xf.dim() >= 3:
        per_map = alive_val.flatten(2).any(2)  # [B, C]
        dead_maps, maps = int((~per_map).sum()), int(per_map.numel())
    nz = ax <= th.near_zero_eps
    if not all_finite:
        nz &= finite
    xd = xz.double()
    s1 = float(xd.sum())
    s2 = float(xd.square().sum())
    del xd
    saturated = None
    lo, hi = saturation_bounds(module_type, module)
    if lo is not None or hi is not None:
        lo_ = 0.0 if lo is None else lo
        hi_ = 0.0 if hi is None else hi
        span = (hi_ - lo_) if (lo is not None and hi is not None) else abs(hi_ or lo_ or 1.0)
        margin = th.saturation_margin * span
        sat = torch.zeros_like(finite)
        if lo is not None:
            sat = sat | (xz <= lo + margin)
        if hi is not None:
            sat = sat | (xz >= hi - margin)
        saturated = int((sat & finite).sum())
    return {
        "values": values, "finite": n_finite, "s1": s1, "s2": s2,
        "absmax": float(ax.max()) if values else 0.0, "near_zero": int(nz.sum()),
        "saturated": saturated, "alive": alive, "dead_maps": dead_maps, "maps": maps, "xz": xz,
    }


def fill_stats(st: LayerStats, m: dict[str, Any]) -> None:
    """Set ``st``'s share and scale fields from :func:`measure_batch`'s numbers (or their sums
    over batches); ``m["finite"]`` must be > 0."""
    n = m["finite"]
    st.nonfinite_share = 1.0 - n / m["values"]
    alive = m["alive"]
    st.dead_fraction = float((~alive).float().mean())
    if m["maps"]:
        st.dead_map_fraction = m["dead_maps"] / m["maps"]
    st.near_zero_share = m["near_zero"] / n
    mean = m["s1"] / n
    st.mean = _f(mean)
    st.rms = _f(math.sqrt(max(m["s2"] / n, 0.0)))
    st.std = _f(math.sqrt(max(m["s2"] / n - mean**2, 0.0)))
    st.absmax = _f(m["absmax"])
    if m["saturated"] is not None:
        st.saturation = m["saturated"] / n
    if st.nonfinite_share > 0:
        st.notes.append(
            f"{st.nonfinite_share:.1%} of the values are NaN/Inf; they count as 0 in the "
            "clustering and are left out of the other numbers."
        )


def output_stats(
    x: torch.Tensor,
    *,
    name: str = "",
    module_type: str = "",
    module: Any = None,
    order: int = 0,
    reference: torch.Tensor | None = None,
    abstraction: str | None = None,
    thresholds: Thresholds | None = None,
    max_channels: int = MAX_CHANNELS,
    max_elements: int = MAX_ELEMENTS,
    seed: int = 0,
    clustering: bool = True,
) -> tuple[LayerStats, Clustering | None]:
    """Measure one layer output.

    Args:
        x: ``[B, C, *spatial]`` or ``[B, F]``.
        name, module_type, module, order: what the output belongs to (module_type decides
            saturation bounds).
        reference: ``[B, R, H0, W0]`` image to compare low-abstraction maps with, and to decide
            the abstraction level when ``abstraction`` is ``None``.
        abstraction: ``"low"`` / ``"high"`` to force the level.
        thresholds: measurement settings (dead_atol, near_zero_eps, saturation_margin, ...).
        max_channels, max_elements, seed: sampling of enormous layers for the clustering (at
            most ``max_channels`` channels, about ``max_elements`` values in all).
        clustering: build the channel tree (``False`` skips the merge-height numbers).

    Returns:
        ``(LayerStats, Clustering or None)``.
    """
    th = thresholds or Thresholds()
    st = LayerStats(name=name, type=module_type, order=order, shape=[int(s) for s in x.shape])
    if x.dim() < 2:
        st.kind = "other"
        st.notes.append(f"output of shape {list(x.shape)} has no channel dimension; not analysed.")
        return st, None
    if not (x.is_floating_point() or x.is_complex()):
        x = x.float()
    st.kind = "features" if x.dim() == 2 else "maps"
    st.channels = int(x.shape[1])
    st.values = int(x.numel())
    if abstraction is None:
        abstraction = "high"
        if x.dim() == 4 and reference is not None and reference.dim() == 4:
            side = min(int(reference.shape[2]), int(reference.shape[3]))
            if min(int(x.shape[2]), int(x.shape[3])) >= th.low_abstraction_min_scale * side:
                abstraction = "low"
    st.abstraction = abstraction
    if st.values == 0:
        st.notes.append("empty output; nothing to measure.")
        return st, None

    m = measure_batch(x, thresholds=th, module_type=module_type, module=module)
    if m["finite"] == 0:
        st.nonfinite_share = 1.0
        st.notes.append("every value is NaN or Inf; no statistics, no clustering.")
        return st, None
    fill_stats(st, m)
    xz, per_ch = m["xz"], m["alive"]
    xf = x
    finite = None if m["finite"] == m["values"] else torch.isfinite(x)
    shape = distribution_shape(xz if finite is None else xz[finite], dead_atol=th.dead_atol)
    st.zero_share, st.skewness = shape["zero_share"], shape["skewness"]
    st.excess_kurtosis, st.active_kurtosis = shape["excess_kurtosis"], shape["active_kurtosis"]
    st.channel_distance = channel_distance(
        xz, per_ch, max_channels=max_channels, seed=seed)

    cl = None
    if clustering:
        cap = values_cap(st.channels, max_channels, max_elements)
        cl = channel_clustering(
            xz, max_channels=max_channels, max_values=cap, seed=seed, dendrogram=False
        )
        st.clustered = cl.n
        st.sampled = bool(cl.sampled)
        if cl.note:
            st.notes.append(cl.note)
        if cl.ok:
            ms = merge_height_stats(cl)
            st.merge_median, st.merge_iqr = ms["median"], ms["iqr"]
            st.merge_q10, st.merge_q90 = ms["q10"], ms["q90"]

    if abstraction == "low" and reference is not None and xf.dim() == 4:
        if xf.shape[0] != reference.shape[0]:
            st.notes.append(
                "no input similarity: the reference image batch differs from the output batch."
            )
        else:
            idx = sample_indices(st.channels, max_channels, seed, device=xz.device)
            st.input_similarity = input_similarity(
                xz.index_select(1, idx), reference, live=per_ch.index_select(0, idx)
            )
    return st, cl


# ------------------------------------------------------------------------------------------------
# parameters


def conv_layout(module_or_weight: Any, transposed: bool | None = None) -> tuple[torch.Tensor, str]:
    """The weight as ``[outputs, inputs, *kernel]`` (Wang & Li's row = one output channel) and
    its kind: ``nn.Conv*`` weights are already ``[c_out, c_in/groups, kh, kw]``;
    ``nn.ConvTranspose*`` weights are ``[c_in, c_out/groups, kh, kw]`` and are transposed;
    ``nn.Linear`` weights are ``[f_out, f_in]``."""
    from torch import nn

    if isinstance(module_or_weight, nn.Module):
        m = module_or_weight
        w = m.weight.detach()
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            return w.transpose(0, 1), "deconv"
        if isinstance(m, nn.modules.conv._ConvNd):
            return w, "conv"
        if isinstance(m, nn.Linear):
            return w, "linear"
        kind = "linear" if w.dim() == 2 else "conv"
        return w, kind
    w = module_or_weight.detach()
    if transposed:
        return w.transpose(0, 1), "deconv"
    return w, ("linear" if w.dim() == 2 else "conv")


def param_stats(
    module_or_weight: Any,
    bias: torch.Tensor | None = None,
    *,
    name: str = "",
    order: int = 0,
    transposed: bool | None = None,
    thresholds: Thresholds | None = None,
    max_channels: int = MAX_CHANNELS,
    max_elements: int = MAX_ELEMENTS,
    seed: int = 0,
    clustering: bool = True,
) -> tuple[ParamStats, Clustering | None]:
    """Measure a conv / transposed-conv / linear weight (``module_or_weight``: the module, or its
    weight tensor with ``transposed=True`` for a transposed conv's ``[c_in, c_out, kh, kw]``).

    Returns ``(ParamStats, Clustering over the output channels or None)``."""
    from torch import nn

    th = thresholds or Thresholds()
    mtype = ""
    if isinstance(module_or_weight, nn.Module):
        mtype = type(module_or_weight).__name__
        if bias is None:
            b = getattr(module_or_weight, "bias", None)
            bias = b.detach() if isinstance(b, torch.Tensor) else None
    w, kind = conv_layout(module_or_weight, transposed)
    stored = (
        module_or_weight.weight if isinstance(module_or_weight, nn.Module) else module_or_weight
    )
    st = ParamStats(name=name, type=mtype, order=order, kind=kind,
                    shape=[int(s) for s in stored.shape])
    st.outputs = int(w.shape[0])
    # PyTorch's fan_in convention: size(1) * receptive field of the *stored* weight
    st.fan_in = int(stored.shape[1] * (stored[0][0].numel() if stored.dim() > 2 else 1))
    st.values = int(w.numel())
    if st.values == 0:
        st.notes.append("empty weight; nothing to measure.")
        return st, None
    wf = w.detach().double()
    finite = torch.isfinite(wf)
    n = int(finite.sum())
    st.nonfinite_share = 1.0 - n / st.values
    if n == 0:
        st.notes.append("every weight is NaN or Inf.")
        return st, None
    v = wf[finite]
    mean = v.mean()
    d = v - mean
    m2 = (d * d).mean()
    m4 = (d**4).mean()
    st.mean, st.min, st.max = _f(mean), _f(v.min()), _f(v.max())
    st.std = _f(m2.sqrt())
    st.excess_kurtosis = _f(m4 / (m2 * m2) - 3.0) if float(m2) > 0 else None
    st.gain = _f(m2.sqrt() * math.sqrt(max(st.fan_in, 1)))
    k = st.excess_kurtosis
    if k is None:
        st.shape_label = "other"
    elif k < th.uniform_kurtosis:
        st.shape_label = "uniform"
    elif k > th.heavy_kurtosis:
        st.shape_label = "heavy-tailed"
    else:
        st.shape_label = "normal"
    st.wide = bool(st.gain is not None and st.gain > th.wide_gain)
    if bias is not None and bias.numel():
        bb = bias.detach().double()
        bb = bb[torch.isfinite(bb)]
        if bb.numel():
            st.bias_mean = _f(bb.mean())
            st.bias_std = _f(bb.std(unbiased=False))
    cl = None
    if clustering:
        rows = torch.nan_to_num(w.detach().float().reshape(st.outputs, -1))
        cap = values_cap(st.outputs, max_channels, max_elements)
        cl = cluster_rows(rows, max_channels=max_channels, max_values=cap, seed=seed,
                          dendrogram=False, unit="outputs", value="weights")
        st.clustered = cl.n
        st.sampled = cl.sampled
        if cl.note:
            st.notes.append(cl.note)
        if cl.ok:
            ms = merge_height_stats(cl)
            st.merge_median, st.merge_iqr = ms["median"], ms["iqr"]
            st.merge_q10, st.merge_q90 = ms["q10"], ms["q90"]
            st.split_collapse = split_collapse(cl.live_heights(), th.split_tie_width)
    if kind == "linear" and w.dim() == 2:
        st.dense_noise = dense_noise(w, max_rows=max_channels, seed=seed)
    return st, cl


# ------------------------------------------------------------------------------------------------
# distribution measures (Wang & Li 2020, §1.3.2-§1.3.5)


def _central(cnt: int, s: Sequence[float]) -> tuple[float | None, float | None]:
    """``(skewness, excess kurtosis)`` of ``cnt`` values from their power sums ``s``
    (``sum (v - c)^k`` for k = 1..4, about any fixed ``c``); ``None`` where undefined (fewer
    than 4 values, no spread)."""
    if cnt < 4:
        return None, None
    a1, a2, a3, a4 = (x / cnt for x in s)
    m2 = a2 - a1 * a1
    m3 = a3 - 3 * a1 * a2 + 2 * a1**3
    m4 = a4 - 4 * a1 * a3 + 6 * a1 * a1 * a2 - 3 * a1**4
    if not m2 > 1e-12 * max(a2, 1e-300) or not math.isfinite(m2):
        return None, None
    return _f(m3 / m2**1.5), _f(m4 / (m2 * m2) - 3.0)


def shape_from_sums(n: int, sums: Sequence[float], n0: int, isums: Sequence[float]
                    ) -> dict[str, float | None]:
    """:func:`distribution_shape`'s numbers from power sums that add up over batches: ``n``
    values with ``sums[k-1] = sum (v - c)^k`` (k = 1..4, about a shift ``c`` fixed for all
    batches), of which ``n0`` inactive ones (``|v| <= dead_atol``) with ``isums`` alike
    (:func:`power_sums`)."""
    out: dict[str, float | None] = {"zero_share": None, "skewness": None,
                                    "excess_kurtosis": None, "active_kurtosis": None}
    if n <= 0:
        return out
    out["zero_share"] = n0 / n
    out["skewness"], out["excess_kurtosis"] = _central(n, sums)
    out["active_kurtosis"] = _central(n - n0, [a - b for a, b in zip(sums, isums, strict=True)])[1]
    return out


def power_sums(values: torch.Tensor, dead_atol: float = 0.0, shift: float = 0.0
               ) -> tuple[int, list[float], int, list[float]]:
    """``(n, sums, n0, isums)`` of ``values`` for :func:`shape_from_sums`: the count and
    ``sum (v - shift)^k`` (k = 1..4, float64) of all values, and of the inactive ones
    (``|v| <= dead_atol``). Sums of several batches add up; ``shift`` (the same for every
    batch, near the mean) keeps the float64 sums from cancelling."""
    v = values.detach().reshape(-1)
    v = v.double()
    n = int(v.numel())
    if n == 0:
        return 0, [0.0] * 4, 0, [0.0] * 4
    d = v - float(shift)
    d2 = d * d
    sums = [float(d.sum()), float(d2.sum()), float((d2 * d).sum()), float((d2 * d2).sum())]
    inactive = v.abs() <= dead_atol
    n0 = int(inactive.sum())
    if n0 == 0:
        return n, sums, 0, [0.0] * 4
    if dead_atol == 0:  # the inactive values are exactly 0: v - shift = -shift for each
        return n, sums, n0, [n0 * (-float(shift)) ** k for k in (1, 2, 3, 4)]
    di = d[inactive]
    return n, sums, n0, [float((di**k).sum()) for k in (1, 2, 3, 4)]


def distribution_shape(values: torch.Tensor, dead_atol: float = 0.0) -> dict[str, float | None]:
    """The whole layer's value distribution (Wang & Li 2020, §1.3.3 read a layer by its value
    distribution): ``zero_share`` (share with ``|x| <= dead_atol``), ``skewness`` and
    ``excess_kurtosis`` of all values, and ``active_kurtosis``, the excess kurtosis of the
    values with ``|x| > dead_atol`` (a ReLU's zeros left out, so a sparse but healthy layer is
    not mistaken for a heavy-tailed one: half-normal 0.87, exponential 6). Power sums about the
    mean, accumulated in float64; ``None`` where undefined (fewer than 4 values, no spread)."""
    v = values.detach().reshape(-1)
    if int(v.numel()) == 0:
        return shape_from_sums(0, [0.0] * 4, 0, [0.0] * 4)
    mu = float(v.sum(dtype=torch.float64)) / int(v.numel())
    return shape_from_sums(*power_sums(v, dead_atol, shift=mu))


def channel_distance(
    x: torch.Tensor,
    live: torch.Tensor | None = None,
    *,
    levels: int = 32,
    max_channels: int = MAX_CHANNELS,
    max_values: int = 4096,
    min_values: int = 64,
    seed: int = 0,
) -> float | None:
    """How unlike the channels' value distributions are (Wang & Li 2020, §1.3.2 and §1.3.3: in a
    good model the channels' (features') distributions differ a lot; alike distributions are a
    sign of a poor one, their Fig. 13).

    Each live channel's values over the batch (and space) are summarised by ``levels``
    quantiles at ``(k + 0.5) / levels``; the 1-Wasserstein distance between two channels is the
    mean absolute difference of their quantiles. The result is the mean over channel pairs of
    that distance divided by the mean within-channel standard deviation: 0 for identical
    distributions; two normal channels whose means differ by ``d`` standard deviations give
    about ``d``. Enormous layers use at most ``max_channels`` channels and ``max_values``
    values per channel (seeded positions). ``None`` with fewer than two live channels, fewer
    than ``min_values`` values per channel or no spread.

    Args:
        x: ``[B, C, *spatial]`` or ``[B, F]`` (finite values).
        live: ``[C]`` bool; channels to compare (default all).
    """
    if x.dim() < 2:
        return None
    flat = x.detach().reshape(int(x.shape[0]), int(x.shape[1]), -1)  # [B, C, P]
    b, c, p = flat.shape
    n = b * p
    keep = torch.arange(c, device=flat.device)
    if live is not None:
        keep = keep[live.to(flat.device)]
    if len(keep) < 2 or n < min_values:
        return None
    keep = keep.index_select(0, sample_indices(len(keep), max_channels, seed, device=flat.device))
    pos = sample_indices(n, max_values, seed + 1, device=flat.device)  # positions over B x P
    rows = flat[pos // p, :, pos % p].index_select(1, keep).T.float()  # [C', n']
    return quantile_distance(rows, levels=levels)


def quantile_distance(rows: torch.Tensor, *, levels: int = 32) -> float | None:
    """:func:`channel_distance` of channels given as value samples ``rows [C, n]`` (each row
    one channel's values at the same ``n`` positions): the mean pairwise 1-Wasserstein
    distance between the rows' ``levels`` quantiles, over the mean within-row standard
    deviation. ``None`` for fewer than two rows or no spread."""
    if rows.dim() != 2 or rows.shape[0] < 2 or rows.shape[1] < 2:
        return None
    rows = rows.float()
    probs = (torch.arange(levels, dtype=torch.float32, device=rows.device) + 0.5) / levels
    q = torch.quantile(rows, probs, dim=1).T  # [C, levels]
    scale = float(rows.std(dim=1, unbiased=False).mean())
    if not scale > 0:
        return None
    w1 = torch.cdist(q.double(), q.double(), p=1) / levels  # [C, C]
    k = q.shape[0]
    mean_pair = float(w1.sum() / (k * (k - 1)))
    return _f(mean_pair / scale)


def dense_noise(w: torch.Tensor, *, max_rows: int = MAX_CHANNELS, seed: int = 0) -> float | None:
    """How noisy a dense weight matrix (Wang & Li (2020)'s heatmap, §1.3.4: a good model's is
    even with little noise, a poor one's cluttered) is: the share of its energy outside the
    singular directions that rise above the largest singular value an i.i.d. matrix of the same
    shape and energy would reach (the Marchenko-Pastur edge ``sigma * (sqrt(M) + sqrt(N))``,
    ``sigma**2`` the mean squared weight). About 1 for i.i.d. noise; lower the more of the
    weights is learned low-rank structure. At most ``max_rows`` rows (seeded) are used;
    non-finite weights count as 0. ``None`` for fewer than 2 rows or columns or an all-zero
    matrix."""
    m = torch.nan_to_num(w.detach().double().reshape(int(w.shape[0]), -1),
                         nan=0.0, posinf=0.0, neginf=0.0)  # non-finite weights count as 0
    m = m.index_select(0, sample_indices(m.shape[0], max_rows, seed, device=m.device))
    r, c = m.shape
    if min(r, c) < 2:
        return None
    peak = float(m.abs().max())
    if not peak > 0:
        return None
    m = m / peak  # the share is scale-free; this keeps the Gram matrix in range
    small = m @ m.T if r <= c else m.T @ m  # squared singular values = its eigenvalues
    try:
        s2 = torch.linalg.eigvalsh(small).clamp_min(0)
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence
        return None
    total = float(s2.sum())
    if not total > 0:
        return None
    edge = math.sqrt(total / (r * c)) * (math.sqrt(r) + math.sqrt(c))
    signal = float(s2[s2 > edge * edge].sum())
    return _f(1.0 - signal / total)


def depth_profile(params: list[ParamStats]) -> None:
    """Set each weight tensor's ``depth`` (0 for the first, 1 for the last, in the given order)
    and ``gain_ratio`` (its ``gain`` over the median gain of all of them). Wang & Li (2020),
    §1.3.5, see the weight distributions narrow in the middle of a good network and wider at both
    ends; the gain (``std * sqrt(fan_in)``) takes out the part of the width that the fan-in
    alone explains. Tensors without a gain get neither number."""
    measured = [p for p in params if p.gain is not None]
    if not measured:
        return
    gains = sorted(p.gain for p in measured)
    mid = len(gains) // 2
    median = gains[mid] if len(gains) % 2 else 0.5 * (gains[mid - 1] + gains[mid])
    n = len(measured)
    for i, p in enumerate(measured):
        p.depth = i / (n - 1) if n > 1 else 0.0
        p.gain_ratio = _f(p.gain / median) if median > 0 else None
