"""Hooks that record weight and gradient statistics of every conv and linear layer while a model
trains, without making the training loop wait.

A :class:`Watcher` counts training steps by forward passes of the model in training mode with
gradients enabled (step 1 is the first). At every ``every``-th step, a hook on each watched weight
fires as soon as backward has accumulated its gradient and computes that layer's statistics with a
few batched tensor ops on the model's device (:mod:`convscope.track.stats`); for a CPU model, one
fused pass over the weight, the gradient and the snapshot (:mod:`convscope.track.native`) where
the system's C compiler is available. The results of a step
are copied off the device asynchronously (non-blocking copy + CUDA event on a GPU) and handed to
``sink`` at the start of a later step, so neither the copy nor the writing stalls training. On the
CPU the hook can instead copy the weight and gradient into reused buffers and leave the
statistics to a worker thread (``background``), so the step waits only for the two copies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, LayerNotFoundError, ModelError, suggest
from ..nn import unwrap as strip_wrapper
from . import native
from .stats import (
    FILTER_COLUMNS,
    LAYER_COLUMNS,
    FusedRows,
    LayerRecorder,
    finish_stats,
    fused_raw_rows,
)

__all__ = ["Watcher", "watched_layers", "strip_wrapper"]

Sink = Callable[[int, dict[str, Any], dict[str, Any]], None]
#: recorded steps handed to the sink in one call (or fewer, after EMIT_AFTER_S seconds)
EMIT_BATCH = 16
EMIT_AFTER_S = 2.0
WATCHED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.Linear)


def watched_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Conv and linear layers with a trainable weight, by module path (or the named ones)."""
    inner = strip_wrapper(model)
    named = dict(inner.named_modules())
    if layers is None:
        return {n: m for n, m in named.items() if isinstance(m, WATCHED_TYPES)
                and getattr(m, "weight", None) is not None and m.weight.requires_grad}
    out = {}
    for name in layers:
        if name not in named:
            raise LayerNotFoundError(f"no layer {name!r} in {type(inner).__name__}."
                                     + suggest(name, named))
        w = getattr(named[name], "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() < 1:
            raise InputError(f"layer {name!r} ({type(named[name]).__name__}) has no weight "
                             "tensor to watch: pick conv or linear layers.")
        out[name] = named[name]
    return out


@dataclass
class _StepRecord:
    step: int
    layers: list[str] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # (raw, rows, exact) or FusedRows
    futures: list[Future] = field(default_factory=list)
    exact: list[list[float]] = field(default_factory=list)
    event: Any = None
    host: tuple[torch.Tensor, torch.Tensor] | None = None


class Watcher:
    """Record layer and filter statistics every ``every`` training steps (see module doc).

    Args:
        model: the model (DDP-wrapped models are fine; names are the inner model's).
        sink: ``sink(step, layer_columns, filter_columns)`` receives numpy columns for the
            ``watch_layers`` and ``watch_filters`` tables, of up to :data:`EMIT_BATCH`
            recorded steps at once (``step``: the last of them).
        every: record every ``every``-th step.
        layers: module paths to watch (default: every conv and linear layer).
        filters: also record per-filter statistics.
        background: compute the statistics in a background thread (CPU models): the hook
            only copies the weight and the gradient (two ``copy_`` into reused buffers, about
            3 ms for resnet18's 11 M weights) and a worker thread computes the rest while the
            next step runs (torch ops release the GIL). Costs three weight-sized buffers
            instead of one. Default (None): on when the model is on the CPU and torch uses
            fewer threads than there are cores (a core is left for the worker); otherwise the
            statistics are computed in the hook (on a GPU they are asynchronous kernels anyway).
            When the fused CPU pass is used (it costs about as much as the two copies alone),
            the default is off: the hook computes everything.
        fused: compute a CPU layer's statistics in one compiled pass over its weight, gradient
            and snapshot (:mod:`convscope.track.native`; about 5x cheaper than torch ops).
            Default (None): when it compiled and passed its self-test. ``True`` raises
            :class:`~convscope.errors.InputError` when it is not available; ``False`` uses torch
            ops. Layers it does not apply to (not a dense float32 CPU weight) use torch ops.
    """

    def __init__(self, model: nn.Module, sink: Sink, *, every: int = 10,
                 layers: Iterable[str] | None = None, filters: bool = True,
                 background: bool | None = None, fused: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"watch needs an nn.Module, got {type(model).__name__}.")
        if not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a positive int, got {every!r}.")
        self.model = model
        self.sink = sink
        self.every = every
        self.filters = filters
        self.layers = watched_layers(model, layers)
        if not self.layers:
            raise InputError(f"{type(strip_wrapper(model)).__name__} has no conv or linear layer "
                             "with a trainable weight to watch.")
        if fused not in (None, True, False):
            raise InputError(f"fused must be None, True or False, got {fused!r}.")
        if fused and not native.available():
            raise InputError("fused=True needs a C compiler (cc or $CC) for convscope's fused "
                             "statistics pass; install one, or pass fused=None to use torch "
                             "ops without it.")
        self.step = 0
        self._current: _StepRecord | None = None
        self._pending: list[_StepRecord] = []
        self._ready: list[_StepRecord] = []  # finished, not yet handed to the sink
        self._ready_since = 0.0
        self._col_cache: dict[tuple[str, ...], tuple[Any, ...]] = {}
        # one recorder (preallocated snapshot) per layer, one scratch buffer for all of them
        self._recorders = {name: LayerRecorder() for name in self.layers}
        self._scratch: dict[Any, torch.Tensor] = {}
        first = next(iter(self.layers.values())).weight
        self.fused = (not first.is_cuda and native.available()) if fused is None else bool(fused)
        if background is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
                else (os.cpu_count() or 1)
            background = not first.is_cuda and torch.get_num_threads() < cores \
                and not self.fused
        self.background = bool(background) and not first.is_cuda
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="convscope-watch") \
            if self.background else None
        self._inflight: dict[str, Future] = {}
        self._grad_buf: dict[str, torch.Tensor] = {}
        # Gradients are copied until the loop is seen to replace them (zero_grad with
        # set_to_none=True, the default): from then on the worker reads the gradient tensor
        # itself, checking its version counter; an in-place change (zero_grad(set_to_none=
        # False), clipping, accumulation) while it reads voids that record's gradient
        # statistics (NaN) and switches back to copying for good.
        self._grad_by_ref = False
        self._grad_ref_voided = False  # an in-place change was seen: copy from then on
        self._held: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = [model.register_forward_pre_hook(self._on_forward)]
        for name, module in self.layers.items():
            self._handles.append(
                module.weight.register_post_accumulate_grad_hook(self._grad_hook(name, module)))

    # -- hooks -------------------------------------------------------------------------------
    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        if self._current is not None:
            self._finish_current()
        if self._held:  # were last record's gradients replaced (not zeroed in place)?
            self._grad_by_ref = not self._grad_ref_voided and all(
                self.layers[n].weight.grad is not g for n, g in self._held.items())
            self._held.clear()
        self._emit_ready()
        self.step += 1
        if self.step % self.every == 0:
            self._current = _StepRecord(self.step)

    def _grad_hook(self, name: str, module: nn.Module) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            rec = self._current
            if rec is None or (rec.layers and name in rec.layers):
                return
            w, g = param.detach(), param.grad
            rec.layers.append(name)
            if self._pool is not None:
                rec.futures.append(self._submit(name, w, g))
            else:
                recorder = self._recorders[name]
                fused = recorder.fused(w, g) if self.fused and not w.is_cuda else None
                rec.results.append(fused if fused is not None
                                   else recorder(w, g, self._scratch_for(w)))

        return hook

    def _submit(self, name: str, w: torch.Tensor, g: torch.Tensor | None) -> Future:
        """Copy ``w`` and ``g`` into this layer's buffers and hand them to the worker."""
        assert self._pool is not None
        prev = self._inflight.pop(name, None)
        if prev is not None:  # its buffers are about to be reused
            prev.result()
        recorder = self._recorders[name]
        shape = (w.shape[0], w[0].numel()) if w.dim() else (1, 1)
        wb = recorder.spare
        if wb is None or wb.shape != shape:
            wb = torch.empty(shape, dtype=torch.float32)
        recorder.spare = None
        wb.copy_(w.reshape(shape))
        gb, version = None, None
        if g is not None:
            if self._grad_by_ref:
                gb, version = g.detach(), g._version
            else:
                self._held[name] = g
                gb = self._grad_buf.get(name)
                if gb is None or gb.shape != shape:
                    gb = self._grad_buf[name] = torch.empty(shape, dtype=torch.float32)
                gb.copy_(g.detach().reshape(shape))
        fut = self._pool.submit(self._work, recorder, wb, gb, g, version)
        self._inflight[name] = fut
        return fut

    def _work(self, recorder: LayerRecorder, w: torch.Tensor, g: torch.Tensor | None,
              grad: torch.Tensor | None, version: int | None
              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        scratch = self._scratch.get("worker")
        if scratch is None or scratch.numel() < w.numel():
            size = max(max(m.weight.numel() for m in self.layers.values()), w.numel())
            scratch = self._scratch["worker"] = torch.empty(size, dtype=torch.float32)
        raw, rows, exact = recorder(w, g, scratch, own=True)
        if version is not None and grad is not None and grad._version != version:
            # the gradient changed in place while (or before) it was read: void its stats
            self._grad_ref_voided, self._grad_by_ref = True, False
            raw = torch.cat([raw[:5], raw.new_full((5,), float("nan"))])
            rows = rows.clone()
            rows[1] = float("nan")
            exact = [exact[0], float("nan")]
        return raw, rows, exact

    def _scratch_for(self, w: torch.Tensor) -> torch.Tensor:
        """A float32 buffer on ``w``'s device as large as the largest watched weight."""
        buf = self._scratch.get(w.device)
        if buf is None or buf.numel() < w.numel():
            size = max(max(m.weight.numel() for m in self.layers.values()), w.numel())
            buf = self._scratch[w.device] = torch.empty(size, dtype=torch.float32,
                                                        device=w.device)
        return buf

    # -- hand-off ----------------------------------------------------------------------------
    def _finish_current(self) -> None:
        rec, self._current = self._current, None
        if rec is None or not rec.layers:
            return
        if rec.futures:  # background: stacked once the worker is done (_emit_ready)
            self._pending.append(rec)
            return
        self._stack(rec)
        self._pending.append(rec)

    def _stack(self, rec: _StepRecord) -> None:
        if rec.futures:
            rec.results = [f.result() for f in rec.futures]
            rec.futures = []
        fused = [r for r in rec.results if isinstance(r, FusedRows)]
        if len(fused) == len(rec.results):  # the fused CPU pass: numpy for all layers at once
            raw, rows, exact = fused_raw_rows(fused)
            rec.results, rec.exact = [], exact.tolist()
            rec.host = (torch.from_numpy(raw), torch.from_numpy(rows))
            return
        if fused:  # a mix (a layer fell back to torch ops): each fused layer on its own
            rec.results = [self._unfuse(r) if isinstance(r, FusedRows) else r
                           for r in rec.results]
        raws = [r[0] if len(r[0]) == 10 else torch.cat([r[0], r[0].new_full((5,), float("nan"))])
                for r in rec.results]  # NaN for a layer without gradient
        rec.exact = [r[2] for r in rec.results]
        stats = torch.stack(raws)  # [L, 10] raw reductions
        filt = torch.cat([r[1] for r in rec.results], dim=1)  # [4, ΣF] per-filter norms
        rec.results = []
        if stats.is_cuda:
            pin = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
            pin_f = torch.empty(filt.shape, dtype=filt.dtype, pin_memory=True)
            pin.copy_(stats, non_blocking=True)
            pin_f.copy_(filt, non_blocking=True)
            rec.event = torch.cuda.Event()
            rec.event.record()
            rec.host = (pin, pin_f)
        else:
            rec.host = (stats.cpu(), filt.cpu())

    @staticmethod
    def _unfuse(r: FusedRows) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        raw, rows, exact = fused_raw_rows([r])
        return (torch.from_numpy(raw[0]).float(), torch.from_numpy(rows).float(),
                exact[0].tolist())

    def _emit_ready(self, wait: bool = False) -> None:
        """Move finished records to the ready list; hand the ready ones to the sink together
        once there are :data:`EMIT_BATCH` of them, the oldest waited :data:`EMIT_AFTER_S`
        seconds, or ``wait`` (flush): one sink call per batch instead of per step."""
        while self._pending:
            rec = self._pending[0]
            if rec.futures:
                if not wait and not all(f.done() for f in rec.futures):
                    break
                self._stack(rec)
            if rec.event is not None and not rec.event.query():
                if not wait:
                    break
                rec.event.synchronize()
            self._pending.pop(0)
            if not self._ready:
                self._ready_since = time.monotonic()
            self._ready.append(rec)
        if self._ready and (wait or len(self._ready) >= EMIT_BATCH
                            or time.monotonic() - self._ready_since >= EMIT_AFTER_S):
            ready, self._ready = self._ready, []
            self._emit(ready)

    def _columns_of(self, layers: tuple[str, ...]) -> tuple[Any, ...]:
        """The constant columns of a record with these layers (cached: usually one set)."""
        got = self._col_cache.get(layers)
        if got is None:
            counts = np.array([self.layers[n].weight.shape[0] for n in layers], dtype=np.int64)
            sizes = np.array([self.layers[n].weight.numel() for n in layers], dtype=np.int64)
            names = np.array(layers, dtype=object)
            got = (names, counts, sizes, np.repeat(names, counts),
                   np.concatenate([np.arange(c, dtype=np.int32) for c in counts]))
            if len(self._col_cache) < 64:
                self._col_cache[layers] = got
        return got

    def _emit(self, recs: list[_StepRecord]) -> None:
        raws, rows, exacts, counts, sizes, cols = [], [], [], [], [], []
        for rec in recs:
            raw, row = (t.numpy() for t in rec.host)
            c = self._columns_of(tuple(rec.layers))
            raws.append(raw)
            rows.append(row)
            exacts.append(np.asarray(rec.exact, dtype=np.float64).reshape(-1, 2))
            counts.append(c[1])
            sizes.append(c[2])
            cols.append(c)
        stats, filt = finish_stats(np.concatenate(raws), np.concatenate(rows, axis=1),
                                   np.concatenate(exacts), np.concatenate(counts),
                                   np.concatenate(sizes))
        n_layers = [len(c[0]) for c in cols]
        steps = np.array([rec.step for rec in recs], dtype=np.int64)
        layer_cols: dict[str, Any] = {
            "step": np.repeat(steps, n_layers),
            "layer": np.concatenate([c[0] for c in cols]),
        }
        for j, col in enumerate(LAYER_COLUMNS):
            layer_cols[col] = stats[:, j].astype(np.float32)
        filter_cols: dict[str, Any] = {}
        if self.filters and len(filt):
            filter_cols = {
                "step": np.repeat(steps, [len(c[3]) for c in cols]),
                "layer": np.concatenate([c[3] for c in cols]),
                "filter": np.concatenate([c[4] for c in cols]),
            }
            for j, col in enumerate(FILTER_COLUMNS):
                filter_cols[col] = filt[:, j].astype(np.float32)
        self.sink(recs[-1].step, layer_cols, filter_cols)

    def flush(self) -> None:
        """Hand everything recorded so far to the sink (waits for device copies)."""
        self._finish_current()
        self._emit_ready(wait=True)

    def remove(self) -> None:
        """Flush and remove every hook."""
        self.flush()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._inflight.clear()
        self._grad_buf.clear()
        self._recorders.clear()
        self._scratch.clear()
        self._col_cache.clear()
