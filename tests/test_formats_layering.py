"""Only ``convscope.formats`` knows the on-disk names of the structure-side concerns.

(a) ``formats/`` never imports torch (it is the torch-free contract layer), and importing every
    format module leaves torch unloaded.
(b) The dashboard pages, ``report.py`` and ``cli.py`` parts that read these concerns hold no SQL
    text and pass no table name, array/object kind or default key as a literal to a reader
    call: they name them through ``formats`` (checked on the source with ``ast``).

(c) No string literal in those files equals a table, array-kind or object-kind name of a run
    recorded by convscope 0.1.0 (the committed fixture's directories: an oracle independent of
    ``formats``), except display labels (``picker_status``'s and ``register_run_picker``'s
    ``what``, ``missing``'s first argument, ``Damage.guard``'s ``what``) and the ``convscope analyze --what`` words.
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
         "top_crops_range", "top_crops_slots",
         "index", "features",
         # attribution, diagnosis, training
         "attr_images", "attributions", "attribution_metrics", "diagnosis", "diagnosis_findings",
         "diagnosis_layers", "diag_maps", "diag_kde", "diag_view", "diag_param", "diag_param_kde",
         "diag_param_view", "watch_layers", "watch_filters", "validation", "validation_images"}
#: calls that take a table name, a kind or a key (reader methods, Damage.check), and those that
#: take them only in some positions (picker_status(state, selected, current, has, what,
#: records_with, tables) and register_run_picker(app, state, prefix, has, what, records_with,
#: tables): ``what`` is display text)
READ_CALLS = {"has_table", "table", "query", "query_numpy", "array", "arrays", "object",
              "objects", "has_object", "check", "load_model", "profile_shares", "scalars",
              "scalar_series"}
POSITIONS = {"picker_status": {6}, "register_run_picker": {6}}
SQL = re.compile(r"\b(SELECT|FROM|WHERE|ORDER BY|GROUP BY)\b")

#: every file of the dashboard, the report and the CLI
CONSUMERS = sorted(str(p.relative_to(SRC)) for p in
                   [*(SRC / "app").rglob("*.py"), SRC / "report.py", SRC / "cli.py"])
RUN = Path(__file__).resolve().parent / "fixtures" / "logdir-0.1.0" / "intact"
#: display labels: (call, positional index, keyword)
LABELS = {"picker_status": (4, "what"), "register_run_picker": (4, "what"),
          "missing": (0, "what"), "guard": (1, "what")}
#: ``convscope analyze --what`` takes these words (options, not kinds)
CLI_WORDS = {"attributions", "diagnosis"}


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
    for rel in CONSUMERS:
        found += problems(ast.parse((SRC / rel).read_text()), rel)
    assert not found, "\n".join(found)


def run_dir_names() -> set[str]:
    names = {"validation", "validation_images", "diagnosis_findings"}  # tables it lacks
    for sub in ("tables", "arrays", "objects"):
        names |= {p.name for p in (RUN / sub).iterdir() if p.is_dir()}
    return names


def literals(tree: ast.AST) -> list[ast.Constant]:
    """String constants that are not docstrings nor display labels (:data:`LABELS`)."""
    skip = set()
    for n in ast.walk(tree):
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if n.body and isinstance(n.body[0], ast.Expr) and isinstance(
                    n.body[0].value, ast.Constant):
                skip.add(id(n.body[0].value))
        if isinstance(n, ast.Call) and _call_name(n) in LABELS:
            pos, kw = LABELS[_call_name(n)]
            if len(n.args) > pos:
                skip.add(id(n.args[pos]))
            skip |= {id(k.value) for k in n.keywords if k.arg == kw}
    return [c for c in _strings(tree) if id(c) not in skip]


def test_no_literal_names_a_table_or_kind_of_a_recorded_run():
    names = run_dir_names()
    assert {"scalars", "profile", "top_examples", "feature_maps", "graph", "diag_view"} <= names
    bad = []
    for rel in CONSUMERS:
        allowed = CLI_WORDS if rel == "cli.py" else set()
        bad += [f"{rel}:{c.lineno}: {c.value!r}" for c in literals(ast.parse(
            (SRC / rel).read_text())) if c.value in names - allowed]
    assert not bad, "name them through convscope.formats:\n" + "\n".join(bad)


def test_the_literal_check_catches_kinds_but_not_labels():
    tree = ast.parse('"""doc: graph"""\n'
                     'def f(r):\n    picker_status(s, a, b, h, "diagnosis", "x")\n'
                     '    dmg.guard(r.name, "scalars")\n    missing("profile", SOURCE)\n'
                     '    return r.object("diag_view", "x"), {"kind": "top_crops"}\n')
    assert [c.value for c in literals(tree) if c.value in run_dir_names()] == [
        "diag_view", "top_crops"]
