"""Wang & Li's diagnosis over a whole data set, streamed batch by batch, with mergeable statistics.

:func:`diagnose` measures one batch. :func:`diagnose_dataset` runs every batch of a data set
through the model and keeps, per layer output, only numbers that *add up*
(:class:`OutputMoments`): value counts, float64 sums and sums of squares, the absolute maximum,
near-zero and saturated counts, which channels are ever alive, all-zero single maps, the channels'
Gram matrix ``G = A A^T`` (so the cosine distances, and the channel tree, cover every value of
every image rather than a sample), and the sums behind the input similarity. Results over
disjoint shares merge exactly (:func:`merge_outputs`): :class:`DiagnosisPass` is the pass of
:mod:`convscope.nn.passes` that :func:`diagnose_dataset` runs in one process and
:func:`convscope.distributed.diagnose_sharded` splits across processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError
from ..nn.passes import DatasetPass, Share, run_pass
from .cluster import (
    MAX_CHANNELS,
    cluster_distances,
    gram_distances,
    merge_height_stats,
    sample_indices,
)
from .report import Report
from .stats import (
    LayerStats,
    ParamStats,
    fill_stats,
    measure_batch,
    param_stats,
    power_sums,
    quantile_distance,
    shape_from_sums,
    similarity_terms,
)
from .thresholds import Thresholds

__all__ = ["OutputMoments", "DiagnosisPass", "accumulate_outputs", "merge_outputs", "report_of",
           "diagnose_dataset", "position_keys", "DISTANCE_CHANNELS", "DISTANCE_VALUES"]

#: Fewer sampled positions than this: no channel distance (as :func:`channel_distance`).
MIN_DISTANCE_VALUES = 64
#: The channel-distance sample of a data-set pass: at most this many channels (of the Gram
#: matrix's) at this many positions, the positions with the smallest :func:`position_keys` over
#: the whole data set (a ResNet-50's 50 outputs hold ~25 MB of it).
DISTANCE_CHANNELS = 128
DISTANCE_VALUES = 1024
_GOLDEN = 0.6180339887498949


def position_keys(items: torch.Tensor, positions: int, seed: int = 0) -> torch.Tensor:
    """``[B * positions]`` float64 keys in [0, 1) of every (item, spatial position) of a batch
    whose data-set indices are ``items [B]``: the fractional part of ``j * golden ratio`` (a Weyl
    sequence) for ``j = index * positions + position``, shifted by the seed. A data set's
    sample is its positions with the smallest keys: spread evenly over items and space, and the
    same whatever the batching or sharding (each key depends on the global index only)."""
    j = (items.to(torch.float64).reshape(-1, 1) * positions
         + torch.arange(positions, dtype=torch.float64, device=items.device)).reshape(-1)
    return torch.frac(j * _GOLDEN + (seed * 0.7548776662466927) % 1.0)


def _bottom(keys: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` smallest keys and their columns of ``rows`` (ties: the lower column first)."""
    if keys.numel() <= k:
        order = torch.argsort(keys, stable=True)
    else:
        order = torch.argsort(keys, stable=True)[:k]
    return keys[order], rows[:, order]


@dataclass
class OutputMoments:
    """The additive statistics of one layer output over many batches.

    Attributes:
        name, type, order: the output (module path, class name, execution order).
        kind: ``"maps"`` or ``"features"``. abstraction: ``"low"`` / ``"high"``.
        shape: one batch's shape with the batch dimension set to the items seen.
        channels: C. values, finite: value counts. s1, s2: float64 sums of the finite values
            and of their squares. absmax: largest |value|. near_zero, saturated: counts
            (``saturated`` is ``None`` for unbounded activations). alive: ``[C]`` bool.
        dead_maps, maps: all-zero single maps, and maps (``B x C`` per batch).
        index: ``[C']`` the channels in the Gram matrix (all, or a seeded sample of
            ``max_channels``). gram: ``[C', C']`` float64 ``sum <A_i, A_j>`` over every value.
        sim_sum, sim_count: ``[C']`` sums of the best |correlation| with the image and counts
            of non-constant maps (low-abstraction maps with an image input), else ``None``.
        shift, psums, n0, isums: the whole output's value distribution (skewness, kurtosis,
            zero share; :func:`~convscope.diagnose.stats.power_sums`): ``sum (v - shift)^k``
            (k = 1..4) of the finite values, and the count and sums of the inactive ones
            (``|v| <= dead_atol``); ``shift`` is the first batch's mean, the same for all.
        dkeys, drows: the channel-distance sample: the :data:`DISTANCE_VALUES` positions of
            the data set with the smallest :func:`position_keys` and the values there of the
            first :data:`DISTANCE_CHANNELS` channels of ``index`` (``[C'', n]``).
        notes: what was sampled.
    """

    name: str
    type: str = ""
    order: int = 0
    kind: str = "maps"
    abstraction: str = "high"
    shape: list[int] = field(default_factory=list)
    channels: int = 0
    values: int = 0
    finite: int = 0
    s1: float = 0.0
    s2: float = 0.0
    absmax: float = 0.0
    near_zero: int = 0
    saturated: int | None = None
    alive: torch.Tensor | None = None
    dead_maps: int = 0
    maps: int = 0
    index: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    sim_sum: torch.Tensor | None = None
    sim_count: torch.Tensor | None = None
    shift: float | None = None
    psums: list[float] | None = None
    n0: int = 0
    isums: list[float] | None = None
    dkeys: torch.Tensor | None = None
    drows: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    def to(self, device: Any) -> OutputMoments:
        """A copy with the tensors on ``device``."""
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(self, alive=mv(self.alive), index=mv(self.index), gram=mv(self.gram),
                       sim_sum=mv(self.sim_sum), sim_count=mv(self.sim_count),
                       dkeys=mv(self.dkeys), drows=mv(self.drows),
                       shape=list(self.shape), notes=list(self.notes))

    def merge(self, other: OutputMoments) -> OutputMoments:
        """The statistics of both sets of items: counts and sums add, the maximum is taken,
        liveness is OR-ed."""
        if (other.name, other.channels) != (self.name, self.channels) or \
                list(other.shape[1:]) != list(self.shape[1:]):
            raise InputError(
                f"cannot merge statistics of different outputs: {self.name} {self.shape} and "
                f"{other.name} {other.shape}.")

        def add(a: Any, b: Any) -> Any:
            if a is None or b is None:
                return b if a is None else a
            if isinstance(a, torch.Tensor):
                return a + b.to(a.device)
            return a + b

        if self.alive is None or other.alive is None:
            alive = self.alive if other.alive is None else other.alive
        else:
            alive = self.alive | other.alive.to(self.alive.device)
        if self.psums is None or other.psums is None:
            psums, isums = (self.psums, self.isums) if other.psums is None else \
                (other.psums, other.isums)
        else:
            if other.shift != self.shift:
                raise InputError(f"cannot merge statistics of {self.name} taken about different "
                                 "shifts: pass every share the data set's first batch.")
            psums = [a + b for a, b in zip(self.psums, other.psums, strict=True)]
            isums = [a + b for a, b in zip(self.isums, other.isums, strict=True)]
        if self.dkeys is None or other.dkeys is None:
            dkeys, drows = (self.dkeys, self.drows) if other.dkeys is None else \
                (other.dkeys, other.drows)
        else:
            dkeys, drows = _bottom(
                torch.cat([self.dkeys, other.dkeys.to(self.dkeys.device)]),
                torch.cat([self.drows, other.drows.to(self.drows.device)], 1), DISTANCE_VALUES)
        return replace(
            self, shape=[self.shape[0] + other.shape[0], *self.shape[1:]],
            values=self.values + other.values, finite=self.finite + other.finite,
            s1=self.s1 + other.s1, s2=self.s2 + other.s2,
            absmax=max(self.absmax, other.absmax), near_zero=self.near_zero + other.near_zero,
            saturated=add(self.saturated, other.saturated), alive=alive,
            dead_maps=self.dead_maps + other.dead_maps, maps=self.maps + other.maps,
            gram=add(self.gram, other.gram), sim_sum=add(self.sim_sum, other.sim_sum),
            sim_count=add(self.sim_count, other.sim_count),
            shift=self.shift if self.shift is not None else other.shift, psums=psums,
            n0=self.n0 + other.n0, isums=isums, dkeys=dkeys, drows=drows,
            notes=list(self.notes),
        )

    def layer_stats(self, *, dendrogram: bool = False) -> tuple[LayerStats, Any]:
        """``(LayerStats, Clustering or None)`` of everything seen, as
        :func:`~convscope.diagnose.output_stats` gives for one batch (the channel tree from the
        Gram matrix: every value, no value sampling; the thresholds were applied when the
        batches were measured)."""
        st = LayerStats(name=self.name, type=self.type, order=self.order, shape=list(self.shape),
                        kind=self.kind, abstraction=self.abstraction, channels=self.channels,
                        values=self.values, notes=list(self.notes))
        if self.values == 0:
            st.notes.append("empty output; nothing to measure.")
            return st, None
        if self.finite == 0:
            st.nonfinite_share = 1.0
            st.notes.append("every value is NaN or Inf; no statistics, no clustering.")
            return st, None
        fill_stats(st, {
            "values": self.values, "finite": self.finite, "s1": self.s1, "s2": self.s2,
            "absmax": self.absmax, "near_zero": self.near_zero, "saturated": self.saturated,
            "alive": self.alive, "dead_maps": self.dead_maps, "maps": self.maps,
        })
        cl = None
        if self.gram is not None:
            d, n_dead = gram_distances(self.gram)
            sampled = len(self.index) < self.channels
            note = (f"clustered {len(self.index)} of {self.channels} channels (seeded sample)"
                    if sampled else "")
            cl = cluster_distances(d, labels=self.index.cpu().numpy(), n_total=self.channels,
                                   n_dead=n_dead, dendrogram=dendrogram, note=note)
            st.clustered, st.sampled = cl.n, sampled
            if note:
                st.notes.append(note)
            if cl.ok:
                ms = merge_height_stats(cl)
                st.merge_median, st.merge_iqr = ms["median"], ms["iqr"]
                st.merge_q10, st.merge_q90 = ms["q10"], ms["q90"]
            elif cl.note:
                st.notes.append(cl.note)
        if self.psums is not None:  # the whole output's value distribution
            shape = shape_from_sums(self.finite, self.psums, self.n0, self.isums)
            st.zero_share, st.skewness = shape["zero_share"], shape["skewness"]
            st.excess_kurtosis, st.active_kurtosis = (shape["excess_kurtosis"],
                                                      shape["active_kurtosis"])
        if self.drows is not None and self.drows.shape[1] >= MIN_DISTANCE_VALUES:
            chans = self.index[:self.drows.shape[0]].to(self.alive.device)
            live = self.alive.index_select(0, chans).to(self.drows.device)
            st.channel_distance = quantile_distance(self.drows[live])
        if self.sim_sum is not None:
            live = self.alive.index_select(0, self.index.to(self.alive.device)).to(
                self.sim_count.device)
            count = int(self.sim_count[live].sum())
            if count:
                st.input_similarity = float(self.sim_sum[live].sum()) / count
        return st, cl


def _measure(x: torch.Tensor, image: torch.Tensor | None, m: OutputMoments, th: Thresholds,
             module: nn.Module | None, max_channels: int, seed: int,
             items: torch.Tensor | None = None) -> OutputMoments:
    """Statistics of one batch of one output (``m`` gives the name, type, level and the
    distribution's shift); ``items [B]``: the batch's data-set indices (for the
    channel-distance sample)."""
    b = int(x.shape[0])
    out = replace(m, shape=[b, *[int(s) for s in x.shape[1:]]], channels=int(x.shape[1]),
                  notes=list(m.notes))
    if x.numel() == 0:
        return out
    mb = measure_batch(x, thresholds=th, module_type=m.type, module=module)
    xz = mb["xz"]
    idx = sample_indices(out.channels, max_channels, seed, device=xz.device)
    v = xz.transpose(0, 1).reshape(out.channels, -1).index_select(0, idx)  # [C', M]
    out = replace(
        out, values=mb["values"], finite=mb["finite"], s1=mb["s1"], s2=mb["s2"],
        absmax=mb["absmax"], near_zero=mb["near_zero"], saturated=mb["saturated"],
        alive=mb["alive"], dead_maps=mb["dead_maps"], maps=mb["maps"], index=idx,
        gram=(v @ v.T).double(),
    )
    finite = xz if mb["finite"] == mb["values"] else xz[torch.isfinite(x)]
    shift = 0.0 if m.shift is None else m.shift
    _, sums, n0, isums = power_sums(finite, th.dead_atol, shift=shift)
    out = replace(out, shift=shift, psums=sums, n0=n0, isums=isums)
    if items is not None and out.channels >= 2:
        positions = v.shape[1] // b  # [C', B * P] in item-major order (transpose of [B, C', P])
        keys = position_keys(items.to(v.device), positions, seed)
        out.dkeys, out.drows = _bottom(keys, v[:DISTANCE_CHANNELS].float(), DISTANCE_VALUES)
    if m.abstraction == "low" and image is not None and x.dim() == 4:
        terms = similarity_terms(xz.index_select(1, idx), image)
        if terms is not None:
            best, varies = terms
            out.sim_sum = (best.double() * varies).sum(0)
            out.sim_count = varies.sum(0).long()
    return out


def _layers_of(model: nn.Module, example: torch.Tensor, layers: Any
               ) -> tuple[list[str], dict[str, nn.Module]]:
    """The output names to follow and their modules, from one forward pass of ``example``."""
    from ..model import capture
    from ..nn import split_call
    from .core import _execution_order, _nonfinite, default_layers

    calls, output = _execution_order(model, (example,))
    if not calls:
        raise ModelError(f"{type(model).__name__} ran no leaf module returning a tensor; there "
                         "is nothing to diagnose.")
    if layers is None:
        names = default_layers(calls)
    else:
        names = list(capture(model, example[:1], layers))
        if not names:
            raise InputError("none of the chosen layers ran during the forward pass; choose "
                             "layers the forward pass uses (see cs.model.leaf_modules(model)).")
    if "" not in names and _nonfinite(output):  # NaN/inf only at the output: a finding too
        names.append("")
    named = dict(model.named_modules())
    return names, {n: named[split_call(n)[0]] for n in names}


def accumulate_outputs(
    model: nn.Module,
    dataset: Any,
    *,
    layers: Any = None,
    batch_size: int = 64,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    abstraction: Mapping[str, str] | None = None,
    max_channels: int = MAX_CHANNELS,
    seed: int = 0,
    example: torch.Tensor | None = None,
    offset: int = 0,
    quiet: bool = False,
) -> dict[str, OutputMoments]:
    """Stream ``dataset`` through ``model`` (eval mode, no gradients) and accumulate each chosen
    output's :class:`OutputMoments`.

    Args:
        model: the network.
        dataset: images ``[N, C, H, W]``, a map-style ``Dataset`` or an iterable of batches.
        layers: as in :func:`~convscope.diagnose.diagnose` (``None``: every activation output
            plus the head).
        batch_size: images per forward pass (tensor and ``Dataset`` inputs).
        thresholds: measurement settings (dead_atol, near_zero_eps, saturation_margin ...).
        abstraction: ``{layer: "low" | "high"}`` overrides; by default maps at least
            ``low_abstraction_min_scale`` of the input's size are low-abstraction.
        max_channels, seed: layers with more channels keep a Gram matrix over a seeded sample.
        example: a batch that fixes the layers, the input size and the shift of the power sums
            (default: the first batch); under sharding every rank passes the data set's first
            batch.
        offset: added to the running item indices (a share's place in the data set: the
            channel-distance sample depends on the data-set index of each item).
        quiet: hide the progress bar.

    Returns:
        ``{output name: OutputMoments}`` in execution order.
    """
    from ..model import capture
    from ..nn import check_args, check_model, iter_batches, model_device
    from ..nn.budget import progress

    check_model(model)
    th = Thresholds.coerce(thresholds if not isinstance(thresholds, Mapping)
                           else dict(thresholds))
    abstraction = dict(abstraction or {})
    for k, v in abstraction.items():
        if v not in ("low", "high"):
            raise InputError(f"abstraction[{k!r}] = {v!r}: use 'low' or 'high'.")
    batches, total = iter_batches(dataset, batch_size, offset)
    device = model_device(model)
    first = None
    if example is None:
        first = next(iter(batches), None)
        if first is None:
            raise InputError("the data set is empty: there is nothing to diagnose.")
        example = first[1]
    if not isinstance(example, torch.Tensor):
        raise InputError(f"images must be a tensor batch, got {type(example).__name__}.")
    check_args((example,), "images")  # meta, empty, NaN/inf: before moving them
    example = example.to(device)
    names, modules = _layers_of(model, example, layers)
    image = example.dim() == 4
    side = min(int(example.shape[2]), int(example.shape[3])) if image else None
    with torch.no_grad():
        shapes = capture(model, example[:1], names)
    templates: dict[str, OutputMoments] = {}
    for order, name in enumerate(names):
        t = shapes.get(name)
        mtype = type(modules[name]).__name__
        kind = "other" if not isinstance(t, torch.Tensor) or t.dim() < 2 else (
            "features" if t.dim() == 2 else "maps")
        level = abstraction.get(name)
        if level is None:
            level = "high"
            if kind == "maps" and t.dim() == 4 and side is not None and \
                    min(int(t.shape[2]), int(t.shape[3])) >= th.low_abstraction_min_scale * side:
                level = "low"
        shift = None
        if isinstance(t, torch.Tensor) and t.numel() and (t.is_floating_point()):
            fin = t[torch.isfinite(t)]
            shift = float(fin.double().mean()) if fin.numel() else 0.0
        templates[name] = OutputMoments(name=name, type=mtype, order=order, kind=kind,
                                        abstraction=level, shift=shift)
    acc: dict[str, OutputMoments | None] = {n: None for n in names}
    bar = progress(total, quiet=quiet, desc="diagnosis statistics", unit="img")

    def run(items: torch.Tensor, x: torch.Tensor) -> None:
        check_args((x,), "images")
        x = x.to(device)
        outs = capture(model, x, names)
        for name in names:
            out = outs.get(name)
            tm = templates[name]
            if tm.kind == "other" or not isinstance(out, torch.Tensor):
                continue
            m = _measure(out, x if image else None, tm, th, modules[name], max_channels, seed,
                         items)
            acc[name] = m if acc[name] is None else acc[name].merge(m)
        bar.update(int(x.shape[0]))

    try:
        if first is not None:
            run(first[0], first[1])
        for items, x, _ in batches:
            run(items, x)
    finally:
        bar.close()
    result = {}
    for name in names:
        m = acc[name]
        if m is None:
            m = replace(templates[name])
            shape = shapes.get(name)
            m.shape = list(shape.shape) if isinstance(shape, torch.Tensor) else []
            if m.kind == "other":
                m.notes.append("output has no channel dimension (or is not a tensor); "
                               "not analysed.")
        result[name] = m
    return result


def merge_outputs(parts: Sequence[Mapping[str, OutputMoments]]) -> dict[str, OutputMoments]:
    """Merge :func:`accumulate_outputs` results over disjoint shares (in order)."""
    parts = [p for p in parts if p]
    if not parts:
        raise InputError("no statistics to merge: every share was empty.")
    out = dict(parts[0])
    for p in parts[1:]:
        if list(p) != list(out):
            raise InputError(f"cannot merge statistics of different layers: {list(out)} and "
                             f"{list(p)}.")
        for name, m in p.items():
            out[name] = out[name].merge(m) if out[name].values or out[name].gram is not None \
                else m
    return out


def report_of(
    model: nn.Module,
    moments: Mapping[str, OutputMoments],
    *,
    params: Any = None,
    layers: Any = None,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    views_inputs: torch.Tensor | None = None,
    seed: int = 0,
    meta: Mapping[str, Any] | None = None,
) -> Report:
    """The :class:`Report` of accumulated statistics: the rules applied to every output's
    :meth:`OutputMoments.layer_stats` and to the weights (``params`` as in
    :func:`~convscope.diagnose.diagnose`). ``views_inputs``: a batch whose figure data (maps,
    kernels, trees, KDEs) the report carries for the dashboard — the numbers and findings
    always cover every item."""
    from .core import choose_params, finish_report

    th = Thresholds.coerce(thresholds if not isinstance(thresholds, Mapping)
                           else dict(thresholds))
    from ..nn import split_call

    named = dict(model.named_modules())
    chosen = None if layers is None else {n: named[split_call(n)[0]] for n in moments}
    pmods = choose_params(model, params, chosen)
    layer_stats = [m.layer_stats()[0] for m in moments.values()]
    param_list: list[ParamStats] = [
        param_stats(m, name=n, order=i, thresholds=th, seed=seed)[0]
        for i, (n, m) in enumerate(pmods.items())
    ]
    report = Report(thresholds=th, meta=dict(meta or {}))
    if views_inputs is not None:  # the figures of one batch, captioned with the whole set's numbers
        from ..model import capture
        from .views import output_view, param_view

        image = views_inputs if views_inputs.dim() == 4 else None
        acts = capture(model, views_inputs, list(moments))
        for st in layer_stats:
            x = acts.get(st.name)
            if st.kind in ("maps", "features") and isinstance(x, torch.Tensor) and x.numel():
                report.output_views[st.name] = output_view(
                    x, name=st.name, module_type=st.type,
                    reference=image if x.dim() == 4 else None, thresholds=th, seed=seed,
                    stats=st.to_dict())
        for ps, (name, module) in zip(param_list, pmods.items(), strict=True):
            report.param_views[name] = param_view(module, None, name=name, thresholds=th,
                                                  seed=seed, stats=ps.to_dict())
        report.meta["views_from"] = f"the first {int(views_inputs.shape[0])} images"
    items = next((m.shape[0] for m in moments.values() if m.shape), 0)
    report.meta.update({"model": type(model).__name__, "layers": list(moments),
                        "params": list(pmods), "items": int(items)})
    return finish_report(report, layer_stats, param_list, th)


def diagnose_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    layers: Any = None,
    params: Any = None,
    batch_size: int = 64,
    thresholds: Thresholds | Mapping[str, float] | None = None,
    abstraction: Mapping[str, str] | None = None,
    views: bool = False,
    max_channels: int = MAX_CHANNELS,
    seed: int = 0,
    quiet: bool = False,
) -> Report:
    """Wang & Li (2020)'s diagnosis with the layer statistics of a whole data set.

    Like :func:`~convscope.diagnose.diagnose`, but every batch of ``dataset`` is measured and
    the statistics add up (:class:`OutputMoments`): "dead" means dead on every image, the
    channel trees use the cosine distances over every value of every image. ``views=True`` adds
    the figure data of the first batch. Under ``torchrun``,
    :func:`convscope.distributed.diagnose_sharded` splits the pass across processes.

    Returns:
        :class:`Report` (``report.meta["items"]``: images measured).
    """
    return run_pass(DiagnosisPass(
        model, dataset, layers=layers, params=params, batch_size=batch_size,
        thresholds=thresholds, abstraction=abstraction, views=views, max_channels=max_channels,
        seed=seed, quiet=quiet))


class DiagnosisPass(DatasetPass[dict[str, OutputMoments], Report]):
    """:func:`diagnose_dataset` as a data-set pass (:mod:`convscope.nn.passes`): a share's
    partial is ``{output: OutputMoments}`` (:func:`accumulate_outputs` of a slice of the data
    set, layers and reference sizes fixed by the data set's first batch), partials merge with
    :func:`merge_outputs` (counts and sums add, maxima are taken, liveness ORs), and
    :meth:`finish` applies the rules (:func:`report_of`). ``run_sharded(DiagnosisPass(...))`` is
    :func:`convscope.distributed.diagnose_sharded`. Arguments as for :func:`diagnose_dataset`.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Any,
        *,
        layers: Any = None,
        params: Any = None,
        batch_size: int = 64,
        thresholds: Thresholds | Mapping[str, float] | None = None,
        abstraction: Mapping[str, str] | None = None,
        views: bool = False,
        max_channels: int = MAX_CHANNELS,
        seed: int = 0,
        quiet: bool = False,
    ) -> None:
        from ..nn import unwrap

        self.t0 = time.perf_counter()
        self.model = unwrap(model)
        super().__init__(dataset, batch_size, "diagnosis statistics")
        self.layers, self.params, self.thresholds = layers, params, thresholds
        self.abstraction, self.views = abstraction, bool(views)
        self.max_channels, self.seed, self.quiet = max_channels, seed, quiet
        self._first: torch.Tensor | None = None

    def first(self) -> torch.Tensor:
        """The data set's first batch: every share chooses layers and reference sizes from it,
        and the report's figures show it."""
        if self._first is None:
            from ..nn import iter_batches

            self._first = next(iter(iter_batches(self.dataset, self.align)[0]))[1]
        return self._first

    def run(self, share: Share) -> dict[str, OutputMoments]:
        piece, offset = self.piece(share)
        return accumulate_outputs(
            self.model, piece, layers=self.layers, batch_size=self.align,
            thresholds=self.thresholds, abstraction=self.abstraction,
            max_channels=self.max_channels, seed=self.seed,
            example=None if share.whole else self.first(), offset=offset, quiet=self.quiet)

    def merge(self, partials: Sequence[Mapping[str, OutputMoments]]) -> dict[str, OutputMoments]:
        return merge_outputs(partials)

    def finish(self, partial: Mapping[str, OutputMoments]) -> Report:
        report = report_of(self.model, partial, params=self.params, layers=self.layers,
                           thresholds=self.thresholds,
                           views_inputs=self.first() if self.views else None, seed=self.seed)
        report.meta["seconds"] = time.perf_counter() - self.t0
        return report
