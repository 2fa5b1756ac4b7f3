"""Per-layer resources: parameter, gradient and activation bytes, forward and backward time.

:func:`profile` (exported as ``cs.profile``) returns one row per module the forward pass used —
leaf layers, the blocks that contain them, and the model itself — so a stage -> block -> leaf
drill-down (a sunburst or ring chart of shares) is a filter on ``parent``.

How it measures (see docs/model.md):

* **Memory** is exact for tensors: ``numel * element_size`` of the parameters, buffers, parameter
  gradients and layer outputs. Allocator overhead, workspace memory of kernels and the autograd
  graph's saved tensors beyond the layer outputs are not included.
* **Forward time**: a forward pre-hook and a forward hook on every module read
  ``time.perf_counter`` (after ``torch.cuda.synchronize`` on a GPU); per module the time of one pass
  is summed over its calls. Over ``repeat`` passes the *interquartile passes* are kept — the
  middle half when the passes are ranked by their summed leaf time — and each module's time is
  its mean over those passes. Unlike per-module medians (whose sum falls below the median of the
  whole under noisy load), this keeps the leaf times additive: their sum is the interquartile mean
  of the per-pass leaf totals. Warm-up passes run first and are not counted. The whole forward is
  timed without hooks in the same passes (interquartile mean), so ``df.attrs["forward_coverage"]``
  = ``leaf_forward_sum_s / whole_forward_s`` says how much of the forward the leaves account for
  (the rest: functional ops such as residual adds, Python between layers).
* **Backward time**: the autograd nodes each module created in its forward are found by walking
  from its outputs' ``grad_fn`` back to its inputs' ``grad_fn``; hooks on those nodes time each
  node's execution in the backward pass, and a module's backward time is the sum over its nodes.
  Unlike module backward hooks, this works with in-place ReLUs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidValueError
from ..nn import (
    as_args,
    check_model,
    flat_tensors,
    forward,
    is_leaf,
    module_names,
    preserved,
)

__all__ = ["profile"]

MEMORY_NOTE = (
    "bytes are numel * element_size of the tensors (parameters, buffers, parameter gradients, "
    "layer outputs); allocator overhead, kernel workspaces and autograd's other saved tensors "
    "are not counted"
)


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _storage_ptr(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # pragma: no cover - exotic tensor subclasses
        return -1


class _State:
    """Saves the model's train flags, buffers and parameter gradients and puts them back."""

    def __init__(self, model: nn.Module, train: bool) -> None:
        self.model = model
        self.flags = [(m, m.training) for m in model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.grads = [(p, p.grad) for p in model.parameters()]
        model.train(train)
        for p in model.parameters():
            p.grad = None

    def restore(self) -> None:
        for m, flag in self.flags:
            m.training = flag
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        for p, g in self.grads:
            p.grad = g


def _sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _backward(out: Any) -> bool:
    """Backward from every floating-point output that requires grad (upstream gradient 1)."""
    outs = [t for t in flat_tensors(out) if t.requires_grad and t.is_floating_point()]
    if not outs:
        return False
    torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])
    return True


def _middle(runs: list[float]) -> list[int]:
    """Indices of the middle half of the runs (by value): the interquartile passes."""
    ranked = sorted(range(len(runs)), key=runs.__getitem__)
    n = len(ranked)
    lo = n // 4
    hi = max(n - n // 4, lo + 1)
    return ranked[lo:hi]


def _iq_mean(runs: list[float]) -> float:
    """Interquartile mean: the mean of the middle half of the runs."""
    keep = _middle(runs)
    return sum(runs[i] for i in keep) / len(keep)


def _subgraph(out_fns: list[Any], stop: set[int]) -> list[Any]:
    """Autograd nodes reachable from ``out_fns`` without passing a node in ``stop`` (ids)."""
    seen: dict[int, Any] = {}
    todo = [f for f in out_fns if f is not None]
    while todo:
        f = todo.pop()
        if id(f) in seen or id(f) in stop:
            continue
        seen[id(f)] = f
        for nxt, _ in f.next_functions:
            if nxt is not None:
                todo.append(nxt)
    return list(seen.values())


def profile(
    model: nn.Module,
    example_inputs: Any,
    *,
    backward: bool = True,
    repeat: int = 10,
    warmup: int = 2,
    train: bool = False,
    threads: int | None = None,
    quiet: bool = True,
) -> Any:
    """Measure memory and time of every layer and block of ``model`` on ``example_inputs``.

    Args:
        model: the network (CPU or GPU; inputs on the same device).
        example_inputs: ``[B, C, H, W]`` tensor (or tuple of forward arguments). Batch and size
            set the activation bytes and the times.
        backward: also time the backward pass (upstream gradient of ones on every output).
        repeat: measured passes; times are interquartile means over them (see module doc).
        warmup: passes run first and thrown away.
        train: run in train mode (batch statistics); the model's buffers (running statistics),
            parameter gradients and train/eval flags are restored afterwards either way.
        threads: CPU threads for torch during the measurement (restored afterwards); ``1`` gives
            far steadier CPU figures on a busy machine. ``None`` keeps the current setting.
        quiet: hide the progress bar.

    Returns:
        ``pandas.DataFrame`` with one row per module used, in execution order, columns:
        ``name`` (module path, ``""`` = the model), ``type``, ``level`` (``"model"``, ``"block"``,
        ``"leaf"``), ``depth``, ``parent``, ``calls``, ``params``, ``param_bytes``,
        ``buffer_bytes``, ``grad_bytes`` (parameter gradients), ``output_bytes`` (all outputs of all
        calls), ``inplace`` (leaf output reuses its input's memory: in-place op or view),
        ``activation_bytes`` (new memory for outputs: a leaf's ``output_bytes`` unless ``inplace``;
        a block's sum over its leaves), ``memory_bytes`` (param + buffer + grad + activation),
        ``forward_s``, ``backward_s``, ``time_s`` and shares ``forward_share``,
        ``backward_share``, ``time_share``, ``param_share``, ``activation_share``,
        ``memory_share`` — each the row's figure divided by the sum over *leaf* rows, so leaf
        shares sum to 1 and a block's share is its part of the leaves' total.
        ``df.attrs`` holds ``leaf_forward_sum_s``, ``whole_forward_s``, ``forward_coverage``
        (their ratio), ``leaf_backward_sum_s``, ``whole_backward_s``, ``backward_coverage``,
        ``repeat``, ``warmup``, ``device``, ``input_shapes`` and ``memory_note``.
    """
    import pandas as pd

    from ..nn.budget import progress

    check_model(model)
    args = as_args(example_inputs)
    if not isinstance(repeat, int) or repeat < 1:
        raise InvalidValueError(f"repeat must be an int >= 1, got {repeat!r}.")
    if not isinstance(warmup, int) or warmup < 0:
        raise InvalidValueError(f"warmup must be an int >= 0, got {warmup!r}.")
    names = module_names(model)
    tensors_in = flat_tensors(args)
    device = tensors_in[0].device if tensors_in else torch.device("cpu")
    sync = _sync(device)
    grad_on = backward and any(p.requires_grad for p in model.parameters())

    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidValueError(f"threads must be None or an int >= 1, got {threads!r}.")
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    keep = preserved(model)  # requires_grad, hooks, normalisation statistics
    keep.__enter__()
    state = _State(model, train)
    try:
        with torch.set_grad_enabled(grad_on):
            # -- information pass: order, calls, output bytes, in-place outputs -------------
            order: list[str] = []
            calls: dict[str, int] = defaultdict(int)
            out_bytes: dict[str, int] = defaultdict(int)
            inplace: dict[str, bool] = defaultdict(bool)
            in_ptrs: dict[str, list[set[int]]] = defaultdict(list)

            def info_pre(path: str) -> Callable[..., None]:
                def hook(mod: nn.Module, a: Any, kw: Any) -> None:
                    if path not in calls:
                        order.append(path)
                    calls[path] += 1
                    in_ptrs[path].append({_storage_ptr(t) for t in flat_tensors((a, kw))})

                return hook

            def info_post(path: str) -> Callable[..., None]:
                def hook(mod: nn.Module, a: Any, kw: Any, out: Any) -> None:
                    outs = flat_tensors(out)
                    out_bytes[path] += _nbytes(outs)
                    ptrs = in_ptrs[path].pop() if in_ptrs[path] else set()
                    if outs and all(_storage_ptr(t) in ptrs for t in outs):
                        inplace[path] = True

                return hook

            handles = []
            try:
                for mod, path in names.items():
                    handles.append(mod.register_forward_pre_hook(info_pre(path), with_kwargs=True))
                    handles.append(
                        mod.register_forward_hook(info_post(path), with_kwargs=True, always_call=True)
                    )
                out = forward(model, args, "profile")
            finally:
                for h in handles:
                    h.remove()
            did_backward = grad_on and _backward(out)
            del out
            grad_bytes = {
                path: _nbytes([p.grad for p in mod.parameters() if p.grad is not None])
                if did_backward
                else _nbytes([p for p in mod.parameters() if p.requires_grad])
                for mod, path in names.items()
            }
            for p in model.parameters():
                p.grad = None

            bar = progress(warmup + repeat, quiet=quiet, desc="profile", unit="pass")
            for _ in range(warmup):
                out = forward(model, args, "profile")
                sync()
                if did_backward:
                    _backward(out)
                    sync()
                    model.zero_grad(set_to_none=True)
                del out
                bar.update(1)

            fwd: dict[str, list[float]] = defaultdict(list)
            bwd: dict[str, list[float]] = defaultdict(list)
            whole_f: list[float] = []
            whole_b: list[float] = []
            for _ in range(repeat):
                # 1) the whole pass, no hooks
                sync()
                t0 = time.perf_counter()
                out = forward(model, args, "profile")
                sync()
                whole_f.append(time.perf_counter() - t0)
                if did_backward:
                    t0 = time.perf_counter()
                    _backward(out)
                    sync()
                    whole_b.append(time.perf_counter() - t0)
                    model.zero_grad(set_to_none=True)
                del out
                # 2) forward with timing hooks
                fwd_pass = _timed_forward(model, names, args, sync)
                for path in order:
                    fwd[path].append(fwd_pass.get(path, 0.0))
                # 3) forward recording autograd nodes, backward with node timers
                if did_backward:
                    bwd_pass = _timed_backward(model, names, args, sync)
                    for path in order:
                        bwd[path].append(bwd_pass.get(path, 0.0))
                    model.zero_grad(set_to_none=True)
                bar.update(1)
            bar.close()
    finally:
        state.restore()
        keep.__exit__(None, None, None)
        torch.set_num_threads(saved_threads)

    rows = []
    named = dict(model.named_modules())
    leaf_paths = {p for p in order if is_leaf(named[p])}  # includes "" for a bare leaf model
    leaf_fwd_runs = [sum(fwd[p][i] for p in leaf_paths) for i in range(repeat)]
    keep_f = _middle(leaf_fwd_runs)
    leaf_bwd_runs = [sum(bwd[p][i] for p in leaf_paths) for i in range(repeat)] if did_backward else []
    keep_b = _middle(leaf_bwd_runs) if did_backward else []

    def pick(runs: list[float], keep: list[int]) -> float:
        return sum(runs[i] for i in keep) / len(keep)
    for path in order:
        mod = named[path]
        leaf = path in leaf_paths
        params = list(mod.parameters())
        row = {
            "name": path,
            "type": type(mod).__name__,
            "level": "model" if path == "" else ("leaf" if leaf else "block"),
            "depth": 0 if path == "" else path.count(".") + 1,
            "parent": None if path == "" else path.rpartition(".")[0],
            "calls": calls[path],
            "params": sum(p.numel() for p in params),
            "param_bytes": _nbytes(params),
            "buffer_bytes": _nbytes(list(mod.buffers())),
            "grad_bytes": grad_bytes[path],
            "output_bytes": out_bytes[path],
            "inplace": bool(inplace[path]) if leaf else False,
            "forward_s": pick(fwd[path], keep_f),
            "backward_s": pick(bwd[path], keep_b) if did_backward else float("nan"),
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    act = {
        r["name"]: (0 if r["inplace"] else r["output_bytes"]) for r in rows if r["name"] in leaf_paths
    }

    def under(path: str, leaf: str) -> bool:
        return path == "" or leaf == path or leaf.startswith(path + ".")

    df["activation_bytes"] = [
        act[p] if p in leaf_paths else sum(v for leaf, v in act.items() if under(p, leaf))
        for p in df["name"]
    ]
    df["memory_bytes"] = (
        df["param_bytes"] + df["buffer_bytes"] + df["grad_bytes"] + df["activation_bytes"]
    )
    df["time_s"] = df["forward_s"] + (df["backward_s"].fillna(0.0) if did_backward else 0.0)
    is_leaf_row = df["name"].isin(leaf_paths)
    for col, share in [
        ("forward_s", "forward_share"),
        ("backward_s", "backward_share"),
        ("time_s", "time_share"),
        ("param_bytes", "param_share"),
        ("activation_bytes", "activation_share"),
        ("memory_bytes", "memory_share"),
    ]:
        total = df.loc[is_leaf_row, col].sum()
        df[share] = df[col] / total if total and total == total else float("nan")
    cols = [
        "name", "type", "level", "depth", "parent", "calls", "params", "param_bytes",
        "buffer_bytes", "grad_bytes", "output_bytes", "inplace", "activation_bytes",
        "memory_bytes", "forward_s", "backward_s", "time_s", "forward_share", "backward_share",
        "time_share", "param_share", "activation_share", "memory_share",
    ]
    df = df[cols]
    leaf_f = float(df.loc[is_leaf_row, "forward_s"].sum())
    whole_fs = _iq_mean(whole_f)
    df.attrs.update(
        {
            "leaf_forward_sum_s": leaf_f,
            "whole_forward_s": whole_fs,
            "forward_coverage": leaf_f / whole_fs if whole_fs > 0 else float("nan"),
            "whole_forward_runs_s": whole_f,
            "leaf_forward_runs_s": leaf_fwd_runs,
            "repeat": repeat,
            "warmup": warmup,
            "threads": torch.get_num_threads() if threads is None else threads,
            "device": str(device),
            "input_shapes": [list(t.shape) for t in tensors_in],
            "backward": bool(did_backward),
            "memory_note": MEMORY_NOTE,
        }
    )
    if did_backward:
        leaf_b = float(df.loc[is_leaf_row, "backward_s"].sum())
        whole_bs = _iq_mean(whole_b)
        df.attrs.update(
            {
                "leaf_backward_sum_s": leaf_b,
                "whole_backward_s": whole_bs,
                "backward_coverage": leaf_b / whole_bs if whole_bs > 0 else float("nan"),
                "whole_backward_runs_s": whole_b,
                "leaf_backward_runs_s": leaf_bwd_runs,
            }
        )
    return df


def _timed_forward(
    model: nn.Module,
    names: dict[nn.Module, str],
    args: tuple[Any, ...],
    sync: Callable[[], None],
) -> dict[str, float]:
    """One forward pass with a timer around every module; seconds per module path."""
    total: dict[str, float] = defaultdict(float)
    starts: dict[str, list[float]] = defaultdict(list)
    clock = time.perf_counter

    def pre(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, a: Any) -> None:
            sync()
            starts[path].append(clock())

        return hook

    def post(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, a: Any, out: Any) -> None:
            sync()
            t = clock()
            if starts[path]:
                total[path] += t - starts[path].pop()

        return hook

    handles = []
    try:
        for mod, path in names.items():
            handles.append(mod.register_forward_pre_hook(pre(path)))
            handles.append(mod.register_forward_hook(post(path), always_call=True))
        out = forward(model, args, "profile")
    finally:
        for h in handles:
            h.remove()
    del out
    return total


def _timed_backward(
    model: nn.Module,
    names: dict[nn.Module, str],
    args: tuple[Any, ...],
    sync: Callable[[], None],
) -> dict[str, float]:
    """Forward recording which autograd nodes every module created, then a backward pass with a
    timer on each of those nodes; backward seconds per module path."""
    calls: list[tuple[str, list[Any], set[int]]] = []
    pending: dict[str, list[set[int]]] = defaultdict(list)
    keep: list[Any] = []

    def pre(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, a: Any, kw: Any) -> None:
            fns = [t.grad_fn for t in flat_tensors((a, kw)) if t.grad_fn is not None]
            keep.extend(fns)
            pending[path].append({id(f) for f in fns})

        return hook

    def post(path: str) -> Callable[..., None]:
        def hook(mod: nn.Module, a: Any, kw: Any, out: Any) -> None:
            stop = pending[path].pop() if pending[path] else set()
            outs = [t.grad_fn for t in flat_tensors(out) if t.grad_fn is not None]
            keep.extend(outs)
            calls.append((path, outs, stop))

        return hook

    handles = []
    try:
        for mod, path in names.items():
            handles.append(mod.register_forward_pre_hook(pre(path), with_kwargs=True))
            handles.append(mod.register_forward_hook(post(path), with_kwargs=True, always_call=True))
        out = forward(model, args, "profile")
    finally:
        for h in handles:
            h.remove()

    members: dict[str, dict[int, Any]] = defaultdict(dict)
    for path, outs, stop in calls:
        for f in _subgraph(outs, stop):
            members[path][id(f)] = f
    every: dict[int, Any] = {}
    for m in members.values():
        every.update(m)
    spent: dict[int, float] = defaultdict(float)
    began: dict[int, float] = {}
    clock = time.perf_counter
    node_handles = []

    def npre(key: int) -> Callable[..., None]:
        def hook(grad_outputs: Any) -> None:
            sync()
            began[key] = clock()

        return hook

    def npost(key: int) -> Callable[..., None]:
        def hook(grad_inputs: Any, grad_outputs: Any) -> None:
            sync()
            t = clock()
            if key in began:
                spent[key] += t - began.pop(key)

        return hook

    for key, f in every.items():
        node_handles.append(f.register_prehook(npre(key)))
        node_handles.append(f.register_hook(npost(key)))
    try:
        _backward(out)
        sync()
    finally:
        for h in node_handles:
            h.remove()
    del out
    return {path: sum(spent.get(k, 0.0) for k in m) for path, m in members.items()}
