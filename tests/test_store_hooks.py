"""The store is transport only (issue 13, item 1): what it does to a table's parts beyond writing
them (sort order, side files of compacted parts) comes from hooks the formats register
(``convscope.store.hooks``), and ``src/convscope/store`` names no concern.

The side files a run gets must not change: the digests pinned below are those the code before
the hooks (``store/summary.py`` with ``SUMMARIZED_TABLES``, ``layout.TABLE_SORT``) wrote for the
same rows, and each entry point that compacts (``Run.close``, ``convscope compact``,
``convscope.store.compact_run`` in a process that never imported ``convscope.formats``) must
reproduce them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import convscope as cs
from convscope.errors import InvalidValueError
from convscope.store import hooks as store_hooks
from convscope.store.hooks import SideFile, TableHooks, register_table, table_hooks
from convscope.store.parts import compact_table, list_parts
from convscope.store.writer import PartWriter

SRC = Path(cs.__file__).parent
ENV = {**os.environ, "PYTHONPATH": str(SRC.parent)}

# Rows of 8 parts per watch table, each given in descending step order (so sorting shows), with
# dyadic values (sums exact whatever order DuckDB adds them in) and NaNs in g_l2 and cos_prev.
BUILD = '''
import hashlib, json
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq

def rows(steps, rank):
    c = {k: [] for k in ("step", "layer", "filter", "w_l2", "g_l2", "ratio", "cos_prev",
                         "rank")}
    for s in steps:
        for layer, nf in (("b.conv", 2), ("a.conv", 3)):
            for f in range(nf):
                c["step"].append(s); c["layer"].append(layer); c["filter"].append(f)
                c["w_l2"].append(s * 0.5 + f)
                c["g_l2"].append(float("nan") if (s + f) % 5 == 0 else f * 0.25)
                c["ratio"].append((s % 7) / 8)
                c["cos_prev"].append(float("nan") if s == 0 else
                                     ((s * 3 + f * 5 + rank) % 16) / 16)
                c["rank"].append(rank)
    return {"step": np.asarray(c["step"], np.int64), "layer": c["layer"],
            "filter": np.asarray(c["filter"], np.int32),
            "w_l2": np.asarray(c["w_l2"], np.float32), "g_l2": np.asarray(c["g_l2"], np.float32),
            "ratio": np.asarray(c["ratio"], np.float32),
            "cos_prev": np.asarray(c["cos_prev"], np.float32),
            "rank": np.asarray(c["rank"], np.int16)}

def build(run_dir):
    from convscope.store.writer import PartWriter
    w = PartWriter(run_dir)
    for i in range(8):
        w.append("watch_filters", rows(range(16 * i + 15, 16 * i - 1, -1), i % 3 % 2))
        w.append("watch_layers", {"step": np.arange(10 * i + 9, 10 * i - 1, -1),
                                  "layer": ["b", "a"] * 5,
                                  "w_l2": np.arange(10, dtype=np.float32)})
        w.flush()
    w.close()

def digest(path):
    """Schema, rows and convscope footer metadata (but the names of replaced parts)."""
    t = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()
            if k.decode().startswith("convscope") and k.decode() != "convscope.replaces"}
    body = json.dumps([str(t.schema.remove_metadata()), t.to_pydict(), meta], sort_keys=True,
                      default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]

def files(run_dir):
    """Digests of the watch tables' parts and side files (by prefix)."""
    out = {}
    for table in ("watch_filters", "watch_layers"):
        d = Path(run_dir) / "tables" / table
        out[table] = [digest(p) for p in sorted(d.glob("part-*.parquet"))]
        for s in sorted((d / "_summary").glob("*.parquet")):
            out[table + "/_summary/" + s.name.split("part-")[0]] = digest(s)
    return out
'''
_ns: dict = {}
exec(BUILD, _ns)
build, files = _ns["build"], _ns["files"]

#: written by the code before the hooks: the 8 raw parts of each table (sorted by layer, filter,
#: step and by layer, step), then the compacted part, its summary and its top-changed index
RAW = {
    "watch_filters": ["dc377e4c95df8df1", "cc45600fda3e0e11", "ee251bf9e0d7957a",
                      "41a7378bf2b33063", "ea36c36d2f91e662", "d4e1d6265852c173",
                      "18fc2709a3b24edf", "38f3b6219541181a"],
    "watch_layers": ["553bb1a5984cc121", "a25dbcb7f63d8e9f", "b95d3458d0692aa1",
                     "065fb6553e850b50", "d7cde112a73a3bd3", "2c9ee11d169e23e3",
                     "8b8e27c2aee186dd", "f02705fbcad25f2f"],
}
COMPACTED = {
    "watch_filters": ["d7c51f4c2d262d7a"],
    "watch_filters/_summary/": "de82e11bd91488f7",
    "watch_filters/_summary/top-": "de6cf77d78216d0e",
    "watch_layers": ["91181966c360a995"],
}


def _py(code: str, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          env=ENV, capture_output=True, text=True, timeout=180)


def test_store_alone_writes_and_compacts_todays_files(tmp_path):
    """``compact_run`` in a process that imported only ``convscope.store``: the store loads the
    formats' hooks itself (parts sorted, side files written summary first, top-changed index
    last), and fills in side files that a killed compaction left out."""
    code = BUILD + """
import os, sys
from convscope.store import compact_run
before = "convscope.formats" in sys.modules
run_dir = Path(sys.argv[1])
build(run_dir)
raw = files(run_dir)
import shutil
shutil.copy(sorted((run_dir / "tables" / "watch_filters").glob("part-*.parquet"))[0],
            run_dir / "replaced.parquet")
renamed = []
real = os.replace
def spy(src, dst, *a, **k):
    renamed.append(str(Path(dst).relative_to(run_dir / "tables")))
    return real(src, dst, *a, **k)
os.replace = spy
compact_run(run_dir)
print(json.dumps({"before": before, "raw": raw, "renamed": renamed}))
"""
    res = _py(code, tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["before"] is False  # nothing had registered hooks when the run was written
    assert out["raw"] == RAW
    assert files(tmp_path) == COMPACTED
    part = list_parts(tmp_path / "tables" / "watch_filters").files[0].name
    filters = [r for r in out["renamed"] if r.startswith("watch_filters/")]
    assert filters == [f"watch_filters/{part}", f"watch_filters/_summary/{part}",
                       f"watch_filters/_summary/top-{part}"]
    assert not (tmp_path / "tables" / "watch_layers" / "_summary").exists()

    # the state of a compaction killed before the top-changed index (the marker): the summary
    # written, a replaced part not deleted yet; and a side file of a part that is gone. The next
    # compaction, again from the store alone, repairs both
    wf = tmp_path / "tables" / "watch_filters"
    (wf / "_summary" / f"top-{part}").unlink()
    replaced = tmp_path / "replaced.parquet"
    first = json.loads(pq.read_metadata(wf / part).metadata[b"convscope.replaces"])[0]
    os.replace(replaced, wf / first)  # the first part the merged one replaced, back
    assert len(list_parts(wf).replaced) == 1
    gone = wf / "_summary" / "top-part-r000-p1-00000000-000000.parquet"
    gone.write_bytes((wf / "_summary" / part).read_bytes())
    res = _py("import sys; from pathlib import Path; from convscope.store import compact_run\n"
              "print(compact_run(Path(sys.argv[1])))", tmp_path)
    assert res.returncode == 0, res.stderr
    assert files(tmp_path) == COMPACTED
    assert not gone.exists() and not (wf / first).exists() and list_parts(wf).replaced == []


@pytest.mark.parametrize("entry", ["run", "cli"])
def test_run_close_and_cli_compact_write_todays_files(tmp_path, entry):
    from convscope.cli import main

    with cs.Run(tmp_path, "r", quiet=True) as run:
        build(run.path)
        assert files(run.path) == RAW
        run_dir = run.path
        if entry == "cli":
            run.close(compact=False)
    if entry == "cli":
        assert files(run_dir) == RAW
        assert main(["compact", str(run_dir)]) == 0
    assert files(run_dir) == COMPACTED


def test_hooks_of_a_new_table_sort_and_derive_side_files(tmp_path, monkeypatch):
    """The mechanism on a table of its own: parts sorted by ``sort_by``; compaction writes each
    side file in order, skips a builder's None, deletes side files with their part and builds
    them again when the last one is missing; a table without hooks gets none."""
    calls: list[str] = []

    def count(t: pa.Table):
        calls.append("count")
        return pa.table({"n": [t.num_rows]}), {"convscope.note": "x"}

    def nothing(t: pa.Table):
        calls.append("nothing")
        return None

    def total(t: pa.Table):
        calls.append("total")
        return pa.table({"sum": [int(np.sum(t.column("v").to_numpy()))]}), {}

    hooks = TableHooks(sort_by=("b", "a"), side_files=(
        SideFile("", count), SideFile("none-", nothing), SideFile("sum-", total, 4)))
    monkeypatch.setitem(store_hooks._registry, "mine", hooks)
    assert table_hooks("mine") is hooks and table_hooks("other").side_files == ()

    w = PartWriter(tmp_path)
    for i in range(3):
        cols = {"a": [3 - i, 1, 2], "b": [1, 0, 1], "v": [i, 10 * i, 100]}
        w.append("mine", cols)
        w.append("other", cols)
        w.flush()
    w.close()
    tdir = tmp_path / "tables" / "mine"
    first = pq.read_table(sorted(tdir.glob("part-*.parquet"))[0])
    assert list(zip(first["b"].to_pylist(), first["a"].to_pylist(), strict=True)) == \
        [(0, 1), (1, 2), (1, 3)]  # by b, then a
    old = sorted(p.name for p in tdir.glob("part-*.parquet"))
    kept = (tdir / old[0]).read_bytes()

    assert compact_table(tdir) == (3, 1)
    assert calls == ["count", "nothing", "total"]
    (part,) = list_parts(tdir).files
    got = pq.read_table(part)
    assert sorted(zip(got["b"].to_pylist(), got["a"].to_pylist(), strict=True)) == \
        list(zip(got["b"].to_pylist(), got["a"].to_pylist(), strict=True))
    side = {p.name for p in (tdir / "_summary").iterdir()}
    assert side == {part.name, "sum-" + part.name}
    summary = pq.read_table(tdir / "_summary" / part.name)
    assert summary["n"].to_pylist() == [9]
    assert summary.schema.metadata[b"convscope.note"] == b"x"
    # part i held v = [i, 10 i, 100]: 0+0+100 + 1+10+100 + 2+20+100
    assert pq.read_table(tdir / "_summary" / ("sum-" + part.name))["sum"].to_pylist() == [333]
    assert not any((tdir / "_summary" / n).exists() for n in old)
    assert not (tmp_path / "tables" / "other" / "_summary").exists()

    # killed before the marker (the last side file), a replaced part still there: the side
    # files are built again, the replaced part deleted; once complete, nothing is built
    calls.clear()
    (tdir / "_summary" / ("sum-" + part.name)).unlink()
    (tdir / old[0]).write_bytes(kept)
    assert list_parts(tdir).replaced == [tdir / old[0]]
    assert compact_table(tdir) == (1, 1)
    assert not (tdir / old[0]).exists()
    assert {p.name for p in (tdir / "_summary").iterdir()} == side
    assert calls == ["count", "nothing", "total"]
    calls.clear()
    assert compact_table(tdir) == (1, 1)
    assert calls == []


def test_hooks_are_checked():
    with pytest.raises(InvalidValueError, match="share a prefix"):
        TableHooks(side_files=(SideFile("x-", len), SideFile("x-", len)))
    with pytest.raises(InvalidValueError, match="read as a part"):
        TableHooks(side_files=(SideFile("part-", len),))
    with pytest.raises(InvalidValueError, match="TableHooks"):
        register_table("t", {"sort_by": ("a",)})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="file name"):
        register_table("../t", TableHooks())


def test_moved_names_stay_importable():
    from convscope.formats import TABLE_HOOKS, training_summary
    from convscope.store import layout, summary

    assert summary.TOP_K == training_summary.TOP_K == 16
    assert summary.build_filter_summary is training_summary.build_filter_summary
    assert summary.build_top_changed is training_summary.build_top_changed
    assert summary.top_file(Path("t/part-1.parquet")) == Path("t/_summary/top-part-1.parquet")
    assert summary.SUMMARIZED_TABLES == ("watch_filters",)
    assert layout.TABLE_SORT == {"watch_filters": ("layer", "filter", "step"),
                                 "watch_layers": ("layer", "step")}
    assert {t: table_hooks(t) for t in TABLE_HOOKS} == TABLE_HOOKS


# -- store/ names no concern ----------------------------------------------------------------------
def _table_names() -> set[str]:
    """Every table name the formats define (``X_TABLE = "..."``, ``TABLE = "..."``), but the
    store's own index of arrays."""
    names = set()
    for path in (SRC / "formats").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str):
                for t in node.targets:
                    if isinstance(t, ast.Name) and (t.id == "TABLE" or t.id.endswith("_TABLE")):
                        names.add(node.value.value)
    return names - {"arrays"}


def _code_strings(tree: ast.AST):
    """String constants of a module but its docstrings (names used, not prose)."""
    docs = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                and n.body and isinstance(n.body[0], ast.Expr) \
                and isinstance(n.body[0].value, ast.Constant):
            docs.add(id(n.body[0].value))
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs:
            yield n


#: a shim from before formats/ (re-exports formats.training's queries); not transport code
LEGACY_SHIMS: set[str] = set()


def test_store_names_no_concern():
    tables = _table_names()
    assert {"watch_filters", "watch_layers", "scalars", "profile", "validation",
            "top_examples", "embedding"} <= tables  # the scan finds them
    found = []
    for path in sorted((SRC / "store").glob("*.py")):
        tree = ast.parse(path.read_text())
        for n in _code_strings(tree):
            if n.value in tables:
                found.append(f"{path.name}:{n.lineno} names table {n.value!r}")
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom):
                mod = ("." * n.level) + (n.module or "")
                if mod.startswith(("..track", "convscope.track")):
                    found.append(f"{path.name}:{n.lineno} imports {mod}")
                if mod.startswith(("..formats", "convscope.formats")) and n in tree.body \
                        and path.name not in LEGACY_SHIMS:
                    found.append(f"{path.name}:{n.lineno} imports {mod} at module level")
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.startswith(("convscope.track", "convscope.formats")):
                        found.append(f"{path.name}:{n.lineno} imports {a.name}")
    assert not found, "\n".join(found)
