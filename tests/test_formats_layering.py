"""Only ``convscope.formats`` knows the on-disk names of the structure-side concerns.

(a) ``formats/`` never imports torch (it is the torch-free contract layer), and importing every
    format module leaves torch unloaded.
(b) The dashboard pages, ``report.py`` and ``cli.py`` parts that read these concerns hold no SQL
    text and pass no table name, array/object kind or default key as a literal to a reader
    call: they name them through ``formats`` (checked on the source with ``ast``).

The attribution, diagnosis and training concerns (and their pages) are checked the same way
once their format modules exist.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "convscope"
FORMATS = SRC / "formats"

#: table names, array/object kinds and default keys owned by the structure-side formats
NAMES = {"scalars", "graph", "profile", "feature_maps", "samples", "top_crops", "top_examples",
         "preferred_inputs", "embedding", "embedding_images", "arrays", "checkpoints", "model",
         "index", "features"}
#: calls that take a table name, a kind or a key (reader methods, Damage.check), and those that
#: take them only in some positions (picker_status(state, selected, current, has, what,
#: records_with, tables): ``what`` is display text)
READ_CALLS = {"has_table", "table", "query", "query_numpy", "array", "arrays", "object",
              "objects", "has_object", "check", "load_model", "profile_shares", "scalars",
              "scalar_series"}
POSITIONS = {"picker_status": {6}}
SQL = re.compile(r"\b(SELECT|FROM|WHERE|ORDER BY|GROUP BY)\b")

#: files (whole) and (file, functions) read through formats
WHOLE = ["app/pages/model.py", "app/pages/resources.py", "app/pages/embedding.py",
         "app/pages/scalars.py", "app/pages/runs.py", "app/pages/live.py", "app/state.py",
         "app/shell.py", "app/components.py"]
FUNCTIONS = {"report.py": {"_scalars", "_model", "_feature_maps", "_resources", "_embedding",
                           "write_report"},
             "cli.py": {"_cmd_runs", "_cmd_report", "_cmd_compact"}}


def _strings(node: ast.AST):
    """Every string constant under ``node`` (f-string parts included)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            yield n


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def problems(tree: ast.AST, where: str) -> list[str]:
    out = []
    for s in _strings(tree):
        if SQL.search(s.value):
            out.append(f"{where}:{s.lineno}: SQL text {s.value[:60]!r}")
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        name = _call_name(call)
        if name in POSITIONS:
            args = [a for i, a in enumerate(call.args) if i in POSITIONS[name]]
        elif name in READ_CALLS:
            args = list(call.args) + [k.value for k in call.keywords]
        else:
            continue
        for a in args:
            items = a.elts if isinstance(a, (ast.List, ast.Tuple, ast.Set)) else [a]
            for item in items:
                if isinstance(item, ast.Constant) and item.value in NAMES:
                    out.append(f"{where}:{item.lineno}: {_call_name(call)}({item.value!r})")
    for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda))):
        for d in fn.args.defaults + [d for d in fn.args.kw_defaults if d is not None]:
            if isinstance(d, ast.Constant) and d.value in NAMES:
                out.append(f"{where}:{d.lineno}: default {d.value!r}")
    return out


def test_the_checker_finds_what_it_forbids():
    bad = ast.parse(
        "def f(reader, key='model'):\n"
        "    reader.query('SELECT * FROM profile WHERE model = ?', [key])\n"
        "    reader.object('graph', 'model')\n"
        "    dmg.check(reader, ['embedding'])\n"
        "    picker_status(state, s, c, has, 'profile', 'run.log_model()', ['profile'])\n"
        "    html.Span('model')\n")  # display text passed elsewhere is fine
    found = problems(bad, "x.py")
    assert len(found) == 6, found
    assert any("default 'model'" in p for p in found)
    assert any("SQL text" in p for p in found)
    assert any("check('embedding')" in p for p in found)


def test_formats_never_import_torch():
    for path in sorted(FORMATS.glob("*.py")):
        tree = ast.parse(path.read_text())
        for n in ast.walk(tree):
            names = ([a.name for a in n.names] if isinstance(n, ast.Import) else
                     [n.module or ""] if isinstance(n, ast.ImportFrom) and n.level == 0 else [])
            assert not any(m.split(".")[0] == "torch" for m in names), (path.name, n.lineno)
    mods = sorted(p.stem for p in FORMATS.glob("*.py") if p.stem != "__init__")
    code = ("import sys, importlib\n"
            f"for m in {mods!r}: importlib.import_module('convscope.formats.' + m)\n"
            "import convscope as cs; cs.open_run\n"
            "print('torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC.parent)}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_pages_report_and_cli_read_through_formats():
    found = []
    for rel in WHOLE:
        found += problems(ast.parse((SRC / rel).read_text()), rel)
    for rel, names in FUNCTIONS.items():
        tree = ast.parse((SRC / rel).read_text())
        fns = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        assert {f.name for f in fns} == names, rel
        for f in fns:
            found += problems(f, f"{rel}:{f.name}")
    assert not found, "\n".join(found)
