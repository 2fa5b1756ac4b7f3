"""The data-flow graph of a model: leaf modules and functional ops as nodes, tensors as edges.

:func:`graph` runs the example inputs through the model once and records which node produced
every tensor and which nodes consumed it, so a residual ``out += identity`` becomes an ``add`` node
with two incoming edges, one of them the skip connection. Two recorders share that bookkeeping:

* ``"fx"``: ``torch.fx`` symbolic tracing (leaf modules kept opaque), then the traced graph is
  executed node by node on the real inputs. Its output is compared with the eager model's, so a
  trace that silently differs from eager execution is never used.
* ``"hooks"``: when tracing fails (data-dependent control flow such as ``if x.sum() > 0``), the
  eager forward runs once under forward hooks on every module and a ``TorchFunctionMode`` that
  sees every torch function called outside leaf modules.

Every node knows its parent module, so blocks (``layer2.0``, a Bottleneck) can be folded with
:meth:`Graph.collapse`.
"""

from __future__ import annotations

import operator
import weakref
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..errors import InvalidValueError, ModelError
from ..graphs import Block, Edge, Graph, Node, ancestor_paths, path_depth
from ..nn import (
    as_args,
    check_model,
    flat_tensors,
    forward,
    is_leaf,
    module_names,
    restore_mode,
    shape_of,
)

__all__ = ["Node", "Edge", "Block", "Graph", "graph"]

_RENAME = {
    "iadd": "add", "radd": "add", "isub": "sub", "rsub": "sub", "imul": "mul", "rmul": "mul",
    "truediv": "div", "itruediv": "div", "rtruediv": "div", "idiv": "div", "rdiv": "div",
    "imatmul": "matmul", "rmatmul": "matmul", "ipow": "pow", "rpow": "pow",
}


def _op_name(func: Any) -> str:
    if isinstance(func, str):
        name = func
    else:
        name = getattr(func, "__name__", None) or type(func).__name__
        if name == "__get__":  # a property such as Tensor.T
            name = getattr(getattr(func, "__self__", None), "__name__", "get")
    name = name.strip("_") or "op"
    return _RENAME.get(name, name)


class _Recorder:
    """Bookkeeping shared by both recorders: names, tensor producers, nodes and edges."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.names = module_names(model)
        self.named = dict(model.named_modules())
        self.used: set[str] = set(self.named)
        self.calls: dict[str, int] = {}
        self.nodes: list[Node] = []
        self.edges: list[Edge] = []
        self.producer: dict[int, tuple[weakref.ref, str]] = {}
        self._params: dict[str, int] = {}

    def unique(self, base: str) -> str:
        if base not in self.used:
            self.used.add(base)
            return base
        i = 1
        while f"{base}_{i}" in self.used:
            i += 1
        name = f"{base}_{i}"
        self.used.add(name)
        return name

    def params_of(self, path: str) -> int:
        if path not in self._params:
            self._params[path] = sum(p.numel() for p in self.named[path].parameters())
        return self._params[path]

    def _register(self, out: Any, name: str) -> list[list[int]]:
        shapes = []
        for t in flat_tensors(out):
            self.producer[id(t)] = (weakref.ref(t), name)
            shapes.append(shape_of(t))
        return shapes

    def _sources(self, ins: Any, name: str) -> list[list[int]]:
        shapes = []
        seen: set[str] = set()
        for t in flat_tensors(ins):
            shapes.append(shape_of(t))
            hit = self.producer.get(id(t))
            if hit is not None and hit[0]() is t and hit[1] not in seen:
                seen.add(hit[1])
                self.edges.append(Edge(hit[1], name, shape_of(t)))
        return shapes

    def add_inputs(self, args: tuple[Any, ...]) -> None:
        tensors = flat_tensors(args)
        for i, t in enumerate(tensors):
            name = self.unique("input" if len(tensors) == 1 else f"input_{i}")
            self.nodes.append(
                Node(name=name, op="input", type="Tensor", output_shapes=[shape_of(t)])
            )
            self._register(t, name)

    def add_module(self, mod: nn.Module, ins: Any, out: Any) -> None:
        path = self.names[mod]
        k = self.calls.get(path, 0) + 1
        self.calls[path] = k
        if path == "":  # the model itself is a single leaf module
            name = self.unique(type(mod).__name__ if k == 1 else f"{type(mod).__name__}:{k}")
        else:
            name = path if k == 1 else self.unique(f"{path}:{k}")
        parent = path.rpartition(".")[0] if path else None
        in_shapes = self._sources(ins, name)
        node = Node(
            name=name, op="module", type=type(mod).__name__, parent=parent, module=path, call=k,
            input_shapes=in_shapes, params=self.params_of(path), detail=mod.extra_repr(),
        )
        node.output_shapes = self._register(out, name)
        self.nodes.append(node)

    def add_function(self, func: Any, parent: str, ins: Any, out: Any) -> None:
        op = _op_name(func)
        name = self.unique(f"{parent}.{op}" if parent else op)
        in_shapes = self._sources(ins, name)
        node = Node(name=name, op="function", type=op, parent=parent, input_shapes=in_shapes)
        node.output_shapes = self._register(out, name)
        self.nodes.append(node)

    def add_output(self, out: Any) -> None:
        name = self.unique("output")
        shapes = self._sources(out, name)
        self.nodes.append(
            Node(name=name, op="output", type=type(out).__name__, input_shapes=shapes)
        )

    def finish(self, method: str, reason: str | None) -> Graph:
        called = {n.module for n in self.nodes if n.op == "module"}
        called |= {n.parent for n in self.nodes if n.parent is not None}
        for path in list(called):
            called.update(ancestor_paths(path))
        blocks: dict[str, Block] = {}
        for path, mod in self.named.items():
            parent = path.rpartition(".")[0] if path else None
            blocks[path] = Block(
                name=path, type=type(mod).__name__, parent=parent, depth=path_depth(path),
                children=[f"{path}.{c}" if path else c for c, _ in mod.named_children()],
                params=self.params_of(path), leaf=is_leaf(mod), called=path in called,
            )
        # named_children lists a module shared under two names twice; keep registered paths only
        for b in blocks.values():
            b.children = [c for c in b.children if c in blocks]
        return Graph(
            self.nodes, self.edges, blocks, method=method,
            model_type=type(self.model).__name__, fallback_reason=reason,
        )


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps every module without children opaque (a node of its own)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m) or super().is_leaf_module(m, module_qualified_name)


class _FxRun(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, rec: _Recorder) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.rec = rec

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            result = getattr(self, n.op)(n.target, args, kwargs)
        rec = self.rec
        if n.op == "call_module":
            rec.add_module(rec.named[n.target], (args, kwargs), result)
        elif n.op in ("call_function", "call_method"):
            if not flat_tensors(result) or not flat_tensors((args, kwargs)):
                return result  # size(), dim(), shape arithmetic, constants
            if n.target is operator.getitem and not isinstance(args[0], torch.Tensor):
                return result  # picking from a tuple/list: the tensor keeps its producer
            stack = n.meta.get("nn_module_stack") or {}
            parent = list(stack.values())[-1][0] if stack else ""
            rec.add_function(n.target, parent, (args, kwargs), result)
        elif n.op == "output":
            rec.add_output(result)
        return result


def _same(a: Any, b: Any) -> bool:
    la, sa = tree_flatten(a)
    lb, sb = tree_flatten(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb, strict=True):
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.shape != y.shape or x.dtype != y.dtype:
                return False
            if not torch.equal(x, y) and not torch.allclose(
                x.float(), y.float(), rtol=1e-3, atol=1e-5, equal_nan=True
            ):
                return False
    return True


def _record_fx(
    model: nn.Module, args: tuple[Any, ...], verify: bool = True
) -> tuple[Graph | None, str | None]:
    """Trace with fx and run the trace; ``(graph, None)`` or ``(None, reason)`` to fall back."""
    try:
        tracer = _LeafTracer()
        g = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, g)
    except Exception as exc:  # noqa: BLE001 - any trace failure means: use hooks
        return None, f"torch.fx could not trace {type(model).__name__}: {type(exc).__name__}: {exc}"
    n_ph = sum(1 for n in g.nodes if n.op == "placeholder")
    if n_ph != len(args) or not all(isinstance(a, torch.Tensor) for a in args):
        return None, "inputs are not one tensor per forward argument"
    rec = _Recorder(model)
    rec.add_inputs(args)
    try:
        traced_out = _FxRun(gm, rec).run(*args)
    except Exception as exc:  # noqa: BLE001
        forward(model, args, "graph recording")  # a real failure of the model raises here
        return None, f"the fx trace failed to run: {type(exc).__name__}: {exc}"
    if verify and not _same(traced_out, forward(model, args, "graph recording")):
        return None, "the fx trace computes something different from the eager model"
    return rec.finish("fx", None), None


class _FunctionSpy(TorchFunctionMode):
    def __init__(self, run: _HookRun) -> None:
        super().__init__()
        self.run = run

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        run = self.run
        if run.busy or run.in_leaf:
            return func(*args, **kwargs)
        result = func(*args, **kwargs)
        if flat_tensors(result) and flat_tensors((args, kwargs)):
            run.busy = True
            try:
                run.rec.add_function(func, run.stack[-1] if run.stack else "", (args, kwargs), result)
            finally:
                run.busy = False
        return result


class _HookRun:
    def __init__(self, model: nn.Module, rec: _Recorder) -> None:
        self.model = model
        self.rec = rec
        self.stack: list[str] = []
        self.leaf_depth = 0
        self.busy = False

    @property
    def in_leaf(self) -> bool:
        return self.leaf_depth > 0

    def run(self, args: tuple[Any, ...]) -> Any:
        handles = []
        try:
            for mod, path in self.rec.names.items():
                leaf = is_leaf(mod)
                handles.append(mod.register_forward_pre_hook(self._pre(path, leaf)))
                handles.append(
                    mod.register_forward_hook(self._post(leaf), with_kwargs=True, always_call=True)
                )
            with _FunctionSpy(self):
                out = forward(self.model, args, "graph recording")
        finally:
            for h in handles:
                h.remove()
        self.rec.add_output(out)
        return out

    def _pre(self, path: str, leaf: bool):  # noqa: ANN202
        def hook(mod: nn.Module, args: Any) -> None:
            self.stack.append(path)
            if leaf:
                self.leaf_depth += 1

        return hook

    def _post(self, leaf: bool):  # noqa: ANN202
        def hook(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
            if self.stack:
                self.stack.pop()
            if leaf:
                self.leaf_depth -= 1
                if self.leaf_depth == 0 and not self.busy:
                    self.busy = True
                    try:
                        self.rec.add_module(mod, (args, kwargs), out)
                    finally:
                        self.busy = False

        return hook


def _record_hooks(model: nn.Module, args: tuple[Any, ...], reason: str | None) -> Graph:
    rec = _Recorder(model)
    rec.add_inputs(args)
    _HookRun(model, rec).run(args)
    return rec.finish("hooks", reason)


def graph(
    model: nn.Module,
    example_inputs: Any,
    *,
    method: str = "auto",
    eval: bool = True,
    verify: bool = True,
) -> Graph:
    """Record the data-flow graph of ``model`` on ``example_inputs``.

    Args:
        model: any ``nn.Module``.
        example_inputs: a tensor ``[B, C, H, W]`` (or a tuple of forward arguments); shapes in the
            graph are the ones this input produces. Small inputs (``[1, 3, 64, 64]``) are enough.
        method: ``"auto"`` (fx, falling back to hooks), ``"fx"`` (raise instead of falling back)
            or ``"hooks"``.
        eval: run in eval mode (no batch-norm statistics updated; dropout off); the model's
            modes are restored afterwards either way.
        verify: compare the fx trace's output with the eager model's (one more forward pass)
            and fall back to hooks when they differ. ``False`` saves that pass.

    Returns:
        a :class:`Graph`: ``graph.method`` tells which recorder was used.

    Raises:
        ModelError: ``model`` is not an ``nn.Module``, its forward fails, or ``method="fx"`` and
            fx cannot trace it. InputError: the inputs are not tensors or do not fit the model.
    """
    check_model(model)
    args = as_args(example_inputs)
    if method not in ("auto", "fx", "hooks"):
        raise InvalidValueError(f"method must be 'auto', 'fx' or 'hooks', got {method!r}.")
    with torch.no_grad(), restore_mode(model, True if eval else None):
        reason = None
        if method in ("auto", "fx") and is_leaf(model):
            reason = "the model is a single leaf module: nothing to trace"
            if method == "fx":
                raise ModelError(f"{reason}. Use method='auto' or 'hooks' for this model.")
        elif method in ("auto", "fx"):
            g, reason = _record_fx(model, args, verify)
            if g is not None:
                return g
            if method == "fx":
                raise ModelError(f"{reason}. Use method='auto' or 'hooks' for this model.")
        return _record_hooks(model, args, reason)
