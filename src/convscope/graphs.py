"""The data classes of a model graph (:class:`Graph`, :class:`Node`, :class:`Edge`,
:class:`Block`), free of torch so that figures and the dashboard can use stored graphs without
importing it. :func:`convscope.model.graph` builds them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import InvalidValueError, LayerNotFoundError, ModelError, suggest

__all__ = ["Node", "Edge", "Block", "Graph", "FORMAT"]

FORMAT = "convscope.graph/1"


@dataclass
class Node:
    """One node of a :class:`Graph`.

    ``op`` is ``"input"``, ``"module"`` (a leaf module call), ``"function"`` (a functional op such
    as ``add``, ``cat``, ``flatten``, ``relu``), ``"output"``, or ``"block"`` (a collapsed module).
    ``name`` is unique: the module path for a module's first call (``layer4.1.conv2``),
    ``path:2``, ``path:3`` for further calls of the same module, and ``<parent>.<op>`` made unique
    with ``_1``, ``_2`` for functional ops (``layer1.0.add``). ``parent`` is the path of the
    enclosing module (``""`` = the model itself; ``None`` for input and output).
    """

    name: str
    op: str
    type: str
    parent: str | None = None
    module: str | None = None
    call: int = 1
    input_shapes: list[list[int]] = field(default_factory=list)
    output_shapes: list[list[int]] = field(default_factory=list)
    params: int = 0
    detail: str = ""
    members: list[str] = field(default_factory=list)

    @property
    def output_shape(self) -> list[int] | None:
        """The first output's shape, or ``None`` when the node outputs no tensor."""
        return self.output_shapes[0] if self.output_shapes else None


@dataclass
class Edge:
    """A tensor flowing from node ``src`` to node ``dst``; ``shape`` is that tensor's shape."""

    src: str
    dst: str
    shape: list[int] | None = None


@dataclass
class Block:
    """A module of the model's hierarchy (leaf or not). ``depth`` counts path components
    (``layer2`` = 1, ``layer2.0`` = 2, the model itself ``""`` = 0); ``params`` counts the
    parameters of the module and everything inside it (shared ones once); ``called`` says whether
    the example forward pass used it."""

    name: str
    type: str
    parent: str | None
    depth: int
    children: list[str] = field(default_factory=list)
    params: int = 0
    leaf: bool = False
    called: bool = False


def ancestor_paths(path: str) -> list[str]:
    """``"layer1.0.conv1"`` -> ``["", "layer1", "layer1.0", "layer1.0.conv1"]``."""
    if path == "":
        return [""]
    parts = path.split(".")
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def path_depth(path: str) -> int:
    return 0 if path == "" else path.count(".") + 1


class Graph:
    """The recorded graph of a model (see :func:`graph`).

    ``nodes`` maps name -> :class:`Node` in execution order; ``edges`` lists :class:`Edge` in the
    order the consumers ran; ``blocks`` maps every module path -> :class:`Block`;
    ``method`` is ``"fx"`` or ``"hooks"`` (``fallback_reason`` says why fx was not used).
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        edges: Iterable[Edge],
        blocks: dict[str, Block],
        *,
        method: str,
        model_type: str = "",
        fallback_reason: str | None = None,
        collapsed: bool = False,
    ) -> None:
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.edges: list[Edge] = list(edges)
        self.blocks = blocks
        self.method = method
        self.model_type = model_type
        self.fallback_reason = fallback_reason
        self.collapsed = collapsed
        self._succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        self._pred: dict[str, list[str]] = {n: [] for n in self.nodes}
        for e in self.edges:
            self._succ[e.src].append(e.dst)
            self._pred[e.dst].append(e.src)

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise LayerNotFoundError(
                f"the graph has no node named {name!r}." + suggest(name, self.nodes)
            ) from None

    def __repr__(self) -> str:
        return (
            f"Graph({self.model_type}, {len(self.nodes)} nodes, {len(self.edges)} edges, "
            f"method={self.method!r}{', collapsed' if self.collapsed else ''})"
        )

    @property
    def inputs(self) -> list[str]:
        """Names of the input nodes (one per tensor in the example inputs)."""
        return [n.name for n in self.nodes.values() if n.op == "input"]

    @property
    def output(self) -> str:
        """Name of the output node."""
        return next(n.name for n in self.nodes.values() if n.op == "output")

    def predecessors(self, name: str) -> list[str]:
        """Nodes feeding ``name``, in argument order."""
        self[name]
        return list(self._pred[name])

    def successors(self, name: str) -> list[str]:
        self[name]
        return list(self._succ[name])

    def descendants(self, name: str) -> set[str]:
        """Every node reachable from ``name`` along the edges."""
        seen: set[str] = set()
        todo = list(self.successors(name))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self._succ[n])
        return seen

    def leaves(self) -> list[Node]:
        """The leaf-module nodes, in execution order."""
        return [n for n in self.nodes.values() if n.op == "module"]

    def block_names(self, depth: int | None = None) -> list[str]:
        """Paths of the non-leaf modules the forward pass used (the model itself excluded),
        optionally only those at ``depth`` (``layer2`` = 1, ``layer2.0`` = 2)."""
        return [
            b.name
            for b in self.blocks.values()
            if not b.leaf
            and b.called
            and b.name != ""
            and (depth is None or b.depth == depth)
        ]

    def children(self, block: str) -> list[str]:
        """Direct children of a block: child modules and the functional ops called in it."""
        if block not in self.blocks:
            raise LayerNotFoundError(
                f"no block named {block!r}." + suggest(block, self.blocks)
            )
        kids = [c for c in self.blocks[block].children if self.blocks[c].called]
        kids += [n.name for n in self.nodes.values() if n.op == "function" and n.parent == block]
        return kids

    # -- folding -----------------------------------------------------------------------------
    def _group(self, node: Node, depth: int | None, chosen: set[str], expand: set[str]) -> str:
        if node.op in ("input", "output") or node.parent is None:
            return node.name
        path = node.module if node.op == "module" else node.parent
        ancestors = ancestor_paths(path)
        if node.op == "module":
            ancestors = ancestors[:-1]  # a leaf is not a block of itself
        for a in ancestors:
            if a in expand:
                continue
            if (depth is not None and path_depth(a) >= depth) or a in chosen:
                return a
        return node.name

    def collapse(
        self, blocks: int | Iterable[str] = 1, expand: Iterable[str] = ()
    ) -> Graph:
        """Fold modules into single ``"block"`` nodes.

        ``blocks`` is a depth (``1``: ``conv1``, ``layer1`` ... ``layer4``, ``fc`` for a ResNet;
        ``2``: one node per residual block) or a set of block paths to fold. Blocks named in
        ``expand`` are opened one level instead (click-to-expand). Edges between members of one
        block disappear; edges between blocks keep the shape of the tensor that flows.
        Block nodes list their original nodes in ``members``.
        """
        if self.collapsed:
            raise InvalidValueError(
                "this graph is already collapsed; collapse the original graph instead."
            )
        expand_set = set(expand)
        if isinstance(blocks, bool) or not isinstance(blocks, (int, str, Iterable)):
            raise InvalidValueError(
                f"blocks must be a depth (int) or a set of block paths, got {blocks!r}."
            )
        depth: int | None
        if isinstance(blocks, int):
            if blocks < 0:
                raise InvalidValueError(f"collapse depth must be >= 0, got {blocks}.")
            depth, chosen = blocks, set()
        else:
            chosen = {blocks} if isinstance(blocks, str) else set(blocks)
            depth = None
            for b in chosen | expand_set:
                if b not in self.blocks:
                    raise LayerNotFoundError(
                        f"no block named {b!r} to collapse." + suggest(b, self.blocks)
                    )
        group = {n.name: self._group(n, depth, chosen, expand_set) for n in self.nodes.values()}
        new_nodes: dict[str, Node] = {}
        for n in self.nodes.values():
            g = group[n.name]
            if g == n.name:
                new_nodes[g] = Node(**{**asdict(n)})
            elif g not in new_nodes:
                b = self.blocks[g]
                new_nodes[g] = Node(
                    name=g, op="block", type=b.type, parent=b.parent, module=g,
                    params=b.params, members=[],
                )
            if g != n.name:
                new_nodes[g].members.append(n.name)
        new_edges: list[Edge] = []
        seen: set[tuple[str, str]] = set()
        ins_seen: set[tuple[str, str]] = set()
        outs_seen: set[tuple[str, str]] = set()
        for e in self.edges:
            s, d = group[e.src], group[e.dst]
            if s == d:
                continue
            if new_nodes[d].op == "block" and (d, e.src) not in ins_seen:
                ins_seen.add((d, e.src))
                new_nodes[d].input_shapes.append(list(e.shape or []))
            if new_nodes[s].op == "block" and (s, e.src) not in outs_seen:
                outs_seen.add((s, e.src))
                new_nodes[s].output_shapes.append(list(e.shape or []))
            if (s, d) not in seen:
                seen.add((s, d))
                new_edges.append(Edge(s, d, e.shape))
        return Graph(
            new_nodes.values(), new_edges, self.blocks, method=self.method,
            model_type=self.model_type, fallback_reason=self.fallback_reason, collapsed=True,
        )

    # -- export ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` restores the graph."""
        return {
            "format": FORMAT,
            "method": self.method,
            "model_type": self.model_type,
            "fallback_reason": self.fallback_reason,
            "collapsed": self.collapsed,
            "nodes": [asdict(n) for n in self.nodes.values()],
            "edges": [asdict(e) for e in self.edges],
            "blocks": [asdict(b) for b in self.blocks.values()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InvalidValueError(
                f"not a convscope graph dict (expected format {FORMAT!r}); build it with "
                "Graph.to_dict()."
            )
        blocks = {b["name"]: Block(**b) for b in data["blocks"]}
        return cls(
            (Node(**n) for n in data["nodes"]),
            (Edge(**e) for e in data["edges"]),
            blocks,
            method=data["method"],
            model_type=data.get("model_type", ""),
            fallback_reason=data.get("fallback_reason"),
            collapsed=data.get("collapsed", False),
        )

    def to_networkx(self) -> Any:
        """A ``networkx.DiGraph`` with the node fields as node attributes (needs networkx)."""
        try:
            import networkx as nx
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModelError(
                "Graph.to_networkx needs networkx: install it with `pip install networkx`."
            ) from None
        g = nx.DiGraph(method=self.method, model_type=self.model_type)
        for n in self.nodes.values():
            g.add_node(n.name, **asdict(n))
        for e in self.edges:
            g.add_edge(e.src, e.dst, shape=e.shape)
        return g


# ---------------------------------------------------------------------------------------------
# recording
