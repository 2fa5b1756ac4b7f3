"""The package layering of ../shared/ARCHITECTURE.md, checked on the source with ``ast``.

(a) No module imports a ``_private`` name, or a ``_private`` module, of another package.
(b) The analysis packages (and ``nn``) never import the layers above them (store, formats,
    figures, app, record, run, cli, report, demo).
(c) ``nn`` (the torch kernel every analysis package uses) imports nothing of convscope but
    ``errors``.

A "package" is a directory under ``src/convscope`` (``model``, ``explain``, ...); every module at
the top level (``run.py``, ``cli.py``, ``distributed.py`` ...) counts as its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"

ANALYSIS = {"model", "explain", "features", "diagnose", "track", "embed", "data", "zoo", "nn"}
ABOVE = {"store", "formats", "figures", "app", "record", "run", "cli", "report", "demo"}
#: ``convscope._version`` holds ``__version__`` (the file hatch reads the version from).
ALLOWED_PRIVATE_MODULES = {"convscope._version"}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """``convscope.model.capture`` -> ``model``; ``convscope.run`` -> ``run``;
    ``convscope`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_module(name: str, root: Path = SRC) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` of every convscope import."""
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("convscope")]
        elif isinstance(node, ast.ImportFrom):
            target = absolute(module, is_package, node)
            if target.split(".")[0] == "convscope":
                out += [(target, a.name, node.lineno) for a in node.names]
    return out


def violations(source: str, module: str, is_package: bool, root: Path = SRC) -> list[str]:
    """What ``module`` (whose text is ``source``) does against rules (a), (b) and (c)."""
    here = unit_of(module)
    found: list[str] = []
    for target, name, line in imports_of(source, module, is_package):
        full = f"{target}.{name}" if name and is_module(f"{target}.{name}", root) else target
        there = unit_of(full)
        where = f"{module}:{line} imports {target}" + (f".{name}" if name else "")
        if there != here:
            private_mods = [p for p in full.split(".")[1:] if p.startswith("_")]
            if private_mods and full not in ALLOWED_PRIVATE_MODULES:
                found.append(f"{where}: a private module of package {there!r}")
            elif name and name.startswith("_") and not name.startswith("__"):
                found.append(f"{where}: a private name of package {there!r}")
        if here in ANALYSIS and there in ABOVE:
            found.append(f"{where}: analysis package {here!r} imports {there!r}")
        if here == "nn" and there not in ("nn", "errors"):
            found.append(f"{where}: nn may import only convscope.errors")
    return found


def tree_violations(root: Path = SRC) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        found += violations(path.read_text(), module_name(path, root), path.name == "__init__.py",
                            root)
    return found


#: Known violations awaiting a fix (none now). An entry that no longer occurs fails the test, so
#: the list cannot go stale.
PENDING: set[str] = set()


def _without_line(v: str) -> str:
    where, rest = v.split(" imports ", 1)
    return f"{where.split(':')[0]} imports {rest.split(':')[0]}"


def test_source_tree_keeps_the_layering() -> None:
    found = tree_violations()
    new = [v for v in found if _without_line(v) not in PENDING]
    assert not new, "layering broken:\n" + "\n".join(new)
    fixed = PENDING - {_without_line(v) for v in found}
    assert not fixed, f"fixed now, remove from PENDING: {sorted(fixed)}"


def test_the_checker_sees_each_kind_of_violation(tmp_path: Path) -> None:
    """The checker itself on a small hand-made tree: every line marked BAD is reported, the
    others are not."""
    root = tmp_path / "convscope"
    files = {
        "__init__.py": "",
        "_version.py": "__version__ = '1'\n",
        "errors.py": "",
        "run.py": "",
        "model/__init__.py": "",
        "model/_common.py": "def helper(): pass\n",
        "model/graph.py": "from ._common import helper\n",  # same package: fine
        "embed/__init__.py": "",
        "embed/pca.py": "def _check(): pass\n",
        "nn/__init__.py": "",
        "nn/ops.py": "from ..errors import InputError\n",
        "explain/__init__.py": "",
        "explain/cams.py": (
            "from ..model._common import helper\n"  # BAD line 1: private module
            "from ..embed.pca import _check\n"  # BAD line 2: private name
            "from ..model import _common\n"  # BAD line 3: private module by name
            "from .. import __version__\n"  # fine: dunder
            "from .._version import __version__\n"  # fine: allowed
            "def f():\n"
            "    from ..run import Run\n"  # BAD line 7: analysis imports run
            "    import convscope.store.writer\n"  # BAD line 8: analysis imports store
            "    from ..nn.ops import x\n"  # fine
        ),
        "nn/modules.py": "from ..model import graph\n",  # BAD: nn imports an analysis package
        "distributed.py": "from .features.maximize import _check_units\n",  # BAD
        "store/__init__.py": "",
        "store/writer.py": "",
        "features/__init__.py": "",
        "features/maximize.py": "",
    }
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    found = tree_violations(root)
    lines = sorted((f.split(" imports ")[0]) for f in found)
    assert lines == [
        "convscope.distributed:1",
        "convscope.explain.cams:1",
        "convscope.explain.cams:2",
        "convscope.explain.cams:3",
        "convscope.explain.cams:7",
        "convscope.explain.cams:8",
        "convscope.nn.modules:1",
    ], found
